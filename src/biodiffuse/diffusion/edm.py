"""EDM (Karras et al. 2022): preconditioning, the lognormal-sigma loss and the Heun sampler.

The three pieces follow "Elucidating the Design Space of Diffusion-Based Generative
Models" (Karras, Aittala, Aila, Laine; NeurIPS 2022), Table 1 and Algorithm 1:

* :class:`EDMPrecond` wraps a raw network ``F`` into a denoiser
  ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``.
* :class:`EDMLoss` draws ``ln(sigma) ~ N(P_mean, P_std^2)`` and weights the squared
  error by ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``.
* :func:`heun_sampler` integrates the probability-flow ODE on the Karras schedule
  (:func:`karras_sigmas`) with Heun's second-order method; ``steps`` steps cost
  ``2 * steps - 1`` network evaluations, and ``steps=1`` is a single Euler step
  (the denoiser's output at ``sigma_max``). ``solver="euler"`` takes first-order steps
  only (``steps`` evaluations): at a handful of evaluations it is the better of the two
  for MCD's tables (``docs/benchmarks.md``: Heun's correction near ``sigma_min`` divides by
  a tiny noise level and throws the sample off).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["masked_mean", "EDMPrecond", "EDMLoss", "check_count", "karras_sigmas", "heun_sampler", "network_evaluations", "SOLVERS"]


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample sigma of shape (B,) to broadcast against ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def masked_mean(err: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``err`` over the entries where ``loss_mask`` (broadcastable 0/1) is set; the plain
    mean without a mask. The one reduction of every objective (EDM, rectified flow)."""
    if loss_mask is None:
        return err.mean()
    loss_mask = loss_mask.to(err.dtype).expand_as(err)
    return (err * loss_mask).sum() / loss_mask.sum().clamp_min(1.0)


class EDMPrecond(nn.Module):
    """Karras et al. preconditioning around a raw network.

    Parameters
    ----------
    net
        Module called as ``net(x_in, c_noise, cond)`` returning a tensor shaped like ``x_in``.
        ``c_noise`` has shape (B,).
    sigma_data
        Standard deviation of the (normalised) data.

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8), sigma_data=0.5)
    >>> net(torch.randn(4, 8), torch.full((4,), 2.0)).shape     # denoised estimate at sigma = 2
    torch.Size([4, 8])
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}.")
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma``."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Denoise ``x`` at noise level ``sigma`` (scalar or shape (B,))."""
        sigma_b = _expand(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma_b)
        f = self.net(c_in * x, c_noise.reshape(-1), cond)
        return c_skip * x + c_out * f.to(x.dtype)


class EDMLoss:
    """The EDM training objective with lognormal noise levels.

    Parameters
    ----------
    P_mean, P_std
        Mean and standard deviation of ``ln(sigma)``.
    sigma_data
        Must match the preconditioning's ``sigma_data``.

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8), sigma_data=0.5)
    >>> loss_fn = bd.diffusion.EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    >>> loss = loss_fn(net, torch.randn(64, 8))        # scalar: mean weighted denoising error
    >>> loss.backward()
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5) -> None:
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Loss weight ``lambda(sigma)``; ``lambda * c_out^2 == 1`` for every sigma."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self,
        denoiser: Callable[..., torch.Tensor],
        x: torch.Tensor,
        cond: Any = None,
        loss_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean weighted denoising error over the batch.

        Parameters
        ----------
        denoiser
            Called as ``denoiser(x_noisy, sigma, cond)``.
        x
            Clean data, shape (B, ...).
        cond
            Passed through to the denoiser.
        loss_mask
            Optional 0/1 tensor broadcastable to ``x``: entries that count in the loss.
        generator
            Random generator for sigma and noise (e.g. fixed for validation).
        """
        b = x.shape[0]
        rnd = torch.randn(b, device=x.device, dtype=x.dtype, generator=generator)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        sigma_b = _expand(sigma, x)
        denoised = denoiser(x + noise * sigma_b, sigma, cond)
        err = self.weight(sigma_b) * (denoised - x) ** 2
        return masked_mean(err, loss_mask)


def check_count(value: Any, name: str = "steps", *, minimum: int = 1) -> int:
    """``value`` as an int, after a clear error unless it is a whole number of at least ``minimum``.

    The one check of the counts the samplers and verbs take (``steps``, ``n_samples``,
    ``batch_size``, ...): ``True``, ``2.5``, ``0`` and ``"5"`` are refused; ``5`` and ``5.0`` give ``5``.

    Parameters
    ----------
    value
        The count.
    name
        Its argument's name, for the error.
    minimum
        The smallest value allowed (e.g. 2 for draws that must give a spread).

    Examples
    --------
    >>> bd.diffusion.check_count(5)
    5
    >>> bd.diffusion.check_count(2.5, "n_samples")
    Traceback (most recent call last):
    ValueError: n_samples must be a positive integer, got 2.5.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or int(value) != value or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return int(value)


def karras_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Karras et al. noise levels ``t_0 = sigma_max > ... > t_{N-1} = sigma_min``, then ``t_N = 0``.

    With ``steps == 1`` the schedule is ``[sigma_max, 0]``.

    Parameters
    ----------
    steps
        Number of noise levels before the final 0 (at least 1).
    sigma_min, sigma_max
        Smallest and largest noise level, ``0 < sigma_min < sigma_max``.
    rho
        Curvature of the schedule (larger: more steps at low noise).
    device, dtype
        Of the returned tensor.

    Examples
    --------
    >>> bd.diffusion.karras_sigmas(1)
    tensor([80.,  0.], dtype=torch.float64)
    >>> bd.diffusion.karras_sigmas(18).shape                   # 18 levels and the final 0
    torch.Size([19])
    """
    check_count(steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    steps = int(steps)
    if steps == 1:
        t = torch.tensor([sigma_max], dtype=dtype, device=device)
    else:
        i = torch.arange(steps, dtype=dtype, device=device)
        t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=dtype, device=device)])


