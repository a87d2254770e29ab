"""Plots for synthesised modalities: real vs synthetic embeddings, acquisition curves, R² tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ..metrics import as_float_2d as _as_float_2d

__all__ = ["acquisition_curves", "r2_heatmap", "real_vs_synthetic_umap"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _embed(X: np.ndarray, basis: str, n_neighbors: int, seed: int) -> np.ndarray:
    if basis == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(X)
    import umap

    nn = max(2, min(n_neighbors, X.shape[0] - 1))
    return umap.UMAP(n_neighbors=nn, random_state=seed, n_jobs=1).fit_transform(X)


def real_vs_synthetic_umap(
    real: np.ndarray,
    synthetic: np.ndarray | Mapping[str, np.ndarray],
    labels: Sequence | np.ndarray | None = None,
    *,
    basis: Literal["umap", "pca"] = "umap",
    n_neighbors: int = 15,
    seed: int = 0,
    point_size: float = 8.0,
):
    """Real and synthetic samples in one shared 2-D embedding, one panel per source.

    The embedding (UMAP from umap-learn, or PCA) is fitted on all rows together; each
    panel shows every point in light grey and its own source's points on top, coloured
    by ``labels`` (e.g. subtype) when given.

    Parameters
    ----------
    real
        Real samples x features.
    synthetic
        Synthetic samples x the same features, or ``{method: array}`` for several.
    labels
        Optional categories: one per real row when every synthetic set is a completion
        of the same patients (same number of rows), or one per row of real followed by
        each synthetic set in order.
    basis
        ``"umap"`` (default) or ``"pca"`` (fast, linear).
    n_neighbors
        UMAP neighbours (capped at the number of rows - 1).
    seed
        Seed of UMAP / PCA.
    point_size
        Marker size.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> real = train.mod["protein"].X
    >>> synth = {"MCD": model.sample(train, target="protein")["mean"]}
    >>> fig = bd.pl.real_vs_synthetic_umap(real, synth, train.obs["subtype"].to_numpy())
    >>> fig = bd.pl.real_vs_synthetic_umap(real, synth["MCD"], basis="pca")
    """
    if basis not in ("umap", "pca"):
        raise ValueError(f"basis must be 'umap' or 'pca', got {basis!r}.")
    sources = {"real": _as_float_2d(real, "real")}
    synth = synthetic if isinstance(synthetic, Mapping) else {"synthetic": synthetic}
    if len(synth) == 0:
        raise ValueError("synthetic is an empty dict.")
    for name, arr in synth.items():
        if name == "real":
            raise ValueError("synthetic method name 'real' is reserved; rename it.")
        sources[str(name)] = _as_float_2d(arr, f"synthetic[{name!r}]")
        if sources[str(name)].shape[1] != sources["real"].shape[1]:
            raise ValueError(
                f"synthetic[{name!r}] has {sources[str(name)].shape[1]} features; real has {sources['real'].shape[1]}."
            )
    sizes = [a.shape[0] for a in sources.values()]
    lab = None
    if labels is not None:
        lab = np.asarray(labels).astype(str)
        if lab.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {lab.shape}.")
        if lab.shape[0] == sizes[0] and all(s == sizes[0] for s in sizes):
            lab = np.tile(lab, len(sizes))
        elif lab.shape[0] != sum(sizes):
            raise ValueError(
                f"labels has {lab.shape[0]} entries; expected {sizes[0]} (one per real row, synthetic sets "
                f"of the same size) or {sum(sizes)} (every row)."
            )
    emb = _embed(np.vstack(list(sources.values())), basis, n_neighbors, seed)
    bounds = np.cumsum([0] + sizes)

    plt = _plt()
    n = len(sources)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False, sharex=True, sharey=True)
    cats = np.unique(lab) if lab is not None else None
    colours = plt.get_cmap("tab10" if cats is None or len(cats) <= 10 else "tab20")
    for i, (ax, name) in enumerate(zip(axes[0], sources)):
        ax.scatter(emb[:, 0], emb[:, 1], s=point_size, c="#dddddd", linewidths=0)
        sl = slice(bounds[i], bounds[i + 1])
        if cats is None:
            ax.scatter(emb[sl, 0], emb[sl, 1], s=point_size, color=colours(i % 10), linewidths=0)
        else:
            for j, cat in enumerate(cats):
                sel = np.flatnonzero(lab[sl] == cat) + bounds[i]
                ax.scatter(emb[sel, 0], emb[sel, 1], s=point_size, color=colours(j), linewidths=0, label=cat)
        ax.set_title(f"{name} (n={sizes[i]})", fontsize=10)
        ax.set_xlabel(f"{basis.upper()} 1")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel(f"{basis.upper()} 2")
    if cats is not None:
        axes[0, -1].legend(frameon=False, fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def acquisition_curves(
    curve: pd.DataFrame | Mapping[str, pd.DataFrame],
    ax=None,
    ylabel: str = "metric",
    title: str | None = None,
):
    """Informed vs random acquisition: metric against the fraction of patients acquired.

    Parameters
    ----------
    curve
        Output of :func:`biodiffuse.tl.acquisition_curve`, or ``{strategy: curve}`` for
        several informed strategies on the same patients (the random baseline, mean with
        a +- 1 standard deviation band, is drawn from the first).
    ax
        Axes to draw on (default: a new figure).
    ylabel, title
        Axis label (the metric's name) and title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> curve = bd.tl.acquisition_curve(y_test, pred_real, pred_synth, spread, balanced_accuracy_score)
    >>> fig = bd.pl.acquisition_curves(curve, ylabel="balanced accuracy")
    >>> fig = bd.pl.acquisition_curves({"disagreement": curve, "variance": curve_var}, title="BRCA protein")
    """
    curves = {"informed": curve} if isinstance(curve, pd.DataFrame) else dict(curve)
    if not curves:
        raise ValueError("curve is an empty dict.")
    needed = {"fraction", "informed", "random_mean", "random_sd"}
    for name, df in curves.items():
        if not isinstance(df, pd.DataFrame) or not needed.issubset(df.columns):
            raise ValueError(f"curve {name!r} must be a DataFrame with columns {sorted(needed)}.")
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
    else:
        fig = ax.figure
    first = next(iter(curves.values()))
    x = first["fraction"].to_numpy(float)
    mu, sd = first["random_mean"].to_numpy(float), first["random_sd"].to_numpy(float)
    ax.plot(x, mu, color="tab:red", label="random")
    ax.fill_between(x, mu - sd, mu + sd, color="tab:red", alpha=0.2, linewidth=0)
    blues = plt.get_cmap("Blues")
    for i, (name, df) in enumerate(curves.items()):
        shade = 0.9 - 0.5 * i / max(1, len(curves) - 1) if len(curves) > 1 else 0.8
        ax.plot(df["fraction"], df["informed"], color=blues(shade), marker="o", ms=3, label=name)
    ax.set_xlabel("fraction of patients with the real modality")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def r2_heatmap(
    table: pd.DataFrame,
    ax=None,
    fmt: str = ".2f",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "R²",
):
    """Annotated heat map of a score table (rows: target modality; columns: conditions or methods).

    Parameters
    ----------
    table
        Numeric DataFrame; NaN cells (e.g. a modality conditioned on itself) are left
        blank.
    ax
        Axes to draw on (default: a new figure sized to the table).
    fmt
        Format of the annotations.
    cmap, vmin, vmax
        Colour map and its limits (default: the table's finite range).
    label
        Colour bar label.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> table = pd.DataFrame({"mrna": [np.nan, 0.41], "mirna": [0.35, np.nan]}, index=["protein", "mrna"])
    >>> fig = bd.pl.r2_heatmap(table, vmin=0, vmax=1)
    >>> fig = bd.pl.r2_heatmap(scores, fmt=".3f", label="R² (latent)")
    """
    if not isinstance(table, pd.DataFrame) or table.size == 0:
        raise ValueError("table must be a non-empty DataFrame.")
    try:
        values = table.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError("table must be numeric.") from err
    if not np.isfinite(values).any():
        raise ValueError("table has no finite value.")
    plt = _plt()
    nr, nc = values.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * nc, 0.8 + 0.5 * nr))
    else:
        fig = ax.figure
    masked = np.ma.masked_invalid(values)
    lo = np.nanmin(values[np.isfinite(values)]) if vmin is None else vmin
    hi = np.nanmax(values[np.isfinite(values)]) if vmax is None else vmax
    im = ax.imshow(masked, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    cm = plt.get_cmap(cmap)
    span = (hi - lo) or 1.0
    for i in range(nr):
        for j in range(nc):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            r, g, b, _ = cm(np.clip((v - lo) / span, 0, 1))
            colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, format(v, fmt), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(nc), [str(c) for c in table.columns], rotation=45, ha="right")
    ax.set_yticks(range(nr), [str(r) for r in table.index])
    fig.colorbar(im, ax=ax, label=label, fraction=0.05)
    fig.tight_layout()
    return fig
