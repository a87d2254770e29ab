"""Plots for predicted spatial genes: measured vs predicted maps, and per-method PCC distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..data import check_adata, get_matrix, get_obsm_frame, log_normalize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["spatial_genes", "pcc_distribution"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _looks_like_counts(x: np.ndarray | sparse.spmatrix) -> bool:
    data = x.data if sparse.issparse(x) else np.asarray(x)
    return bool(data.size == 0 or ((data >= 0).all() and np.array_equal(data, np.round(data))))


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spatial_genes(
    adata: AnnData,
    genes: Sequence[str],
    predicted_key: str = "SpaDiT_predicted",
    layer: str | None = None,
    *,
    normalize: bool | None = None,
    library_genes: Sequence[str] | None = None,
    spatial_key: str = "spatial",
    ncols: int = 2,
    spot_size: float | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Maps of measured and predicted expression, side by side, for each gene.

    Parameters
    ----------
    adata
        Spatial cells with the measured genes in ``var_names`` (``X`` or ``layer``),
        coordinates in ``obsm[spatial_key]`` and the predictions in
        ``obsm[predicted_key]`` (a DataFrame, columns = genes).
    genes
        Genes to show; each must be measured and predicted.
    predicted_key
        Key of the predictions in ``adata.obsm``.
    layer
        Layer holding the measured values (default ``X``).
    normalize
        Log-normalise the measured values as ``log1p(count / library * 1e4)`` (the scale
        of the spatial baselines and SpaDiT). ``None`` (default): only if the matrix looks
        like counts (non-negative integers); ``True`` / ``False``: always / never.
        Predictions are shown as stored.
    library_genes
        Genes whose counts make up the library size (default: all genes of ``adata``). Pass
        the genes the predictor saw (the known genes) to put the measured values on exactly
        the predictions' scale.
    spatial_key
        Key of the n x 2 coordinates in ``adata.obsm``.
    ncols
        Gene pairs per row of the figure.
    spot_size
        Marker size; default scales with the number of cells.
    cmap
        Colormap. Each panel has its own colour range, from its 1st to its 99th percentile
        (the pattern is compared, not the scale); the predicted panel's title gives the
        Pearson r across cells (of the unclipped values).

    Returns
    -------
    matplotlib.figure.Figure
        With ``2 * len(genes)`` axes: measured, predicted, for each gene in order.

    Raises
    ------
    KeyError
        If ``predicted_key``, ``spatial_key`` or ``layer`` is missing, or a gene (of
        ``genes`` or ``library_genes``) is not in ``adata.var_names`` or in the predictions.
    ValueError
        If ``genes`` is empty or repeats names, or the coordinates are not finite n x 2.

    Examples
    --------
    >>> panel = adata_sp[:, ~adata_sp.var_names.isin(["Gad2", "Vip"])].copy()   # Gad2, Vip held out
    >>> adata_sp.obsm["SpaDiT_predicted"] = model.predict(panel, genes=["Gad2", "Vip"])   # model set up on panel
    >>> fig = bd.pl.spatial_genes(adata_sp, ["Gad2", "Vip"], library_genes=panel.var_names)
    >>> adata_sp.obsm["kNN_predicted"] = bd.baselines.fit_predict_knn(panel, adata_sc, ["Gad2", "Vip"])
    >>> fig = bd.pl.spatial_genes(adata_sp, ["Gad2", "Vip"], predicted_key="kNN_predicted")
    """
    check_adata(adata)
    if isinstance(genes, str):
        genes = [genes]
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("genes is empty; give at least one gene to plot.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"genes repeats names: {sorted({g for g in genes if genes.count(g) > 1})}.")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    pred = get_obsm_frame(adata, predicted_key)
    if spatial_key not in adata.obsm:
        raise KeyError(f"{spatial_key!r} not in adata.obsm (have {list(adata.obsm.keys())}).")
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2 or not np.isfinite(coords[:, :2]).all():
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] must be finite coordinates of shape (n_obs, 2), got {coords.shape}."
        )
    missing_measured = [g for g in genes if g not in adata.var_names]
    missing_pred = [g for g in genes if g not in pred.columns]
    if missing_measured or missing_pred:
        raise KeyError(
            f"Genes not measured in adata.var_names: {missing_measured}; not predicted in "
            f"adata.obsm[{predicted_key!r}]: {missing_pred}."
        )
    matrix = get_matrix(adata, layer)
    if normalize is None:
        normalize = _looks_like_counts(matrix)
    cols = matrix[:, adata.var_names.get_indexer(genes)]
    measured = cols.toarray() if sparse.issparse(cols) else np.asarray(cols, dtype=np.float64)
    if normalize:
        lib_pos = np.arange(adata.n_vars)
        if library_genes is not None:
            lib_names = [str(g) for g in library_genes]
            absent = [g for g in lib_names if g not in adata.var_names]
            if not lib_names or absent:
                raise KeyError(f"library_genes must be a non-empty list of adata.var_names; not found: {absent[:5]}.")
            lib_pos = adata.var_names.get_indexer(lib_names)
        library = np.asarray(matrix[:, lib_pos].sum(axis=1)).ravel()
        measured = log_normalize(measured, library)
    measured = np.asarray(measured, dtype=np.float64)
    predicted = pred.loc[:, genes].to_numpy(dtype=np.float64)

    plt = _plt()
    ncols = min(ncols, len(genes))
    nrows = int(np.ceil(len(genes) / ncols))
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(3.2 * 2 * ncols, 3.0 * nrows), squeeze=False)
    size = spot_size if spot_size is not None else float(np.clip(20000 / adata.n_obs, 0.5, 20))
    flat = axes.ravel()
    scale = " (log-normalised)" if normalize else ""
    for i, gene in enumerate(genes):
        m, p = measured[:, i], predicted[:, i]
        for ax, values, title in (
            (flat[2 * i], m, f"{gene} measured{scale}"),
            (flat[2 * i + 1], p, f"{gene} predicted, r = {_pcc(m, p):.2f}"),
        ):
            lo, hi = np.percentile(values, [1, 99])
            hi = max(hi, lo + 1e-12)
            ax.scatter(coords[:, 0], coords[:, 1], c=values, s=size, cmap=cmap, vmin=lo, vmax=hi, linewidths=0)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    for ax in flat[2 * len(genes) :]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig


