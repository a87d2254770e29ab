"""The invertible Yeo-Johnson + percentile normaliser."""

from __future__ import annotations

import numpy as np
import pytest

from biodiffuse.data import ChannelNormalizer


def counts(rng: np.random.Generator) -> np.ndarray:
    return rng.negative_binomial(3, 0.05, size=(400, 6)).astype(float)


def test_round_trip_and_percentiles(rng) -> None:
    x = counts(rng)
    n = ChannelNormalizer().fit(x)
    z = n.transform(x)
    np.testing.assert_allclose(np.percentile(z, [1, 99], axis=0), [[0] * 6, [1] * 6], atol=1e-9)
    np.testing.assert_allclose(n.inverse_transform(z), x, atol=1e-8)
    again = ChannelNormalizer.from_dict(n.to_dict())
    np.testing.assert_allclose(again.transform(x), z)


def test_nan_is_ignored_in_fit_and_kept(rng) -> None:
    x = counts(rng)
    x[:50, 2] = np.nan
    n = ChannelNormalizer().fit(x)
    z = n.transform(x)
    assert np.isnan(z[:50, 2]).all() and np.isfinite(z[50:, 2]).all()
    ref = ChannelNormalizer().fit(x[50:, 2:3])
    np.testing.assert_allclose(z[50:, 2], ref.transform(x[50:, 2:3])[:, 0])


def test_inverse_of_wild_values_stays_finite_and_in_range(rng) -> None:
    x = counts(rng)
    n = ChannelNormalizer().fit(x)
    out = n.inverse_transform(np.array([[1e6] * 6, [-1e6] * 6]))
    assert np.isfinite(out).all()
    assert (out >= x.min(axis=0)).all() and (out <= x.max(axis=0)).all()


def test_fit_only_on_given_rows_and_errors(rng) -> None:
    x = counts(rng)
    a = ChannelNormalizer().fit(x[:200])
    x2 = x.copy()
    x2[200:] *= 10
    b = ChannelNormalizer().fit(x2[:200])
    np.testing.assert_allclose(a.transform(x[:5]), b.transform(x[:5]))
    with pytest.raises(ValueError, match="2-D"):
        a.transform(x[0])
    with pytest.raises(ValueError, match="channels"):
        a.transform(x[:, :3])
    with pytest.raises(ValueError, match="inf"):
        ChannelNormalizer().fit(np.where(x > 100, np.inf, x))
    with pytest.raises(RuntimeError, match="not fitted"):
        ChannelNormalizer().transform(x)
