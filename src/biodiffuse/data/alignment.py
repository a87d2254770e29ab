"""Per-gene quantile alignment of one data set onto another.

Imaging spatial data and scRNA-seq measure the same genes on different scales and with
different zero fractions. Mapping each value to the reference value of the same quantile
(per gene) puts the two on one scale without assuming a shape. The map is stored as two
sets of percentiles, so a fitted model can apply it to new cells.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERCENTILES", "percentiles", "quantile_map", "quantile_align"]

PERCENTILES = np.linspace(0.0, 1.0, 101)


def percentiles(x: np.ndarray) -> np.ndarray:
    """The 101 percentiles (0, 1, ..., 100 %) of each column, shape (101, columns)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-d array, got shape {x.shape}.")
    return np.quantile(x, PERCENTILES, axis=0)


def quantile_map(values: np.ndarray, query_q: np.ndarray, ref_q: np.ndarray) -> np.ndarray:
    """Per column, map values to the reference value at their quantile in the query.

    Parameters
    ----------
    values
        (cells, genes) values on the query's scale.
    query_q, ref_q
        (101, genes) percentiles of the query and of the reference (:func:`percentiles`).

    Returns
    -------
    numpy.ndarray
        (cells, genes) on the reference's scale. A value's position among the query
        percentiles is interpolated linearly between neighbours; a value equal to several of
        them (ties, e.g. many zeros) gets the middle of their range; values outside the range
        get the ends. The reference value at that position is interpolated likewise.
    """
    values = np.asarray(values, dtype=np.float64)
    query_q, ref_q = np.asarray(query_q, dtype=np.float64), np.asarray(ref_q, dtype=np.float64)
    if values.ndim != 2 or query_q.shape != ref_q.shape or query_q.shape != (len(PERCENTILES), values.shape[1]):
        raise ValueError(
            f"values (cells, genes) and percentiles ({len(PERCENTILES)}, genes) do not match: "
            f"{values.shape}, {query_q.shape}, {ref_q.shape}."
        )
    k = query_q.shape[0] - 1
    out = np.empty(values.shape, dtype=np.float64)
    for j in range(values.shape[1]):
        q, v = query_q[:, j], values[:, j]
        lo, hi = np.searchsorted(q, v, side="left"), np.searchsorted(q, v, side="right")
        below, above = np.clip(lo - 1, 0, k), np.clip(lo, 0, k)
        gap = q[above] - q[below]
        frac = np.where(gap > 0, (v - q[below]) / np.where(gap > 0, gap, 1.0), 0.0)
        pos = np.where(hi > lo, (lo + hi - 1) / 2.0, below + frac)
        out[:, j] = np.interp(pos / k, PERCENTILES, ref_q[:, j])
    return out


def quantile_align(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``query`` (cells, genes) mapped column by column onto ``reference``'s distribution."""
    return quantile_map(query, percentiles(query), percentiles(reference))
