"""Proper scores and calibration of a predictive distribution given by samples (or a Gaussian).

A generative model predicts a distribution per cell, not only a point. These functions judge it
as one: the continuous ranked probability score per channel (CRPS), the energy score across
channels (it also rewards the right correlations between channels), the coverage of central
prediction intervals and probability-integral-transform (PIT) values. The scores themselves come
from `scoringrules <https://github.com/frazane/scoringrules>`_; this module fixes the shapes,
checks the input and turns the results into per-channel tables.

Shapes: ``y_true`` is ``(n, d)`` (cells x channels); ``samples`` is ``(n, s, d)`` (cells x draws
x channels), e.g. the stacked draws of a model's ``posterior(..., return_samples=True)`` or kNN
neighbours used as draws. Lower CRPS / energy score is better; a calibrated model's central
``q`` interval covers a fraction ``q`` of the truths and its PIT values are uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..diffusion import check_count

__all__ = [
    "crps",
    "crps_gaussian",
    "energy_score",
    "interval_coverage",
    "gaussian_coverage",
    "pit_values",
    "gaussian_samples",
    "score_draws",
]


def _truth(y_true: object) -> np.ndarray:
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"y_true must be 2-D (cells, channels), got shape {y.shape}.")
    if not np.isfinite(y).all():
        raise ValueError("y_true holds NaN or inf values; drop or fill them first.")
    return y


def _pair(y_true: object, samples: object) -> tuple[np.ndarray, np.ndarray]:
    y = _truth(y_true)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"samples must be 3-D (cells, draws, channels), got shape {x.shape}.")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[1]:
        raise ValueError(
            f"samples {x.shape} do not match y_true {y.shape}: expected ({y.shape[0]}, draws, {y.shape[1]})."
        )
    if x.shape[1] < 2:
        raise ValueError(f"need at least 2 draws per cell to score a distribution, got {x.shape[1]}.")
    if not np.isfinite(x).all():
        raise ValueError("samples hold NaN or inf values.")
    return y, x


def _gaussian(y_true: object, mean: object, sd: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(y, mean, sd)`` of independent Gaussian predictions, sd broadcast to ``y``'s shape."""
    y = _truth(y_true)
    mu = np.asarray(mean, dtype=np.float64)
    if mu.shape != y.shape:
        raise ValueError(f"mean {mu.shape} must have the shape of y_true {y.shape}.")
    try:
        s = np.broadcast_to(np.asarray(sd, dtype=np.float64), y.shape)
    except ValueError as err:
        raise ValueError(f"sd of shape {np.shape(sd)} does not broadcast to {y.shape}.") from err
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("sd must be positive and finite.")
    return y, mu, s


def _levels(levels: Sequence[float]) -> list[float]:
    out = [float(q) for q in levels]
    if not out or any(not 0.0 < q < 1.0 for q in out):
        raise ValueError(f"levels must lie in (0, 1), got {list(levels)}.")
    return out


def _check_fair(fair: Any) -> str:
    """The scoringrules estimator of ``fair`` for the energy score (a clear error unless it is a bool)."""
    if not isinstance(fair, (bool, np.bool_)):
        raise TypeError(f"fair must be True or False, got {fair!r}.")
    return "fair" if fair else "nrg"


