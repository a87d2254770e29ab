"""Real public data sets (bundled or read from a data folder) and sha256-checked fetching."""

from ._fetch import fetch_file, read_h5ad_safely, sha256sum
from .citeseq import dsb_adt_pbmc, eccite_pbmc, pbmc10k_protein

__all__ = ["dsb_adt_pbmc", "eccite_pbmc", "fetch_file", "pbmc10k_protein", "read_h5ad_safely", "sha256sum"]
