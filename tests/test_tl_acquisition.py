"""Counterfactual variance and acquisition curves (biodiffuse.tl.acquisition)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biodiffuse.tl import acquisition_curve, area_under_curve, counterfactual_spread


def _onehot(classes: list[list[int]], n_classes: int = 3) -> np.ndarray:
    """(K, n) class indices -> (K, n, n_classes) one-hot 'probabilities'."""
    idx = np.asarray(classes).T  # given per patient; transpose to (K, n)
    return np.eye(n_classes)[idx]


# ----------------------------------------------------------------------------- counterfactual variance


def test_disagreement_hand_values():
    # per patient, the predicted class of each of K = 4 completions
    outputs = _onehot([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 2, 2], [0, 0, 1, 1]])
    got = counterfactual_spread(outputs, "classification")
    # majority 0 / 1 / 2 / tie -> lower index 0
    np.testing.assert_allclose(got, [0.0, 0.25, 0.5, 0.5])


def test_disagreement_uses_argmax_of_soft_probabilities():
    outputs = np.array([[[0.6, 0.4]], [[0.45, 0.55]], [[0.7, 0.3]]])  # K=3, n=1: classes 0, 1, 0
    assert counterfactual_spread(outputs, "classification")[0] == pytest.approx(1 / 3)


def test_probability_variance_hand_values():
    outputs = np.array([[[1.0, 0.0], [0.3, 0.7]], [[0.0, 1.0], [0.3, 0.7]]])  # K=2, n=2, C=2
    # patient 0: each class 1 and 0 -> variance 0.25 per class; patient 1: identical -> 0
    np.testing.assert_allclose(counterfactual_spread(outputs, "classification", kind="variance"), [0.25, 0.0])


def test_survival_variance_is_half_mean_pairwise_squared_difference():
    risks = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])  # K=3, n=2
    got = counterfactual_spread(risks, "survival")
    np.testing.assert_allclose(got, [1.0, 0.0])
    # the authors' score: mean over distinct pairs of (r_i - r_j)^2 = (1 + 4 + 1) / 3 = 2
    pairs = [(risks[i, 0] - risks[j, 0]) ** 2 for i in range(3) for j in range(3) if i != j]
    assert np.mean(pairs) == pytest.approx(2 * got[0])


def test_counterfactual_spread_bad_input():
    with pytest.raises(ValueError, match=r"\(K, n, n_classes\)"):
        counterfactual_spread(np.zeros((3, 4)), "classification")
    with pytest.raises(ValueError, match=r"\(K, n\)"):
        counterfactual_spread(np.zeros((3, 4, 2)), "survival")
    with pytest.raises(ValueError, match="at least 2"):
        counterfactual_spread(np.zeros((1, 4, 2)), "classification")
    with pytest.raises(ValueError, match="NaN"):
        counterfactual_spread(np.array([[np.nan, 1.0], [1.0, 1.0]]), "survival")
    with pytest.raises(ValueError, match="kind"):
        counterfactual_spread(np.zeros((2, 4)), "survival", kind="disagreement")
    with pytest.raises(ValueError, match="kind"):
        counterfactual_spread(np.zeros((2, 4, 2)), "classification", kind="entropy")
    with pytest.raises(ValueError, match="task"):
        counterfactual_spread(np.zeros((2, 4)), "regression")


# ----------------------------------------------------------------------------- acquisition curves


def _accuracy(y, p):
    return float(np.mean(np.asarray(y) == np.asarray(p)))


@pytest.fixture()
def forty_percent_wrong(rng):
    n = 100
    y = rng.integers(0, 3, n)
    synth = y.copy()
    wrong = rng.choice(n, 40, replace=False)
    synth[wrong] = (y[wrong] + 1) % 3
    return y, y.copy(), synth


def test_curve_endpoints_and_informed_beats_random(forty_percent_wrong):
    y, real, synth = forty_percent_wrong
    scores = (synth != y).astype(float)  # an oracle score: the true error
    curve = acquisition_curve(y, real, synth, scores, _accuracy, n_random=20, seed=0)
    assert list(curve.columns) == ["fraction", "n_acquired", "informed", "random_mean", "random_sd"]
    assert curve["n_acquired"].tolist() == list(range(0, 101, 10))
    first, last = curve.iloc[0], curve.iloc[-1]
    assert first["informed"] == _accuracy(y, synth) == pytest.approx(0.6)
    assert first["random_mean"] == pytest.approx(_accuracy(y, synth))
    assert last["informed"] == _accuracy(y, real) == 1.0
    assert last["random_mean"] == pytest.approx(1.0)
    assert first["random_sd"] == pytest.approx(0.0, abs=1e-12) and last["random_sd"] == pytest.approx(0.0, abs=1e-12)
    # informed: 0.6 + min(f, 0.4); the 40 wrong patients are acquired first
    np.testing.assert_allclose(curve["informed"], 0.6 + np.minimum(curve["fraction"], 0.4))
    auc = area_under_curve(curve)
    assert auc["informed"] == pytest.approx(0.92)  # 0.6 + 0.08 + 0.24, kink on a grid point
    assert auc["random"] == pytest.approx(0.8, abs=0.02)  # expected 0.6 + 0.4 f
    assert auc["difference"] == pytest.approx(auc["informed"] - auc["random"])


def test_curve_with_uninformative_scores_matches_random(forty_percent_wrong):
    y, real, synth = forty_percent_wrong
    curve = acquisition_curve(y, real, synth, np.zeros(100), _accuracy, n_random=20, seed=1)
    auc = area_under_curve(curve)
    assert abs(auc["difference"]) < 0.03  # all-tied scores: a random order too


def test_curve_probabilities_and_tuple_truth(rng):
    from lifelines.utils import concordance_index

    n = 30
    time, event = rng.uniform(1, 100, n), rng.integers(0, 2, n)
    event[0] = 1
    real, synth = -time + rng.normal(0, 1, n), rng.normal(size=n)

    def c_index(y, risk):
        return concordance_index(y[0], -risk, y[1])

    curve = acquisition_curve((time, event), real, synth, np.abs(real - synth), c_index, n_random=3)
    assert curve["informed"].iloc[0] == pytest.approx(c_index((time, event), synth))
    assert (
        curve["informed"].iloc[-1] == pytest.approx(c_index((time, event), real)) and c_index((time, event), real) > 0.9
    )
    # rows of (n, n_classes) probabilities are swapped whole
    probs_real, probs_synth = np.eye(2)[np.zeros(n, int)], np.eye(2)[np.ones(n, int)]
    f1 = acquisition_curve(
        np.zeros(n),
        probs_real,
        probs_synth,
        rng.normal(size=n),
        lambda y, p: _accuracy(y, p.argmax(1)),
        fractions=[0, 0.5, 1],
        n_random=2,
    )
    np.testing.assert_allclose(f1["informed"], [0.0, 0.5, 1.0])


def test_curve_is_seeded(forty_percent_wrong):
    y, real, synth = forty_percent_wrong
    a = acquisition_curve(y, real, synth, np.zeros(100), _accuracy, n_random=4, seed=3)
    b = acquisition_curve(y, real, synth, np.zeros(100), _accuracy, n_random=4, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_curve_bad_input(forty_percent_wrong):
    y, real, synth = forty_percent_wrong
    s = np.zeros(100)
    with pytest.raises(ValueError, match="shapes"):
        acquisition_curve(y, real, synth[:50], s, _accuracy)
    with pytest.raises(ValueError, match="scores"):
        acquisition_curve(y, real, synth, s[:50], _accuracy)
    with pytest.raises(ValueError, match="NaN"):
        acquisition_curve(y, real, synth, np.full(100, np.nan), _accuracy)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acquisition_curve(y, real, synth, s, _accuracy, fractions=[0, 1.5])
    with pytest.raises(ValueError, match="increasing"):
        acquisition_curve(y, real, synth, s, _accuracy, fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="n_random"):
        acquisition_curve(y, real, synth, s, _accuracy, n_random=1)


def test_area_under_curve_hand_value():
    curve = pd.DataFrame({"fraction": [0, 0.5, 1], "informed": [0.0, 1.0, 1.0], "random_mean": [0.0, 0.5, 1.0]})
    assert area_under_curve(curve) == {"informed": 0.75, "random": 0.5, "difference": 0.25}
    with pytest.raises(ValueError, match="random_mean"):
        area_under_curve(curve.drop(columns="random_mean"))
