"""Real public data sets (bundled or read from a data folder) and sha256-checked fetching.

Imaging loaders (:func:`mibi_granuloma`, :func:`imc_pancreas`) need spatialdata."""

from ._fetch import fetch_file, read_h5ad_safely, sha256sum
from .citeseq import dsb_adt_pbmc, eccite_pbmc, pbmc10k_protein
from .imaging import MIBI_NON_PROTEIN, imc_pancreas, mibi_granuloma

__all__ = [
    "MIBI_NON_PROTEIN",
    "dsb_adt_pbmc",
    "eccite_pbmc",
    "fetch_file",
    "imc_pancreas",
    "mibi_granuloma",
    "pbmc10k_protein",
    "read_h5ad_safely",
    "sha256sum",
]
