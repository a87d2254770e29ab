"""Per-gene accuracy of predicted spatial gene expression (PCC, SSIM, RMSE, JS) and the Accuracy Score.

The definitions follow the benchmark of Li et al. 2022 (Nature Methods, "Benchmarking
spatial and single-cell transcriptomics integration methods"), also used by stDiff and
SpaDiT. Every metric compares one gene at a time: the vector of its values across spots
(cells) in the measurement, ``x``, and in the prediction, ``y``. Means, standard deviations
and covariances are population ones (divided by the number of spots).

``PCC``
    Pearson correlation of ``x`` and ``y``. NaN when either vector is constant.
``SSIM``
    Structural similarity with a single window covering the whole vector. Each vector is
    first clipped at 0 (negative predictions become 0) and divided by its own maximum (an
    all-zero vector stays 0), so that L = 1:
    ``(2 mu_x mu_y + C1)(2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))``
    with ``C1 = 0.01^2`` and ``C2 = 0.03^2``.
``RMSE``
    Root mean squared difference of the z-scores of ``x`` and ``y``
    (``(v - mean(v)) / sd(v)``). The z-scores of a constant vector are taken as all 0, so a
    constant prediction of a varying gene gets RMSE 1.
``JS``
    Jensen-Shannon divergence between ``x`` and ``y``, each clipped at 0 and divided by its
    sum: ``JS = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` and the natural
    logarithm (as in Li et al.'s code, ``scipy.stats.entropy``), so ``0 <= JS <= ln 2``. It
    equals ``scipy.spatial.distance.jensenshannon(p, q) ** 2``. NaN when a vector sums to 0.

High PCC / SSIM and low RMSE / JS are good. :func:`accuracy_score` ranks methods on the
four per-method means.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd

from .imputation import _as_float_2d, _pearson_along

__all__ = [
    "pcc_per_gene",
    "ssim_per_gene",
    "rmse_per_gene",
    "js_per_gene",
    "spatial_gene_metrics",
    "accuracy_score",
    "SPATIAL_METRICS",
]

ArrayLike2D = Union[np.ndarray, pd.DataFrame]

#: Metric names in table order, and whether a higher value is better.
SPATIAL_METRICS: dict[str, bool] = {"PCC": True, "SSIM": True, "RMSE": False, "JS": False}

_C1 = 0.01**2
_C2 = 0.03**2


def _check_unique(index: pd.Index, what: str) -> None:
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{what} has duplicated names: {dup}.")


def _align(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Two spots x genes float64 arrays of equal shape, and the gene names.

    DataFrames are matched by name: rows (spots) by index, columns (genes) by column name;
    ``y_pred`` is reordered to ``y_true``. An array paired with a DataFrame is matched by
    position and takes the DataFrame's gene names.
    """
    true_df, pred_df = isinstance(y_true, pd.DataFrame), isinstance(y_pred, pd.DataFrame)
    if true_df and pred_df:
        for what, idx in (
            ("y_true columns", y_true.columns),
            ("y_pred columns", y_pred.columns),
            ("y_true index", y_true.index),
            ("y_pred index", y_pred.index),
        ):
            _check_unique(pd.Index(idx), what)
        pairs = (("columns (genes)", y_true.columns, y_pred.columns), ("index (spots)", y_true.index, y_pred.index))
        for axis, a_idx, b_idx in pairs:
            missing = a_idx.difference(b_idx, sort=False).tolist()
            extra = b_idx.difference(a_idx, sort=False).tolist()
            if missing or extra:
                raise ValueError(
                    f"y_true and y_pred {axis} do not match by name: missing from y_pred "
                    f"{missing[:5]}, not in y_true {extra[:5]}."
                )
        y_pred = y_pred.loc[y_true.index, y_true.columns]
    a = _as_float_2d(y_true, "y_true")
    b = _as_float_2d(y_pred, "y_pred")
    if a.shape != b.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {a.shape} vs {b.shape}.")
    if a.shape[0] < 2:
        raise ValueError(f"Need at least 2 spots (rows) to compare genes across spots, got {a.shape[0]}.")
    if true_df:
        genes = pd.Index(y_true.columns)
    elif pred_df:
        genes = pd.Index(y_pred.columns)
    else:
        genes = pd.RangeIndex(a.shape[1])
    return a, b, genes


