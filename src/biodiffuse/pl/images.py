"""Plots for image imputation: measured / imputed / uncertainty panels per channel."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["image_imputation_panels"]


def _plane(sdata, key: str, channel: str) -> np.ndarray:
    elem = sdata.images[key]
    names = [str(c) for c in elem.coords["c"].values]
    if channel not in names:
        raise KeyError(f"channel {channel!r} not in images[{key!r}] (have {names[:8]}...).")
    return np.asarray(elem.data[names.index(channel)], dtype=np.float32)


def image_imputation_panels(
    sdata,
    image_key: str,
    channels: Sequence[str],
    imputed_key: str | None = None,
    variance_key: str | None = None,
    region: tuple[slice, slice] | None = None,
    percentile: float = 99.0,
):
    """Measured (if present), imputed and uncertainty (standard deviation) image per channel.

    Parameters
    ----------
    sdata
        SpatialData after :meth:`MCD.impute <biodiffuse.models.MCD.impute>`.
    image_key
        The measured image element.
    channels
        Imputed channels to show, one row each.
    imputed_key, variance_key
        Elements written by ``impute`` (default ``f"{image_key}_MCD_imputed"`` /
        ``f"{image_key}_MCD_variance"``; the uncertainty column is skipped if absent).
    region
        Optional ``(slice_y, slice_x)`` crop.
    percentile
        Upper colour limit per row: this percentile of the measured (else imputed) values,
        shared by the measured and imputed panels so they are comparable.

    Returns
    -------
    The matplotlib Figure.

    Examples
    --------
    >>> model.impute(sdata, missing=["CD3", "CD8"])    # images "mibi_MCD_imputed", "mibi_MCD_variance"
    >>> fig = bd.pl.image_imputation_panels(sdata, "mibi", ["CD3", "CD8"])
    >>> fig = bd.pl.image_imputation_panels(sdata, "mibi", ["CD8"], region=(slice(0, 128), slice(0, 128)))
    """
    import matplotlib.pyplot as plt

    imputed_key = imputed_key or f"{image_key}_MCD_imputed"
    variance_key = variance_key or f"{image_key}_MCD_variance"
    if imputed_key not in sdata.images:
        raise KeyError(f"{imputed_key!r} not in sdata.images; run model.impute(sdata, ...) first.")
    show_var = variance_key in sdata.images
    measured_names = [str(c) for c in sdata.images[image_key].coords["c"].values] if image_key in sdata.images else []
    crop = region or (slice(None), slice(None))
    ncol = 2 + int(show_var)
    fig, axes = plt.subplots(len(channels), ncol, figsize=(3.2 * ncol, 3.0 * len(channels)), squeeze=False)
    for i, ch in enumerate(channels):
        imp = _plane(sdata, imputed_key, ch)[crop]
        meas = _plane(sdata, image_key, ch)[crop] if ch in measured_names else None
        vmax = float(np.percentile(meas if meas is not None else imp, percentile)) or None
        panels = [("measured", meas, "magma", vmax), ("imputed", imp, "magma", vmax)]
        if show_var:
            panels.append(("uncertainty (sd)", np.sqrt(_plane(sdata, variance_key, ch)[crop]), "viridis", None))
        for j, (title, arr, cmap, vm) in enumerate(panels):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if arr is None:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            else:
                im = ax.imshow(arr, cmap=cmap, vmin=0, vmax=vm, interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title(f"{ch}: {title}", fontsize=9)
    fig.tight_layout()
    return fig
