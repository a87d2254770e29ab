"""EDM core: formulas that a wrong sign or square would break."""

from __future__ import annotations

import math

import pytest
import torch

from biodiffuse.diffusion import EDMLoss, EDMPrecond, check_count, heun_sampler, karras_sigmas, network_evaluations


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor):
    """Exact denoiser of N(mean, cov) data: E[x0 | x0 + sigma n = x]."""

    def d(x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        # the samplers call with one noise level per batch
        s2 = sigma.reshape(-1)[0].to(x.dtype) ** 2
        assert torch.all(sigma == sigma.reshape(-1)[0])
        eye = torch.eye(cov.shape[0], dtype=x.dtype)
        gain = cov.to(x.dtype) @ torch.linalg.inv(cov.to(x.dtype) + s2 * eye)
        m = mean.to(x.dtype)
        return m + (x - m) @ gain.T

    return d


def test_one_count_check_refuses_what_is_not_a_positive_whole_number() -> None:
    import numpy as np

    assert check_count(5) == 5 and check_count(5.0) == 5 and check_count(np.int64(3), "n_samples") == 3
    for bad in (0, -1, 2.5, True, np.bool_(True), "5", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="n_samples must be a positive integer"):
            check_count(bad, "n_samples")
    assert check_count(2, "n_samples", minimum=2) == 2
    with pytest.raises(ValueError, match="n_samples must be an integer of at least 2, got 1"):
        check_count(1, "n_samples", minimum=2)
    for call in (lambda: karras_sigmas(True), lambda: heun_sampler(lambda x, s, c: x, torch.zeros(1, 1), steps=2.5)):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            call()


def test_karras_schedule_endpoints_and_monotone() -> None:
    t = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(t) == 19
    assert t[0].item() == pytest.approx(80.0)
    assert t[-2].item() == pytest.approx(0.002)
    assert t[-1].item() == 0.0
    assert torch.all(t[:-1] > t[1:])
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError):
        karras_sigmas(0)


