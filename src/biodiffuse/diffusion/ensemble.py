"""Coherent Denoising: an ensemble of single-condition denoisers acting as one.

At every sampler step each available denoiser ``D_k(x; sigma | c_k)`` predicts the clean
sample; the consensus is their weighted average. Averaging denoised estimates is the same as
averaging noise predictions, since ``eps_k = (x - D_k) / sigma`` is affine in ``D_k``. The
ensemble also measures, per sample and step, the pairwise cosine distance between the noise
predictions ``eps_k``; a step is *incoherent* when the largest pairwise distance exceeds
``threshold``, and a sample whose fraction of incoherent steps exceeds
``max_incoherent_fraction`` is rejected and drawn again (:func:`coherent_sample`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .edm import check_count, heun_sampler, karras_sigmas, network_evaluations
from .posterior import ONE_STEP

__all__ = ["CoherentConsensus", "coherent_sample", "coherent_sampler"]


def _take_rows(cond: Any, rows: torch.Tensor, n: int) -> Any:
    """``cond`` restricted to ``rows``: every tensor with ``n`` rows is indexed, lists, tuples
    and dicts are followed, anything else (``None``, scalars, shared tensors) is kept."""
    if isinstance(cond, torch.Tensor):
        return cond[rows.to(cond.device)] if cond.dim() > 0 and cond.shape[0] == n else cond
    if isinstance(cond, (list, tuple)):
        return type(cond)(_take_rows(c, rows, n) for c in cond)
    if isinstance(cond, dict):
        return {k: _take_rows(v, rows, n) for k, v in cond.items()}
    return cond


class CoherentConsensus:
    """A denoiser callable that averages several conditional denoisers.

    Parameters
    ----------
    denoisers
        K callables ``D_k(x, sigma, cond_k)``.
    conds
        The K conditions (each batched like ``x``).
    weights
        (K,) non-negative weights (e.g. softmax of inverse validation losses).
    available
        (B, K) booleans: which denoisers apply to each sample (its condition is measured).
        Every sample needs at least one. A denoiser is evaluated on its available samples only
        (its condition's tensors with B rows are indexed to them), so a sample costs one
        network evaluation per available denoiser and call.
    threshold
        Cosine distance between two noise predictions above which a step is incoherent.

    Examples
    --------
    >>> consensus = bd.diffusion.CoherentConsensus(
    ...     [d_rna, d_cnv], [c_rna, c_cnv], weights=torch.tensor([0.6, 0.4]),
    ...     available=torch.ones(n, 2, dtype=torch.bool), threshold=0.5)
    >>> x = bd.diffusion.heun_sampler(consensus, torch.randn(n, d), steps=18)
    >>> consensus.incoherent_fraction()            # (n,) share of incoherent steps per sample
    """

    def __init__(
        self,
        denoisers: Sequence[Callable[..., torch.Tensor]],
        conds: Sequence[Any],
        weights: torch.Tensor,
        available: torch.Tensor,
        threshold: float = 0.5,
    ) -> None:
        if len(denoisers) != len(conds) or len(denoisers) != len(weights):
            raise ValueError("denoisers, conds and weights must have the same length.")
        if available.shape[1] != len(denoisers):
            raise ValueError(f"available has {available.shape[1]} columns for {len(denoisers)} denoisers.")
        if not bool(available.any(dim=1).all()):
            raise ValueError("Every sample needs at least one available condition.")
        self.denoisers = list(denoisers)
        self.conds = list(conds)
        w = available.to(weights.dtype) * weights[None, :]
        self.w = w / w.sum(dim=1, keepdim=True)
        self.available = available.bool()
        self.threshold = float(threshold)
        n = available.shape[0]
        # per denoiser: None when it applies to every sample, else its samples and their conditions
        self._subsets = []
        for k, c in enumerate(self.conds):
            if bool(self.available[:, k].all()):
                self._subsets.append(None)
            else:
                rows = torch.nonzero(self.available[:, k]).reshape(-1)
                self._subsets.append((rows, _take_rows(c, rows, n)))
        self.steps = 0
        self.first: torch.Tensor | None = None  # the consensus's first output (at sigma_max): the one-step draw
        self.incoherent = torch.zeros(available.shape[0], device=available.device)
        self.worst: list[torch.Tensor] = []  # per call, each sample's largest pairwise distance

    def _denoise(self, k: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoiser ``k``'s output on its available samples; ``x`` (no noise predicted) elsewhere."""
        subset = self._subsets[k]
        if subset is None:
            return self.denoisers[k](x, sigma, self.conds[k])
        rows, cond = subset
        out = x.clone()
        if len(rows):
            rows = rows.to(x.device)
            out[rows] = self.denoisers[k](x[rows], sigma[rows], cond).to(x.dtype)
        return out

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, _cond: Any = None) -> torch.Tensor:
        outs = torch.stack([self._denoise(k, x, sigma) for k in range(len(self.denoisers))], dim=1)  # (B, K, D)
        consensus = (self.w.to(outs.dtype)[:, :, None] * outs).sum(dim=1)
        if len(self.denoisers) > 1:
            eps = (x[:, None, :] - outs) / sigma.reshape(-1, 1, 1).to(outs.dtype)
            unit = torch.nn.functional.normalize(eps, dim=-1)
            cos_dist = 1.0 - unit @ unit.transpose(1, 2)  # (B, K, K)
            pair = self.available[:, :, None] & self.available[:, None, :]
            worst = torch.where(pair, cos_dist, torch.zeros_like(cos_dist)).amax(dim=(1, 2))
            self.incoherent += (worst > self.threshold).to(self.incoherent.dtype)
            self.worst.append(worst.detach())
        if self.steps == 0:
            self.first = consensus
        self.steps += 1
        return consensus

    def evaluations(self) -> torch.Tensor:
        """Per sample, the network evaluations spent on it so far (calls x available denoisers)."""
        return self.steps * self.available.sum(dim=1)

    def incoherent_fraction(self) -> torch.Tensor:
        """Per sample, the fraction of denoiser calls judged incoherent so far."""
        return self.incoherent / max(self.steps, 1)

    def critical_threshold(self, max_incoherent_fraction: float) -> torch.Tensor:
        """Per sample, the smallest threshold at which it would not have been rejected.

        A sample is kept when at most ``floor(f * calls)`` calls have a largest pairwise
        distance above the threshold, i.e. when the threshold is at least the
        ``floor(f * calls) + 1``-th largest of its distances. Zeros with a single denoiser.
        """
        if not self.worst:
            return torch.zeros(self.available.shape[0], device=self.available.device)
        dist = torch.stack(self.worst, dim=1)  # (B, calls)
        m = int(math.floor(max_incoherent_fraction * dist.shape[1]))
        return dist.sort(dim=1, descending=True).values[:, min(m, dist.shape[1] - 1)]


