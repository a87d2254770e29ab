"""Imputation metrics against scipy, NaN rules, input validation and DataFrame alignment."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from biodiffuse.metrics import imputation_metrics, pearson_per_cell, pearson_per_channel, rmse


@pytest.fixture()
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.normal(size=(60, 7))
    p = 0.6 * y + rng.normal(scale=0.8, size=y.shape) + rng.normal(size=7)
    return y, p


def test_per_channel_matches_scipy(pair):
    y, p = pair
    r = pearson_per_channel(y, p)
    assert r.shape == (7,)
    expected = [pearsonr(y[:, j], p[:, j])[0] for j in range(7)]
    np.testing.assert_allclose(r, expected, rtol=1e-10, atol=1e-12)


def test_per_cell_matches_scipy(pair):
    y, p = pair
    r = pearson_per_cell(y, p)
    assert r.shape == (60,)
    expected = [pearsonr(y[i], p[i])[0] for i in range(60)]
    np.testing.assert_allclose(r, expected, rtol=1e-10, atol=1e-12)


def test_rmse_and_summary(pair):
    y, p = pair
    assert rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert rmse(y, y) == 0.0
    m = imputation_metrics(y, p)
    assert set(m) == {"r_p", "r_c", "rmse", "n_channels_undefined"}
    assert m["r_p"] == pytest.approx(np.mean([pearsonr(y[:, j], p[:, j])[0] for j in range(7)]))
    assert m["r_c"] == pytest.approx(np.mean([pearsonr(y[i], p[i])[0] for i in range(60)]))
    assert m["rmse"] == pytest.approx(rmse(y, p))
    assert m["n_channels_undefined"] == 0
    perfect = imputation_metrics(y, 2 * y + 1)
    assert perfect["r_p"] == pytest.approx(1.0) and perfect["r_c"] == pytest.approx(1.0)


def test_constant_columns_give_nan_without_warnings(pair):
    y, p = pair
    y, p = y.copy(), p.copy()
    y[:, 1] = 0.1  # constant truth (0.1 is not exact in binary: the mean is not exactly 0.1)
    p[:, 4] = 3.0  # constant prediction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pearson_per_channel(y, p)
        m = imputation_metrics(y, p)
        mean_pred = imputation_metrics(y, np.tile(y.mean(0), (60, 1)))
    assert np.isnan(r[[1, 4]]).all()
    assert np.isfinite(np.delete(r, [1, 4])).all()
    assert m["n_channels_undefined"] == 2
    assert m["r_p"] == pytest.approx(np.nanmean(r))
    # a per-channel-mean prediction is constant in every channel: r_p undefined, not a crash
    assert np.isnan(mean_pred["r_p"]) and mean_pred["n_channels_undefined"] == 7
    assert np.isfinite(mean_pred["rmse"])


def test_constant_cell_gives_nan(pair):
    y, p = pair
    p = p.copy()
    p[3] = 1.0
    r = pearson_per_cell(y, p)
    assert np.isnan(r[3]) and np.isfinite(np.delete(r, 3)).all()


def test_inputs_not_modified(pair):
    y, p = pair
    y0, p0 = y.copy(), p.copy()
    imputation_metrics(y, p)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(p, p0)


@pytest.mark.parametrize("func", [pearson_per_channel, pearson_per_cell, rmse, imputation_metrics])
def test_bad_inputs_raise(func, pair):
    y, p = pair
    with pytest.raises(ValueError, match="shape"):
        func(y, p[:, :-1])
    with pytest.raises(ValueError, match="empty"):
        func(np.zeros((0, 3)), np.zeros((0, 3)))
    bad = p.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        func(y, bad)
    bad[2, 2] = np.inf
    with pytest.raises(ValueError, match="inf"):
        func(bad, y)
    with pytest.raises(ValueError, match="2-D"):
        func(y[:, 0], p[:, 0])


def test_dataframes_align_columns_by_name(pair):
    y, p = pair
    cols = [f"P{j}" for j in range(7)]
    y_df = pd.DataFrame(y, columns=cols)
    p_df = pd.DataFrame(p, columns=cols)
    shuffled = p_df[cols[::-1]]
    np.testing.assert_allclose(pearson_per_channel(y_df, shuffled), pearson_per_channel(y, p))
    np.testing.assert_allclose(pearson_per_cell(y_df, shuffled), pearson_per_cell(y, p))
    assert rmse(y_df, shuffled) == pytest.approx(rmse(y, p))
    # positional when only one side is a DataFrame
    np.testing.assert_allclose(pearson_per_channel(y_df, p), pearson_per_channel(y, p))


def test_dataframe_name_mismatch_raises(pair):
    y, p = pair
    y_df = pd.DataFrame(y, columns=[f"P{j}" for j in range(7)])
    p_df = pd.DataFrame(p, columns=[f"P{j}" for j in range(6)] + ["other"])
    with pytest.raises(ValueError, match="other"):
        imputation_metrics(y_df, p_df)
    dup = pd.DataFrame(p, columns=["P0"] * 7)
    with pytest.raises(ValueError, match="duplicated"):
        pearson_per_channel(y_df, dup)
