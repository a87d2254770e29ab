"""Data layer: setup records, field validation and invertible normalisers."""

from .fields import check_adata, check_values, columns_by_name, get_matrix, get_obsm_frame, log_normalize
from .normalize import ChannelNormalizer
from .registry import UNS_KEY, read_setup_record, write_setup_record

__all__ = [
    "check_adata",
    "check_values",
    "columns_by_name",
    "get_matrix",
    "get_obsm_frame",
    "log_normalize",
    "ChannelNormalizer",
    "UNS_KEY",
    "read_setup_record",
    "write_setup_record",
]
