"""The MCD speed driver times both network paths, and they compute the same function."""

from __future__ import annotations

import pytest
import torch

mcd_speed = pytest.importorskip("mcd_speed")


def test_driver_times_both_paths(tmp_path):
    res = mcd_speed.main(["--repeats", "1", "--threads", "1", "--out", str(tmp_path / "s")])
    paths = {r["path"] for r in res["rows"]}
    assert paths == {"plain conv + SDPA, AdamW loop", "1x1 paths, AdamW loop", "1x1 paths, fused AdamW"}
    assert all(r["train_step_s"] > 0 and r["sample_draws_per_s"] > 0 for r in res["rows"])
    assert "| threads | path |" in (tmp_path / "s.md").read_text()


def test_plain_and_fast_paths_agree():
    """The benchmark's 'plain' network (``bd.nn.fast_paths(False)``) is the same function as the package's."""
    from biodiffuse.module.mcd import build_network
    from biodiffuse.nn import fast_paths

    torch.manual_seed(0)
    net = build_network(7, 20, spatial=False, model_channels=16, channel_mult=(1, 2), num_blocks=1, heads=2,
                        dropout=0.0, cond_dropout=0.0, sigma_data=0.5).eval()
    for p in net.parameters():  # zero-initialised layers would hide differences
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=0.2)
    x, cond, sigma = torch.randn(5, 7, 1, 1), torch.randn(5, 34, 1, 1), torch.rand(5) + 0.1
    fast = net(x, sigma, cond)  # with gradients: the training paths (outer-product attention)
    with torch.no_grad():
        fast_sampling = net(x, sigma, cond)  # without: SDPA, as when sampling
    with fast_paths(False):
        plain = net(x, sigma, cond)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_sampling, plain, rtol=1e-4, atol=1e-5)
