"""Plots for imputation results: training curve, measured vs imputed, per-channel r bars."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["training_curve", "imputed_vs_measured", "protein_correlation_bars"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def training_curve(history: pd.DataFrame, ax=None, log: bool = True):
    """Train and validation loss per epoch from ``model.history``.

    Returns the matplotlib Figure.

    Parameters
    ----------
    history
        Losses per epoch, e.g. ``model.history`` or the return of
        :meth:`~biodiffuse.models.BaseModel.train`: the columns ``train_loss`` and ``val_loss``
        are drawn when present, against the index (the epoch).
    ax
        Axes to draw on (default: a new figure).
    log
        Logarithmic loss axis.

    Examples
    --------
    >>> model.train(max_epochs=200)
    >>> fig = bd.pl.training_curve(model.history)
    >>> fig = bd.pl.training_curve(model.history, log=False)
    """
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    for col in ("train_loss", "val_loss"):
        if col in history:
            ax.plot(history.index, history[col], label=col.replace("_", " "))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("EDM loss")
    ax.legend(frameon=False)
    return fig


def imputed_vs_measured(
    adata: AnnData,
    channels: Sequence[str],
    measured_key: str = "protein_expression",
    imputed_key: str = "MCD_imputed",
    log1p: bool = True,
    ncols: int = 4,
):
    """Scatter of measured vs imputed values per channel, with Pearson r in each title.

    Returns the matplotlib Figure.

    Parameters
    ----------
    adata
        Cells with the measured values and the imputation as DataFrames (columns = channel
        names) in ``adata.obsm``.
    channels
        Channels to plot, one panel each; each must be a column of both tables.
    measured_key
        Key of the measured values in ``adata.obsm``.
    imputed_key
        Key of the imputed values in ``adata.obsm`` (e.g. written by
        :meth:`MCD.impute <biodiffuse.models.MCD.impute>`).
    log1p
        Plot (and correlate) ``log1p`` of both values.
    ncols
        Panels per row.

    Examples
    --------
    >>> model.impute(adata_query)                         # obsm["MCD_imputed"]
    >>> fig = bd.pl.imputed_vs_measured(adata_query, ["CD3", "CD14", "CD19", "CD16"])
    >>> fig = bd.pl.imputed_vs_measured(adata_query, ["CD3"], imputed_key="MCD_imputed", log1p=False)
    """
    plt = _plt()
    meas = adata.obsm[measured_key]
    imp = adata.obsm[imputed_key]
    if not isinstance(meas, pd.DataFrame) or not isinstance(imp, pd.DataFrame):
        raise TypeError("Both obsm entries must be DataFrames with channel names as columns.")
    missing = [c for c in channels if c not in meas.columns or c not in imp.columns]
    if missing:
        raise KeyError(f"Channels not in both tables: {missing}.")
    n = len(channels)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    for ax, ch in zip(axes.ravel(), channels):
        x = meas[ch].to_numpy(float)
        y = imp[ch].to_numpy(float)
        if log1p:
            x, y = np.log1p(x), np.log1p(y)
        r = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else np.nan
        ax.scatter(x, y, s=6, alpha=0.6)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{ch}  r={r:.2f}", fontsize=9)
        ax.set_xlabel("measured" + (" (log1p)" if log1p else ""))
        ax.set_ylabel("imputed" + (" (log1p)" if log1p else ""))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def protein_correlation_bars(per_channel: pd.DataFrame, title: str | None = None, sort_by: str | None = None):
    """Grouped bars of per-channel Pearson r (rows = channels, columns = methods).

    Returns the matplotlib Figure.

    Parameters
    ----------
    per_channel
        Pearson r per channel: rows = channels (names on the x axis), columns = methods (one bar
        per method and channel; the legend gives each method's mean).
    title
        Axes title.
    sort_by
        Column whose values order the channels, highest first (default: the first column).

    Examples
    --------
    >>> r = pd.DataFrame({"MCD": bd.metrics.pearson_per_channel(y_true, y_mcd),
    ...                   "ridge": bd.metrics.pearson_per_channel(y_true, y_ridge)}, index=y_true.columns)
    >>> fig = bd.pl.protein_correlation_bars(r, title="Held-out donor", sort_by="MCD")
    """
    plt = _plt()
    if per_channel.empty:
        raise ValueError("Nothing to plot.")
    order = per_channel.sort_values(sort_by or per_channel.columns[0], ascending=False).index
    df = per_channel.loc[order]
    n, m = df.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * n * max(m, 2)), 3.6))
    width = 0.8 / m
    xs = np.arange(n)
    for j, col in enumerate(df.columns):
        ax.bar(xs + j * width - 0.4 + width / 2, df[col].to_numpy(), width, label=f"{col} (mean {np.nanmean(df[col]):.3f})")
    ax.set_xticks(xs)
    ax.set_xticklabels(df.index, rotation=90, fontsize=7)
    ax.set_ylabel("Pearson r (held-out cells)")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
