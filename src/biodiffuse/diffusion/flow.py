"""Rectified flow (Liu et al. 2022; GeneFlow): the velocity-matching objective and ODE samplers.

Time convention, everywhere in this module: **t = 0 is noise, t = 1 is data**. A draw
starts as ``x0 ~ N(0, I)`` and is carried to the data by ``dx/dt = v(x, t, cond)`` from
``t = 0`` to ``t = 1``. The network is called as ``velocity(x_t, t, cond)`` with ``t`` of
shape (B,) in [0, 1].

* :class:`FlowLoss` draws ``t`` (uniform or logit-normal), builds the linear path
  ``x_t = (1 - t) x0 + t x1`` (plus GeneFlow's small stochastic term, optional) and regresses
  the velocity on ``x1 - x0``.
* :func:`flow_solve` integrates the ODE with fixed-step ``euler`` (``steps`` evaluations),
  fixed-step ``heun`` (``2 * steps`` evaluations: the end-point slope at t = 1 is well defined
  for a flow, so no evaluation is saved) or adaptive ``dopri5`` through ``torchdiffeq.odeint``
  (evaluations counted). :func:`flow_sampler` wraps it as a loop sampler for
  :func:`~biodiffuse.diffusion.sample_rows`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .edm import check_count, masked_mean

__all__ = ["FlowLoss", "flow_solve", "flow_sampler", "flow_evaluations", "FLOW_METHODS"]

FLOW_METHODS = ("euler", "heun", "dopri5")


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample time of shape (B,) to broadcast against ``x``."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class FlowLoss:
    """Rectified-flow velocity matching (t = 0 noise, t = 1 data).

    For data ``x1``, noise ``x0 ~ N(0, I)`` and ``t`` per sample, the path is
    ``x_t = (1 - t) x0 + t x1 + s(t) eps`` with ``eps ~ N(0, I)`` and ``s(t) = sigma``
    (``sigma_schedule="constant"``) or ``s(t) = (1 - t) sigma`` (``"decay"``, GeneFlow eq. 8's
    ``eps_t = (1 - t) sigma z``); ``sigma = 0`` is the plain linear path. The target is
    ``x1 - x0`` in every case: like the GeneFlow authors' code, the stochastic term does not
    enter the target. GeneFlow uses ``sigma = 0.05``.

    Parameters
    ----------
    sigma
        Scale of the stochastic term, ``>= 0``.
    sigma_schedule
        ``"constant"`` or ``"decay"`` (see above).
    time_sampling
        ``"uniform"``: ``t ~ U(0, 1)``; ``"logit_normal"``: ``t = sigmoid(n)``,
        ``n ~ N(logit_mean, logit_std^2)`` (more weight on intermediate times).
    logit_mean, logit_std
        Parameters of the logit-normal time distribution.

    Examples
    --------
    >>> loss_fn = bd.diffusion.FlowLoss(sigma=0.05, sigma_schedule="decay", time_sampling="logit_normal")
    >>> loss = loss_fn(velocity, tiles, cond)         # velocity(x_t, t, cond); tiles: clean (B, C, H, W)
    >>> loss.backward()
    """

    def __init__(
        self,
        sigma: float = 0.0,
        sigma_schedule: str = "constant",
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}.")
        if sigma_schedule not in ("constant", "decay"):
            raise ValueError(f"sigma_schedule must be 'constant' or 'decay', got {sigma_schedule!r}.")
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}.")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be positive, got {logit_std!r}.")
        self.sigma = float(sigma)
        self.sigma_schedule = sigma_schedule
        self.time_sampling = time_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    def sample_t(self, n: int, *, device: Any = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training times in [0, 1] from the configured distribution."""
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device, dtype=dtype, generator=generator)
        z = torch.randn(n, device=device, dtype=dtype, generator=generator)
        return torch.sigmoid(z * self.logit_std + self.logit_mean)

    def path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = (1 - t) x0 + t x1 (+ s(t) eps)`` for per-sample ``t`` of shape (B,)."""
        tb = _expand(t, x1)
        xt = (1 - tb) * x0 + tb * x1
        if eps is not None and self.sigma > 0:
            scale = self.sigma * (1 - tb) if self.sigma_schedule == "decay" else self.sigma
            xt = xt + scale * eps
        return xt

    def __call__(
        self,
        velocity: Callable[..., torch.Tensor],
        x: torch.Tensor,
        cond: Any = None,
        loss_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared velocity error over the batch.

        Parameters
        ----------
        velocity
            Called as ``velocity(x_t, t, cond)`` with ``t`` of shape (B,).
        x
            Data ``x1``, shape (B, ...).
        cond
            Passed through to the network.
        loss_mask
            Optional 0/1 tensor broadcastable to ``x``: entries that count in the loss.
        generator
            Random generator for ``t``, the noise and ``eps`` (drawn in that order).
        """
        t = self.sample_t(x.shape[0], device=x.device, dtype=x.dtype, generator=generator)
        x0 = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        eps = None
        if self.sigma > 0:
            eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        v = velocity(self.path(x0, x, t, eps), t, cond)
        err = (v.to(x.dtype) - (x - x0)) ** 2
        return masked_mean(err, loss_mask)


def _check(steps: int, method: str) -> None:
    if method not in FLOW_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {FLOW_METHODS}.")
    check_count(steps)


