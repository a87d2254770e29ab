"""Plots for histology generation: tile grids (measured vs generated vs baselines per cell /
spot), gene-importance bars and the dot plot of :func:`biodiffuse.tl.enrichment` tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["enrichment_dotplot", "importance_bars", "tile_grid"]

_EPS = 1e-10


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _panel(name: str, tiles: np.ndarray, channel: int | None, vmin: float, vmax: float) -> tuple[np.ndarray, bool]:
    """(n, C, H, W) -> RGB images (n, H, W, 3) in [0, 1], or planes (n, H, W); and whether RGB."""
    c = tiles.shape[1]
    if channel is not None and c > 1:
        if not -c <= channel < c:
            raise ValueError(f"channel={channel} is out of range for tiles[{name!r}] with {c} channels.")
        return tiles[:, channel], False
    if c in (1, 3):
        rgb = c == 3
        return (np.clip((np.moveaxis(tiles, 1, -1) - vmin) / (vmax - vmin), 0, 1) if rgb else tiles[:, 0]), rgb
    raise ValueError(f"tiles[{name!r}] has {c} channels; pass channel= (int) to show one (1 or 3 are shown as is).")


def tile_grid(
    tiles: Mapping[str, Any],
    *,
    rows: Sequence[int] | None = None,
    row_labels: Sequence[str] | None = None,
    channel: int | None = None,
    sample: int = 0,
    max_rows: int = 8,
    cmap: str = "gray",
    vmin: float = 0.0,
    vmax: float = 1.0,
    size: float = 1.4,
) -> Figure:
    """Grid of image tiles: one row per cell / spot, one column per method.

    Parameters
    ----------
    tiles
        Ordered mapping column title -> array (numpy or xarray) ``(N, C, H, W)``, or
        ``(N, S, C, H, W)`` for S generated samples; all share N, H, W.
    rows, max_rows
        Positions (0 .. N-1) of the tiles shown, in order; default the first ``max_rows``.
    row_labels
        N labels (e.g. cell ids); those of the rows shown are written at the left.
    channel
        Channel shown with ``cmap`` for arrays of several channels. Without it 3 channels
        are drawn as RGB, 1 channel with ``cmap``, and other counts raise.
    sample
        Which of the S samples of a 5-D array is shown.
    cmap, vmin, vmax, size
        Colormap and limits of single-channel panels (RGB values are mapped by
        ``(x - vmin) / (vmax - vmin)`` and clipped to [0, 1]); inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
        With ``n_rows * len(tiles)`` axes, row by row, column titles on the first row.

    Raises
    ------
    ValueError
        If ``tiles`` is empty; an array is not 4-D / 5-D, differs from the first in N, H or
        W, holds NaN / inf in the rows shown, or needs ``channel`` (messages name the key);
        or another argument is invalid.

    Examples
    --------
    >>> gen = model.generate(sdata, indices=np.arange(8), n_samples=2)      # (8, 2, 1, 32, 32)
    >>> fig = bd.pl.tile_grid({"real": real_tiles, "GeneFlow": gen}, row_labels=gen.coords["cell"].values)
    >>> # real_tiles: (8, 1, 32, 32), the measured tiles of the same cells
    >>> fig = bd.pl.tile_grid({"GeneFlow": gen}, sample=1, cmap="magma")   # the second draw
    """
    if not tiles:
        raise ValueError("tiles is empty; give {column title: array}.")
    if not vmax > vmin:
        raise ValueError(f"Need vmin < vmax, got {vmin}, {vmax}.")
    arrays: dict[str, np.ndarray] = {}
    for name, arr in tiles.items():
        a = np.asarray(arr)
        if a.ndim == 5:
            if not -a.shape[1] <= sample < a.shape[1]:
                raise ValueError(f"sample={sample} is out of range for tiles[{name!r}] with {a.shape[1]} samples.")
            a = a[:, sample]
        if a.ndim != 4:
            raise ValueError(f"tiles[{name!r}] must be (N, C, H, W) or (N, S, C, H, W), got shape {np.shape(arr)}.")
        arrays[str(name)] = a
    (first, ref), nhw = next(iter(arrays.items())), lambda a: (a.shape[0], *a.shape[2:])
    for name, a in arrays.items():
        if nhw(a) != nhw(ref):
            raise ValueError(f"tiles[{name!r}] has N, H, W = {nhw(a)} but tiles[{first!r}] has {nhw(ref)}.")
    n = ref.shape[0]
    idx = np.arange(min(n, int(max_rows))) if rows is None else np.asarray(rows)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or (idx < 0).any() or (idx >= n).any():
        raise ValueError(f"Need N >= 1 tiles and rows / max_rows selecting positions in [0, {n}); got {rows!r}.")
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels has {len(row_labels)} labels for N = {n} tiles.")
    sel = {name: np.asarray(a[idx], dtype=np.float64) for name, a in arrays.items()}
    bad = [name for name, a in sel.items() if not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"tiles[{bad[0]!r}] holds NaN or inf values in the rows shown.")
    panels = {name: _panel(name, a, channel, vmin, vmax) for name, a in sel.items()}

    nr, nc = len(idx), len(panels)
    width = size * nc + (1.0 if row_labels is not None else 0.2)
    fig, axes = _plt().subplots(nr, nc, figsize=(width, size * nr + 0.4), squeeze=False)
    for j, (name, (imgs, rgb)) in enumerate(panels.items()):
        for i, ax in enumerate(axes[:, j]):
            kw = {} if rgb else {"cmap": cmap, "vmin": vmin, "vmax": vmax}
            ax.imshow(imgs[i], interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[int(idx[i])]), rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def importance_bars(
    adata_or_series: Any, *, key: str = "GeneFlow_importance", n_top: int = 20, ax: Axes | None = None,
    color: str = "C0",
) -> Figure:
    """Horizontal bars of the ``n_top`` most important genes, the most important on top.

    Parameters
    ----------
    adata_or_series
        AnnData with scores in ``adata.var[key]``, or a pandas Series indexed by gene.
        NaN scores are left out.
    key
        Column of ``adata.var`` (ignored for a Series).
    n_top, ax, color
        Number of genes shown; axes to draw on (default: a new figure); bar colour.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    KeyError
        If ``key`` is not a column of ``adata.var``.
    ValueError
        If the scores are not numeric, contain inf, are all NaN, or ``n_top < 1``.

    Examples
    --------
    >>> imp = model.gene_importance(sdata)                 # Series, also table.var["GeneFlow_importance"]
    >>> fig = bd.pl.importance_bars(imp, n_top=20)
    >>> fig = bd.pl.importance_bars(sdata.tables["table"], key="GeneFlow_importance", color="C1")
    """
    is_series = isinstance(adata_or_series, pd.Series)
    if not is_series and key not in adata_or_series.var.columns:
        raise KeyError(f"adata.var has no column {key!r} (write scores with biodiffuse.tl.write_importance).")
    raw = adata_or_series if is_series else pd.Series(adata_or_series.var[key].to_numpy(), adata_or_series.var_names)
    scores = pd.to_numeric(raw, errors="coerce")
    if scores.isna().sum() > raw.isna().sum() or np.isinf(scores.astype(np.float64)).any():
        raise ValueError(f"Importance scores ({key!r}) must be numeric and not inf.")
    scores = scores.astype(np.float64).dropna()
    if scores.empty or int(n_top) < 1:
        raise ValueError(f"Nothing to plot: {len(scores)} non-NaN scores in {key!r} (empty?), n_top = {n_top}.")
    top = scores.sort_values(ascending=False, kind="stable").iloc[: int(n_top)]
    fig, ax = _plt().subplots(figsize=(4.2, 0.6 + 0.22 * len(top))) if ax is None else (ax.figure, ax)
    y = np.arange(len(top))[::-1]  # most important at the top
    ax.barh(y, top.to_numpy(), color=color)
    ax.set_yticks(y)
    ax.set_yticklabels([str(g) for g in top.index], fontsize=8)
    ax.set_ylim(-0.6, len(top) - 0.4)
    ax.set_xlabel((raw.name or "importance") if is_series else key)
    fig.tight_layout()
    return fig


def _count(col: pd.Series, sep: str | None) -> np.ndarray:
    """Number of genes in ``sep``-joined lists, or the k of "k/n" strings (sep None)."""
    text = col.astype(str).str.strip()
    if sep is not None:
        return np.where(text.isin(["", "nan", "None"]), 0, text.str.count(sep) + 1).astype(np.float64)
    return pd.to_numeric(text.str.split("/").str[0], errors="coerce").to_numpy(dtype=np.float64)


def _layout(table: pd.DataFrame, term_col: str) -> tuple[pd.DataFrame, dict[str, tuple[str, Any]]]:
    """Rows by significance, and the default (label, values) of x, size and colour."""
    cols = set(table.columns)
    if {term_col, "NES", "FDR q-val"} <= cols:
        t = table.sort_values(["FDR q-val", "NES"], ascending=[True, False], kind="stable", na_position="last")
        q = pd.to_numeric(t["FDR q-val"], errors="coerce").to_numpy(dtype=np.float64)
        lead = ("lead genes", _count(t["Lead_genes"], ";")) if "Lead_genes" in cols else (
            ("Tag", _count(t["Tag %"], None)) if "Tag %" in cols else ("", np.ones(len(t))))
        return t, {"x": ("NES", t["NES"]), "size": lead, "color": ("-log10(FDR q-val)", -np.log10(q + _EPS))}
    if {term_col, "Adjusted P-value", "Overlap", "Odds Ratio"} <= cols:
        t = table.sort_values(["Adjusted P-value"] + (["P-value"] if "P-value" in cols else []), kind="stable",
                              na_position="last")
        p = pd.to_numeric(t["Adjusted P-value"], errors="coerce").to_numpy(dtype=np.float64)
        return t, {"x": ("-log10(Adjusted P-value)", -np.log10(p + _EPS)),
                   "size": ("overlap", _count(t["Overlap"], None)), "color": ("Odds Ratio", t["Odds Ratio"])}
    raise ValueError(
        f"Not an enrichment table: need columns {term_col!r}, 'NES', 'FDR q-val' (prerank) or {term_col!r}, "
        f"'Adjusted P-value', 'Overlap', 'Odds Ratio' (overrepresentation); have {list(table.columns)}."
    )


def enrichment_dotplot(
    table: Any, *, key: str = "GeneFlow_importance_enrichment", n_top: int = 15, term_col: str = "Term",
    x: str | None = None, size_col: str | None = None, color_col: str | None = None, ax: Axes | None = None,
) -> Figure:
    """Dot plot of the ``n_top`` most significant gene sets of an enrichment table.

    Parameters
    ----------
    table
        A table of :func:`biodiffuse.tl.enrichment` (prerank or overrepresentation), or an
        AnnData holding ``{"results": table, "params": ...}`` (or a table) in ``uns[key]``.
    key
        Key of ``adata.uns`` when ``table`` is an AnnData.
    n_top
        Terms shown, most significant on top: prerank by lowest ``FDR q-val`` then highest
        ``NES``; overrepresentation by lowest ``Adjusted P-value`` (then ``P-value``).
    term_col
        Column of gene-set names.
    x, size_col, color_col
        Columns for position, dot size and colour. Defaults: prerank ``NES``, the number of
        ``Lead_genes``, ``-log10(FDR q-val + 1e-10)``; overrepresentation
        ``-log10(Adjusted P-value + 1e-10)``, k of ``Overlap`` "k/n", ``Odds Ratio``
        (+inf shown as the largest finite value). Rows with NaN in any are left out.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    KeyError
        If ``adata.uns[key]`` or a named column is missing.
    ValueError
        If the table is empty, of neither layout, or has no row with finite values.

    Examples
    --------
    >>> res = bd.tl.enrichment(sdata.tables["table"], key="GeneFlow_importance")
    >>> fig = bd.pl.enrichment_dotplot(res, n_top=10)
    >>> fig = bd.pl.enrichment_dotplot(sdata.tables["table"], key="GeneFlow_importance_enrichment")
    """
    if hasattr(table, "uns") and not isinstance(table, pd.DataFrame):
        if key not in table.uns:
            raise KeyError(f"adata.uns has no {key!r}; run biodiffuse.tl.enrichment first (have {list(table.uns)}).")
        table = table.uns[key].get("results") if isinstance(table.uns[key], Mapping) else table.uns[key]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"Expected an enrichment DataFrame, got {type(table).__name__}.")
    if table.empty:
        raise ValueError("The enrichment table is empty; nothing to plot.")
    if int(n_top) < 1:
        raise ValueError(f"n_top must be >= 1, got {n_top}.")
    order, default = _layout(table, term_col)
    vals = {}
    for role, col in (("x", x), ("size", size_col), ("color", color_col)):
        if col is not None and col not in table.columns:
            raise KeyError(f"Column {col!r} ({role}) not in the enrichment table (have {list(table.columns)}).")
        label, v = (col, order[col]) if col is not None else default[role]
        vals[role] = (label, pd.to_numeric(pd.Series(np.asarray(v)), errors="coerce").to_numpy(dtype=np.float64))
    cv, finite = vals["color"][1], vals["color"][1][np.isfinite(vals["color"][1])]
    if finite.size:  # an infinite odds ratio is coloured as the largest finite one
        cv = np.clip(cv, finite.min(), finite.max())
    ok = np.isfinite(vals["x"][1]) & np.isfinite(vals["size"][1]) & np.isfinite(cv)
    if not ok.any():
        raise ValueError("No term of the enrichment table has finite x, size and colour values.")
    keep = np.flatnonzero(ok)[: int(n_top)]
    terms = order[term_col].astype(str).to_numpy()[keep]
    xv, sv, cv = vals["x"][1][keep], vals["size"][1][keep], cv[keep]

    lo, span = sv.min(), np.ptp(sv)
    area = 30.0 + 170.0 * (sv - lo) / span if span > 0 else np.full(len(sv), 80.0)
    fig, ax = _plt().subplots(figsize=(6.0, 0.9 + 0.3 * len(keep))) if ax is None else (ax.figure, ax)
    y = np.arange(len(keep))[::-1]  # most significant at the top
    dots = ax.scatter(xv, y, s=area, c=cv, cmap="viridis", edgecolors="k", linewidths=0.4, zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels([t if len(t) <= 50 else t[:47] + "..." for t in terms], fontsize=8)
    ax.set_ylim(-0.7, len(keep) - 0.3)
    ax.set_xlabel(vals["x"][0])
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    fig.colorbar(dots, ax=ax, fraction=0.05, pad=0.02).set_label(vals["color"][0])
    if span > 0:
        handles, labels = dots.legend_elements(prop="sizes", num=3, func=lambda s: lo + (s - 30.0) / 170.0 * span)
        ax.legend(handles, labels, title=vals["size"][0], loc="best", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return fig
