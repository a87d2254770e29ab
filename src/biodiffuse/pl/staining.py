"""Plots for virtual staining: H&E | real stain | virtual stains per held-out tile and stain, and
the per-tile fraction of positive nuclei, real against virtual."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .histology import _plt, tile_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["positivity_scatter", "stain_panels"]


def _unit(name: str, arr: Any) -> np.ndarray:
    """(N, C, H, W) uint8 (/ 255) or float in [0, 1] -> float64."""
    a = np.asarray(arr)
    if a.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {a.shape}.")
    return a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def stain_panels(
    he: Any,
    real: Any,
    virtual: Mapping[str, Any],
    *,
    stains: Sequence[str],
    stain: str | Sequence[str] | None = None,
    rows: Sequence[int] | None = None,
    max_rows: int = 4,
    tile_names: Sequence[str] | None = None,
    cmap: str = "magma",
    size: float = 1.4,
) -> Figure:
    """H&E | real stain | each virtual stain, one row per (tile, stain).

    Parameters
    ----------
    he
        ``(N, 3, H, W)`` H&E tiles (uint8 or float in ``[0, 1]``).
    real
        ``(N, C, H, W)`` measured stains, channels in the order of ``stains``.
    virtual
        Ordered mapping method name -> ``(N, C, H, W)`` virtual stains (same order), e.g.
        StainDiffuser and its baselines.
    stains
        The C channel names.
    stain
        The stain(s) shown (default all), each as its own row per tile.
    rows, max_rows
        Tiles shown (positions); default the first ``max_rows``.
    tile_names
        N names written at the left with the stain.
    cmap, size
        Colormap of the stain panels ([0, 1] intensities) and inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
        From :func:`biodiffuse.pl.tile_grid` (columns ``"H&E"``, ``"real"``, then ``virtual``).

    Raises
    ------
    ValueError
        For arrays of other shapes or channel counts, an unknown stain or empty ``virtual``.

    Examples
    --------
    >>> fig = bd.pl.stain_panels(he, real, {"StainDiffuser": fake, "Pix2Pix": p2p},
    ...                          stains=["DAPI", "CD3", "panCK"], stain="CD3")
    """
    if not virtual:
        raise ValueError("virtual is empty; give {method name: (N, C, H, W) array}.")
    names = [str(s) for s in stains]
    wanted = names if stain is None else [stain] if isinstance(stain, str) else [str(s) for s in stain]
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"stain(s) {unknown} not in stains {names}.")
    h = _unit("he", he)
    arrays = {"real": _unit("real", real), **{str(k): _unit(f"virtual[{k!r}]", v) for k, v in virtual.items()}}
    for key, a in arrays.items():
        if a.shape[1] != len(names) or a.shape[0] != h.shape[0] or a.shape[2:] != h.shape[2:]:
            key = key if key == "real" else f"virtual[{key!r}]"
            raise ValueError(f"{key} has shape {a.shape}; expected ({h.shape[0]}, {len(names)}, {h.shape[2]}, {h.shape[3]}).")
    if h.shape[1] != 3:
        raise ValueError(f"he must have 3 (RGB) channels, got {h.shape[1]}.")
    n = h.shape[0]
    idx = np.arange(min(n, int(max_rows))) if rows is None else np.asarray(rows)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or (idx < 0).any() or (idx >= n).any():
        raise ValueError(f"rows must select positions in [0, {n}), got {rows!r}.")
    if tile_names is not None and len(tile_names) != n:
        raise ValueError(f"tile_names has {len(tile_names)} names for {n} tiles.")
    chans = [names.index(s) for s in wanted]
    pairs = [(int(i), c) for i in idx for c in chans]  # one row per (tile, stain)
    tiles = {"H&E": h[[i for i, _ in pairs]]}
    for key, a in arrays.items():
        tiles[key] = np.stack([a[i, c : c + 1] for i, c in pairs])
    labels = [f"{tile_names[i] if tile_names is not None else i}\n{names[c]}" for i, c in pairs]
    return tile_grid(tiles, row_labels=labels, max_rows=len(pairs), cmap=cmap, size=size)


def positivity_scatter(
    real: pd.DataFrame,
    virtual: Mapping[str, pd.DataFrame],
    *,
    markers: Sequence[str] | None = None,
    size: float = 2.6,
) -> Figure:
    """Per-tile fraction of positive nuclei, real (x) against virtual (y), one panel per marker.

    Parameters
    ----------
    real
        :func:`biodiffuse.metrics.nuclei_positivity` of the real tiles (``frac_<marker>`` columns).
    virtual
        Method name -> the same table of its virtual tiles (same labels, so the same nuclei).
    markers
        Markers shown (default all ``frac_`` columns of ``real``).
    size
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
        One axis per marker with the diagonal and, in the legend, each method's Pearson r.

    Raises
    ------
    ValueError
        For an empty ``virtual``, unknown markers or tables that do not share tiles and columns.

    Examples
    --------
    >>> labels = bd.metrics.nuclei_labels(real)
    >>> pos = {k: bd.metrics.nuclei_positivity(v, thresholds=thr, labels=labels) for k, v in fakes.items()}
    >>> fig = bd.pl.positivity_scatter(bd.metrics.nuclei_positivity(real, thresholds=thr, labels=labels), pos)
    """
    if not virtual:
        raise ValueError("virtual is empty; give {method name: positivity table}.")
    have = [c[len("frac_"):] for c in real.columns if str(c).startswith("frac_")]
    markers = have if markers is None else [str(m) for m in markers]
    missing = [m for m in markers if m not in have]
    if missing or not markers:
        raise ValueError(f"marker(s) {missing or markers} not among the real table's frac_ columns {have}.")
    for key, table in virtual.items():
        if not table.index.equals(real.index) or any(f"frac_{m}" not in table.columns for m in markers):
            raise ValueError(f"virtual[{key!r}] must have the real table's tiles and frac_ columns.")
    fig, axes = _plt().subplots(1, len(markers), figsize=(size * len(markers), size), squeeze=False)
    for ax, m in zip(axes[0], markers):
        x = real[f"frac_{m}"].to_numpy(dtype=float)
        for key, table in virtual.items():
            y = table[f"frac_{m}"].to_numpy(dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            r = np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 1 and x[ok].std() > 0 and y[ok].std() > 0 else np.nan
            ax.scatter(x[ok], y[ok], s=10, alpha=0.7, label=f"{key} (r = {r:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("real: fraction positive")
        ax.set_title(m, fontsize=10)
        ax.legend(fontsize=6, loc="upper left")
    axes[0, 0].set_ylabel("virtual: fraction positive")
    fig.tight_layout()
    return fig
