"""Real spatial transcriptomics data sets (gene panels measured in place), checked by sha256.

Read from the project's shared data folder: ``spatial/<name>/`` under the folder in the
``BIODIFFUSE_DATA_DIR`` environment variable, else ``../shared/data/spatial/<name>/`` relative
to the working directory and to the repository root (or the folder given as ``path=``).
Both come from the benchmark collection of Li et al. 2022 (Nature Methods) as redistributed
by fdu-wangfeilab/stDiff (MIT), converted to h5ad without changing values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from anndata import AnnData

from ._fetch import fetch_file
from ._locate import locate_dir
from .citeseq import _read_known

__all__ = ["osmfish_allen_visp", "starmap_915"]

_OSMFISH_DIR = "osmfish_allen_visp_33genes"
_OSMFISH_SPATIAL = ("dataset2_spatial_33.h5ad", "087aa55460dfd6458c229d86b2bf218872403850847e0fd30f647e3b5abaf7e6")
_OSMFISH_REFERENCE = ("dataset2_seq_33.h5ad", "8e8281d58044f43664e0d650cbd3351238f9fb5eef3f962b97a2b319b5b97512")
_STARMAP_DIR = "starmap_like_915genes"
_STARMAP = ("dataset5_spatial_915.h5ad", "2e2d09491a59537c5c92b9ec7c2e4a36ba6bfeeb0395c99a3a1f66ca297b8671")

_OSMFISH_SOURCE = (
    "Li et al. 2022 (Nature Methods) benchmark dataset 2: osmFISH mouse somatosensory cortex "
    "(Codeluppi et al. 2018) with the Allen Institute VISp Smart-seq reference (Tasic et al. 2018), "
    "restricted to the 33 shared genes; via fdu-wangfeilab/stDiff @09fa3ee : datasets/ (MIT), "
    "converted to h5ad without changing values"
)
_STARMAP_SOURCE = (
    "Li et al. 2022 (Nature Methods) benchmark dataset 5: imaging-based spatial transcriptomics, "
    "645 cells x 915 genes with x/y coordinates (its scRNA-seq reference is not included); via "
    "fdu-wangfeilab/stDiff @39b4bac0 : datasets/sp/ (MIT), converted to h5ad without changing values"
)


def _read(folder: Path, entry: tuple[str, str], source: str) -> AnnData:
    name, sha = entry
    target = folder / name
    if not target.is_file():
        raise FileNotFoundError(f"{name} not found in {folder}.")
    adata = _read_known(fetch_file(target, sha))
    adata.X = np.asarray(adata.X, dtype=np.float32)
    adata.uns["source"] = source
    return adata


def _add_spatial(adata: AnnData) -> AnnData:
    adata.obsm["spatial"] = adata.obs[["x_coord", "y_coord"]].to_numpy(dtype=np.float64)
    return adata


def osmfish_allen_visp(path: str | os.PathLike | None = None) -> tuple[AnnData, AnnData]:
    """osmFISH somatosensory cortex (33 genes) and its Allen VISp Smart-seq reference.

    Benchmark dataset 2 of Li et al. 2022 (Nature Methods): osmFISH of the mouse
    somatosensory cortex (Codeluppi et al. 2018, 3,405 cells) and the Allen Institute
    primary visual cortex (VISp) Smart-seq reference (Tasic et al. 2018, 5,613 cells), both
    restricted to their 33 shared genes, as redistributed by fdu-wangfeilab/stDiff
    @09fa3ee (``datasets/``, MIT) and converted to h5ad without changing values.

    Parameters
    ----------
    path
        The ``osmfish_allen_visp_33genes`` folder; default search as described in this module.

    Returns
    -------
    spatial : anndata.AnnData
        3,405 cells x 33 genes, raw counts in ``X`` (dense float32); ``obs["x_coord"]``,
        ``obs["y_coord"]`` and the same as a float64 array in ``obsm["spatial"]``;
        ``uns["source"]``: provenance.
    reference : anndata.AnnData
        5,613 cells x the same 33 genes in the same order, raw counts in ``X``;
        ``uns["source"]``.

    Raises
    ------
    FileNotFoundError
        If the folder or a file is not found (the message lists where it looked).
    ValueError
        If a file's sha256 does not match.

    Examples
    --------
    >>> adata_sp, adata_sc = bd.datasets.osmfish_allen_visp()
    >>> adata_sp.shape, adata_sc.shape
    ((3405, 33), (5613, 33))
    >>> sp = adata_sp[:, adata_sp.var_names != "Gad2"].copy()     # hold Gad2 out of the panel
    >>> bd.models.SpaDiT.setup_anndata(sp, reference=adata_sc)
    """
    folder = locate_dir("spatial", _OSMFISH_DIR, path)
    spatial = _add_spatial(_read(folder, _OSMFISH_SPATIAL, _OSMFISH_SOURCE + " (osmFISH part)"))
    reference = _read(folder, _OSMFISH_REFERENCE, _OSMFISH_SOURCE + " (Allen VISp Smart-seq part)")
    return spatial, reference


def starmap_915(path: str | os.PathLike | None = None) -> AnnData:
    """Imaging-based spatial transcriptomics, 645 cells x 915 genes (Li et al. 2022 dataset 5).

    Benchmark dataset 5 of Li et al. 2022 (Nature Methods), as redistributed by
    fdu-wangfeilab/stDiff @39b4bac0 (``datasets/sp/``, MIT) and converted to h5ad without
    changing values. Its scRNA-seq reference is not included: use it for within-panel gene
    imputation (hold out genes, predict them from the others).

    Parameters
    ----------
    path
        The ``starmap_like_915genes`` folder; default search as described in this module.

    Returns
    -------
    anndata.AnnData
        645 cells x 915 genes, raw counts in ``X`` (dense float32); ``obs["x_coord"]``,
        ``obs["y_coord"]`` and ``obsm["spatial"]`` (float64, n x 2); ``uns["source"]``.

    Raises
    ------
    FileNotFoundError
        If the folder or file is not found.
    ValueError
        If the file's sha256 does not match.

    Examples
    --------
    >>> adata = bd.datasets.starmap_915()
    >>> adata.shape
    (645, 915)
    >>> adata.obsm["spatial"][:3]
    """
    folder = locate_dir("spatial", _STARMAP_DIR, path)
    return _add_spatial(_read(folder, _STARMAP, _STARMAP_SOURCE))
