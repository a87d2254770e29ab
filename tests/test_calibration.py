"""Proper scores and calibration of sample-based predictive distributions (metrics/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from biodiffuse import metrics as M


def test_crps_of_a_point_mass_is_the_absolute_error(rng):
    y = rng.normal(size=(40, 3))
    point = rng.normal(size=(40, 3))
    draws = np.repeat(point[:, None, :], 5, axis=1)
    np.testing.assert_allclose(M.crps(y, draws), np.abs(y - point).mean(0), rtol=1e-12)


def test_crps_of_many_draws_matches_the_gaussian_closed_form(rng):
    n, s = 400, 2000
    mu, sd = rng.normal(size=(n, 2)), np.array([0.5, 2.0])
    y = mu + sd * rng.normal(size=(n, 2))
    draws = mu[:, None, :] + sd * rng.normal(size=(n, s, 2))
    np.testing.assert_allclose(M.crps(y, draws), M.crps_gaussian(y, mu, sd), rtol=0.01)
    # the textbook value at the mean of N(0, 1): (sqrt(2) - 1) / sqrt(pi)
    np.testing.assert_allclose(M.crps_gaussian(np.zeros((1, 1)), np.zeros((1, 1)), 1.0), [(np.sqrt(2) - 1) / np.sqrt(np.pi)])


def test_crps_prefers_the_true_distribution_to_a_too_narrow_one(rng):
    y = rng.normal(size=(500, 2))
    right = rng.normal(size=(500, 100, 2))
    narrow = 0.2 * rng.normal(size=(500, 100, 2))
    assert (M.crps(y, right) < M.crps(y, narrow)).all()


def test_fair_scores_are_those_of_the_distribution_whatever_the_number_of_draws(rng):
    """The ensemble's CRPS grows as the draws get fewer (and rewards too narrow draws); the fair
    one estimates the distribution's score, (sqrt(2) - 1) / sqrt(pi) for N(0, 1) at its mean."""
    y = np.zeros((20000, 1))
    truth = (np.sqrt(2) - 1) / np.sqrt(np.pi)
    for s in (4, 10):
        draws = rng.normal(size=(20000, s, 1))
        np.testing.assert_allclose(M.crps(y, draws, fair=True), [truth], rtol=0.02)
        np.testing.assert_allclose(M.crps(y, draws), [truth + np.sqrt(1 / np.pi) / s], rtol=0.02)  # + E|X - X'| / (2 s)
        np.testing.assert_allclose(M.energy_score(y, draws, fair=True).mean(), M.crps(y, draws, fair=True)[0], rtol=1e-10)
    # calibrated against 0.8 times too narrow draws, 10 of each, the truth drawn from N(0, 1):
    # the ensemble score prefers the narrow ones, the fair score the calibrated ones
    y = rng.normal(size=(40000, 1))
    right, narrow = rng.normal(size=(40000, 10, 1)), 0.75 * rng.normal(size=(40000, 10, 1))
    assert M.crps(y, narrow)[0] < M.crps(y, right)[0]
    assert M.crps(y, right, fair=True)[0] < M.crps(y, narrow, fair=True)[0]
    with pytest.raises(TypeError, match="fair must be True or False"):
        M.crps(y, right, fair="yes")
    # the sorted-draws formula is scoringrules' pairwise fair estimator
    import scoringrules as sr

    y, x = rng.normal(size=(30, 3)), rng.normal(size=(30, 7, 3))
    np.testing.assert_allclose(M.crps(y, x, fair=True), sr.crps_ensemble(y, x, m_axis=1, backend="numpy", estimator="fair").mean(0), rtol=1e-12)


def test_energy_score_is_crps_in_one_dimension_and_rewards_dependence(rng):
    y = rng.normal(size=(50, 1))
    draws = rng.normal(size=(50, 30, 1))
    np.testing.assert_allclose(M.energy_score(y, draws).mean(), M.crps(y, draws)[0], rtol=1e-10)

    # two strongly correlated channels: draws with the right correlation beat draws with the
    # right marginals but independent channels, which per-channel CRPS cannot tell apart
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    n, s = 2000, 60
    y = rng.multivariate_normal([0, 0], cov, size=n)
    joint = rng.multivariate_normal([0, 0], cov, size=(n, s))
    indep = rng.normal(size=(n, s, 2))
    assert M.energy_score(y, joint).mean() < M.energy_score(y, indep).mean() - 0.02
    np.testing.assert_allclose(M.crps(y, joint), M.crps(y, indep), rtol=0.03)


