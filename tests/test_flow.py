"""Rectified flow: the objective and the ODE solvers against the exact velocity field of Gaussian data.

For x0 ~ N(0, I), x1 ~ N(mu, S) and the path x_t = (1 - t) x0 + t x1 + s(t) eps, the pair
(u = x1 - x0, x_t) is jointly Gaussian with
    E[x_t] = t mu,   C_t = Cov(x_t) = (1 - t)^2 I + t^2 S + s(t)^2 I,
    E[u] = mu,       K_t = Cov(u, x_t) = t S - (1 - t) I,
so the exact (minimum-MSE) velocity is affine in x_t:
    v*(x, t) = E[u | x_t = x] = mu + K_t C_t^{-1} (x - t mu),
and the irreducible loss per entry is tr(S + I - K_t C_t^{-1} K_t) / d, averaged over t.
With s = 0 the ODE dx/dt = v*(x, t) carries N(0, I) at t = 0 to N(mu, S) at t = 1, and the
map x0 -> x1 is affine, so whitened latents (sample mean 0, sample covariance I exactly) must
come out with mean mu and covariance S up to the solver error only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biodiffuse.diffusion import Batch, FlowLoss, Moments, flow_evaluations, flow_sampler, flow_solve, row_seeds, sample_rows

MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
_L = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.4, 0.3, 0.7]], dtype=torch.float64)
S = _L @ _L.T  # non-diagonal covariance


class GaussVelocity(torch.nn.Module):
    """Exact velocity field of the (optionally stochastic) linear path for N(mu, S) data.

    ``mu`` comes from ``cond`` (rows of means) when given, else the fixed ``mu``.
    """

    def __init__(self, mu=MU, cov=S, sigma: float = 0.0, schedule: str = "constant") -> None:
        super().__init__()
        self.mu, self.cov, self.sigma, self.schedule = mu, cov, sigma, schedule
        self.calls = 0

    def matrices(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.to(torch.float64).reshape(-1, 1, 1)
        eye = torch.eye(len(self.cov), dtype=torch.float64)
        s = self.sigma * (1 - t) if self.schedule == "decay" else self.sigma * torch.ones_like(t)
        C = (1 - t) ** 2 * eye + t**2 * self.cov + s**2 * eye
        K = t * self.cov - (1 - t) * eye
        return C, K

    def forward(self, x, t, cond=None):
        self.calls += 1
        mu = self.mu if cond is None else cond.to(torch.float64)
        C, K = self.matrices(t)
        r = x.to(torch.float64) - t.to(torch.float64)[:, None] * mu
        v = mu + (K @ torch.linalg.solve(C, r[..., None]))[..., 0]
        return v.to(x.dtype)


def _whitened(n: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Latents with sample mean exactly 0 and sample covariance (1/n normalised) exactly I."""
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    cov = z.T @ z / n
    return z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


def _moment_error(x: torch.Tensor) -> float:
    m = x.mean(0)
    c = (x - m).T @ (x - m) / len(x)
    return float((m - MU).abs().max() + (c - S).abs().max())


# ----------------------------------------------------------------------------- solvers