def test_preconditioning_coefficients() -> None:
    sd = 0.7
    pre = EDMPrecond(torch.nn.Identity(), sigma_data=sd)
    sigma = torch.tensor([0.01, sd, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = pre.coefficients(sigma)
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    # c_out^2 * lambda(sigma) == 1 is what makes the EDM loss weight uniform.
    assert torch.allclose(c_out**2 * EDMLoss(sigma_data=sd).weight(sigma), torch.ones(4, dtype=torch.float64))
    # c_in makes the network input unit-variance for data of std sigma_data.
    assert torch.allclose(c_in**2 * (sigma**2 + sd**2), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(c_noise, sigma.log() / 4)
    assert c_skip[1].item() == pytest.approx(0.5)


def test_precond_forward_with_zero_net_is_skip() -> None:
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise, cond):
            return torch.zeros_like(x)

    pre = EDMPrecond(Zero(), sigma_data=0.5)
    x = torch.randn(3, 2, 1, 1)
    sigma = torch.tensor([0.1, 0.5, 2.0])
    out = pre(x, sigma)
    expected = x * (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    assert torch.allclose(out, expected)


def test_loss_is_one_for_exact_denoiser_on_gaussian_data() -> None:
    # With sigma_data = data std and the exact denoiser, lambda(sigma) * posterior variance == 1.
    s = 0.8
    torch.manual_seed(0)
    x = torch.randn(50000, 1, dtype=torch.float64) * s
    s2 = s**2

    def den(x_noisy, sigma, cond=None):  # exact denoiser of N(0, s^2), one sigma per row
        return x_noisy * s2 / (s2 + sigma.reshape(-1, 1) ** 2)

    loss = EDMLoss(sigma_data=s)(den, x)
    assert loss.item() == pytest.approx(1.0, abs=0.03)
    # A wrong sigma_data breaks it.
    assert abs(EDMLoss(sigma_data=2 * s)(den, x).item() - 1.0) > 0.1


def test_loss_mask_counts_only_selected_entries() -> None:
    x = torch.zeros(8, 2)

    def den(x_noisy, sigma, cond):
        out = torch.zeros_like(x_noisy)
        out[:, 1] = 100.0  # huge error on channel 1 only
        return out

    mask = torch.tensor([[True, False]]).expand(8, 2)
    assert EDMLoss()(den, x, loss_mask=mask).item() == 0.0
    assert EDMLoss()(den, x).item() > 1.0


@pytest.mark.parametrize("steps", [32])
def test_heun_sampler_recovers_gaussian_conditional(steps: int) -> None:
    """Joint Gaussian (x, c): the sampler with the exact posterior denoiser must reproduce the
    analytic conditional mean and covariance of x given c."""
    torch.manual_seed(1)
    # joint over (x1, x2, c) with correlations
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, -0.3, 0.7]], dtype=torch.float64)
    joint = a @ a.T
    mu = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    c_val = 1.3
    sxx, sxc, scc = joint[:2, :2], joint[:2, 2:], joint[2:, 2:]
    cond_mean = mu[:2] + (sxc @ torch.linalg.inv(scc)).squeeze(-1) * (c_val - mu[2])
    cond_cov = sxx - sxc @ torch.linalg.inv(scc) @ sxc.T

    den = gaussian_denoiser(cond_mean, cond_cov)
    n = 40000
    latents = torch.randn(n, 2, dtype=torch.float64)
    sigma_max = 80.0
    out = heun_sampler(den, latents, cond=None, steps=steps, sigma_max=sigma_max)
    # The exact flow maps N(0, sigma_max^2 I) to a slightly shrunk Gaussian; account for it.
    evals, evecs = torch.linalg.eigh(cond_cov)
    shrink = evecs @ torch.diag(evals.sqrt() / (evals + sigma_max**2).sqrt()) @ evecs.T
    exp_mean = cond_mean - shrink @ cond_mean
    exp_cov = shrink @ (sigma_max**2 * torch.eye(2, dtype=torch.float64)) @ shrink.T
    emp_mean = out.mean(0)
    emp_cov = torch.cov(out.T)
    assert torch.allclose(emp_mean, exp_mean, atol=0.02), (emp_mean, exp_mean)
    assert torch.allclose(emp_cov, exp_cov, atol=0.03), (emp_cov, exp_cov)
    # and the shrink is small: the result is the analytic conditional up to 2%
    assert torch.allclose(emp_mean, cond_mean, atol=0.05)


def test_heun_sampler_step_counts_and_single_step() -> None:
    calls = {"n": 0}
    mean = torch.tensor([2.0])
    cov = torch.tensor([[0.5]])
    exact = gaussian_denoiser(mean, cov)

    def counting(x, sigma, cond=None):
        calls["n"] += 1
        return exact(x, sigma)

    lat = torch.randn(16, 1, dtype=torch.float64)
    for steps in (1, 2, 5, 18):
        calls["n"] = 0
        heun_sampler(counting, lat, steps=steps)
        assert calls["n"] == network_evaluations(steps) == 2 * steps - 1
    # one step = the denoiser's output at sigma_max
    one = heun_sampler(exact, lat, steps=1)
    direct = exact(lat * 80.0, torch.full((16,), 80.0, dtype=torch.float64))
    assert torch.allclose(one, direct)
    assert math.isfinite(one.sum().item())


def _counted_gaussian():
    """The exact denoiser of a 2-D Gaussian, its covariance, and a copy that counts its calls."""
    mean = torch.tensor([2.0, -1.0], dtype=torch.float64)
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    exact = gaussian_denoiser(mean, cov)
    calls = {"n": 0}

    def counting(x, sigma, cond=None):
        calls["n"] += 1
        return exact(x, sigma)

    return exact, cov, counting, calls


def _one_evaluation_a_step(counting, calls: dict, lat: torch.Tensor, solver: str, steps: tuple[int, ...]) -> None:
    """``solver`` calls the denoiser ``steps`` times, as ``network_evaluations`` says."""
    for n in steps:
        calls["n"] = 0
        heun_sampler(counting, lat, steps=n, solver=solver)
        assert calls["n"] == network_evaluations(n, solver) == n