def _check_redraws(max_incoherent_fraction: Any, max_retries: Any) -> None:
    """Clear errors for a rejection rule that is not one (a negative ``max_retries`` would draw nothing)."""
    if isinstance(max_retries, (bool, np.bool_)) or not isinstance(max_retries, (int, np.integer)) or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
    f = max_incoherent_fraction
    if isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, float, np.integer, np.floating)) or not 0.0 <= f <= 1.0:
        raise ValueError(f"max_incoherent_fraction must lie in [0, 1], got {f!r}.")


@torch.no_grad()
def coherent_sample(
    make_consensus: Callable[[torch.Tensor], CoherentConsensus],
    latents: torch.Tensor,
    redraw: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 18,
    max_incoherent_fraction: float = 0.1,
    max_retries: int = 10,
    **sampler_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample with a consensus and redraw the incoherent samples.

    Parameters
    ----------
    make_consensus
        Builds a fresh :class:`CoherentConsensus` for the draws given (a LongTensor of
        indices into the rows of ``latents``).
    latents
        Standard-normal latents, one row per draw.
    redraw
        ``redraw(draws)`` returns fresh standard-normal latents for those draws (from each
        draw's own random stream, see :func:`~biodiffuse.diffusion.sample_rows`).
    steps
        Sampler steps (:func:`~biodiffuse.diffusion.heun_sampler`).
    max_incoherent_fraction
        A sample is rejected when more than this fraction of its steps was incoherent.
    max_retries
        Redraws per sample; after them the last draw is kept.
    **sampler_kwargs
        Passed to :func:`~biodiffuse.diffusion.heun_sampler`.

    Returns
    -------
    samples (n, D), the number of retries per sample (n,), and whether the kept sample was
    still incoherent (n,).

    Examples
    --------
    >>> def make_consensus(rows):                  # rows: the draws still to sample
    ...     return bd.diffusion.CoherentConsensus(denoisers, [c[rows] for c in conds], weights, available[rows])
    >>> redraw = lambda rows: torch.randn(len(rows), d)
    >>> x, retries, rejected = bd.diffusion.coherent_sample(make_consensus, torch.randn(n, d), redraw, steps=18)
    """
    _check_redraws(max_incoherent_fraction, max_retries)
    n = latents.shape[0]
    out = torch.empty_like(latents)
    retries = torch.zeros(n, dtype=torch.long)
    rejected = torch.zeros(n, dtype=torch.bool)
    todo = torch.arange(n)
    lat = latents
    for attempt in range(max_retries + 1):
        consensus = make_consensus(todo)
        x = heun_sampler(consensus, lat, None, steps=steps, **sampler_kwargs)
        out[todo.to(out.device)] = x
        bad = (consensus.incoherent_fraction() > max_incoherent_fraction).cpu()
        rejected[todo] = bad
        if not bad.any() or attempt == max_retries:
            break
        todo = todo[bad]
        retries[todo] += 1
        lat = redraw(todo).to(latents.device, latents.dtype)
    return out, retries, rejected


def coherent_sampler(
    steps: int,
    sigma_max: float = 80.0,
    max_incoherent_fraction: float = 0.1,
    max_retries: int = 10,
    *,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    solver: str = "heun",
    keep_one_step: bool = False,
) -> Callable:
    """:func:`coherent_sample` as a sampler of :func:`~biodiffuse.diffusion.sample_rows`: the
    batch's ``denoiser`` is the consensus factory; diagnostics ``retries``, ``rejected`` and
    ``nfe`` (network evaluations of each draw: its redraws included, one per available
    denoiser of the consensus and call). With ``keep_one_step`` also ``"one_step"``: each
    draw's one-step draw, the consensus's first output in the solve the draw was kept from (as
    :func:`~biodiffuse.diffusion.edm_sampler`'s, for :class:`~biodiffuse.diffusion.Recentred`).

    Parameters
    ----------
    steps
        Sampler steps per draw.
    sigma_max, sigma_min, rho
        The Karras schedule (:func:`~biodiffuse.diffusion.karras_sigmas`).
    max_incoherent_fraction, max_retries
        As in :func:`coherent_sample`.
    solver
        ``"heun"``, ``"euler"`` or ``"dpm2m"`` (:func:`~biodiffuse.diffusion.heun_sampler`).
    keep_one_step
        Also return each draw's one-step draw (diagnostic ``"one_step"``).

    Examples
    --------
    >>> sampler = bd.diffusion.coherent_sampler(18, max_incoherent_fraction=0.1, max_retries=10)
    >>> out = bd.diffusion.sample_rows(prepare, n, (d,), seeds=seeds, sampler=sampler, n_samples=10)
    >>> out["retries"].shape, out["rejected"].mean()     # (n, 10) per draw; Batch.denoiser: make_consensus
    """
    check_count(steps)
    _check_redraws(max_incoherent_fraction, max_retries)
    karras_sigmas(1, sigma_min, sigma_max, rho)  # a bad schedule fails here, not at the first batch
    network_evaluations(steps, solver)  # a bad solver fails here too
    schedule = dict(sigma_max=sigma_max, sigma_min=sigma_min, rho=rho, solver=solver)
    if not isinstance(keep_one_step, (bool, np.bool_)):
        raise TypeError(f"keep_one_step must be True or False, got {keep_one_step!r}.")

    def sampler(make: Any, latents: torch.Tensor, cond: Any, redraw: Callable) -> tuple[torch.Tensor, dict]:
        passes: list[tuple[torch.Tensor, CoherentConsensus]] = []

        def counted(draws: torch.Tensor) -> CoherentConsensus:
            consensus = make(draws)
            passes.append((draws, consensus))
            return consensus

        x, retries, rejected = coherent_sample(
            counted, latents, redraw, steps=int(steps), max_incoherent_fraction=max_incoherent_fraction,
            max_retries=max_retries, **schedule,
        )
        nfe = torch.zeros(latents.shape[0], dtype=torch.long)
        one_step = torch.empty_like(latents) if keep_one_step else None
        for draws, consensus in passes:  # every pass: steps' calls x the draw's available denoisers
            nfe[draws.cpu()] += consensus.evaluations().cpu().long()
            if one_step is not None:  # later passes (redraws) overwrite: the kept solve's
                one_step[draws.to(one_step.device)] = consensus.first.to(one_step.dtype)
        diagnostics = {"retries": retries, "rejected": rejected, "nfe": nfe}
        if one_step is not None:
            diagnostics[ONE_STEP] = one_step
        return x, diagnostics

    sampler.keeps_one_step = bool(keep_one_step)  # type: ignore[attr-defined]
    return sampler