def flow_evaluations(steps: int, method: str = "euler") -> int:
    """Network evaluations per draw of the fixed-step solvers: ``steps`` (Euler), ``2 * steps`` (Heun).

    Parameters
    ----------
    steps
        Solver steps.
    method
        ``"euler"`` or ``"heun"``.

    Examples
    --------
    >>> bd.diffusion.flow_evaluations(8), bd.diffusion.flow_evaluations(8, "heun")
    (8, 16)
    """
    _check(steps, method)
    if method == "dopri5":
        raise ValueError("dopri5 is adaptive: its evaluations are counted at run time (diagnostics['nfe']).")
    return int(steps) * (2 if method == "heun" else 1)


def _draw_norm(x: torch.Tensor) -> torch.Tensor:
    """Error norm for batched solves: the worst draw's RMS, so every draw meets the tolerance."""
    return x.reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


@torch.no_grad()
def flow_solve(
    velocity: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    cond: Any = None,
    steps: int = 50,
    method: str = "euler",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """Integrate ``dx/dt = velocity(x, t, cond)`` from ``t = 0`` (``latents``) to ``t = 1``.

    Parameters
    ----------
    velocity
        Called as ``velocity(x, t, cond)`` with ``t`` of shape (B,), in ``latents.dtype``.
    latents
        Standard normal noise of the output's shape (the state at t = 0).
    cond
        Passed through to the network at every evaluation.
    steps
        Uniform steps of the fixed-step methods (ignored by ``dopri5``).
    method
        ``"euler"`` (``steps`` evaluations), ``"heun"`` (``2 * steps``) or ``"dopri5"``
        (adaptive Dormand-Prince via ``torchdiffeq.odeint``; the batch shares one step size,
        controlled by the worst draw's RMS error).
    rtol, atol
        Tolerances of ``dopri5``.

    Returns
    -------
    The state at ``t = 1`` in ``latents.dtype``, and the number of network evaluations (each
    evaluates every draw of the batch once). The state is carried in float64.

    Examples
    --------
    >>> x1, nfe = bd.diffusion.flow_solve(lambda x, t, cond: torch.ones_like(x), torch.zeros(4, 2), steps=8)
    >>> x1[0], nfe                                     # a constant velocity of 1 over t in [0, 1]
    (tensor([1., 1.]), 8)
    """
    _check(steps, method)
    b, dtype = latents.shape[0], latents.dtype
    nfe = 0

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        tt = torch.as_tensor(t, dtype=dtype, device=latents.device).expand(b)
        return velocity(x.to(dtype), tt, cond).to(torch.float64)

    x = latents.to(torch.float64)
    if method == "dopri5":
        from torchdiffeq import odeint

        grid = torch.tensor([0.0, 1.0], dtype=torch.float64, device=latents.device)
        x = odeint(lambda t, y: v(y, t), x, grid, rtol=rtol, atol=atol, method="dopri5",
                   options={"norm": _draw_norm})[-1]
        return x.to(dtype), nfe
    ts = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64, device=latents.device)
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t_cur
        d_cur = v(x, t_cur)
        if method == "euler":
            x = x + h * d_cur
        else:
            d_next = v(x + h * d_cur, t_next)
            x = x + h * (0.5 * d_cur + 0.5 * d_next)
    return x.to(dtype), nfe


def _take(obj: Any, i: int) -> Any:
    """Row ``i`` (kept as a batch of one) of every tensor in a (nested) condition."""
    if isinstance(obj, torch.Tensor):
        return obj[i : i + 1]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(o, i) for o in obj)
    if isinstance(obj, Mapping):
        return {key: _take(val, i) for key, val in obj.items()}
    return obj


def flow_sampler(
    steps: int = 50, method: str = "euler", rtol: float = 1e-5, atol: float = 1e-5, independent: bool = False
) -> Callable:
    """A rectified-flow solver (:func:`flow_solve`) as a loop sampler for ``sample_rows``.

    The batch's ``denoiser`` is the velocity network. Diagnostics: ``nfe``, the network
    evaluations each draw went through (shape (B,), int64): ``flow_evaluations(steps, method)``
    for the fixed-step methods, counted for ``dopri5``.

    Reproducibility: the fixed-step methods give a row the same draws whatever the batch size
    (given a network that treats rows independently). Batched ``dopri5`` shares its step size
    over the batch, so a row's draws depend on its batch mates within the tolerance;
    ``independent=True`` integrates every draw alone (its own steps and ``nfe``, the same
    numbers for any batch size; one network call per draw and evaluation).

    Parameters
    ----------
    steps, method, rtol, atol
        As in :func:`flow_solve`.
    independent
        ``dopri5`` only: integrate every draw on its own (see below).

    Examples
    --------
    >>> sampler = bd.diffusion.flow_sampler(steps=8, method="euler")
    >>> out = bd.diffusion.sample_rows(prepare, n_rows, (3, 64, 64), seeds=seeds, sampler=sampler)
    >>> adaptive = bd.diffusion.flow_sampler(method="dopri5", rtol=1e-4, atol=1e-4, independent=True)
    """
    _check(steps, method)
    steps = int(steps)

    def sampler(denoiser: Any, latents: torch.Tensor, cond: Any, redraw: Callable) -> tuple[torch.Tensor, dict]:
        if independent and method == "dopri5":
            outs = [flow_solve(denoiser, latents[i : i + 1], _take(cond, i), steps, method, rtol, atol)
                    for i in range(latents.shape[0])]
            x = torch.cat([o[0] for o in outs]) if outs else latents.clone()
            nfe = torch.tensor([o[1] for o in outs], dtype=torch.int64)
        else:
            x, n = flow_solve(denoiser, latents, cond, steps, method, rtol, atol)
            nfe = torch.full((latents.shape[0],), n, dtype=torch.int64)
        return x, {"nfe": nfe}

    sampler.steps = steps  # type: ignore[attr-defined]
    sampler.method = method  # type: ignore[attr-defined]
    return sampler