def test_euler_solver_costs_one_evaluation_a_step_and_converges_to_the_ode() -> None:
    """Euler skips Heun's correction: ``steps`` evaluations, the same single step, and with many
    steps the same flow as Heun (the exact Gaussian conditional)."""
    exact, cov, counting, calls = _counted_gaussian()

    lat = torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _one_evaluation_a_step(counting, calls, lat, "euler", (1, 3, 5))
    assert torch.equal(heun_sampler(exact, lat, steps=1, solver="euler"), heun_sampler(exact, lat, steps=1))
    euler = heun_sampler(exact, lat, steps=400, sigma_max=10.0, solver="euler")
    heun = heun_sampler(exact, lat, steps=40, sigma_max=10.0)
    assert torch.allclose(euler.mean(0), heun.mean(0), atol=0.01)
    assert torch.allclose(torch.cov(euler.T), torch.cov(heun.T), atol=0.02)
    assert torch.allclose(torch.cov(euler.T), cov, atol=0.03)
    with pytest.raises(ValueError, match="solver"):
        heun_sampler(exact, lat, steps=2, solver="rk4")
    with pytest.raises(ValueError, match="solver"):
        network_evaluations(3, "midpoint")


def test_dpm2m_is_second_order_at_one_evaluation_a_step() -> None:
    """DPM-Solver++ 2M: ``steps`` evaluations, Euler's single step, and on Gaussian data (exact
    denoiser) a far smaller error than Euler at the same few evaluations, converging to the ODE."""
    exact, cov, counting, calls = _counted_gaussian()

    lat = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _one_evaluation_a_step(counting, calls, lat, "dpm2m", (1, 2, 5))
    torch.testing.assert_close(heun_sampler(exact, lat, steps=1, solver="dpm2m"), heun_sampler(exact, lat, steps=1, solver="euler"),
                               rtol=1e-12, atol=1e-12)
    kw = dict(sigma_max=10.0, sigma_min=0.002, rho=7.0)
    ode = heun_sampler(exact, lat, steps=400, **kw)  # the flow's end point, to Heun's accuracy
    # at 5 evaluations: 5 steps of DPM-Solver++ 2M or of Euler, 3 of Heun
    err = {s: (heun_sampler(exact, lat, steps=n, solver=s, **kw) - ode).abs().mean().item()
           for s, n in (("euler", 5), ("dpm2m", 5), ("heun", 3))}
    assert err["dpm2m"] < 0.5 * err["euler"] and err["dpm2m"] < 0.1 * err["heun"]
    many = heun_sampler(exact, lat, steps=200, solver="dpm2m", **kw)
    assert (many - ode).abs().max().item() < 1e-3
    assert _grid_has("dpm2m") and _grid_has("euler") and _grid_has("heun")  # every solver is tuned


def _grid_has(solver: str) -> bool:
    from biodiffuse.diffusion import schedule_grid

    return any(c["solver"] == solver for c in schedule_grid(5))


def test_schedule_grid_respects_the_budget_and_choose_schedule_ranks() -> None:
    from biodiffuse.diffusion import choose_schedule, schedule_grid

    for nfe in (1, 4, 5):
        grid = schedule_grid(nfe)
        assert grid and all(c["nfe"] <= nfe and c["nfe"] == network_evaluations(c["steps"], c["solver"]) for c in grid)
        assert all(c["sigma_min"] < c["sigma_max"] for c in grid)
    assert {c["steps"] for c in schedule_grid(5) if c["solver"] == "heun"} == {3}
    table = choose_schedule(lambda c: {"crps": abs(c["sigma_max"] - 10.0) + c["rho"] / 100}, schedule_grid(5))
    assert table.iloc[0]["sigma_max"] == 10.0 and table.iloc[0]["rho"] == 3.0
    assert list(table["crps"]) == sorted(table["crps"])
    with pytest.raises(ValueError, match="nfe"):
        schedule_grid(0)
    with pytest.raises(KeyError, match="crps"):
        choose_schedule(lambda c: {"rmse": 1.0}, schedule_grid(1))
    with pytest.raises(ValueError, match="empty"):
        schedule_grid(3, sigma_max=(0.01,), sigma_min=(0.05,))
