"""Imputation accuracy: Pearson correlation per channel / per cell and RMSE.

The names follow the MCD paper: ``r_p`` is the Pearson r of one protein (channel) across
cells, averaged over proteins; ``r_c`` is the Pearson r of one cell across proteins,
averaged over cells. A channel (or cell) that is constant in either the truth or the
prediction has no defined correlation: it gives NaN and is left out of the averages.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd

__all__ = ["as_float_2d", "pearson_per_channel", "pearson_per_cell", "rmse", "imputation_metrics"]

ArrayLike2D = Union[np.ndarray, pd.DataFrame]


def _as_pair(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (truth, prediction) pair to two float64 arrays of equal shape.

    If both are DataFrames, ``y_pred``'s columns are reordered to ``y_true``'s by name;
    rows are always matched by position.
    """
    if isinstance(y_true, pd.DataFrame) and isinstance(y_pred, pd.DataFrame):
        true_cols, pred_cols = pd.Index(y_true.columns), pd.Index(y_pred.columns)
        for name, cols in (("y_true", true_cols), ("y_pred", pred_cols)):
            if cols.has_duplicates:
                dup = cols[cols.duplicated()].unique().tolist()
                raise ValueError(f"{name} has duplicated column names: {dup[:5]}.")
        missing = true_cols.difference(pred_cols, sort=False).tolist()
        extra = pred_cols.difference(true_cols, sort=False).tolist()
        if missing or extra:
            raise ValueError(
                "y_true and y_pred columns do not match by name: "
                f"missing from y_pred {missing[:5]}, not in y_true {extra[:5]}."
            )
        y_pred = y_pred.loc[:, true_cols]
    a = _as_float_2d(y_true, "y_true")
    b = _as_float_2d(y_pred, "y_pred")
    if a.shape != b.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {a.shape} vs {b.shape}.")
    return a, b


def as_float_2d(x: ArrayLike2D, name: str) -> np.ndarray:
    """``x`` (array, sparse matrix or DataFrame) as a finite 2-D float64 array; ValueError naming
    ``name`` otherwise. The one input check of tables for metrics, baselines and encoders.

    Parameters
    ----------
    x
        Cells x channels: a numpy array, a scipy sparse matrix (densified) or a DataFrame (its
        values); numeric or boolean.
    name
        Name of the input, used in the error messages.

    Examples
    --------
    >>> x = bd.metrics.as_float_2d(adata.X, "adata.X")      # sparse or dense -> dense float64
    >>> x.dtype
    dtype('float64')
    >>> bd.metrics.as_float_2d(adata.obsm["protein_expression"], "protein")   # a DataFrame's values
    """
    if hasattr(x, "toarray"):  # scipy sparse
        x = x.toarray()
    arr = x.to_numpy() if isinstance(x, pd.DataFrame) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x channels), got {arr.ndim}-D with shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} is not numeric (dtype {arr.dtype}).") from err
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf value(s); all values must be finite.")
    return arr


_as_float_2d = as_float_2d  # the name the metrics modules use internally


def _pearson_along(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson r of matching slices of ``a`` and ``b`` reduced along ``axis`` (NaN where constant)."""
    constant = (np.ptp(a, axis=axis) == 0) | (np.ptp(b, axis=axis) == 0)
    ac = a - a.mean(axis=axis, keepdims=True)
    bc = b - b.mean(axis=axis, keepdims=True)
    num = (ac * bc).sum(axis=axis)
    den = np.sqrt((ac * ac).sum(axis=axis) * (bc * bc).sum(axis=axis))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r = np.clip(r, -1.0, 1.0)
    r[constant | ~np.isfinite(r)] = np.nan
    return r


def pearson_per_channel(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """Pearson r of each channel (column) across cells (rows): the per-protein ``r_p``.

    Parameters
    ----------
    y_true, y_pred
        Cells x channels arrays or DataFrames of the same shape. If both are DataFrames,
        columns are matched by name; rows are matched by position.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_channels,)``. NaN for a channel that is constant in ``y_true`` or ``y_pred``.

    Raises
    ------
    ValueError
        On a shape or column-name mismatch, empty input, or NaN / inf values.

    Examples
    --------
    >>> truth = adata_test.obsm["protein_expression"]
    >>> r_p = bd.metrics.pearson_per_channel(truth, adata_test.obsm["MCD_imputed"])   # columns matched by name
    >>> pd.Series(r_p, index=truth.columns).sort_values(ascending=False).head()
    """
    a, b = _as_pair(y_true, y_pred)
    return _pearson_along(a, b, axis=0)


def pearson_per_cell(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """Pearson r of each cell (row) across channels (columns): the per-cell ``r_c``.

    Parameters
    ----------
    y_true, y_pred
        Cells x channels arrays or DataFrames, as in :func:`pearson_per_channel`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_cells,)``. NaN for a cell that is constant in ``y_true`` or ``y_pred``.

    Examples
    --------
    >>> r_c = bd.metrics.pearson_per_cell(truth, adata_test.obsm["MCD_imputed"])
    >>> np.nanmean(r_c)
    """
    a, b = _as_pair(y_true, y_pred)
    return _pearson_along(a, b, axis=1)


def rmse(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> float:
    """Root mean squared error over all entries.

    Parameters
    ----------
    y_true, y_pred
        Cells x channels arrays or DataFrames, as in :func:`pearson_per_channel`.

    Returns
    -------
    float

    Examples
    --------
    >>> y = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> bd.metrics.rmse(y, y + 1)
    1.0
    """
    a, b = _as_pair(y_true, y_pred)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _nanmean(x: np.ndarray) -> float:
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def imputation_metrics(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> dict[str, float]:
    """Summary imputation metrics.

    Parameters
    ----------
    y_true, y_pred
        Cells x channels arrays or DataFrames, as in :func:`pearson_per_channel`.

    Returns
    -------
    dict
        ``r_p``: mean over channels of the per-channel Pearson r (undefined channels left out;
        NaN if none is defined); ``r_c``: the same per cell; ``rmse``: over all entries;
        ``n_channels_undefined``: number of channels whose r is NaN (constant truth or
        prediction, e.g. every channel of a per-channel-mean predictor).

    Examples
    --------
    >>> truth = adata_test.obsm["protein_expression"]
    >>> bd.metrics.imputation_metrics(truth, adata_test.obsm["MCD_imputed"])   # r_p, r_c, rmse, ...
    """
    a, b = _as_pair(y_true, y_pred)
    r_p = _pearson_along(a, b, axis=0)
    r_c = _pearson_along(a, b, axis=1)
    return {
        "r_p": _nanmean(r_p),
        "r_c": _nanmean(r_c),
        "rmse": float(np.sqrt(np.mean((a - b) ** 2))),
        "n_channels_undefined": int(np.isnan(r_p).sum()),
    }
