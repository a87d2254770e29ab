"""Calibration plots of a predictive distribution given by draws: PIT histogram and coverage."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["calibration"]


def calibration(
    y_true: object,
    samples: object | Mapping[str, object],
    *,
    levels: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    bins: int = 10,
    seed: int = 0,
):
    """PIT histogram and coverage against the nominal level, for one or several predictive distributions.

    Left: the histogram (density) of the randomised PIT values (:func:`~biodiffuse.metrics.pit_values`)
    over all cells and channels: flat at 1 when calibrated, U-shaped when the draws are too narrow,
    a hump when too wide, sloped when biased. Right: the coverage of the central intervals
    (:func:`~biodiffuse.metrics.interval_coverage`, by the PIT, mean over channels) against their
    level: on the diagonal when calibrated, below it when too narrow.

    Returns the matplotlib Figure.

    Parameters
    ----------
    y_true
        ``(n, d)`` observed values (cells x channels).
    samples
        ``(n, s, d)`` draws, e.g. ``model.posterior(query, return_draws=True)["draws_normalized"]``,
        or ``{label: draws}`` to compare methods (e.g. a baseline's
        ``bd.baselines.fit_predict_draws(...)["draws"]``) on the same values.
    levels
        Nominal levels of the central intervals, in ``(0, 1)``.
    bins
        Bins of the PIT histogram.
    seed
        Seed of the PIT's randomisation.

    Examples
    --------
    >>> post = model.posterior(query, n_samples=20, steps=18, return_draws=True)
    >>> ridge = bd.baselines.fit_predict_draws("ridge", f_train, y_train, f_query, n_samples=20)["draws"]
    >>> fig = bd.pl.calibration(y_query_normalized, {"MCD": post["draws_normalized"], "ridge": ridge})
    """
    import matplotlib.pyplot as plt

    from ..metrics import interval_coverage, pit_values

    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer of at least 2, got {bins!r}.")
    draws = dict(samples) if isinstance(samples, Mapping) else {"draws": samples}
    if not draws:
        raise ValueError("samples is an empty mapping: give at least one set of draws.")
    fig, (ax_pit, ax_cov) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    for label, x in draws.items():
        pit = pit_values(y_true, x, seed=seed).ravel()
        density, _ = np.histogram(pit, bins=edges, density=True)
        ax_pit.stairs(density, edges, label=str(label))
        cov = interval_coverage(y_true, x, levels=levels, seed=seed).mean(axis=0)
        ax_cov.plot(list(cov.index), cov.to_numpy(), marker="o", label=str(label))
    ax_pit.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax_pit.set_xlabel("PIT")
    ax_pit.set_ylabel("density")
    ax_pit.set_title("PIT histogram")
    ax_cov.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax_cov.set_xlim(0, 1)
    ax_cov.set_ylim(0, 1)
    ax_cov.set_xlabel("nominal level of the central interval")
    ax_cov.set_ylabel("coverage")
    ax_cov.set_title("interval coverage")
    ax_cov.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig
