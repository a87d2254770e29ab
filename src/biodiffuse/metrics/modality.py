"""Reconstruction metrics of a missing omics modality (Coherent Denoising paper), one
stated definition each: :func:`r2_score_modality` and :func:`output_variance_fraction`."""

from __future__ import annotations

import numpy as np

from .imputation import as_float_2d as as_matrix

__all__ = ["R2_KINDS", "output_variance_fraction", "r2_score_modality"]

R2_KINDS = ("global", "per_feature")
# Relative to the values' size: rounding leaves ~1e-32 of sum(t^2) on constant data.
CONSTANT_TOL = 1e-20


def r2_score_modality(y_true: np.ndarray, y_pred: np.ndarray, kind: str = "global") -> float:
    """Coefficient of determination of a reconstructed modality, one definition per kind.

    Parameters
    ----------
    y_true, y_pred
        ``(n, d)`` truth and prediction for the same patients (rows) and features (columns).
    kind
        ``"global"``: ``1 - sum_ij (y_ij - yhat_ij)^2 / sum_ij (y_ij - mean_i y_ij)^2``, the
        mean taken per feature over the evaluated patients (the test set). Equal to
        scikit-learn's ``r2_score(..., multioutput="variance_weighted")`` when no feature of
        ``y_true`` is constant (scikit-learn then drops that feature's errors; here they
        count). ``"per_feature"``: R^2 of each feature, averaged with equal weights
        (scikit-learn ``multioutput="uniform_average"``; a constant feature scores 1 if
        predicted exactly, else 0).

    Returns
    -------
    float
        1 for a perfect prediction, 0 for the test-set feature means, negative for worse.

    Raises
    ------
    ValueError
        Unknown kind, shapes differ, fewer than 2 patients, NaN, or (global) every feature of
        ``y_true`` constant.

    Examples
    --------
    >>> out = model.sample(test, target="protein")
    >>> bd.metrics.r2_score_modality(test.mod["protein"].X, out["mean"])
    >>> bd.metrics.r2_score_modality(test.mod["protein"].X, out["mean"], kind="per_feature")
    """
    if kind not in R2_KINDS:
        raise ValueError(f"kind must be one of {R2_KINDS}, got {kind!r}.")
    t = as_matrix(y_true, "y_true")
    p = as_matrix(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {t.shape} vs {p.shape}.")
    if t.shape[0] < 2:
        raise ValueError(f"R^2 needs at least 2 patients, got {t.shape[0]}.")
    if kind == "per_feature":
        from sklearn.metrics import r2_score

        return float(r2_score(t, p, multioutput="uniform_average"))
    total = float(np.sum((t - t.mean(axis=0)) ** 2))
    if total <= CONSTANT_TOL * float(np.sum(t**2)):
        raise ValueError("y_true is constant in every feature; the global R^2 is undefined.")
    return 1.0 - float(np.sum((t - p) ** 2)) / total


def output_variance_fraction(samples: np.ndarray, y_true: np.ndarray) -> float:
    """Spread of repeated generations as a fraction of the real data's variance.

    ``mean_ij Var_k(samples[k, i, j]) / mean_j Var_i(y_true[i, j])``: the variance across the
    K generated versions of each patient and feature, averaged over patients and features,
    divided by the variance of the real data across patients averaged over features (both
    with ``ddof=0``). This is the paper's "average variance of the generated samples as a
    percentage of the total variance from the real data", as a fraction (x100 for percent).

    Parameters
    ----------
    samples
        ``(K, n, d)`` K >= 2 generations for the n patients.
    y_true
        ``(n, d)`` real values of the same patients.

    Returns
    -------
    float
        0 when all generations agree; about 1 when they vary as much as patients do.

    Raises
    ------
    ValueError
        Wrong dims, K < 2, mismatched shapes, NaN, or constant ``y_true``.

    Examples
    --------
    >>> out = model.sample(test, target="protein", n_samples=10)
    >>> bd.metrics.output_variance_fraction(out["features"], test.mod["protein"].X)   # (K, n, d) vs (n, d)
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"samples must be 3-D (K generations x n patients x d features), got shape {s.shape}.")
    if s.shape[0] < 2:
        raise ValueError(f"samples needs K >= 2 generations, got {s.shape[0]}.")
    if not np.isfinite(s).all():
        raise ValueError("samples has NaN or inf values.")
    t = as_matrix(y_true, "y_true")
    if t.shape != s.shape[1:]:
        raise ValueError(f"y_true has shape {t.shape} but samples has (n, d) = {s.shape[1:]}.")
    data_var = float(np.mean(t.var(axis=0)))
    if data_var == 0.0:
        raise ValueError("y_true is constant; its variance is 0.")
    return float(np.mean(s.var(axis=0))) / data_var
