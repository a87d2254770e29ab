"""Bundled and shared CITE-seq data sets, sha256 checks and file lookup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from biodiffuse.datasets import (
    ABSEQ_DONORS,
    _locate,
    citeseq,
    dsb_adt_pbmc,
    eccite_pbmc,
    fetch_file,
    pbmc10k_protein,
    read_h5ad_safely,
    triana_bm_abseq,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIODIFFUSE_DATA_DIR", ROOT.parent / "shared" / "data"))
CITESEQ = SHARED_DATA / "citeseq"
needs_shared = pytest.mark.skipif(
    not (CITESEQ / "pbmc10k_protein_200cells.h5ad").is_file(), reason=f"shared data not found at {CITESEQ}"
)


def test_eccite_pbmc_shapes_and_names():
    a = eccite_pbmc()
    assert a.shape == (500, 19521)
    assert sparse.issparse(a.X)
    assert a.var_names.is_unique and not any(g.startswith("hg19_") for g in a.var_names[:50])
    prot = a.obsm["protein_expression"]
    assert isinstance(prot, pd.DataFrame) and prot.shape == (500, 49)
    assert {"CD3", "CD4", "CD8", "CD14", "CD19"} <= set(prot.columns)
    assert prot.index.equals(a.obs_names)
    x = a.X[:50].toarray()
    assert (x >= 0).all() and np.allclose(x, np.round(x)), "X must hold raw counts"
    assert "Mimitou" in a.uns["source"]


def test_eccite_pbmc_returns_independent_objects():
    a = eccite_pbmc()
    a.obsm["protein_expression"].iloc[0, 0] = -1.0
    assert eccite_pbmc().obsm["protein_expression"].iloc[0, 0] >= 0


def test_bundled_file_and_provenance_present():
    data = Path(citeseq.__file__).parent / "_data"
    assert (data / "eccite_pbmc500.h5ad").is_file()
    text = (data / "PROVENANCE.txt").read_text()
    assert "GPL-3" in text and "CiteFuse" in text


def test_fetch_file_local(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"biodiffuse" * 1000)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    assert fetch_file(f, digest) == f
    assert fetch_file(str(f), "sha256:" + digest.upper()) == f
    assert fetch_file(f, None) == f


def test_fetch_file_sha_mismatch_names_file(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"abc")
    with pytest.raises(ValueError, match="blob.bin"):
        fetch_file(f, "0" * 64)
    with pytest.raises(ValueError, match="64 hex"):
        fetch_file(f, "abc")
    with pytest.raises(FileNotFoundError):
        fetch_file(tmp_path / "missing.bin", "0" * 64)


def test_read_h5ad_safely_roundtrip(tmp_path):
    import anndata as ad

    a = ad.AnnData(np.arange(6, dtype=np.float32).reshape(2, 3))
    a.write_h5ad(tmp_path / "x.h5ad")
    b = read_h5ad_safely(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(b.X, a.X)


@needs_shared
def test_pbmc10k_protein_named_columns():
    a = pbmc10k_protein(CITESEQ)
    prot = a.obsm["protein_expression"]
    assert a.n_obs == 200
    assert isinstance(prot, pd.DataFrame) and prot.shape == (200, 14)
    assert list(prot.columns) == [str(n) for n in a.uns["protein_names"]]
    assert "CD3_TotalSeqB" in prot.columns
    assert prot.index.equals(a.obs_names)
    # the file itself works as path too
    assert pbmc10k_protein(CITESEQ / "pbmc10k_protein_200cells.h5ad").shape == a.shape


@needs_shared
def test_default_lookup_env_var_and_dsb(monkeypatch):
    monkeypatch.setenv(citeseq.DATA_DIR_ENV, str(SHARED_DATA))
    assert pbmc10k_protein().n_obs == 200
    assert dsb_adt_pbmc().shape == (2872, 87)


@needs_shared
def test_triana_bm_abseq_shapes_donors_and_proteins():
    a = triana_bm_abseq()
    assert a.shape == (7514, 422)
    prot = a.obsm["protein_expression"]
    assert prot.shape == (7514, 97) and list(prot.index) == list(a.obs_names)
    assert {"CD19", "CD34", "CD3"} <= set(prot.columns)
    assert tuple(sorted(a.obs["donor"].unique())) == tuple(sorted(ABSEQ_DONORS))
    assert a.obs["donor"].value_counts()["BM3"] == 2224
    # counts: non-negative integers, and B cells carry far more CD19 antibody than T cells
    assert float(a.X.min()) >= 0 and float(prot.to_numpy().min()) >= 0
    b = prot["CD19"][a.obs["cell_type_broad"] == "Mature and memory B cells"].median()
    t = prot["CD19"][a.obs["cell_type_broad"] == "CD8+ T cells"].median()
    assert b > 5 * max(t, 1)
    # a new object on every call: editing one leaves the next untouched
    a.obsm["protein_expression"].iloc[0, 0] = -1.0
    assert triana_bm_abseq().obsm["protein_expression"].iloc[0, 0] >= 0


@needs_shared
def test_sha_checked_for_shared_files(tmp_path):
    src = CITESEQ / "pbmc10k_protein_200cells.h5ad"
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        pbmc10k_protein(tmp_path)


def test_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(citeseq.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(_locate, "repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        pbmc10k_protein()
    assert citeseq.DATA_DIR_ENV in str(err.value)
    with pytest.raises(FileNotFoundError, match="given"):
        pbmc10k_protein(tmp_path / "given")
