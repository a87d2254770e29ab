"""One chooser from a model's training objective to its loop sampler.

GeneFlow (``"flow"``, ``"edm"``, ``"mse"``) and StainDiffuser (``"edm"``, ``"l1"``,
``"pix2pix"``) sample through :func:`~biodiffuse.diffusion.sample_rows` with one of three
families: the rectified-flow solvers, the EDM ODE sampler, or one evaluation of a point
(regression) network. :func:`sampler_for` picks it; every sampler it returns reports the
network evaluations of each draw in its diagnostics (``nfe``).
"""

from __future__ import annotations

from typing import Callable

from .edm import check_count, network_evaluations
from .flow import flow_evaluations, flow_sampler
from .posterior import edm_sampler, point_sampler

__all__ = ["FAMILIES", "sampler_for", "evaluations_for"]

FAMILIES = ("flow", "edm", "point")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")


def sampler_for(
    family: str, steps: int = 1, *, method: str = "euler", solver: str = "heun", sigma_max: float = 80.0
) -> Callable:
    """The loop sampler of a training objective's ``family``.

    Parameters
    ----------
    family
        ``"flow"``: :func:`~biodiffuse.diffusion.flow_sampler` with ``steps`` of ``method``;
        ``"edm"``: :func:`~biodiffuse.diffusion.edm_sampler` with ``steps`` of ``solver`` from
        ``sigma_max``; ``"point"``: :func:`~biodiffuse.diffusion.point_sampler` (one
        evaluation; ``steps`` is ignored).
    steps
        Solver steps, at least 1.
    method
        Flow solver: ``"euler"``, ``"heun"`` or ``"dopri5"``.
    solver
        EDM solver: ``"heun"`` (``2 steps - 1`` evaluations) or ``"euler"``.
    sigma_max
        EDM's highest noise level.

    Examples
    --------
    >>> sampler = bd.diffusion.sampler_for("flow", 8, method="heun")
    >>> sampler = bd.diffusion.sampler_for("edm", 18)            # 35 evaluations per draw
    """
    _check_family(family)
    if family == "flow":
        return flow_sampler(steps, method)
    if family == "edm":
        return edm_sampler(steps, sigma_max=sigma_max, solver=solver)
    return point_sampler


def evaluations_for(family: str, steps: int = 1, *, method: str = "euler", solver: str = "heun") -> int:
    """Network evaluations per draw of :func:`sampler_for` (fixed-step methods only: ``dopri5``
    counts its evaluations at run time, in the sampler's ``nfe`` diagnostic).

    Parameters
    ----------
    family, steps, method, solver
        As in :func:`sampler_for`.

    Examples
    --------
    >>> bd.diffusion.evaluations_for("edm", 18), bd.diffusion.evaluations_for("point")
    (35, 1)
    """
    _check_family(family)
    check_count(steps)
    if family == "flow":
        return flow_evaluations(steps, method)
    if family == "edm":
        return network_evaluations(steps, solver)
    return 1
