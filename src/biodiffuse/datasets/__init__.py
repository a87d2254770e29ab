"""Real public data sets (bundled or read from a data folder) and sha256-checked fetching.

Imaging loaders (:func:`mibi_granuloma`, :func:`imc_pancreas`) need spatialdata; TCGA loaders
(:func:`tcga_acc`, :func:`tcga_brca`) return MuData."""

from ._fetch import fetch_file, read_h5ad_safely, sha256sum
from .citeseq import ABSEQ_DONORS, dsb_adt_pbmc, eccite_pbmc, pbmc10k_protein, triana_bm_abseq
from .genesets import GENE_SET_LIBRARIES, gene_sets, read_gmt
from .histology import HER2ST_SECTIONS, her2st, xenium_bone_marrow
from .imaging import MIBI_NON_PROTEIN, imc_pancreas, mibi_granuloma
from .spatial import osmfish_allen_visp, starmap_915
from .staining import DEEPLIIF_PANELS, HEMIT_STAINS, deepliif, hemit
from .tcga import tcga_acc, tcga_brca

__all__ = [
    "ABSEQ_DONORS",
    "triana_bm_abseq",
    "DEEPLIIF_PANELS",
    "GENE_SET_LIBRARIES",
    "HEMIT_STAINS",
    "deepliif",
    "hemit",
    "MIBI_NON_PROTEIN",
    "dsb_adt_pbmc",
    "eccite_pbmc",
    "fetch_file",
    "HER2ST_SECTIONS",
    "her2st",
    "xenium_bone_marrow",
    "gene_sets",
    "imc_pancreas",
    "mibi_granuloma",
    "osmfish_allen_visp",
    "pbmc10k_protein",
    "read_gmt",
    "read_h5ad_safely",
    "sha256sum",
    "starmap_915",
    "tcga_acc",
    "tcga_brca",
]
