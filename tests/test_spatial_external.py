"""External spatial-gene baselines (Tangram, gimVI, stDiff): shared interface, checks, small runs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from conftest import SHARED_DATA

from biodiffuse.baselines.external import (
    EXTERNAL_SPATIAL_BASELINES,
    _prepare,
    _scale_to_lognorm,
    fit_predict_gimvi,
    fit_predict_stdiff,
    fit_predict_tangram,
)
from biodiffuse.data import log_normalize

OSMFISH = SHARED_DATA / "spatial" / "osmfish_allen_visp_33genes"
TEST_GENES = ["Gad2", "Cnr1", "Tbr1"]


def _toy() -> tuple[AnnData, AnnData]:
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(6)]
    sc = AnnData(rng.poisson(3.0, size=(20, 6)).astype(np.float32), var=pd.DataFrame(index=genes))
    sp = AnnData(rng.poisson(3.0, size=(10, 4)).astype(np.float32), var=pd.DataFrame(index=genes[:4]))
    return sp, sc


@pytest.fixture(scope="module")
def osmfish_small() -> tuple[AnnData, AnnData, np.ndarray]:
    """300 spatial cells (known genes only, one cell emptied) and 500 reference cells."""
    if not (OSMFISH / "dataset2_spatial_33.h5ad").exists():
        pytest.skip(f"osmFISH data not found under {OSMFISH}")
    import anndata as ad

    sp_all = ad.read_h5ad(OSMFISH / "dataset2_spatial_33.h5ad")
    sc_all = ad.read_h5ad(OSMFISH / "dataset2_seq_33.h5ad")
    rng = np.random.default_rng(0)
    sp_all = sp_all[np.sort(rng.choice(sp_all.n_obs, 300, replace=False))].copy()
    sc = sc_all[np.sort(rng.choice(sc_all.n_obs, 500, replace=False))].copy()
    known = [g for g in sp_all.var_names if g not in TEST_GENES]
    sp = sp_all[:, known].copy()
    sp.X[0] = 0.0  # a spatial cell without counts over the known genes must not break anything
    truth = log_normalize(sp_all[:, TEST_GENES].X, sp.X.sum(axis=1))
    return sp, sc, truth


def _mean_pearson(pred: pd.DataFrame, truth: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(pred[g], truth[:, i])[0, 1] for i, g in enumerate(TEST_GENES)]))


def test_scale_to_lognorm_by_hand() -> None:
    scale = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.05]])
    out = _scale_to_lognorm(scale, n_known=2)
    # test frequency / summed known frequency * 1e4: 0.5 / 0.5 and 0.05 / 0.2
    np.testing.assert_allclose(out[:, 0], np.log1p([1e4, 2.5e3]))


def test_prepare_matches_names_and_libraries() -> None:
    sp, sc = _toy()
    sc = sc[:, ["g5", "g3", "g0", "g4", "g2", "g1"]].copy()  # reference order differs
    inp = _prepare(sp, sc, ["g5", "g4"])
    assert inp.known == ["g0", "g1", "g2", "g3"]
    np.testing.assert_array_equal(inp.sc_counts, sc[:, ["g0", "g1", "g2", "g3", "g5", "g4"]].X)
    np.testing.assert_array_equal(inp.sc_library, sc[:, ["g0", "g1", "g2", "g3"]].X.sum(axis=1))
    np.testing.assert_array_equal(inp.sp_library, sp.X.sum(axis=1))


@pytest.mark.parametrize(
    ("test_genes", "match"),
    [
        (["g3", "g4"], "g3.*sp.var_names"),  # leak: a held-out gene is still in sp
        (["g4", "nope"], "absent from sc"),
        ([], "empty"),
        (["g4", "g4"], "repeats"),
    ],
)
def test_prepare_rejects_bad_genes(test_genes: list[str], match: str) -> None:
    sp, sc = _toy()
    with pytest.raises(ValueError, match=match):
        _prepare(sp, sc, test_genes)


def test_prepare_rejects_bad_inputs() -> None:
    sp, sc = _toy()
    with pytest.raises(TypeError, match="test_genes"):
        _prepare(sp, sc, "g4")
    with pytest.raises(ValueError, match="known.*absent from sc"):
        _prepare(sp, sc[:, ["g1", "g2", "g3", "g4", "g5"]].copy(), ["g4"])
    bad = sp.copy()
    bad.X[1, 2] = np.nan
    with pytest.raises(ValueError, match="sp.X.*NaN"):
        _prepare(bad, sc, ["g4"])
    bad = sc.copy()
    bad.X[0, 5] = -1.0
    with pytest.raises(ValueError, match="sc.X.*negative"):
        _prepare(sp, bad, ["g5"])
    with pytest.raises(ValueError, match="no cells"):
        _prepare(sp[:0].copy(), sc, ["g4"])


def test_stdiff_reports_why_it_is_unavailable() -> None:
    sp, sc = _toy()
    with pytest.raises(ImportError, match="stdiff-sc"):
        fit_predict_stdiff(sp, sc, ["g4"])
    assert set(EXTERNAL_SPATIAL_BASELINES) == {"Tangram", "gimVI", "stDiff"}
    assert EXTERNAL_SPATIAL_BASELINES["stDiff"] is fit_predict_stdiff


def test_tangram_small(osmfish_small: tuple[AnnData, AnnData, np.ndarray]) -> None:
    pytest.importorskip("tangram")
    sp, sc, truth = osmfish_small
    sp_before, sc_names = sp.X.copy(), list(sc.var_names)
    pred = fit_predict_tangram(sp, sc, TEST_GENES, num_epochs=100, seed=0)
    assert list(pred.columns) == TEST_GENES
    assert pred.index.equals(sp.obs_names)
    assert np.isfinite(pred.to_numpy()).all()
    # A weighted mean of reference cells stays within the reference's log-normalised range.
    known = list(sp.var_names)
    ref = log_normalize(sc[:, TEST_GENES].X, sc[:, known].X.sum(axis=1))
    assert (pred.to_numpy() >= ref.min(axis=0) - 1e-6).all()
    assert (pred.to_numpy() <= ref.max(axis=0) + 1e-6).all()
    # Same seed, same numbers; inputs untouched (Tangram lower-cases the names it is given).
    again = fit_predict_tangram(sp, sc, TEST_GENES, num_epochs=100, seed=0)
    np.testing.assert_allclose(pred.to_numpy(), again.to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sp.X, sp_before)
    assert list(sc.var_names) == sc_names
    # Better than a random or misaligned prediction (mean r ~ 0 +- 0.035 over 3 genes x 300
    # cells); 0.22 with these settings.
    assert _mean_pearson(pred, truth) > 0.12
    with pytest.raises(ValueError, match="sp.var_names"):
        fit_predict_tangram(sc[:, known + ["Gad2"]].copy(), sc, TEST_GENES, num_epochs=1)


def test_gimvi_small(osmfish_small: tuple[AnnData, AnnData, np.ndarray]) -> None:
    pytest.importorskip("scvi")
    sp, sc, _ = osmfish_small
    sp_before = sp.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = fit_predict_gimvi(sp, sc, TEST_GENES, max_epochs=5, seed=0)
    assert list(pred.columns) == TEST_GENES
    assert pred.index.equals(sp.obs_names)
    values = pred.to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()  # log1p of positive frequencies
    np.testing.assert_array_equal(sp.X, sp_before)
    leaky = sc[:300, list(sp.var_names) + ["Tbr1"]].copy()
    with pytest.raises(ValueError, match="Tbr1"):
        fit_predict_gimvi(leaky, sc, TEST_GENES, max_epochs=1)