def test_coverage_is_nominal_when_calibrated_and_low_when_too_narrow(rng):
    n = 3000
    y = rng.normal(size=(n, 2))
    good = rng.normal(size=(n, 200, 2))
    cov = M.interval_coverage(y, good, levels=(0.5, 0.8, 0.9))
    assert list(cov.columns) == [0.5, 0.8, 0.9] and cov.shape == (2, 3)
    np.testing.assert_allclose(cov.to_numpy(), np.tile([0.5, 0.8, 0.9], (2, 1)), atol=0.03)
    narrow = M.interval_coverage(y, 0.5 * good)
    assert (narrow[0.9] < 0.75).all()
    # the Gaussian closed form agrees with the sample version
    gauss = M.gaussian_coverage(y, np.zeros_like(y), 1.0)
    np.testing.assert_allclose(gauss.to_numpy(), cov.to_numpy(), atol=0.03)


def test_coverage_of_few_draws_is_nominal_by_pit_and_biased_low_by_quantiles(rng):
    # a calibrated model sampled 10 times: the distribution's intervals cover their level (PIT),
    # while the span of the 10 draws covers less (order statistics: about 0.41 / 0.66 / 0.76)
    n = 20000
    y = rng.normal(size=(n, 1))
    draws = rng.normal(size=(n, 10, 1))
    pit = M.interval_coverage(y, draws).to_numpy().ravel()
    np.testing.assert_allclose(pit, [0.5, 0.8, 0.9], atol=0.015)
    quant = M.interval_coverage(y, draws, method="quantile").to_numpy().ravel()
    np.testing.assert_allclose(quant, [0.41, 0.66, 0.76], atol=0.02)
    s = M.score_draws(y, draws, energy=False)
    assert [s["coverage50"], s["coverage80"], s["coverage90"]] == pytest.approx(list(pit))
    q = M.score_draws(y, draws, energy=False, coverage="quantile")
    assert [q["coverage50"], q["coverage80"], q["coverage90"]] == pytest.approx(list(quant))
    # 4 draws (the image benchmark's): the PIT still reads 0.9; too narrow draws still read low
    four = rng.normal(size=(n, 4, 1))
    assert M.interval_coverage(y, four, levels=(0.9,)).iloc[0, 0] == pytest.approx(0.9, abs=0.015)
    assert M.interval_coverage(y, 0.5 * four, levels=(0.9,)).iloc[0, 0] < 0.86  # half the spread
    with pytest.raises(ValueError, match="method"):
        M.interval_coverage(y, draws, method="quantiles")
    with pytest.raises(ValueError, match="method"):
        M.score_draws(y, draws, coverage="exact")


def test_pit_is_uniform_when_calibrated_with_ties_and_u_shaped_when_too_narrow(rng):
    n = 2000
    y = rng.normal(size=(n, 1))
    pit = M.pit_values(y, rng.normal(size=(n, 49, 1)))
    assert pit.shape == (n, 1) and ((pit > 0) & (pit < 1)).all()
    assert stats.kstest(pit.ravel(), "uniform").pvalue > 0.01
    # all draws and all truths zero (e.g. a gene with no counts): the randomisation spreads them
    zeros = M.pit_values(np.zeros((n, 1)), np.zeros((n, 9, 1)))
    assert stats.kstest(zeros.ravel(), "uniform").pvalue > 0.01
    narrow = M.pit_values(y, 0.3 * rng.normal(size=(n, 49, 1))).ravel()
    tails = ((narrow < 0.1) | (narrow > 0.9)).mean()
    assert tails > 0.5  # a uniform PIT puts 0.2 there