def test_exact_field_transports_noise_to_the_gaussian() -> None:
    z = _whitened(4000)
    for method, steps, tol in [("dopri5", 1, 1e-5), ("heun", 40, 1e-3)]:
        x, nfe = flow_solve(GaussVelocity(), z, steps=steps, method=method, rtol=1e-8, atol=1e-8)
        assert _moment_error(x) < tol, (method, _moment_error(x))
    assert nfe == 80
    # plain N(0, I) latents: mean and covariance within the sampling error of 4000 draws
    z = torch.randn(4000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, _ = flow_solve(GaussVelocity(), z, method="dopri5")
    se = (torch.diagonal(S) / len(z)).sqrt()
    assert ((x.mean(0) - MU).abs() < 4 * se).all()
    np.testing.assert_allclose(torch.cov(x.T).numpy(), S.numpy(), atol=0.1)


def test_one_euler_step_lands_on_the_mean() -> None:
    """From t = 0 the exact velocity is E[x1 - x0 | x0] = mu - x0, so one Euler step gives mu."""
    z = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x, nfe = flow_solve(GaussVelocity(), z, steps=1, method="euler")
    assert nfe == 1
    np.testing.assert_allclose(x.numpy(), MU.expand(500, 3).numpy(), atol=1e-12)


def test_convergence_orders() -> None:
    """Euler is first order (error halves with twice the steps), Heun second order (quarters)."""
    z = _whitened(2000)
    err = {(m, n): _moment_error(flow_solve(GaussVelocity(), z, steps=n, method=m)[0])
           for m in ("euler", "heun") for n in (8, 16, 32)}
    for n in (8, 16):
        assert 1.6 < err["euler", n] / err["euler", 2 * n] < 2.4, err
        assert 3.2 < err["heun", n] / err["heun", 2 * n] < 5.5, err
    assert err["heun", 8] < 0.1 * err["euler", 16]  # the same evaluations, far more accurate


def test_evaluation_counts() -> None:
    z = torch.randn(5, 3, dtype=torch.float64)
    for method in ("euler", "heun"):
        for steps in (1, 3, 7):
            net = GaussVelocity()
            _, nfe = flow_solve(net, z, steps=steps, method=method)
            assert nfe == net.calls == flow_evaluations(steps, method)
    assert flow_evaluations(5, "heun") == 10 and flow_evaluations(5, "euler") == 5
    net = GaussVelocity()
    _, nfe = flow_solve(net, z, method="dopri5", rtol=1e-3, atol=1e-3)
    _, nfe_tight = flow_solve(GaussVelocity(), z, method="dopri5", rtol=1e-8, atol=1e-8)
    assert nfe == net.calls and 6 < nfe < nfe_tight



def test_dopri5_tolerance_holds_for_every_draw() -> None:
    """One hard draw among many trivial ones: the step control follows the worst draw (an RMS
    over the whole batch would dilute its error and loosen its tolerance ~20-fold here)."""
    def vel(x, t, c):
        return c * torch.sin(8 * t)[:, None] * x  # x(1) = x(0) exp(c (1 - cos 8) / 8)

    c = torch.zeros(400, 1, dtype=torch.float64)
    c[0] = 3.0
    z = torch.ones(400, 2, dtype=torch.float64)
    exact = np.exp(3.0 * (1 - np.cos(8.0)) / 8.0)
    x, nfe = flow_solve(vel, z, c, method="dopri5", rtol=1e-5, atol=1e-5)
    alone, nfe_alone = flow_solve(vel, z[:1], c[:1], method="dopri5", rtol=1e-5, atol=1e-5)
    assert nfe == nfe_alone
    assert float((x[0] - exact).abs().max()) / exact < 1e-4
    torch.testing.assert_close(x[1:], z[1:])


# ----------------------------------------------------------------------------- objective


def _exact_loss(sigma: float = 0.0, schedule: str = "constant", grid: int = 4001) -> float:
    """The irreducible velocity-matching loss per entry, by quadrature over t ~ U(0, 1)."""
    t = torch.linspace(0, 1, grid, dtype=torch.float64)
    C, K = GaussVelocity(sigma=sigma, schedule=schedule).matrices(t)
    resid = S + torch.eye(3, dtype=torch.float64) - K @ torch.linalg.solve(C, K)
    f = torch.diagonal(resid, dim1=-2, dim2=-1).sum(-1) / 3
    return float(torch.trapezoid(f, t))


class _Perturbed(torch.nn.Module):
    """The exact field plus a learnable affine perturbation ``W x + b + t c`` (zero at start)."""

    def __init__(self, base: GaussVelocity, scale: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.W = torch.nn.Parameter(scale * torch.eye(3, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, x, t, cond=None):
        return self.base(x, t, cond) + x @ self.W.T + self.b + t[:, None] * self.c


@pytest.mark.parametrize("sigma,schedule", [(0.0, "constant"), (0.3, "constant"), (0.3, "decay")])
def test_exact_field_minimises_the_loss(sigma: float, schedule: str) -> None:
    x1 = MU + torch.randn(50_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) @ _L.T
    loss = FlowLoss(sigma=sigma, sigma_schedule=schedule)
    exact = GaussVelocity(sigma=sigma, schedule=schedule)
    values = {}
    for scale in (0.0, 0.2):
        net = _Perturbed(exact, scale)
        val = loss(net, x1, generator=torch.Generator().manual_seed(4))
        val.backward()
        grad = torch.cat([net.W.grad.ravel(), net.b.grad, net.c.grad]).abs().max()
        values[scale] = (float(val.detach()), float(grad))
    # at the exact field: the irreducible loss, and a vanishing gradient (up to Monte Carlo noise)
    np.testing.assert_allclose(values[0.0][0], _exact_loss(sigma, schedule), rtol=0.01)
    assert values[0.0][1] < 0.04, values
    # a perturbed field costs more and has a clear gradient
    assert values[0.2][0] > values[0.0][0] + 0.02 and values[0.2][1] > 0.2, values


def test_path_noise_and_mask() -> None:
    """x_t is (1 - t) x0 + t x1 (+ s(t) eps), with t, x0, eps drawn in that order."""
    n, d = 20_000, 3
    x1 = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 3.0
    seen = {}

    def record(xt, t, cond):
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    def run(**kw):
        val = FlowLoss(**kw)(record, x1, generator=torch.Generator().manual_seed(6))
        return val, seen["xt"].clone(), seen["t"].clone()

    val, xt, t = run()
    g = torch.Generator().manual_seed(6)
    t_ref = torch.rand(n, dtype=torch.float64, generator=g)
    x0 = torch.randn(n, d, dtype=torch.float64, generator=g)
    torch.testing.assert_close(t, t_ref)
    torch.testing.assert_close(xt, (1 - t[:, None]) * x0 + t[:, None] * x1)
    torch.testing.assert_close(val, ((x1 - x0) ** 2).mean())  # zero network: the target is x1 - x0
    mask = torch.zeros(1, d)
    mask[0, 1] = 1
    val_m = FlowLoss()(record, x1, loss_mask=mask, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(val_m, ((x1 - x0)[:, 1] ** 2).mean())
    # the stochastic term: same t and x0, x_t moves by sigma * eps (or (1 - t) sigma eps)
    for schedule in ("constant", "decay"):
        val_s, xt_s, t_s = run(sigma=0.05, sigma_schedule=schedule)
        torch.testing.assert_close(t_s, t)
        torch.testing.assert_close(val_s, val)  # the target ignores the stochastic term
        diff = xt_s - xt
        if schedule == "decay":
            diff = diff / (1 - t)[:, None]
        assert abs(float(diff.mean())) < 0.002
        np.testing.assert_allclose(float(diff.std()), 0.05, rtol=0.03)


def test_logit_normal_times() -> None:
    t = FlowLoss(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8).sample_t(
        20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert ((t > 0) & (t < 1)).all()
    logit = torch.log(t / (1 - t))
    np.testing.assert_allclose([float(logit.mean()), float(logit.std())], [0.5, 0.8], atol=0.03)


# ----------------------------------------------------------------------------- the loop


def _run(cond: np.ndarray, keys, *, batch_size: int, sampler, n_samples: int = 3, seed: int = 0):
    net = GaussVelocity(cov=torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)) + 0.1)

    def prepare(rows, device):
        return Batch(net, torch.from_numpy(cond[rows]).to(device))

    out = sample_rows(prepare, len(cond), cond.shape[1:], seeds=row_seeds(seed, keys), sampler=sampler,
                      n_samples=n_samples, batch_size=batch_size, reducer=Moments(len(cond), keep_draws=True))
    return out, net.calls


@pytest.mark.parametrize("method,steps,independent", [("euler", 3, False), ("heun", 3, False), ("dopri5", 1, True)])
def test_sample_rows_reproducible_per_row(method: str, steps: int, independent: bool) -> None:
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(11, 3)).astype(np.float32)
    keys = [f"tile{i}" for i in range(11)]
    sampler = flow_sampler(steps, method=method, rtol=1e-4, atol=1e-4, independent=independent)
    a, calls = _run(cond, keys, batch_size=11, sampler=sampler)
    b, _ = _run(cond, keys, batch_size=2, sampler=sampler)
    np.testing.assert_array_equal(a["draws"], b["draws"])
    sub = [7, 3]
    c, _ = _run(cond[sub], [keys[i] for i in sub], batch_size=1, sampler=sampler)
    np.testing.assert_array_equal(c["draws"], a["draws"][sub])
    assert np.ptp(a["draws"][0], axis=0).max() > 1e-3
    assert a["nfe"].shape == (11, 3) and a["nfe"].dtype == np.int64
    np.testing.assert_array_equal(a["nfe"], b["nfe"])
    if method == "dopri5":
        assert a["nfe"].sum() == calls and (a["nfe"] > 6).all()
    else:
        assert (a["nfe"] == flow_evaluations(steps, method)).all() and calls == flow_evaluations(steps, method)


def test_sample_rows_batched_dopri5_within_tolerance() -> None:
    rng = np.random.default_rng(1)
    cond = rng.normal(size=(8, 3)).astype(np.float32)
    sampler = flow_sampler(method="dopri5", rtol=1e-6, atol=1e-6)
    a, calls = _run(cond, range(8), batch_size=8, sampler=sampler)
    b, _ = _run(cond, range(8), batch_size=3, sampler=sampler)
    assert (a["nfe"] == calls).all()  # one batch: every draw went through every evaluation
    np.testing.assert_allclose(a["draws"], b["draws"], atol=1e-4)
    e, _ = _run(cond, range(8), batch_size=8, sampler=flow_sampler(256, method="heun"))
    np.testing.assert_allclose(a["draws"], e["draws"], atol=1e-4)


def test_bad_arguments() -> None:
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            flow_sampler(steps)
    with pytest.raises(ValueError, match="steps"):
        flow_solve(GaussVelocity(), torch.zeros(2, 3), steps=0)
    with pytest.raises(ValueError, match="steps"):
        flow_evaluations(0, "heun")
    with pytest.raises(ValueError, match="method"):
        flow_sampler(5, method="rk4")
    with pytest.raises(ValueError, match="adaptive"):
        flow_evaluations(5, "dopri5")
    with pytest.raises(ValueError, match="sigma"):
        FlowLoss(sigma=-0.05)
    with pytest.raises(ValueError, match="sigma"):
        FlowLoss(sigma=float("nan"))
    with pytest.raises(ValueError, match="sigma_schedule"):
        FlowLoss(sigma=0.05, sigma_schedule="cosine")
    with pytest.raises(ValueError, match="time_sampling"):
        FlowLoss(time_sampling="beta")
    with pytest.raises(ValueError, match="logit_std"):
        FlowLoss(time_sampling="logit_normal", logit_std=0)
