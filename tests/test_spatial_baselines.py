"""Spatial-gene baselines (kNN, SpaGE): interface, leak checks, hand-checked pieces, real data."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from biodiffuse.baselines.spatial import (
    SPATIAL_BASELINES,
    _spage_weights,
    fit_predict_knn,
    shared_log_normalized,
)
from biodiffuse.data import log_normalize
from biodiffuse.metrics import pcc_per_gene

from conftest import SHARED_DATA

OSMFISH = SHARED_DATA / "spatial" / "osmfish_allen_visp_33genes"


def _toy(rng: np.random.Generator, n_sp: int = 30, n_sc: int = 60):
    known = [f"k{i}" for i in range(6)]
    test = ["t0", "t1"]
    sc = AnnData(
        rng.poisson(5.0, size=(n_sc, 8)).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_sc)]),
        var=pd.DataFrame(index=known + test),
    )
    sp = AnnData(
        rng.poisson(5.0, size=(n_sp, 6)).astype(np.float32),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n_sp)]),
        var=pd.DataFrame(index=known),
    )
    return sp, sc, test


@pytest.mark.parametrize("name", list(SPATIAL_BASELINES))
def test_output_shape_names_and_inputs_untouched(name, rng):
    sp, sc, test = _toy(rng)
    sp_x, sc_x = sp.X.copy(), sc.X.copy()
    pred = SPATIAL_BASELINES[name](sp, sc, ["t1", "t0"], seed=0, k=10)
    assert isinstance(pred, pd.DataFrame)
    assert list(pred.index) == list(sp.obs_names)
    assert list(pred.columns) == ["t1", "t0"]
    assert np.isfinite(pred.to_numpy()).all() and (pred.to_numpy() >= 0).all()
    np.testing.assert_array_equal(sp.X, sp_x)
    np.testing.assert_array_equal(sc.X, sc_x)
    pd.testing.assert_frame_equal(pred, SPATIAL_BASELINES[name](sp, sc, ["t1", "t0"], seed=0, k=10))


@pytest.mark.parametrize("name", list(SPATIAL_BASELINES))
def test_bad_inputs(name, rng):
    sp, sc, test = _toy(rng)
    f = SPATIAL_BASELINES[name]
    leaky = AnnData(sc.X[:30].copy(), var=sc.var.copy())
    with pytest.raises(ValueError, match="in sp"):
        f(leaky, sc, test)
    with pytest.raises(ValueError, match="missing from sc"):
        f(sp, sc, ["t0", "nope"])
    with pytest.raises(ValueError, match="missing from sc"):
        f(sp, sc[:, ["k0", "k1", "t0", "t1"]].copy(), test)
    with pytest.raises(ValueError, match="empty"):
        f(sp, sc, [])
    bad = sp.copy()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        f(bad, sc, test)
    bad.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        f(bad, sc, test)
    with pytest.raises(ValueError, match="k must"):
        f(sp, sc, test, k=0)


def test_shared_log_normalized_values_and_dropped_reference_cells():
    sp = AnnData(np.array([[1.0, 3.0], [0.0, 2.0]], dtype=np.float32), var=pd.DataFrame(index=["a", "b"]))
    sc = AnnData(
        np.array([[2.0, 2.0, 5.0], [0.0, 9.0, 0.0], [1.0, 0.0, 1.0]], dtype=np.float32),
        obs=pd.DataFrame(index=["r0", "r1", "r2"]),
        var=pd.DataFrame(index=["a", "t", "b"]),
    )
    with pytest.warns(UserWarning, match="1 reference cell"):
        sp_known, sc_known, sc_test, known = shared_log_normalized(sp, sc, ["t"])
    assert known == ["a", "b"]
    # Library sizes over the known genes only: sp 4 and 2; reference 7 (r0) and 2 (r2); r1 dropped.
    np.testing.assert_allclose(sp_known.to_numpy(), np.log1p(np.array([[1 / 4, 3 / 4], [0, 1]]) * 1e4), rtol=1e-6)
    assert list(sc_known.index) == ["r0", "r2"]
    np.testing.assert_allclose(sc_test["t"].to_numpy(), np.log1p(np.array([2 / 7, 0.0]) * 1e4), rtol=1e-6)
    np.testing.assert_allclose(sc_known.loc["r2"].to_numpy(), np.log1p(np.array([0.5, 0.5]) * 1e4), rtol=1e-6)


def test_knn_with_one_neighbour_copies_the_matching_reference_cell():
    # Two reference profiles; each spatial cell is a multiple of one of them.
    sc = AnnData(
        np.array([[10, 0, 0, 3], [0, 10, 0, 7], [5, 5, 10, 1]], dtype=np.float32),
        obs=pd.DataFrame(index=["r0", "r1", "r2"]),
        var=pd.DataFrame(index=["a", "b", "c", "t"]),
    )
    sp = AnnData(np.array([[0, 20, 0], [20, 0, 0]], dtype=np.float32), var=pd.DataFrame(index=["a", "b", "c"]))
    pred = fit_predict_knn(sp, sc, ["t"], k=1)
    np.testing.assert_allclose(pred["t"].to_numpy(), np.log1p(np.array([7 / 10, 3 / 10]) * 1e4), rtol=1e-6)


def test_spage_weights_by_hand():
    dist = np.array([[0.2, 0.3, 0.5], [0.5, 1.2, 1.5], [1.1, 1.2, 1.3], [0.0, 0.0, 0.0]])
    w = _spage_weights(dist)
    # (1 - d / sum d) / (n - 1) with sum d = 1, n = 3.
    np.testing.assert_allclose(w[0], [0.4, 0.35, 0.25])
    np.testing.assert_allclose(w[1], [1.0, 0.0, 0.0])  # one neighbour below 1
    np.testing.assert_allclose(w[2], [1 / 3] * 3)  # none below 1: uniform
    np.testing.assert_allclose(w[3], [1 / 3] * 3)  # all identical: uniform
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


@pytest.mark.skipif(not OSMFISH.is_dir(), reason=f"shared data folder {OSMFISH} not present")
def test_real_osmfish_beats_shuffled_cells():
    from biodiffuse.datasets import osmfish_allen_visp

    sp, sc = osmfish_allen_visp(OSMFISH)
    genes = list(sp.var_names)
    test = genes[::5]  # 7 held-out genes
    known = [g for g in genes if g not in test]
    counts = np.asarray(sp.X, dtype=np.float64)
    lib = counts[:, [genes.index(g) for g in known]].sum(axis=1)
    truth = pd.DataFrame(
        log_normalize(counts[:, [genes.index(g) for g in test]], lib), index=sp.obs_names, columns=test
    )
    sp_known = sp[:, known].copy()
    # Measured: kNN 0.108, kNN-quantile 0.196, SpaGE 0.193; shuffled cell order about 0.00 (|r| < 0.01).
    floors = {"kNN": 0.07, "kNN-quantile": 0.14, "SpaGE": 0.14}
    scores = {}
    for name, f in SPATIAL_BASELINES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pred = f(sp_known, sc, test, seed=0)
        shuffled = pred.sample(frac=1.0, random_state=0).set_axis(pred.index)
        r = np.nanmean(pcc_per_gene(truth, pred))
        r_shuffled = np.nanmean(pcc_per_gene(truth, shuffled))
        assert r > floors[name], (name, r)
        assert r - r_shuffled > floors[name] - 0.03, (name, r, r_shuffled)
        scores[name] = r
    # quantile alignment of the known genes onto the reference helps the same kNN
    assert scores["kNN-quantile"] > scores["kNN"] + 0.01, scores


def _clusters():
    """Reference: 3 clusters of 4 cells, identical known genes within a cluster (so every cell's
    nearest neighbours are its cluster mates, at distance 0), a test gene that varies within
    clusters; spatial cells copy cluster 0's or cluster 2's known genes."""
    known_counts = np.array([[20, 1, 1], [1, 20, 1], [1, 1, 20]], dtype=np.float32)
    test_counts = np.array([[0, 3, 6, 9], [2, 2, 8, 8], [5, 1, 0, 4]], dtype=np.float32)
    X = np.column_stack([np.repeat(known_counts, 4, axis=0), test_counts.reshape(-1)])
    sc = AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(12)]), var=pd.DataFrame(index=["a", "b", "c", "t"]))
    sp = AnnData(np.repeat(known_counts[[0, 2]], 10, axis=0), obs=pd.DataFrame(index=[f"s{i}" for i in range(20)]),
                 var=pd.DataFrame(index=["a", "b", "c"]))
    y = log_normalize(test_counts.reshape(-1, 1), np.repeat(known_counts.sum(axis=1), 4)).reshape(3, 4)
    return sp, sc, y


def test_knn_draws_neighbours_are_the_neighbours_targets(rng):
    from biodiffuse.baselines import fit_predict_knn_draws

    sp, sc, y = _clusters()
    out = fit_predict_knn_draws(sp, sc, ["t"], kind="neighbours", n_samples=200, k=4, seed=1)
    pd.testing.assert_frame_equal(out["mean"], fit_predict_knn(sp, sc, ["t"], k=4))
    draws = out["draws"]
    assert draws.shape == (20, 200, 1)
    for cell, cluster in ((0, 0), (15, 2)):
        np.testing.assert_allclose(np.unique(draws[cell, :, 0]), np.unique(y[cluster]), rtol=1e-6)
    assert not np.array_equal(draws, fit_predict_knn_draws(sp, sc, ["t"], n_samples=200, k=4, seed=2)["draws"])
    with pytest.raises(ValueError, match="kind"):
        fit_predict_knn_draws(sp, sc, ["t"], kind="conformal")
    with pytest.raises(ValueError, match="n_samples"):
        fit_predict_knn_draws(sp, sc, ["t"], n_samples=0)


def test_knn_draws_gaussian_uses_the_leave_one_out_residual_variance():
    from biodiffuse.baselines import fit_predict_knn_draws

    sp, sc, y = _clusters()
    # leave-one-out kNN (k = 3: the cell's three cluster mates) on the reference, by hand
    loo = np.array([[y[c, i] - np.delete(y[c], i).mean() for i in range(4)] for c in range(3)])
    sd = np.sqrt((loo**2).mean())
    out = fit_predict_knn_draws(sp, sc, ["t"], kind="gaussian", n_samples=5000, k=3, seed=0)
    noise = out["draws"] - out["mean"].to_numpy()[:, None, :]
    np.testing.assert_allclose(noise.std(), sd, rtol=0.02)


def test_knn_draws_gaussian_mean_is_knn_when_k_covers_the_reference():
    from biodiffuse.baselines import fit_predict_knn_draws

    sp, sc, _ = _clusters()
    out = fit_predict_knn_draws(sp, sc, ["t"], kind="gaussian", n_samples=3, k=50)  # k capped at the 12 cells
    pd.testing.assert_frame_equal(out["mean"], fit_predict_knn(sp, sc, ["t"], k=50))