def test_gaussian_samples_shape_and_moments(rng):
    mu = rng.normal(size=(3, 2))
    draws = M.gaussian_samples(mu, np.array([1.0, 3.0]), 20000, seed=1)
    assert draws.shape == (3, 20000, 2)
    np.testing.assert_allclose(draws.mean(1), mu, atol=0.06)
    np.testing.assert_allclose(draws.std(1), np.tile([1.0, 3.0], (3, 1)), rtol=0.03)


def test_score_draws_agrees_with_the_single_scores_and_skips_unmeasured_entries(rng):
    y = rng.normal(size=(60, 4))
    draws = 0.6 * y[:, None, :] + rng.normal(size=(60, 12, 4))
    s = M.score_draws(y, draws)
    assert s["crps"] == pytest.approx(M.crps(y, draws).mean())
    assert s["energy_score"] == pytest.approx(M.energy_score(y, draws).mean())
    assert s["r_p"] == pytest.approx(np.mean([stats.pearsonr(y[:, j], draws[:, :, j].mean(1))[0] for j in range(4)]))
    cov = M.interval_coverage(y, draws).mean()
    assert [s["coverage50"], s["coverage80"], s["coverage90"]] == pytest.approx(list(cov))
    # NaN truths: left out entry by entry; the energy score keeps only complete cells
    partial = y.copy()
    partial[:15, 1] = np.nan
    t = M.score_draws(partial, draws, levels=(0.8,))
    per_channel = [M.crps(y[:, [0]], draws[:, :, [0]])[0], M.crps(y[15:, [1]], draws[15:, :, [1]])[0],
                   *M.crps(y[:, 2:], draws[:, :, 2:])]
    assert t["crps"] == pytest.approx(np.mean(per_channel))
    assert t["energy_score"] == pytest.approx(M.energy_score(y[15:], draws[15:]).mean())
    assert t["crps_fair"] == pytest.approx(np.mean([M.crps(y[:, [0]], draws[:, :, [0]], fair=True)[0],
                                                    M.crps(y[15:, [1]], draws[15:, :, [1]], fair=True)[0],
                                                    *M.crps(y[:, 2:], draws[:, :, 2:], fair=True)]))
    assert t["energy_score_fair"] == pytest.approx(M.energy_score(y[15:], draws[15:], fair=True).mean())
    assert set(t) == {"crps", "crps_fair", "energy_score", "energy_score_fair", "r_p", "coverage80"}
    assert not {"energy_score", "energy_score_fair"} & set(M.score_draws(y, draws, energy=False))
    with pytest.raises(ValueError, match="no measured"):
        M.score_draws(np.full((3, 2), np.nan), draws[:3, :, :2])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.crps(np.zeros((4, 2)), np.zeros((4, 3, 3))), "do not match"),
        (lambda: M.crps(np.zeros((4, 2)), np.zeros((5, 3, 2))), "do not match"),
        (lambda: M.crps(np.zeros((4, 2)), np.zeros((4, 1, 2))), "at least 2 draws"),
        (lambda: M.crps(np.zeros(4), np.zeros((4, 3, 1))), "2-D"),
        (lambda: M.energy_score(np.zeros((4, 2)), np.zeros((4, 3))), "3-D"),
        (lambda: M.crps(np.full((2, 1), np.nan), np.zeros((2, 3, 1))), "NaN"),
        (lambda: M.crps(np.zeros((2, 1)), np.full((2, 3, 1), np.inf)), "NaN or inf"),
        (lambda: M.interval_coverage(np.zeros((2, 1)), np.zeros((2, 3, 1)), levels=(0.5, 1.0)), "levels"),
        (lambda: M.crps_gaussian(np.zeros((2, 1)), np.zeros((2, 1)), 0.0), "positive"),
        (lambda: M.crps_gaussian(np.zeros((2, 1)), np.zeros((3, 1)), 1.0), "shape of y_true"),
        (lambda: M.gaussian_coverage(np.zeros((2, 2)), np.zeros((2, 2)), -1.0), "positive"),
        (lambda: M.gaussian_samples(np.zeros((2, 2)), 1.0, 1), "n_samples"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
