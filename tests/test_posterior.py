"""The one batched posterior loop: per-row random streams, clamping, reducers, redraws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biodiffuse.diffusion import Batch, Moments, Recentred, RowNoise, coherent_sampler, edm_sampler, row_seeds, sample_rows


class _Affine(torch.nn.Module):
    """The exact denoiser of N(c, 0.5^2): D(x; sigma | c) = c + (x - c) 0.25 / (sigma^2 + 0.25)."""

    def forward(self, x, sigma, cond):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return cond + (x - cond) * 0.25 / (s**2 + 0.25)


def _run(cond: np.ndarray, keys, *, batch_size: int, seed: int = 0, clamp=None, n_samples: int = 3, steps: int = 4):
    net = _Affine()

    def prepare(rows, device):
        c = torch.from_numpy(cond[rows]).to(device)
        if clamp is None:
            return Batch(net, c)
        m = torch.from_numpy(clamp[rows])
        return Batch(net, c, clamp_values=torch.full_like(c, 7.0), clamp_mask=m)

    return sample_rows(
        prepare, len(cond), cond.shape[1:], seeds=row_seeds(seed, keys), sampler=edm_sampler(steps, sigma_max=5.0),
        n_samples=n_samples, batch_size=batch_size, reducer=Moments(len(cond), keep_draws=True),
    )


def test_same_seed_same_numbers_whatever_batch_size_and_other_rows() -> None:
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(11, 5)).astype(np.float32)
    keys = [f"cell{i}" for i in range(11)]
    a = _run(cond, keys, batch_size=11)
    b = _run(cond, keys, batch_size=2)
    np.testing.assert_array_equal(a["draws"], b["draws"])
    np.testing.assert_array_equal(a["mean"], b["mean"])
    sub = [7, 3]  # the same cells alone, in another order
    c = _run(cond[sub], [keys[i] for i in sub], batch_size=1)
    np.testing.assert_array_equal(c["draws"], a["draws"][sub])
    # the draws of one row differ from each other, and another seed gives other numbers
    assert np.ptp(a["draws"][0], axis=0).max() > 1e-3
    d = _run(cond, keys, batch_size=4, seed=1)
    assert not np.allclose(d["draws"], a["draws"])


def test_moments_and_clamp() -> None:
    rng = np.random.default_rng(1)
    cond = rng.normal(size=(6, 4)).astype(np.float32)
    clamp = np.zeros((6, 4), dtype=bool)
    clamp[:, 1] = True
    out = _run(cond, range(6), batch_size=4, clamp=clamp, n_samples=50, steps=18)
    assert out["draws"].shape == (6, 50, 4)
    np.testing.assert_allclose(out["mean"], out["draws"].mean(axis=1))
    np.testing.assert_allclose(out["variance"], out["draws"].var(axis=1, ddof=1))
    assert (out["draws"][:, :, 1] == 7.0).all() and (out["variance"][:, 1] == 0).all()
    # the exact denoiser of N(c, 0.25): draws centre on c with a spread near 0.5
    free = [0, 2, 3]
    np.testing.assert_allclose(out["mean"][:, free], cond[:, free], atol=0.3)
    assert 0.4 < np.sqrt(out["variance"][:, free].mean()) < 0.6


def test_row_noise_is_per_row() -> None:
    seeds = row_seeds(3, ["a", "b", "c"])
    assert len(set(seeds.tolist())) == 3 and (seeds >= 0).all()
    np.testing.assert_array_equal(row_seeds(3, ["b"]), seeds[1:2])
    together = RowNoise(seeds).randn([0, 1, 2], 2, (4,))
    alone = RowNoise(seeds[2:]).randn([0], 2, (4,))
    torch.testing.assert_close(together[4:], alone)


def test_bad_arguments() -> None:
    cond = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="n_samples"):
        _run(cond, range(3), batch_size=2, n_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        _run(cond, range(3), batch_size=0)
    with pytest.raises(ValueError, match="one seed per row"):
        sample_rows(lambda r, d: None, 3, (2,), seeds=[1, 2], sampler=edm_sampler(1))
    with pytest.raises(ValueError, match="steps"):
        edm_sampler(0)


def test_coherent_redraws_come_from_the_row_streams() -> None:
    """Redrawn latents come from each row's own stream: a row's result does not depend on
    which other rows were rejected with it."""
    from biodiffuse.diffusion import CoherentConsensus

    class _Const:
        def __init__(self, v):
            self.v = v

        def __call__(self, x, sigma, cond):
            return torch.full_like(x, self.v)

    def prepare(rows, device):
        def make(draws):
            avail = torch.ones(len(draws), 2, dtype=torch.bool)
            # rows with odd index disagree (incoherent) and are redrawn until max_retries
            bad = torch.from_numpy(np.isin(np.asarray(rows)[np.asarray(draws) // 2], [1, 3]))
            avail[:, 1] = bad
            return CoherentConsensus([_Const(1.0), _Const(-1.0)], [None, None], torch.ones(2), avail, threshold=0.5)

        return Batch(make)

    def run(keys, bs):
        return sample_rows(prepare, len(keys), (3,), seeds=row_seeds(0, keys), sampler=coherent_sampler(2, max_retries=2),
                           n_samples=2, batch_size=bs)

    a = run(list("abcd"), 4)
    b = run(list("abcd"), 1)
    assert a["retries"].tolist() == [[0, 0], [2, 2], [0, 0], [2, 2]]
    assert a["rejected"][[1, 3]].all() and not a["rejected"][[0, 2]].any()
    # 2 Heun steps = 3 calls a pass; rows 1 and 3: two denoisers, three passes; rows 0 and 2: one, one
    assert a["nfe"].tolist() == [[3, 3], [18, 18], [3, 3], [18, 18]]
    np.testing.assert_array_equal(a["mean"], b["mean"])


@pytest.mark.parametrize(
    "family, kwargs, nfe",
    [("edm", {"steps": 4}, 7), ("edm", {"steps": 4, "solver": "euler"}, 4), ("flow", {"steps": 3, "method": "heun"}, 6),
     ("flow", {"steps": 5}, 5), ("point", {"steps": 9}, 1)],
)
def test_sampler_for_reports_the_evaluations_it_makes(family, kwargs, nfe) -> None:
    """Every family's sampler reports ``nfe`` per draw, equal to the network calls it really made
    and to ``evaluations_for``."""
    from biodiffuse.diffusion import evaluations_for, sampler_for

    calls = []

    def net(x, t, cond):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    steps = kwargs.pop("steps")
    sampler = sampler_for(family, steps, **kwargs)
    out = sample_rows(lambda rows, device: Batch(net, None), 4, (2,), seeds=row_seeds(0, range(4)), sampler=sampler,
                      n_samples=2, batch_size=4, reducer=Moments(4))
    assert len(calls) == nfe
    assert (out["nfe"] == nfe).all() and out["nfe"].shape == (4, 2)
    assert evaluations_for(family, steps, **kwargs) == nfe
    with pytest.raises(ValueError, match="family"):
        sampler_for("ddpm", 3)
    with pytest.raises(ValueError, match="steps"):
        evaluations_for(family, 0)


def test_recentred_reducer_moves_the_mean_and_keeps_the_spread() -> None:
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(6, 5, 3))
    centre = rng.normal(size=(10, 3))
    rows = np.arange(2, 8)
    inner = Moments(10, keep_draws=True)
    red = Recentred(inner, centre)
    red(rows, draws, {})
    out = red.result()
    np.testing.assert_allclose(out["mean"][rows], centre[rows])
    np.testing.assert_allclose(out["variance"][rows], draws.var(axis=1, ddof=1))
    np.testing.assert_allclose(out["draws"][rows] - centre[rows][:, None], draws - draws.mean(axis=1, keepdims=True))
    with pytest.raises(ValueError, match="centre rows have shape"):
        Recentred(Moments(10), np.zeros((10, 4)))(rows, draws, {})


def test_kept_one_step_draws_are_the_one_step_sampler_from_the_same_noise_at_no_extra_evaluation() -> None:
    """``edm_sampler(..., keep_one_step=True)`` returns each draw's first denoiser output: what
    ``edm_sampler(1)`` draws from the same per-row streams, clamped like the draws, without a call
    more. ``Recentred()`` centres on its mean and does not pass it on."""
    rng = np.random.default_rng(3)
    cond = rng.normal(size=(7, 4)).astype(np.float32)
    clamp = np.zeros((7, 4), dtype=bool)
    clamp[:, 2] = True
    calls = []

    class Counted(_Affine):
        def forward(self, x, sigma, cond):
            calls.append(len(x))
            return super().forward(x, sigma, cond)

    def run(sampler, reducer):
        def prepare(rows, device):
            c = torch.from_numpy(cond[rows])
            return Batch(Counted(), c, clamp_values=torch.full_like(c, 7.0), clamp_mask=torch.from_numpy(clamp[rows]))

        calls.clear()
        out = sample_rows(prepare, 7, (4,), seeds=row_seeds(0, range(7)), sampler=sampler, n_samples=5, batch_size=3,
                          reducer=reducer)
        return out, len(calls)

    kw = dict(sigma_max=5.0, solver="heun")
    one, _ = run(edm_sampler(1, **kw), Moments(7, keep_draws=True))
    plain, n_plain = run(edm_sampler(4, **kw), Moments(7, keep_draws=True))
    kept, n_kept = run(edm_sampler(4, **kw, keep_one_step=True), Moments(7, keep_draws=True))
    assert n_kept == n_plain == 3 * 7  # three batches x 7 evaluations (Heun, 4 steps)
    np.testing.assert_array_equal(kept["draws"], plain["draws"])
    np.testing.assert_allclose(kept["one_step"], one["draws"], rtol=1e-6, atol=1e-6)
    assert (kept["one_step"][:, :, 2] == 7.0).all()  # clamped like the draws
    rc, _ = run(edm_sampler(4, **kw, keep_one_step=True), Recentred(Moments(7, keep_draws=True)))
    assert "one_step" not in rc
    np.testing.assert_allclose(rc["mean"], one["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rc["variance"], plain["variance"], rtol=1e-9)
    assert (rc["draws"][:, :, 2] == 7.0).all()
    assert np.abs(rc["mean"] - plain["mean"]).max() > 1e-3
    with pytest.raises(ValueError, match="keep_one_step=True"):
        run(edm_sampler(4, **kw), Recentred(Moments(7)))
    with pytest.raises(TypeError, match="keep_one_step must be True or False"):
        edm_sampler(4, keep_one_step="yes")
