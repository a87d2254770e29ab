"""Data layer: setup records, field validation, invertible normalisers, image tiles and
per-modality matrices / latent encoders of MuData."""

from .fields import check_adata, check_values, columns_by_name, get_matrix, get_obsm_frame, log_normalize
from .modality import ModalityEncoder, choose_encoder, modality_matrix
from .normalize import ChannelNormalizer
from .panels import (
    KNOWN_CLONES,
    PROTEIN_ALIASES,
    canonical_protein_name,
    harmonize_panels,
    is_isotype_control,
    union_panel_matrix,
)
from .registry import UNS_KEY, read_setup_record, write_setup_record
from .tiles import (
    TileAccumulator,
    crop_to_factor,
    downsample_mask,
    downsample_mean,
    extract_tiles,
    spatial_split,
    stitch_tiles,
    tile_origins,
    tile_window,
    tiles_inside,
    upsample_nearest,
    upsample_to,
)

__all__ = [
    "check_adata",
    "check_values",
    "columns_by_name",
    "get_matrix",
    "get_obsm_frame",
    "log_normalize",
    "ChannelNormalizer",
    "ModalityEncoder",
    "choose_encoder",
    "modality_matrix",
    "KNOWN_CLONES",
    "PROTEIN_ALIASES",
    "canonical_protein_name",
    "harmonize_panels",
    "is_isotype_control",
    "union_panel_matrix",
    "UNS_KEY",
    "read_setup_record",
    "write_setup_record",
    "downsample_mean",
    "extract_tiles",
    "spatial_split",
    "stitch_tiles",
    "TileAccumulator",
    "crop_to_factor",
    "downsample_mask",
    "upsample_to",
    "tile_origins",
    "tile_window",
    "tiles_inside",
    "upsample_nearest",
]