SOLVERS = ("heun", "euler", "dpm2m")
#: The solvers :func:`~biodiffuse.diffusion.schedule_grid` tries by default. DPM-Solver++ 2M joined
#: them in session 18, when it became MCD's table default: ranked by the fair CRPS (the tuners' score
#: since session 17) it took the first eight places on the ECCITE validation cells, and at 5 steps it
#: scored the best test CRPS on ECCITE-seq, dsb and Abseq. It adds half again to a tuning's cost
#: (18 candidates per budget beside Heun's and Euler's 36); pass ``solvers=`` for a smaller grid.
TUNED_SOLVERS = ("heun", "euler", "dpm2m")


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")


def network_evaluations(steps: int, solver: str = "heun") -> int:
    """Denoiser calls made by :func:`heun_sampler` with ``steps`` steps: ``2 * steps - 1``
    (Heun) or ``steps`` (Euler, DPM-Solver++ 2M).

    Parameters
    ----------
    steps
        Sampler steps (noise levels).
    solver
        ``"heun"``, ``"euler"`` or ``"dpm2m"``.

    Examples
    --------
    >>> bd.diffusion.network_evaluations(18)
    35
    >>> bd.diffusion.network_evaluations(5, solver="euler")
    5
    """
    _check_solver(solver)
    steps = check_count(steps)
    return 2 * steps - 1 if solver == "heun" else steps


def _dpm2m_denoised(d_cur: torch.Tensor, d_prev: torch.Tensor | None, t_prev, t_cur, t_next) -> torch.Tensor:
    """DPM-Solver++(2M)'s second-order estimate of the clean sample on a step from ``t_cur`` to
    ``t_next > 0``: the current denoiser output extrapolated with the previous one in
    ``lambda = -log sigma`` (first order, the plain output, on the first step)."""
    if d_prev is None:
        return d_cur
    h = torch.log(t_cur / t_next)
    r = torch.log(t_prev / t_cur) / h
    return (1 + 1 / (2 * r)) * d_cur - (1 / (2 * r)) * d_prev


@torch.no_grad()
def heun_sampler(
    denoiser: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    cond: Any = None,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    solver: str = "heun",
) -> torch.Tensor:
    """Deterministic Heun sampler of the probability-flow ODE (EDM Algorithm 1).

    Parameters
    ----------
    denoiser
        Called as ``denoiser(x, sigma, cond)`` with ``sigma`` of shape (B,).
    latents
        Standard normal noise of the output's shape; scaled by ``sigma_max`` here.
    cond
        Passed through to the denoiser at every step (e.g. cached condition features).
    steps
        Number of noise levels; costs ``2 * steps - 1`` denoiser evaluations (Heun) or
        ``steps`` (Euler).
    sigma_min, sigma_max, rho
        The Karras schedule.
    solver
        ``"heun"`` (second order; EDM's), ``"euler"`` (first order: the Heun correction is
        skipped, so the last step returns the denoiser's output at ``sigma_min``) or ``"dpm2m"``
        (DPM-Solver++(2M), Lu et al. 2022: second order at one evaluation a step, reusing the
        previous step's denoiser output; its first and last steps are Euler's).

    Returns
    -------
    The sample at ``sigma = 0``, in ``latents.dtype``.

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8)).eval()
    >>> with torch.no_grad():
    ...     x = bd.diffusion.heun_sampler(net, torch.randn(16, 8), steps=18)   # 35 evaluations
    >>> x.shape
    torch.Size([16, 8])
    """
    _check_solver(solver)
    t_steps = karras_sigmas(steps, sigma_min, sigma_max, rho, device=latents.device)
    b = latents.shape[0]
    x_next = latents.to(torch.float64) * t_steps[0]

    def d(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = t.to(latents.dtype).expand(b)
        return denoiser(x.to(latents.dtype), sigma, cond).to(torch.float64)

    denoised_prev = None
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next
        if solver == "dpm2m":  # x_next = (t_next / t_cur) x + (1 - t_next / t_cur) D: Euler with D extrapolated
            denoised = d(x_cur, t_cur)
            last = i == len(t_steps) - 2
            used = denoised if last else _dpm2m_denoised(denoised, denoised_prev, t_steps[i - 1] if i else None, t_cur, t_next)
            x_next = (t_next / t_cur) * x_cur + (1 - t_next / t_cur) * used
            denoised_prev = denoised
            continue
        d_cur = (x_cur - d(x_cur, t_cur)) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur
        if solver == "heun" and i < len(t_steps) - 2:
            d_prime = (x_next - d(x_next, t_next)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(latents.dtype)
