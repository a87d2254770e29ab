"""Real CITE-seq data sets (RNA + surface proteins), checked by sha256.

``eccite_pbmc`` is bundled with the package. The others are read from the project's shared
data folder (see :func:`pbmc10k_protein` for where it is looked for).
"""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ._fetch import fetch_file, read_h5ad_safely
from ._locate import DATA_DIR_ENV, locate_file

__all__ = ["eccite_pbmc", "pbmc10k_protein", "dsb_adt_pbmc", "triana_bm_abseq", "ABSEQ_DONORS", "DATA_DIR_ENV"]


_ECCITE = ("eccite_pbmc500.h5ad", "e0b59268fe78851ce05f9b87a2b62f56c7761e984021f85312bb49c0bfe37ff5")
_PBMC10K = ("pbmc10k_protein_200cells.h5ad", "512fe360bd1cc79821f67959cc47e19b92bb7edbbb9351da5d1e9d70b35102a2")
_ABSEQ = ("triana_bm_abseq.h5ad", "f034379b7f17cd6b4da71a7dff570606b094d29e9eb3290f7fa56fca286945b5")
_DSB_CELLS = ("dsb_adt_pbmc_cells.h5ad", "842f481358f6b356af5c9e4a7cf04cdcb58205dca7a604c398f2333c7d89450b")


def eccite_pbmc() -> AnnData:
    """ECCITE-seq PBMC, 500 cells (bundled; 2.3 MB).

    Peripheral blood mononuclear cells from the control sample of Mimitou et al. 2019
    (Nature Methods, GEO GSE126310), as shipped in the CiteFuse R package
    (SydneyBioX/CiteFuse @b6075864, ``data/CITEseq_example.rda``, GPL-3), converted to h5ad
    without changing values.

    Returns
    -------
    anndata.AnnData
        500 cells x 19,521 genes. ``X``: raw RNA UMI counts (CSR, float32);
        ``obsm["protein_expression"]``: DataFrame of 49 ADT raw counts (protein names as
        columns); ``obsm["hto_counts"]``: 4 hashtag counts; ``uns["source"]``: provenance.
        A new object on every call.

    Examples
    --------
    >>> adata = bd.datasets.eccite_pbmc()
    >>> adata.obsm["protein_expression"][["CD3", "CD4"]].head()
    """
    name, sha = _ECCITE
    with resources.as_file(resources.files(__package__).joinpath("_data").joinpath(name)) as path:
        return _read_known(fetch_file(path, sha))


def _read_known(path: Path) -> AnnData:
    """Read one of our sha256-checked files; its old h5ad layout warnings are not news."""
    from anndata import OldFormatWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OldFormatWarning)
        return read_h5ad_safely(path)


def pbmc10k_protein(path: str | os.PathLike | None = None) -> AnnData:
    """10x Genomics PBMC 10k with TotalSeq-B proteins, 200-cell subset.

    From scverse/scvi-tools test data (``tests/data/pbmc_10k_protein_v3.h5ad``, BSD-3).

    Parameters
    ----------
    path
        The file or the folder holding ``pbmc10k_protein_200cells.h5ad``. Default: the
        folder in the ``BIODIFFUSE_DATA_DIR`` environment variable (or its ``citeseq/``
        subfolder), else ``../shared/data/citeseq/`` relative to the working directory and
        to the repository root.

    Returns
    -------
    anndata.AnnData
        200 cells x 16,727 genes, raw RNA counts in ``X``; ``obsm["protein_expression"]``:
        DataFrame of 14 protein counts, columns from ``uns["protein_names"]``, index
        ``obs_names``.

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message lists where it looked).
    ValueError
        If its sha256 does not match.

    Examples
    --------
    >>> adata = bd.datasets.pbmc10k_protein()          # or pbmc10k_protein("path/to/folder")
    >>> adata.obsm["protein_expression"].columns[:5]
    """
    name, sha = _PBMC10K
    adata = _read_known(fetch_file(locate_file("citeseq", name, path), sha))
    prot = adata.obsm["protein_expression"]
    if not isinstance(prot, pd.DataFrame):
        names = [str(n) for n in np.asarray(adata.uns["protein_names"])]
        adata.obsm["protein_expression"] = pd.DataFrame(np.asarray(prot), index=adata.obs_names.copy(), columns=names)
    return adata


def dsb_adt_pbmc(path: str | os.PathLike | None = None) -> AnnData:
    """CITE-seq ADT counts only (no RNA): 2,872 PBMC cells x 87 proteins.

    Kotliarov et al. 2020 (Nature Medicine), as shipped in niaid/dsb @aab21279
    (``data/*.rda``, CC0), converted to h5ad without changing values.

    Parameters
    ----------
    path
        The file or the folder holding ``dsb_adt_pbmc_cells.h5ad``; default search as in
        :func:`pbmc10k_protein`.

    Returns
    -------
    anndata.AnnData
        2,872 cells x 87 proteins, raw ADT counts in ``X``.

    Examples
    --------
    >>> adt = bd.datasets.dsb_adt_pbmc()
    >>> bd.models.MCD.setup_anndata(adt)                # any-subset protein imputation
    """
    name, sha = _DSB_CELLS
    return _read_known(fetch_file(locate_file("citeseq", name, path), sha))


#: Donors of :func:`triana_bm_abseq` (young: BM1-3, aged: Aged1-2), the unit to split by.
ABSEQ_DONORS = ("BM1", "BM2", "BM3", "Aged1", "Aged2")


def triana_bm_abseq(path: str | os.PathLike | None = None) -> AnnData:
    """Abseq single-cell proteo-genomics of human bone marrow: 7,514 cells, 422 mRNAs + 97 proteins.

    Triana et al. 2021 (Nature Immunology), five donors (:data:`ABSEQ_DONORS`; a sixth, Aged3,
    is withheld from the file), as shipped in HsiaoChiLiao/EXTruvIIInb @eaeb835
    (``data/triana_data.rda``, GPL-3), converted to h5ad without changing values. The mRNA
    panel is targeted (422 genes); 76 of them are on the Xenium bone-marrow panel
    (:func:`biodiffuse.datasets.xenium_bone_marrow`), so it also serves as that panel's
    single-cell reference. Split by ``obs["donor"]``, not by cell, when you evaluate.

    Parameters
    ----------
    path
        The file or the folder holding ``triana_bm_abseq.h5ad``; default search as in
        :func:`pbmc10k_protein`.

    Returns
    -------
    anndata.AnnData
        7,514 cells x 422 genes, raw mRNA counts in ``X`` (sparse);
        ``obsm["protein_expression"]``: DataFrame of 97 raw antibody counts (protein names as
        columns, e.g. ``"CD19"``, ``"CD34"``, ``"HLA.ABC"``); ``obs``: ``donor``,
        ``age_group``, ``cell_type_broad`` (12 classes present), ``cell_type`` (the authors'
        fine annotation); ``uns["source"]``.

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message lists where it looked).
    ValueError
        If its sha256 does not match.

    Examples
    --------
    >>> adata = bd.datasets.triana_bm_abseq()
    >>> test = adata[adata.obs["donor"] == "Aged2"].copy()   # one donor held out
    >>> train = adata[adata.obs["donor"] != "Aged2"].copy()
    """
    name, sha = _ABSEQ
    return _read_known(fetch_file(locate_file("citeseq", name, path), sha))
