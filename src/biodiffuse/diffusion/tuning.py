"""Choosing a sampler's solver and noise schedule by a validation score.

A few-step ODE sampler's quality depends on where its noise levels sit; which schedule is best
depends on the data and the trained network. Rather than fixing it by hand (or on test data),
a model scores every schedule of a small grid on its own validation cells and keeps the best:
:func:`schedule_grid` lists the candidates at a budget of network evaluations per draw, and
:func:`choose_schedule` scores them with a model-supplied function and ranks them.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .edm import TUNED_SOLVERS, karras_sigmas, network_evaluations

__all__ = ["schedule_grid", "choose_schedule"]


def schedule_grid(
    nfe: int,
    *,
    solvers: Sequence[str] = TUNED_SOLVERS,
    sigma_max: Sequence[float] = (80.0, 10.0, 2.0),
    sigma_min: Sequence[float] = (0.002, 0.05, 0.2),
    rho: Sequence[float] = (7.0, 3.0),
) -> list[dict[str, Any]]:
    """Candidate schedules that cost at most ``nfe`` network evaluations per draw.

    Each solver gets the most steps the budget allows (Euler and DPM-Solver++ 2M: ``nfe``; Heun:
    ``(nfe + 1) // 2``).

    Parameters
    ----------
    nfe
        Network evaluations per draw, at least 1.
    solvers, sigma_max, sigma_min, rho
        The grid (pairs with ``sigma_min >= sigma_max`` are left out). ``solvers`` defaults to
        Heun, Euler and DPM-Solver++ 2M (``"dpm2m"``).

    Returns
    -------
    A list of dicts with ``solver``, ``steps``, ``nfe``, ``sigma_max``, ``sigma_min``, ``rho``.

    Examples
    --------
    >>> grid = bd.diffusion.schedule_grid(5)
    >>> sorted({(c["solver"], c["steps"], c["nfe"]) for c in grid})
    [('dpm2m', 5, 5), ('euler', 5, 5), ('heun', 3, 5)]
    """
    if isinstance(nfe, bool) or int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}.")
    out = []
    for solver, smax, smin, r in itertools.product(solvers, sigma_max, sigma_min, rho):
        if smin >= smax:
            continue
        karras_sigmas(1, smin, smax, r)  # validates the schedule
        steps = (int(nfe) + 1) // 2 if solver == "heun" else int(nfe)
        out.append(dict(solver=solver, steps=steps, nfe=network_evaluations(steps, solver),
                        sigma_max=float(smax), sigma_min=float(smin), rho=float(r)))
    if not out:
        raise ValueError("The grid is empty: every sigma_min is at or above every sigma_max.")
    return out


def choose_schedule(
    score: Callable[[Mapping[str, Any]], Mapping[str, float]],
    candidates: Sequence[Mapping[str, Any]],
    *,
    key: str = "crps",
) -> pd.DataFrame:
    """Score every candidate and rank them, best (lowest ``key``) first.

    Parameters
    ----------
    score
        ``score(candidate) -> {metric: value}``, e.g. the CRPS of draws on validation cells;
        must include ``key``.
    candidates
        From :func:`schedule_grid` (or any dicts of sampler settings).
    key
        The metric to minimise.

    Returns
    -------
    One row per candidate (its settings and metrics), sorted by ``key``.

    Examples
    --------
    >>> table = bd.diffusion.choose_schedule(lambda c: {"crps": abs(c["sigma_max"] - 10)}, bd.diffusion.schedule_grid(3))
    >>> table.iloc[0]["sigma_max"]
    10.0
    """
    if not candidates:
        raise ValueError("No candidate schedule to score.")
    rows = []
    for cand in candidates:
        metrics = dict(score(cand))
        if key not in metrics:
            raise KeyError(f"score() returned no {key!r} (got {sorted(metrics)}).")
        rows.append({**cand, **metrics})
    return pd.DataFrame(rows).sort_values(key, kind="stable").reset_index(drop=True)
