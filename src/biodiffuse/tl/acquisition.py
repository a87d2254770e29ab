"""Counterfactual variance of synthesised completions, and data-acquisition curves.

A patient lacking a modality can be completed K times by a generative model; feeding
the K completions to a downstream predictor shows how much the prediction depends on
the missing data. Patients whose prediction changes most are the ones for whom
measuring the modality is worth most (the Coherent Denoising paper's "counterfactual
variance score"). :func:`acquisition_curve` checks that claim: acquiring the real
modality in the order of the score should raise the metric faster than acquiring it in
random order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..diffusion import check_count

__all__ = ["acquisition_curve", "area_under_curve", "counterfactual_spread"]


def counterfactual_spread(
    outputs: np.ndarray,
    task: Literal["classification", "survival"] = "classification",
    kind: Literal["disagreement", "variance"] | None = None,
) -> np.ndarray:
    """Per-patient spread of a predictor's output over K synthesised completions.

    The array-level score; :func:`~biodiffuse.tl.counterfactual_variance` computes it from a
    trained model and a MuData.

    Parameters
    ----------
    outputs
        Predictor outputs on K completions of the same n patients: ``(K, n, n_classes)``
        class probabilities for classification, ``(K, n)`` risk scores for survival.
        K must be at least 2.
    task
        ``"classification"`` or ``"survival"``.
    kind
        Classification: ``"disagreement"`` (default; as the authors' code) = fraction of
        the K completions whose predicted class (arg-max) differs from the most frequent
        predicted class (ties go to the lower class index), in ``[0, 1 - 1/K]``; or
        ``"variance"`` = mean over classes of the variance (ddof = 0) over K of the
        probabilities. Survival: ``"variance"`` (the only choice) = sample variance
        (ddof = 1) of the risk over the K completions, which is half the mean squared
        difference between the risks of two distinct completions (the authors' score);
        the order of patients is the same.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``; higher = the prediction depends more on the missing modality.

    Raises
    ------
    ValueError
        On wrong dimensions for the task, K < 2, an empty array, NaN / inf, or an
        unknown ``kind``.

    Examples
    --------
    >>> draws = model.sample(test, target="protein", n_samples=10)["features"]   # (K, n, n_proteins)
    >>> outputs = np.stack([bd.tl.predict_output(clf, {**test_blocks, "protein": d}) for d in draws])
    >>> spread = bd.tl.counterfactual_spread(outputs, "classification")           # (n,) in [0, 0.9]
    >>> risk_spread = bd.tl.counterfactual_spread(risks, "survival")              # risks: (K, n)
    """
    arr = np.asarray(outputs, dtype=np.float64)
    if task not in ("classification", "survival"):
        raise ValueError(f"task must be 'classification' or 'survival', got {task!r}.")
    want = 3 if task == "classification" else 2
    if arr.ndim != want:
        shape = "(K, n, n_classes)" if want == 3 else "(K, n)"
        raise ValueError(f"outputs must be {shape} for task={task!r}, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"outputs is empty (shape {arr.shape}).")
    if arr.shape[0] < 2:
        raise ValueError(f"outputs has K={arr.shape[0]} completion(s); the spread needs at least 2.")
    if not np.isfinite(arr).all():
        raise ValueError(f"outputs contains {int((~np.isfinite(arr)).sum())} NaN / inf value(s).")
    if task == "survival":
        if kind not in (None, "variance"):
            raise ValueError(f"kind={kind!r} is not available for survival; use 'variance'.")
        return arr.var(axis=0, ddof=1)
    kind = kind or "disagreement"
    if kind == "variance":
        return arr.var(axis=0, ddof=0).mean(axis=1)
    if kind != "disagreement":
        raise ValueError(f"kind must be 'disagreement' or 'variance', got {kind!r}.")
    k, n, c = arr.shape
    pred = arr.argmax(axis=2)  # (K, n)
    counts = np.zeros((n, c), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n), (k, n)), pred), 1)
    majority = counts.argmax(axis=1)
    return (pred != majority[None, :]).mean(axis=0)


def _informed_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score; equal scores in random order."""
    return np.lexsort((rng.permutation(scores.shape[0]), -scores))


def acquisition_curve(
    y_true: Any,
    pred_real: np.ndarray,
    pred_synth: np.ndarray,
    scores: np.ndarray,
    metric: Callable[[Any, np.ndarray], float],
    fractions: Sequence[float] | np.ndarray | None = None,
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Metric of the downstream predictions as the real modality is acquired patient by patient.

    Every patient starts with the prediction made from synthesised data
    (``pred_synth``); acquiring the real modality for a patient replaces its prediction
    by ``pred_real``. Informed order: descending ``scores`` (e.g.
    :func:`counterfactual_spread`), ties in random order; random order: ``n_random``
    random permutations.

    Parameters
    ----------
    y_true
        Whatever ``metric`` takes as truth (labels, or a ``(time, event)`` tuple); passed
        through unchanged.
    pred_real, pred_synth
        Predictions per patient with the real / synthesised modality: arrays of the same
        shape whose first axis is the patient (labels, risks, or ``(n, n_classes)``
        probabilities).
    scores
        ``(n,)`` acquisition priority; higher is acquired first.
    metric
        ``metric(y_true, predictions) -> float``, e.g.
        ``lambda y, p: f1_score(y, p, average="macro")``.
    fractions
        Fractions of patients acquired, in ``[0, 1]`` and increasing; ``round(f * n)``
        patients each. Default: 0, 0.1, ..., 1.
    n_random
        Random permutations for the baseline (at least 2, for its standard deviation).
    seed
        Seeds the permutations and the tie-breaking of equal scores.

    Returns
    -------
    pandas.DataFrame
        ``fraction``, ``n_acquired``, ``informed``, ``random_mean``, ``random_sd``
        (ddof = 1), one row per fraction.

    Raises
    ------
    ValueError
        On shape mismatches, NaN scores, fractions outside ``[0, 1]`` or not increasing,
        or ``n_random < 2``.

    Examples
    --------
    >>> from sklearn.metrics import balanced_accuracy_score
    >>> spread = bd.tl.counterfactual_spread(outputs, "classification")     # outputs: (K, n, n_classes)
    >>> curve = bd.tl.acquisition_curve(y_test, pred_real, pred_synth, spread, balanced_accuracy_score, n_random=50)
    >>> bd.tl.area_under_curve(curve)
    """
    real = np.asarray(pred_real)
    synth = np.asarray(pred_synth)
    if real.ndim == 0 or real.shape[0] == 0:
        raise ValueError("pred_real is empty.")
    if real.shape != synth.shape:
        raise ValueError(f"pred_real and pred_synth have different shapes: {real.shape} vs {synth.shape}.")
    n = real.shape[0]
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) (one per patient), got {sc.shape}.")
    if not np.isfinite(sc).all():
        raise ValueError(f"scores contains {int((~np.isfinite(sc)).sum())} NaN / inf value(s).")
    fr = np.linspace(0, 1, 11) if fractions is None else np.asarray(fractions, dtype=np.float64).ravel()
    if fr.size == 0:
        raise ValueError("fractions is empty.")
    if not np.isfinite(fr).all() or fr.min() < 0 or fr.max() > 1:
        raise ValueError("fractions must lie in [0, 1].")
    if (np.diff(fr) <= 0).any():
        raise ValueError("fractions must be strictly increasing.")
    check_count(n_random, "n_random", minimum=2)
    counts = np.rint(fr * n).astype(int)
    rng = np.random.default_rng(seed)

    def curve(order: np.ndarray) -> np.ndarray:
        out = np.empty(fr.shape[0])
        for i, m in enumerate(counts):
            preds = synth.copy()
            preds[order[:m]] = real[order[:m]]
            out[i] = float(metric(y_true, preds))
        return out

    informed = curve(_informed_order(sc, rng))
    randoms = np.stack([curve(rng.permutation(n)) for _ in range(int(n_random))])
    return pd.DataFrame(
        {
            "fraction": fr,
            "n_acquired": counts,
            "informed": informed,
            "random_mean": randoms.mean(axis=0),
            "random_sd": randoms.std(axis=0, ddof=1),
        }
    )


def area_under_curve(curve: pd.DataFrame) -> dict[str, float]:
    """Trapezoid area under the informed and the mean random acquisition curve.

    Parameters
    ----------
    curve
        Output of :func:`acquisition_curve`. With fractions spanning ``[0, 1]`` the area
        is the metric averaged over acquisition budgets; otherwise it covers only the
        fractions given.

    Returns
    -------
    dict
        ``informed``, ``random`` (area under ``random_mean``) and ``difference``
        (informed - random).

    Examples
    --------
    >>> curve = bd.tl.acquisition_curve(y_test, pred_real, pred_synth, spread, balanced_accuracy_score)
    >>> auc = bd.tl.area_under_curve(curve)
    >>> auc["informed"], auc["random"], auc["difference"]
    """
    needed = {"fraction", "informed", "random_mean"}
    if not needed.issubset(curve.columns):
        raise ValueError(f"curve lacks columns {sorted(needed - set(curve.columns))}; pass acquisition_curve's output.")
    if len(curve) < 2:
        raise ValueError("curve needs at least two fractions for an area.")
    from scipy.integrate import trapezoid

    x = curve["fraction"].to_numpy(float)
    inf = float(trapezoid(curve["informed"].to_numpy(float), x))
    rnd = float(trapezoid(curve["random_mean"].to_numpy(float), x))
    return {"informed": inf, "random": rnd, "difference": inf - rnd}
