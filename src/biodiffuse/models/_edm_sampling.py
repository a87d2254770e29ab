"""The EDM sampler's settings of a model, and choosing them on validation data.

:class:`EDMSamplerMixin` gives a model whose network is sampled with the EDM ODE sampler
(:func:`~biodiffuse.diffusion.edm_sampler`) one place for its solver and Karras noise schedule:
stored in ``init_args`` (so :meth:`~biodiffuse.models.BaseModel.save` keeps them), read by
:attr:`~EDMSamplerMixin.sampler_settings`, changed by :meth:`~EDMSamplerMixin.set_sampler`, and
chosen by :meth:`~EDMSamplerMixin._choose_sampler` from a model-supplied validation score over
the candidates of :func:`~biodiffuse.diffusion.schedule_grid`. MCD, StainDiffuser, SpaDiT,
GeneFlow's ``"edm"`` objective and the modality models use it; each model only says which
validation data it scores and how.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..diffusion import Recentred, check_count, edm_sampler, network_evaluations
from .base import _real

__all__ = ["EDMSamplerMixin", "IMAGE_EULER", "check_positive", "checked_sampler", "pixel_draws"]

logger = logging.getLogger("biodiffuse")

#: EDM's own sampler (Karras et al.): what models saved before the settings existed were sampled with.
EDM_HEUN = dict(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)
#: The image models' default: Euler from 80 with ``rho=3``, chosen by MCD's ``tune_sampler`` on
#: the MIBI validation tiles; EDM's Heun from 80 diverged at a few steps there and on HEMIT
#: (``docs/benchmarks.md``). MCD's images and StainDiffuser.
IMAGE_EULER = dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=3.0)


def check_positive(name: str, value: Any) -> None:
    """A clear error unless ``value`` is a finite number above 0 (bools and text are refused)."""
    if _real(name, value) <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def checked_sampler(*, solver: str, sigma_max: float, sigma_min: float, rho: float) -> dict[str, Any]:
    """The sampler settings as stored in ``init_args``, after clear errors for bad ones."""
    network_evaluations(1, solver)  # a clear error for an unknown solver
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min), ("rho", rho)):
        check_positive(name, value)
    if sigma_min >= sigma_max:
        raise ValueError(f"Need sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    return dict(solver=solver, sigma_max=float(sigma_max), sigma_min=float(sigma_min), rho=float(rho))


class EDMSamplerMixin:
    """Solver and noise schedule of a model sampled with the EDM ODE sampler
    (:class:`~biodiffuse.models.MCD`, :class:`~biodiffuse.models.StainDiffuser`,
    :class:`~biodiffuse.models.SpaDiT`, :class:`~biodiffuse.models.GeneFlow` with
    ``objective="edm"``, :class:`~biodiffuse.models.MultiConditionDiffusion` and
    :class:`~biodiffuse.models.CoherentDenoising`).

    The model keeps ``solver``, ``sigma_max``, ``sigma_min`` and ``rho`` in ``init_args``;
    those missing (a model saved before they existed) read as EDM's Heun from 80. Each model
    adds ``tune_sampler``, which says what validation data it scores, and calls
    :meth:`_choose_sampler`.

    Examples
    --------
    >>> model = bd.models.StainDiffuser(sdata)                # or bd.models.MCD(...)
    >>> model.sampler_settings
    {'solver': 'euler', 'sigma_max': 80.0, 'sigma_min': 0.002, 'rho': 3.0}
    >>> model.set_sampler(solver="heun", rho=7.0)             # EDM's Heun from 80
    >>> model.network_evaluations(steps=18)
    35
    """

    init_args: dict[str, Any]
    registry: dict[str, Any]
    _model_name: str
    #: The settings a model saved without them was sampled with.
    _legacy_sampler: Mapping[str, Any] = EDM_HEUN

    def _check_edm_sampler(self) -> None:
        """Raise unless this model is sampled with the EDM sampler (overridden where some are not)."""

    @property
    def sampler_settings(self) -> dict[str, Any]:
        """The sampler's solver and Karras schedule (a copy; change them with :meth:`set_sampler`).

        A model saved before these were settings loads with EDM's Heun from 80 to 0.002 (``rho=7``).
        """
        a = self.init_args
        return {k: a.get(k, v) for k, v in self._legacy_sampler.items()}

    def _sampler(self, steps: int, *, keep_one_step: bool = False):
        """The ODE sampler on this model's schedule (``keep_one_step``: for :meth:`_run_recentred`)."""
        return edm_sampler(steps, **self.sampler_settings, keep_one_step=keep_one_step)

    #: Whether the model's draws can be recentred (MCD, SpaDiT and the modality models).
    _can_recentre: bool = False

    @property
    def recentres(self) -> bool:
        """Whether the model recentres its multi-step draws when a method's ``recentre`` is None.

        Recentred draws are centred, per row, on the mean of their one-step draws (the first
        evaluation of every solve, so it costs nothing; :class:`~biodiffuse.diffusion.Recentred`).
        Set by the constructor's ``recentre`` and by :meth:`set_sampler`, kept by :meth:`save`; a
        model saved before this was a setting reads False.
        """
        return bool(self.init_args.get("recentre", False))

    def _recentre_setting(self, recentre: Any, default: bool) -> bool:
        """The constructor's ``recentre`` (None: ``default``), after a clear error for a bad one."""
        if recentre is None:
            return bool(default)
        if not isinstance(recentre, (bool, np.bool_)):
            raise TypeError(f"recentre must be True, False or None (the default), got {recentre!r}.")
        if recentre and not self._can_recentre:
            raise ValueError(f"{self._model_name} does not recentre its draws.")
        return bool(recentre)

    def _check_recentre(self, recentre: Any, steps: Any, n_samples: Any = None) -> bool:
        """Whether to recentre: ``recentre`` (None: the model's setting, :attr:`recentres`), more
        than one step and more than one draw (``n_samples``; None: the tuners' several), after a
        clear error for a bad ``recentre``. A single draw is left as drawn: centred on its own
        one-step draw it would be that one-step draw, not a sample."""
        recentre = self.recentres if recentre is None else self._recentre_setting(recentre, False)
        return recentre and check_count(steps, "steps") > 1 and (n_samples is None or check_count(n_samples, "n_samples") > 1)

    @staticmethod
    def _run_recentred(run: Callable[[Any, Any], Any], sampler: Any, reducer: Any, recentre: bool) -> Any:
        """``run(sampler, reducer)``; with ``recentre``, every row's draws centred on the mean of
        its one-step draws (:class:`~biodiffuse.diffusion.Recentred`), which ``sampler`` must
        keep (``self._sampler(steps, keep_one_step=True)``: the first evaluation of its solve,
        so recentring costs no evaluation)."""
        if recentre:
            if not getattr(sampler, "keeps_one_step", False):
                raise ValueError("recentre needs a sampler built with keep_one_step=True.")
            reducer = Recentred(reducer)
        return run(sampler, reducer)

    def network_evaluations(self, *, steps: int) -> int:
        """Network evaluations per draw that ``steps`` sampler steps cost with this model's solver.

        Parameters
        ----------
        steps
            Sampler steps.

        Examples
        --------
        >>> model.network_evaluations(steps=5)       # Euler: 5; Heun: 9
        5
        """
        return network_evaluations(steps, self.sampler_settings["solver"])

    def set_sampler(
        self,
        *,
        solver: str | None = None,
        sigma_max: float | None = None,
        sigma_min: float | None = None,
        rho: float | None = None,
        recentre: bool | None = None,
    ) -> None:
        """Change the sampler (ODE solver and Karras noise schedule) the model samples with.

        Arguments left as None keep their current value; the new settings are checked as in
        the constructor and kept by :meth:`save`. ``tune_sampler`` chooses them on
        validation data.

        Parameters
        ----------
        solver
            ``"euler"``, ``"heun"`` or ``"dpm2m"`` (DPM-Solver++ 2M: one evaluation a step, second order).
        sigma_max, sigma_min, rho
            The Karras schedule: highest and lowest noise level and its curvature.
        recentre
            Whether multi-step draws are recentred on their one-step mean by default
            (:attr:`recentres`; MCD, SpaDiT and the modality models).

        Examples
        --------
        >>> model.set_sampler(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)   # EDM's sampler
        >>> model.network_evaluations(steps=18)
        35
        """
        self._check_edm_sampler()
        current = self.sampler_settings
        given = dict(solver=solver, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)
        checked = checked_sampler(**{k: current[k] if v is None else v for k, v in given.items()})
        if recentre is not None:
            checked["recentre"] = self._recentre_setting(recentre, False)
        self.init_args.update(checked)

    @staticmethod
    def _check_tuning(n_samples: Any, max_items: Any, *, unit: str, have_validation: bool, items: str = "tiles") -> None:
        """The argument errors every ``tune_sampler`` shares (``unit``: what a draw is of;
        ``items``: what the validation data are, as in the ``max_<items>`` argument)."""
        if check_count(n_samples, "n_samples") < 2:
            raise ValueError(f"tune_sampler needs at least 2 draws per {unit} to score a distribution, got n_samples={n_samples!r}.")
        check_count(max_items, f"max_{items}")
        if not have_validation:
            raise ValueError(f"No validation {items}: this model has not been trained in this session, or with train_size=1.")

    def _choose_sampler(
        self,
        score: Callable[[Any], Mapping[str, float]],
        *,
        nfe: int,
        candidates: Sequence[Mapping[str, Any]] | None,
        scored_on: str,
        make_sampler: Callable[..., Any] = edm_sampler,
    ) -> pd.DataFrame:
        """Score every candidate schedule with ``score(make_sampler(steps, **schedule))``, keep
        the lowest fair CRPS (``crps_fair`` of :func:`~biodiffuse.metrics.score_draws`: the
        score of the distribution the draws come from; the ensemble's own CRPS of a few
        validation draws favours samplers whose draws are too narrow). ``make_sampler``: the
        loop sampler of a schedule; a model whose draws are more than one ODE solve, such as
        Coherent Denoising's consensus, passes its own. A model that recentres (:attr:`recentres`)
        is tuned as it samples: each multi-step candidate's sampler keeps its one-step draws
        (``keep_one_step=True``), and ``score`` recentres the draws of a sampler that
        ``keeps_one_step``.

        The winner becomes the model's schedule (:meth:`set_sampler`) and its row is kept in
        ``registry["sampler_tuning"]``. Returns every candidate, best first
        (:func:`~biodiffuse.diffusion.choose_schedule`), with a column ``recentred`` (whether
        its draws were scored recentred).
        """
        from ..diffusion import choose_schedule, schedule_grid

        def by_settings(cand: Mapping[str, Any]) -> Mapping[str, float]:
            steps = check_count(cand["steps"], "a candidate's steps")
            schedule = {k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}
            if self._check_recentre(None, steps):
                schedule["keep_one_step"] = True
            return score(make_sampler(steps, **schedule))

        table = choose_schedule(by_settings, list(candidates) if candidates is not None else schedule_grid(nfe), key="crps_fair")
        table["recentred"] = [self._check_recentre(None, int(st)) for st in table["steps"]]  # how each was scored
        best = table.iloc[0]
        self.set_sampler(solver=str(best["solver"]), **{k: float(best[k]) for k in ("sigma_max", "sigma_min", "rho")})
        self.registry["sampler_tuning"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.to_dict().items()}
        logger.info(
            "%s: sampler chosen on %s at %d NFE per draw: %s, %d steps, sigma %g -> %g, rho %g (fair CRPS %.4f)",
            self._model_name, scored_on, int(best["nfe"]), best["solver"], int(best["steps"]), best["sigma_max"],
            best["sigma_min"], best["rho"], best["crps_fair"],
        )
        return table


def pixel_draws(draws: np.ndarray) -> np.ndarray:
    """Tile draws (n, S, C, T, T) -> per-pixel draws (n * T * T, S, C), the layout
    :func:`~biodiffuse.metrics.score_draws` takes."""
    n, k, c, h, w = draws.shape
    return draws.transpose(0, 3, 4, 1, 2).reshape(n * h * w, k, c)
