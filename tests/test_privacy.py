"""Privacy metrics of generations vs training data: energy distance, manifold precision/recall, DCR."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from biodiffuse.metrics import distance_to_closest_record, energy_distance, precision_recall_manifold

# ----------------------------------------------------------------------------- energy distance


def test_energy_distance_hand_values():
    # X = {0}, Y = {1}: 2*1 - 0 - 0
    assert energy_distance(np.array([[0.0]]), np.array([[1.0]])) == pytest.approx(2.0)
    # X = {0, 2}, Y = {1}: E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0 -> 2 - 1
    assert energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])) == pytest.approx(1.0)
    # 2-D, Euclidean: X = {(0,0)}, Y = {(3,4)} -> 2 * 5
    assert energy_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(10.0)


def test_energy_distance_matches_scipy_in_one_dimension(rng):
    x, y = rng.normal(size=40), rng.normal(0.7, 1.5, size=25)
    # scipy returns the square root of the (V-statistic) energy distance
    assert energy_distance(x[:, None], y[:, None]) == pytest.approx(stats.energy_distance(x, y) ** 2, rel=1e-10)


def test_energy_distance_identical_zero_and_grows_with_shift(rng):
    x = rng.normal(size=(200, 8))
    assert energy_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-10)
    y = rng.normal(size=(200, 8))
    values = [energy_distance(x, y + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] < 0.2  # same distribution: small
    assert np.all(np.diff(values) > 0)
    assert values[-1] > 2.0


def test_energy_distance_bad_input(rng):
    x = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="features"):
        energy_distance(x, rng.normal(size=(5, 4)))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(bad, x)
    with pytest.raises(ValueError, match="empty"):
        energy_distance(np.empty((0, 3)), x)


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_hand_values():
    real = np.array([[0.0], [1.0], [2.0]])  # k=1 radii: 1, 1, 1
    fake = np.array([[0.5], [10.0]])  # 0.5 inside, 10 outside; fake radii 9.5 cover every real point
    out = precision_recall_manifold(real, fake, k=1)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(1.0)
    assert out["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_precision_recall_identical_disjoint_and_collapsed(rng):
    real = rng.normal(size=(150, 4))
    same = precision_recall_manifold(real, real.copy(), k=5)
    assert same == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    far = precision_recall_manifold(real, real + 50.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # samples collapsed near the mean (the paper's unconditional Coherent Denoising) cover little of the data
    collapsed = precision_recall_manifold(real, 0.05 * rng.normal(size=(150, 4)), k=5)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2
    fresh = precision_recall_manifold(real, rng.normal(size=(150, 4)), k=5)
    assert fresh["f1"] > 0.6


def test_precision_recall_bad_k(rng):
    x = rng.normal(size=(5, 2))
    with pytest.raises(ValueError, match="k=5"):
        precision_recall_manifold(x, x, k=5)
    with pytest.raises(ValueError, match="positive integer"):
        precision_recall_manifold(x, x, k=0)


# ----------------------------------------------------------------------------- DCR


def test_dcr_hand_values():
    out = distance_to_closest_record(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
    assert out["synthetic_median"] == pytest.approx(1.0)
    assert out["holdout_median"] == pytest.approx(5.0)
    assert out["median_ratio"] == pytest.approx(0.2)
    assert out["frac_closer_to_train"] == 1.0
    assert out["n_exact_copies"] == 0


def test_dcr_copies_vs_fresh_samples(rng):
    train, holdout = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    copied = train[rng.choice(200, 100)] + 1e-3 * rng.normal(size=(100, 6))
    fresh = rng.normal(size=(100, 6))
    c = distance_to_closest_record(copied, train, holdout)
    f = distance_to_closest_record(fresh, train, holdout)
    assert c["median_ratio"] < 0.05 and 0.6 < f["median_ratio"] < 1.6
    assert c["frac_below_holdout_p05"] == 1.0 and f["frac_below_holdout_p05"] < 0.2
    assert c["frac_closer_to_train"] == 1.0 and 0.3 < f["frac_closer_to_train"] < 0.7
    exact = distance_to_closest_record(train[:10], train, holdout)
    assert exact["n_exact_copies"] == 10 and exact["synthetic_median"] == 0.0
    # exact distances also in many dimensions (no ||a||^2 - 2ab + ||b||^2 rounding)
    wide = 30.0 * rng.normal(size=(80, 150))
    assert distance_to_closest_record(wide[:40], wide, wide[40:] + 1.0)["n_exact_copies"] == 40


def test_dcr_bad_input(rng):
    x = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="holdout"):
        distance_to_closest_record(x, x, rng.normal(size=(5, 2)))