def _long_form(per_gene: pd.DataFrame, method_col: str, value_col: str) -> pd.DataFrame:
    if method_col in per_gene.columns and value_col in per_gene.columns:
        long = per_gene[[method_col, value_col]].rename(columns={method_col: "method", value_col: "value"})
    elif method_col in per_gene.columns or value_col in per_gene.columns:
        raise ValueError(
            f"A long table needs both columns {method_col!r} and {value_col!r}; "
            f"per_gene has {list(per_gene.columns)}."
        )
    else:
        long = per_gene.melt(var_name="method", value_name="value")
    values = pd.to_numeric(long["value"], errors="coerce")
    if values.isna().sum() > long["value"].isna().sum():
        raise ValueError(f"per_gene values must be numeric (wide: every column a method; long: {value_col!r}).")
    if np.isinf(values).any():
        raise ValueError("per_gene contains inf values.")
    return long.assign(value=values)


def pcc_distribution(
    per_gene: pd.DataFrame,
    *,
    method_col: str = "method",
    value_col: str = "PCC",
    order: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Per-method distribution of per-gene Pearson r: a box per method with one point per gene.

    Parameters
    ----------
    per_gene
        Wide (rows = genes, columns = methods, values = PCC) or long (one row per gene and
        method, with columns ``method_col`` and ``value_col``). NaN values (undefined PCC)
        are left out; each label gives the number of genes shown and their mean.
    method_col, value_col
        Column names of a long table.
    order
        Methods in plotting order (default: order of appearance).
    ax
        Axes to draw on (default: a new figure).
    title
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the table is empty, has no finite value, is not numeric, has only one of the
        long-table columns, or ``order`` names an unknown method.

    Examples
    --------
    >>> per_gene = pd.DataFrame({"SpaDiT": bd.metrics.pcc_per_gene(truth, pred_spadit),
    ...                          "kNN": bd.metrics.pcc_per_gene(truth, pred_knn)}, index=genes)
    >>> fig = bd.pl.pcc_distribution(per_gene, title="Held-out genes")
    >>> fig = bd.pl.pcc_distribution(long_table, method_col="method", value_col="PCC", order=["SpaDiT", "kNN"])
    """
    if not isinstance(per_gene, pd.DataFrame):
        raise TypeError(f"per_gene must be a DataFrame, got {type(per_gene).__name__}.")
    if per_gene.empty:
        raise ValueError("per_gene is empty; nothing to plot.")
    long = _long_form(per_gene, method_col, value_col).dropna(subset=["value"])
    if long.empty:
        raise ValueError("per_gene has no finite value (all PCC are NaN).")
    methods = list(pd.unique(long["method"]))
    if order is not None:
        unknown = [m for m in order if m not in methods]
        if unknown:
            raise ValueError(f"order names method(s) {unknown} without values; have {methods}.")
        methods = list(order)
    groups = [long.loc[long["method"] == m, "value"].to_numpy(dtype=np.float64) for m in methods]

    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(methods) + 1.5), 3.6))
    else:
        fig = ax.figure
    positions = np.arange(1, len(methods) + 1)
    ax.boxplot(groups, positions=positions, widths=0.55, showfliers=False)
    rng = np.random.default_rng(0)
    for pos, vals in zip(positions, groups):
        ax.scatter(pos + rng.uniform(-0.15, 0.15, size=len(vals)), vals, s=10, alpha=0.6, zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{m}\n(n={len(v)}, mean {v.mean():.3f})" for m, v in zip(methods, groups)], fontsize=8)
    ax.axhline(0, color="grey", lw=0.6, ls="--")
    ax.set_ylabel(f"per-gene {value_col}")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
