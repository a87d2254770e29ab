"""Per-gene spatial metrics (PCC, SSIM, RMSE, JS) and the Accuracy Score, on hand-sized inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr

from biodiffuse.metrics import (
    accuracy_score,
    js_per_gene,
    pcc_per_gene,
    rmse_per_gene,
    spatial_gene_metrics,
    ssim_per_gene,
)


def _frame(values, genes=("g1", "g2"), spots=("s1", "s2", "s3", "s4")) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values, dtype=float), index=list(spots), columns=list(genes))


def test_identical_vectors_are_perfect():
    x = _frame([[0, 1], [2, 5], [4, 0], [1, 3]])
    table = spatial_gene_metrics(x, x.copy())
    assert list(table.index) == ["g1", "g2"]
    assert list(table.columns) == ["PCC", "SSIM", "RMSE", "JS"]
    np.testing.assert_allclose(table["PCC"], 1.0)
    np.testing.assert_allclose(table["SSIM"], 1.0)
    np.testing.assert_allclose(table["RMSE"], 0.0, atol=1e-12)
    np.testing.assert_allclose(table["JS"], 0.0, atol=1e-12)


def test_small_example_against_direct_formulas():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[2.0], [1.0], [4.0], [3.0]])
    # PCC: deviations (-1.5,-.5,.5,1.5) and (-.5,-1.5,1.5,.5): sum of products 3, sum of squares 5 -> 0.6.
    np.testing.assert_allclose(pcc_per_gene(x, y), [0.6])
    np.testing.assert_allclose(pcc_per_gene(x, y), [pearsonr(x[:, 0], y[:, 0])[0]])
    # SSIM after dividing both by their max (4): means 0.625, variances 1.25/16, covariance 0.75/16.
    mu, var, cov = 0.625, 1.25 / 16, 0.75 / 16
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mu * mu + c1) * (2 * cov + c2) / ((2 * mu**2 + c1) * (2 * var + c2))
    np.testing.assert_allclose(ssim_per_gene(x, y), [expected])
    # RMSE of z-scores: sqrt(2 - 2 r) with population sd.
    np.testing.assert_allclose(rmse_per_gene(x, y), [np.sqrt(2 - 2 * 0.6)])
    # JS divergence, natural log: scipy's Jensen-Shannon distance squared.
    np.testing.assert_allclose(js_per_gene(x, y), [jensenshannon(x[:, 0] / 10, y[:, 0] / 10) ** 2])
    # and by hand: p = (.1,.2,.3,.4), q = (.2,.1,.4,.3)
    p, q = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.1, 0.4, 0.3])
    m = (p + q) / 2
    by_hand = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    np.testing.assert_allclose(js_per_gene(x, y), [by_hand])


def test_ssim_clips_negative_predictions_and_scale_invariance():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y_neg = np.array([[-5.0], [1.0], [2.0], [3.0]])
    # Clipping -5 at 0 gives y == x, so SSIM 1; a scaled copy is also 1 (max scaling).
    np.testing.assert_allclose(ssim_per_gene(x, y_neg), [1.0])
    np.testing.assert_allclose(ssim_per_gene(x, 7 * x), [1.0])
    # JS also clips: same distribution -> 0.
    np.testing.assert_allclose(js_per_gene(x, y_neg), [0.0], atol=1e-12)
    # Disjoint supports: JS = ln 2 (its maximum).
    a = np.array([[1.0], [1.0], [0.0], [0.0]])
    b = np.array([[0.0], [0.0], [1.0], [1.0]])
    np.testing.assert_allclose(js_per_gene(a, b), [np.log(2)])


def test_constant_vectors():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    y = np.array([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    table = spatial_gene_metrics(x, y)
    # Constant prediction: PCC undefined, RMSE = sqrt(mean z^2) = 1.
    assert np.isnan(table.loc[0, "PCC"])
    np.testing.assert_allclose(table.loc[0, "RMSE"], 1.0)
    # All-zero truth and prediction: PCC and JS undefined, SSIM 1, RMSE 0.
    assert np.isnan(table.loc[1, "PCC"]) and np.isnan(table.loc[1, "JS"])
    np.testing.assert_allclose(table.loc[1, "SSIM"], 1.0)
    np.testing.assert_allclose(table.loc[1, "RMSE"], 0.0)


def test_dataframes_are_aligned_by_name():
    x = _frame([[0, 1], [2, 5], [4, 0], [1, 3]])
    y = _frame([[1, 0], [3, 2], [0, 5], [2, 1]])
    shuffled = y.loc[["s3", "s1", "s4", "s2"], ["g2", "g1"]]
    pd.testing.assert_frame_equal(spatial_gene_metrics(x, y), spatial_gene_metrics(x, shuffled))
    # Array predictions take the DataFrame's gene names, matched by position.
    assert list(spatial_gene_metrics(x, y.to_numpy()).index) == ["g1", "g2"]


def test_bad_input_errors():
    x = _frame([[0, 1], [2, 5], [4, 0], [1, 3]])
    with pytest.raises(ValueError, match="columns"):
        spatial_gene_metrics(x, x.rename(columns={"g2": "other"}))
    with pytest.raises(ValueError, match="index"):
        spatial_gene_metrics(x, x.rename(index={"s1": "sX"}))
    with pytest.raises(ValueError, match="NaN"):
        pcc_per_gene(x, x.where(x > 0))
    with pytest.raises(ValueError, match="shapes"):
        ssim_per_gene(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="at least 2 spots"):
        rmse_per_gene(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="duplicated"):
        js_per_gene(x, x.set_axis(["g1", "g1"], axis=1))


def test_accuracy_score_ranks_three_methods():
    summary = pd.DataFrame(
        {
            "PCC": [0.5, 0.3, 0.5],
            "SSIM": [0.4, 0.2, 0.3],
            "RMSE": [0.9, 1.1, 1.0],
            "JS": [0.10, 0.20, 0.30],
        },
        index=["A", "B", "C"],
    )
    # PCC ranks (tie A/C): A 2.5, B 1, C 2.5; SSIM: A 3, B 1, C 2;
    # RMSE (low best): A 3, B 1, C 2; JS (low best): A 3, B 2, C 1.
    expected = pd.Series({"A": (2.5 + 3 + 3 + 3) / 4, "B": (1 + 1 + 1 + 2) / 4, "C": (2.5 + 2 + 2 + 1) / 4}, name="AS")
    pd.testing.assert_series_equal(accuracy_score(summary), expected)


def test_accuracy_score_errors():
    good = pd.DataFrame({"PCC": [0.5, 0.3], "SSIM": [0.4, 0.2], "RMSE": [0.9, 1.1], "JS": [0.1, 0.2]}, index=["A", "B"])
    with pytest.raises(ValueError, match="JS"):
        accuracy_score(good.drop(columns="JS"))
    with pytest.raises(ValueError, match="PCC"):
        accuracy_score(good.assign(PCC=[np.nan, 0.3]))
    with pytest.raises(ValueError, match="no rows"):
        accuracy_score(good.iloc[:0])