def _crps_entries(y: np.ndarray, x: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS per entry of ``y`` (n, d) for draws ``x`` (n, s, d); ``fair``: of the distribution.

    The ensemble's score comes from scoringrules' sorting estimator (memory linear in ``s``).
    The fair one differs only in its spread term, ``E|X - X'| / 2`` over distinct pairs
    instead of all ``s ** 2``: it is the ensemble's score minus ``sum_{i,j} |x_i - x_j| /
    (2 s ** 2 (s - 1))``, and that sum is ``2 sum_k (2k - s - 1) x_(k)`` over the sorted draws."""
    import scoringrules as sr

    _check_fair(fair)
    ens = np.asarray(sr.crps_ensemble(y, x, m_axis=1, backend="numpy"), dtype=np.float64)
    if not fair:
        return ens
    s = x.shape[1]
    k = np.arange(1, s + 1, dtype=np.float64).reshape(1, s, *([1] * (x.ndim - 2)))
    pair_sum = 2.0 * ((2 * k - s - 1) * np.sort(x, axis=1)).sum(axis=1)  # sum over i, j of |x_i - x_j|
    return ens - pair_sum / (2.0 * s * s * (s - 1))


def crps(y_true: object, samples: object, *, fair: bool = False) -> np.ndarray:
    """Mean CRPS per channel of a sample-based predictive distribution.

    ``CRPS(F, y) = E|X - y| - E|X - X'| / 2`` with ``X, X'`` independent draws of ``F``. By
    default ``F`` is the empirical distribution of the ``s`` draws (the ensemble itself); it
    has the units of the data, and for a point prediction (all draws equal) it is the absolute
    error. That score favours ensembles narrower than the distribution they are drawn from:
    for calibrated draws of N(0, 1) its expectation is 0.290 with 10 draws and 0.375 with 4,
    against 0.234 for the distribution, and it is lowest for draws about 0.8 times too
    narrow at 10 draws. ``fair=True`` (Ferro 2014) estimates the score of the distribution the
    draws come from instead (``E|X - X'|`` over distinct pairs), unbiased for any number of
    draws: use it to compare models that can draw as many samples as wanted, or the same
    model with different numbers of draws.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values.
    samples
        ``(n, s, d)`` draws, ``s >= 2``.
    fair
        Score the distribution the draws come from (unbiased) rather than the ensemble.

    Returns
    -------
    numpy.ndarray
        ``(d,)`` CRPS averaged over cells (lower is better).

    Raises
    ------
    ValueError
        On shapes that do not match, fewer than 2 draws, or NaN / inf values.

    Examples
    --------
    >>> y = np.zeros((100, 3))
    >>> draws = np.random.default_rng(0).normal(size=(100, 50, 3))
    >>> bd.metrics.crps(y, draws).round(2)            # about 0.24 per channel: N(0, 1) as 50 draws
    >>> bd.metrics.crps(y, draws, fair=True).round(2) # about 0.23: N(0, 1) itself
    """
    _check_fair(fair)
    y, x = _pair(y_true, samples)
    return _crps_entries(y, x, bool(fair)).mean(axis=0)


def crps_gaussian(y_true: object, mean: object, sd: object) -> np.ndarray:
    """Mean CRPS per channel of independent Gaussian predictions (closed form).

    For baselines that give a mean and a standard deviation, e.g. ridge with its residual sd.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values.
    mean
        ``(n, d)`` predicted means.
    sd
        Predicted standard deviations, broadcastable to ``(n, d)`` (e.g. ``(d,)`` per channel);
        must be positive.

    Returns
    -------
    numpy.ndarray
        ``(d,)`` CRPS averaged over cells.

    Raises
    ------
    ValueError
        On shapes that do not match or a non-positive / non-finite sd.

    Examples
    --------
    >>> y = np.zeros((10, 2))
    >>> bd.metrics.crps_gaussian(y, np.zeros((10, 2)), 1.0).round(3)   # 0.234 = (sqrt(2) - 1) / sqrt(pi)
    """
    import scoringrules as sr

    y, mu, s = _gaussian(y_true, mean, sd)
    return np.asarray(sr.crps_normal(y, mu, s, backend="numpy"), dtype=np.float64).mean(axis=0)


def energy_score(y_true: object, samples: object, *, fair: bool = False) -> np.ndarray:
    """Energy score per cell: the multivariate CRPS across channels.

    ``ES(F, y) = E||X - y|| - E||X - X'|| / 2`` (Euclidean norms over the ``d`` channels). Unlike
    a per-channel CRPS it rewards getting the dependence between channels right (e.g. proteins
    that go together). Put the channels on comparable scales first (e.g. a model's normalised
    scale): the norm adds them up. ``fair``: as in :func:`crps`.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values.
    samples
        ``(n, s, d)`` draws, ``s >= 2``.
    fair
        Score the distribution the draws come from (unbiased) rather than the ensemble.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` energy score per cell (lower is better); report its mean.

    Raises
    ------
    ValueError
        As :func:`crps`.

    Examples
    --------
    >>> y = np.zeros((100, 5))
    >>> draws = np.random.default_rng(0).normal(size=(100, 40, 5))
    >>> bd.metrics.energy_score(y, draws).mean().round(2)
    """
    import scoringrules as sr

    estimator = _check_fair(fair)
    y, x = _pair(y_true, samples)
    return np.asarray(sr.es_ensemble(y, x, m_axis=1, v_axis=2, backend="numpy", estimator=estimator), dtype=np.float64)


def _pit(y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """Randomised PIT of checked ``y`` ``(n, d)`` under checked draws ``x`` ``(n, s, d)``."""
    below = (x < y[:, None, :]).sum(axis=1)
    ties = (x == y[:, None, :]).sum(axis=1)
    u = np.random.default_rng(seed).random(y.shape)
    return (below + u * (ties + 1)) / (x.shape[1] + 1)


def _covered(y: np.ndarray, x: np.ndarray, levels: Sequence[float], method: str, seed: int) -> dict[float, np.ndarray]:
    """``{q: (n, d) 0 / 1}``: is each value inside the central ``q`` interval (see :func:`interval_coverage`);
    the PIT is computed once for all levels."""
    if method == "pit":
        pit = _pit(y, x, seed)
        return {q: ((pit >= (1 - q) / 2) & (pit <= (1 + q) / 2)).astype(np.float64) for q in levels}
    out = {}
    for q in levels:
        lo, hi = np.quantile(x, [(1 - q) / 2, (1 + q) / 2], axis=1)
        out[q] = ((y >= lo) & (y <= hi)).astype(np.float64)
    return out


def _method(method: str) -> str:
    if method not in ("pit", "quantile"):
        raise ValueError(f"method must be 'pit' or 'quantile', got {method!r}.")
    return method


def interval_coverage(
    y_true: object, samples: object, levels: Sequence[float] = (0.5, 0.8, 0.9), *, method: str = "pit", seed: int = 0
) -> pd.DataFrame:
    """Share of cells whose value falls in the central prediction interval, per channel and level.

    ``method="pit"`` (default) judges the distribution the draws come from: a value lies in its
    central ``q`` interval when its randomised PIT (:func:`pit_values`) lies in
    ``[(1 - q) / 2, (1 + q) / 2]``. For a calibrated model the PIT is uniform whatever the number
    of draws, so the expected coverage is ``q`` with 4, 10 or 1,000 draws. ``method="quantile"``
    judges the interval *these* draws span: from the ``(1 - q) / 2`` to the ``(1 + q) / 2``
    quantile of a cell's draws (linear interpolation). With few draws that interval is narrower
    than the distribution's: for a calibrated model with 10 draws the central 50 / 80 / 90 %
    intervals cover about 0.41 / 0.66 / 0.76, with 4 draws the 90 % interval about 0.56. Read a
    quantile coverage against those numbers, not against ``q``.

    The PIT resolves ``s + 1`` ranks: a value below (above) every draw gets a PIT in
    ``(0, 1 / (s + 1))`` (``(s / (s + 1), 1)``), which lies partly inside the central ``q`` interval
    when ``(1 - q) / 2 < 1 / (s + 1)``. So with 10 draws a value outside all of them counts 0.45
    towards the 90 % coverage, and draws that are far too narrow (a point estimate) still read
    about 0.45 there while their 50 % coverage is near 0: read the levels together, or use at
    least ``2 / (1 - q) - 1`` draws (19 for 90 %).

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values.
    samples
        ``(n, s, d)`` draws, ``s >= 2``.
    levels
        Nominal levels in ``(0, 1)``.
    method
        ``"pit"`` or ``"quantile"`` (above).
    seed
        Seed of the PIT's randomisation (``method="pit"``).

    Returns
    -------
    pandas.DataFrame
        Rows = channels (positions ``0 .. d-1``), columns = levels, values = coverage in [0, 1].
        Above ``q`` the distribution is too wide, below too narrow.

    Raises
    ------
    ValueError
        As :func:`crps`, a level outside ``(0, 1)`` or an unknown ``method``.

    Examples
    --------
    >>> draws = np.random.default_rng(0).normal(size=(5000, 10, 2))
    >>> y = np.random.default_rng(1).normal(size=(5000, 2))
    >>> bd.metrics.interval_coverage(y, draws).mean().round(2)                       # about 0.5 / 0.8 / 0.9
    >>> bd.metrics.interval_coverage(y, draws, method="quantile").mean().round(2)    # about 0.41 / 0.66 / 0.76
    """
    y, x = _pair(y_true, samples)
    method = _method(method)
    return pd.DataFrame({q: c.mean(axis=0) for q, c in _covered(y, x, _levels(levels), method, seed).items()})


def gaussian_coverage(
    y_true: object, mean: object, sd: object, levels: Sequence[float] = (0.5, 0.8, 0.9)
) -> pd.DataFrame:
    """:func:`interval_coverage` for independent Gaussian predictions (``mean +- z sd``).

    Parameters
    ----------
    y_true, mean, sd
        As in :func:`crps_gaussian`.
    levels
        Nominal levels in ``(0, 1)``.

    Returns
    -------
    pandas.DataFrame
        Rows = channels, columns = levels, values = coverage.

    Examples
    --------
    >>> y = np.random.default_rng(0).normal(size=(1000, 2))
    >>> bd.metrics.gaussian_coverage(y, np.zeros_like(y), 1.0).mean().round(2)
    """
    from scipy.stats import norm

    y, mu, s = _gaussian(y_true, mean, sd)
    out = {}
    for q in _levels(levels):
        z = norm.ppf((1 + q) / 2)
        out[q] = (np.abs(y - mu) <= z * s).mean(axis=0)
    return pd.DataFrame(out)


def pit_values(y_true: object, samples: object, *, seed: int = 0) -> np.ndarray:
    """Randomised probability integral transform of each observation under its draws.

    ``PIT = (#{draws < y} + U * (#{draws == y} + 1)) / (s + 1)`` with ``U ~ Uniform(0, 1)``: uniform
    on (0, 1) when the truth is exchangeable with the draws, ties (e.g. zeros) included. A
    histogram of these values is the PIT histogram: U-shaped = too narrow, hump = too wide,
    sloped = biased.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values.
    samples
        ``(n, s, d)`` draws, ``s >= 2``.
    seed
        Seed of the randomisation of ties.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` PIT values in ``(0, 1)``.

    Examples
    --------
    >>> draws = np.random.default_rng(0).normal(size=(200, 50, 3))
    >>> pit = bd.metrics.pit_values(np.zeros((200, 3)), draws)
    >>> np.histogram(pit, bins=10, range=(0, 1))[0]
    """
    y, x = _pair(y_true, samples)
    return _pit(y, x, seed)


def gaussian_samples(mean: object, sd: object, n_samples: int, *, seed: int = 0) -> np.ndarray:
    """Draws ``(n, n_samples, d)`` from independent Gaussians, to score a Gaussian baseline with the
    sample-based functions (e.g. :func:`energy_score`).

    Parameters
    ----------
    mean
        ``(n, d)`` means.
    sd
        Standard deviations broadcastable to ``(n, d)``, non-negative.
    n_samples
        Draws per cell (>= 2).
    seed
        Seed of the draws.

    Returns
    -------
    numpy.ndarray
        ``(n, n_samples, d)``.

    Examples
    --------
    >>> draws = bd.metrics.gaussian_samples(np.zeros((5, 2)), 1.0, 100)
    >>> draws.shape
    (5, 100, 2)
    """
    mu = np.asarray(mean, dtype=np.float64)
    if mu.ndim != 2:
        raise ValueError(f"mean must be 2-D (cells, channels), got shape {mu.shape}.")
    s = np.broadcast_to(np.asarray(sd, dtype=np.float64), mu.shape)
    if not (np.isfinite(s).all() and (s >= 0).all()):
        raise ValueError("sd must be non-negative and finite.")
    check_count(n_samples, "n_samples", minimum=2)
    eps = np.random.default_rng(seed).standard_normal((mu.shape[0], int(n_samples), mu.shape[1]))
    return mu[:, None, :] + s[:, None, :] * eps


def score_draws(
    y_true: object, samples: object, *, levels: Sequence[float] = (0.5, 0.8, 0.9), energy: bool = True,
    coverage: str = "pit", seed: int = 0,
) -> dict[str, float]:
    """One summary of a sample-based prediction: CRPS, energy score, r_p of the draws' mean, coverage.

    The numbers a benchmark row or a sampler choice needs, computed once. ``y_true`` may hold
    NaN for entries that were not measured (e.g. proteins missing from part of a panel): they
    are left out entry by entry, and the energy score uses only the cells measured in every
    channel.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values (NaN: not measured).
    samples
        ``(n, s, d)`` draws, ``s >= 2``, finite.
    levels
        Nominal levels of the central intervals whose coverage is reported.
    energy
        Also compute the energy score (its cost grows with ``s ** 2``).
    coverage, seed
        How coverage is measured: ``"pit"`` (default: the central intervals of the distribution
        the draws come from, unbiased for any number of draws) or ``"quantile"`` (the intervals
        the draws span), as ``method`` / ``seed`` of :func:`interval_coverage`.

    Returns
    -------
    dict
        ``crps`` (mean over channels of :func:`crps`), ``energy_score`` (mean over complete
        cells of :func:`energy_score`; NaN without any, absent with ``energy=False``), the same
        two of the distribution the draws come from as ``crps_fair`` / ``energy_score_fair``
        (``fair=True``: unbiased for any number of draws, the ones to compare models by), ``r_p``
        (mean over channels of the Pearson r between the truth and the draws' mean) and
        ``coverage50`` / ``coverage80`` / ... (mean over channels of :func:`interval_coverage`
        with ``method=coverage``).

    Raises
    ------
    ValueError
        As :func:`crps` (NaN in ``samples`` included), or when no entry of ``y_true`` is measured.

    Examples
    --------
    >>> post = model.posterior(query, n_samples=10, steps=5, return_draws=True)
    >>> scores = bd.metrics.score_draws(y_query_normalized, post["draws_normalized"])
    >>> sorted(scores)
    ['coverage50', 'coverage80', 'coverage90', 'crps', 'crps_fair', 'energy_score', 'energy_score_fair', 'r_p']
    """
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"y_true must be 2-D (cells, channels), got shape {y.shape}.")
    if np.isinf(y).any():
        raise ValueError("y_true holds inf values.")
    measured = ~np.isnan(y)
    if not measured.any():
        raise ValueError("y_true has no measured (non-NaN) entry to score.")
    filled, x = _pair(np.where(measured, y, 0.0), samples)
    scored = measured.any(axis=0)  # channels with at least one measured cell

    def channel_mean(values: np.ndarray) -> float:  # per channel over its measured cells, then over channels
        per_channel = np.where(measured, values, 0.0).sum(axis=0)[scored] / measured.sum(axis=0)[scored]
        return float(per_channel.mean())

    out = {}
    for suffix, fair in (("", False), ("_fair", True)):
        out[f"crps{suffix}"] = channel_mean(_crps_entries(filled, x, fair))
        if energy:
            complete = measured.all(axis=1)
            out[f"energy_score{suffix}"] = (
                float(energy_score(filled[complete], x[complete], fair=fair).mean()) if complete.any() else float("nan")
            )
    centre = x.mean(axis=1)
    r = []
    for j in range(y.shape[1]):
        a, b = filled[measured[:, j], j], centre[measured[:, j], j]
        ok = len(a) > 1 and a.std() > 0 and b.std() > 0
        r.append(float(np.corrcoef(a, b)[0, 1]) if ok else np.nan)
    out["r_p"] = float(np.mean([v for v in r if not np.isnan(v)])) if not np.isnan(r).all() else float("nan")
    method = _method(coverage)
    for q, c in _covered(filled, x, _levels(levels), method, seed).items():
        out[f"coverage{round(100 * q):d}"] = channel_mean(c)
    return out
