"""Missing-modality baselines, the R^2 / output-variance metrics, and the CV on real TCGA BRCA."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from sklearn.metrics import r2_score

from biodiffuse.baselines import cross_validate_modality, fit_predict_modality, summarize_folds
from biodiffuse.metrics import output_variance_fraction, r2_score_modality

TCGA = SHARED_DATA / "tcga"


def test_mean_baseline_by_hand():
    y = np.array([[1.0, 10.0], [3.0, 20.0]])
    pred = fit_predict_modality("mean", np.zeros((2, 1)), y, np.ones((3, 1)))
    np.testing.assert_array_equal(pred, [[2.0, 15.0]] * 3)


def test_knn_uses_nearest_patients():
    cond = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    y = np.array([[0.0], [0.0], [0.0], [4.0], [6.0]])
    pred = fit_predict_modality("knn", cond, y, np.array([[10.4], [0.9]]), n_neighbors=2)
    np.testing.assert_allclose(pred, [[5.0], [0.0]])
    # k larger than the training set: capped, every patient averaged.
    np.testing.assert_allclose(fit_predict_modality("knn", cond, y, np.array([[3.0]]), n_neighbors=50), [[2.0]])


def test_ridge_recovers_linear_map(rng):
    c = rng.normal(size=(60, 3))
    w = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]])
    y = c @ w + [1.0, -1.0]
    c_test = rng.normal(size=(10, 3))
    pred = fit_predict_modality("ridge", c, y, c_test)
    assert pred.shape == (10, 2)
    np.testing.assert_allclose(pred, c_test @ w + [1.0, -1.0], atol=1e-3)
    one = fit_predict_modality("ridge", c, y[:, :1], c_test)  # one target column stays 2-D
    assert one.shape == (10, 1)


def test_fit_predict_errors(rng):
    c, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="method"):
        fit_predict_modality("forest", c, y, c)
    with pytest.raises(ValueError, match="y_train has 4"):
        fit_predict_modality("ridge", c, y[:4], c)
    with pytest.raises(ValueError, match=r"cond_test has 1\."):
        fit_predict_modality("knn", c, y, c[:, :1])
    bad = c.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="cond_train contains 1 NaN"):
        fit_predict_modality("mean", bad, y, c)
    with pytest.raises(ValueError, match="n_neighbors"):
        fit_predict_modality("knn", c, y, c, n_neighbors=0)


def test_r2_by_hand_and_against_sklearn(rng):
    t = np.array([[1.0, 0.0], [3.0, 4.0]])  # column means 2, 2; SS 2 and 8
    p = np.array([[2.0, 0.0], [2.0, 3.0]])  # SSE 2 and 1
    assert r2_score_modality(t, p, kind="global") == pytest.approx(1 - 3 / 10)
    assert r2_score_modality(t, p, kind="per_feature") == pytest.approx((0.0 + (1 - 1 / 8)) / 2)
    assert r2_score_modality(t, t) == 1.0
    assert r2_score_modality(t, np.repeat(t.mean(0, keepdims=True), 2, 0)) == 0.0
    t, p = rng.normal(size=(20, 5)) * [1, 2, 3, 4, 5], rng.normal(size=(20, 5))
    assert r2_score_modality(t, p) == pytest.approx(r2_score(t, p, multioutput="variance_weighted"))
    assert r2_score_modality(t, p, kind="per_feature") == pytest.approx(r2_score(t, p))


def test_r2_errors():
    t = np.array([[1.0, 0.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="kind"):
        r2_score_modality(t, t, kind="mean")
    with pytest.raises(ValueError, match="different shapes"):
        r2_score_modality(t, t[:, :1])
    with pytest.raises(ValueError, match="at least 2"):
        r2_score_modality(t[:1], t[:1])
    with pytest.raises(ValueError, match="constant"):
        r2_score_modality(np.ones((3, 2)), np.zeros((3, 2)))


def test_output_variance_fraction_by_hand():
    samples = np.array([[[0.0], [1.0]], [[2.0], [1.0]]])  # K=2, n=2, d=1
    y = np.array([[0.0], [2.0]])
    # Across generations: variance 1 (patient 1) and 0 (patient 2), mean 0.5; data variance 1.
    assert output_variance_fraction(samples, y) == pytest.approx(0.5)
    assert output_variance_fraction(np.stack([y, y, y]), y) == 0.0
    with pytest.raises(ValueError, match="3-D"):
        output_variance_fraction(y, y)
    with pytest.raises(ValueError, match="K >= 2"):
        output_variance_fraction(samples[:1], y)
    with pytest.raises(ValueError, match="y_true has shape"):
        output_variance_fraction(samples, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="constant"):
        output_variance_fraction(samples, np.ones((2, 1)))


@pytest.mark.skipif(not (TCGA / "tcga_brca_mixomics_train.h5mu").is_file(), reason="shared TCGA data not found")
def test_ridge_beats_mean_on_real_brca_protein():
    from biodiffuse.datasets import tcga_brca

    brca = tcga_brca("train", path=TCGA)
    with pytest.raises(ValueError, match="also in conditions"):
        cross_validate_modality(brca, "protein", ["mrna", "protein"])
    with pytest.raises(ValueError, match="Unknown modality"):
        cross_validate_modality(brca, "protein", ["rna"])
    folds = cross_validate_modality(brca, "protein", ["mrna", "mirna"], latent_dim=32, cv=5, seed=0)
    assert len(folds) == 4 * 5 and set(folds["n_test"]) == {30}
    s = summarize_folds(folds)
    # Measured (PCA latents, 5-fold): latent R^2 ridge 0.055 vs mean -0.047; features 0.070 vs -0.047.
    for col in ("latent_r2_mean", "feature_r2_mean"):
        assert s.loc["ridge", col] > s.loc["mean", col] + 0.05, s
    assert s.loc["encoder", "latent_r2_mean"] == pytest.approx(1.0)
    assert s.loc["ridge", "feature_r2_mean"] < s.loc["encoder", "feature_r2_mean"]
    ridge, mean = (folds[folds["method"] == m]["latent_r2"].to_numpy() for m in ("ridge", "mean"))
    assert (ridge > mean).all()