def _pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _pearson_along(a, b, axis=0)


def _scale_max(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, None)
    top = x.max(axis=0)
    return x / np.where(top > 0, top, 1.0)


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _scale_max(a), _scale_max(b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    var_a, var_b = a.var(axis=0), b.var(axis=0)
    cov = ((a - mu_a) * (b - mu_b)).mean(axis=0)
    return (2 * mu_a * mu_b + _C1) * (2 * cov + _C2) / ((mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2))


def _zscore(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    sd = x.std(axis=0)
    constant = np.ptp(x, axis=0) == 0
    return np.where(constant, 0.0, centred / np.where(constant, 1.0, sd))


def _rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((_zscore(a) - _zscore(b)) ** 2, axis=0))


def _js(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.clip(a, 0.0, None), np.clip(b, 0.0, None)
    sa, sb = a.sum(axis=0), b.sum(axis=0)
    undefined = (sa <= 0) | (sb <= 0)
    p = a / np.where(sa > 0, sa, 1.0)
    q = b / np.where(sb > 0, sb, 1.0)
    m = (p + q) / 2

    def kl(u: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(u > 0, u * np.log(u / np.where(m > 0, m, 1.0)), 0.0)
        return terms.sum(axis=0)

    js = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, np.log(2.0))
    js[undefined] = np.nan
    return js


def pcc_per_gene(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """Pearson correlation of each gene (column) across spots (rows).

    Parameters
    ----------
    y_true, y_pred
        Spots x genes arrays or DataFrames of the same shape. Two DataFrames are matched by
        name (index = spots, columns = genes).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)`` in ``y_true``'s gene order; NaN for a gene that is constant in
        ``y_true`` or ``y_pred``.

    Raises
    ------
    ValueError
        On NaN / inf values, empty input, fewer than 2 spots, a shape mismatch, or gene /
        spot names that differ between two DataFrames.

    Examples
    --------
    >>> pred = bd.baselines.fit_predict_knn(panel, adata_sc, held_out)    # spots x held-out genes
    >>> r = bd.metrics.pcc_per_gene(truth[held_out], pred)
    >>> np.nanmean(r)
    """
    a, b, _ = _align(y_true, y_pred)
    return _pcc(a, b)


def ssim_per_gene(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """Single-window SSIM of each gene across spots, on max-scaled vectors.

    Negative values (e.g. of a regression's prediction) are clipped at 0 before each vector
    is divided by its maximum; an all-zero vector stays 0. ``C1 = 0.01^2``, ``C2 = 0.03^2``
    (dynamic range L = 1 after scaling). See the module docstring for the formula.

    Parameters
    ----------
    y_true, y_pred
        Spots x genes, as in :func:`pcc_per_gene`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)``, values in ``[-1, 1]`` (1 for identical vectors).

    Examples
    --------
    >>> ssim = bd.metrics.ssim_per_gene(truth, pred)
    >>> pd.Series(ssim, index=truth.columns).sort_values(ascending=False).head()
    """
    a, b, _ = _align(y_true, y_pred)
    return _ssim(a, b)


def rmse_per_gene(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """RMSE between the per-gene z-scores (across spots) of truth and prediction.

    Each gene vector is z-scored with its own mean and population standard deviation; a
    constant vector's z-scores are 0. The result is ``sqrt(2 - 2 PCC)`` for non-constant
    vectors.

    Parameters
    ----------
    y_true, y_pred
        Spots x genes, as in :func:`pcc_per_gene`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)``, values in ``[0, 2]``.

    Examples
    --------
    >>> rmse = bd.metrics.rmse_per_gene(truth, pred)           # z-scored per gene; lower is better
    >>> pd.Series(rmse, index=truth.columns).describe()
    """
    a, b, _ = _align(y_true, y_pred)
    return _rmse(a, b)


def js_per_gene(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between each gene's spatial distributions.

    Each vector is clipped at 0 and divided by its sum; the result equals
    ``scipy.spatial.distance.jensenshannon(p, q) ** 2`` (base e).

    Parameters
    ----------
    y_true, y_pred
        Spots x genes, as in :func:`pcc_per_gene`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)``, values in ``[0, ln 2]``; NaN for a gene whose truth or
        prediction sums to 0 after clipping.

    Examples
    --------
    >>> js = bd.metrics.js_per_gene(truth, pred)          # spots x genes, e.g. held-out genes
    >>> pd.Series(js, index=truth.columns).sort_values()  # lower is better
    """
    a, b, _ = _align(y_true, y_pred)
    return _js(a, b)


def spatial_gene_metrics(y_true: ArrayLike2D, y_pred: ArrayLike2D) -> pd.DataFrame:
    """PCC, SSIM, RMSE and JS of every gene (definitions in the module docstring).

    Parameters
    ----------
    y_true, y_pred
        Spots x genes arrays or DataFrames (two DataFrames are matched by spot and gene
        name; ``y_pred`` may list them in another order).

    Returns
    -------
    pandas.DataFrame
        Index: genes (``y_true``'s columns, or positions for arrays); columns ``PCC``,
        ``SSIM``, ``RMSE``, ``JS``.

    Raises
    ------
    ValueError
        On NaN / inf values, empty input, fewer than 2 spots, a shape mismatch, or names
        that differ between two DataFrames.

    Examples
    --------
    >>> pred = model.predict(panel, genes=held_out)            # spots x held-out genes
    >>> table = bd.metrics.spatial_gene_metrics(truth[held_out], pred)
    >>> table.mean()                                           # PCC, SSIM, RMSE, JS over genes
    """
    a, b, genes = _align(y_true, y_pred)
    return pd.DataFrame({"PCC": _pcc(a, b), "SSIM": _ssim(a, b), "RMSE": _rmse(a, b), "JS": _js(a, b)}, index=genes)


def accuracy_score(summary: pd.DataFrame) -> pd.Series:
    """Accuracy Score (AS) of Li et al. 2022: the mean of each method's four metric ranks.

    For each of PCC, SSIM, RMSE and JS the N methods are ranked from 1 (worst) to N (best):
    ascending for PCC and SSIM (highest value gets N), descending for RMSE and JS (lowest
    value gets N). Tied methods share the average of their ranks. AS is the mean of the four
    ranks, so it lies in ``[1, N]`` and higher is better.

    Parameters
    ----------
    summary
        Rows = methods, columns including ``PCC``, ``SSIM``, ``RMSE``, ``JS``: each method's
        metric averaged over genes (e.g. ``spatial_gene_metrics(...).mean()`` per method).
        Other columns are ignored.

    Returns
    -------
    pandas.Series
        AS per method (index = ``summary``'s index), named ``"AS"``.

    Raises
    ------
    ValueError
        If a metric column is missing, a value is NaN / inf, the table is empty, or method
        names repeat.

    Examples
    --------
    >>> per_method = {m: bd.metrics.spatial_gene_metrics(truth, pred).mean() for m, pred in preds.items()}
    >>> summary = pd.DataFrame(per_method).T          # rows = methods, columns PCC, SSIM, RMSE, JS
    >>> bd.metrics.accuracy_score(summary).sort_values(ascending=False)
    """
    if not isinstance(summary, pd.DataFrame):
        raise TypeError(f"summary must be a DataFrame (rows = methods), got {type(summary).__name__}.")
    missing = [m for m in SPATIAL_METRICS if m not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks metric column(s) {missing}; need {list(SPATIAL_METRICS)}.")
    if summary.shape[0] == 0:
        raise ValueError("summary has no rows (methods).")
    _check_unique(pd.Index(summary.index), "summary index (methods)")
    ranks = {}
    for metric, higher_better in SPATIAL_METRICS.items():
        col = pd.to_numeric(summary[metric], errors="coerce").astype(np.float64)
        if not np.isfinite(col.to_numpy()).all():
            bad = col.index[~np.isfinite(col.to_numpy())].tolist()
            raise ValueError(f"summary[{metric!r}] has NaN / inf / non-numeric values for method(s) {bad[:5]}.")
        ranks[metric] = col.rank(method="average", ascending=higher_better)
    return pd.DataFrame(ranks).mean(axis=1).rename("AS")
