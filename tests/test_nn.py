"""Networks: shapes at any resolution, and that information flows where it must."""

from __future__ import annotations

import pytest
import torch

from biodiffuse.nn import ChannelAttention, MCDUNet, OutputRecalibration, SqueezeExcitation


@pytest.mark.parametrize("spatial,size", [(False, 1), (True, 16), (True, 13)])
def test_unet_shapes(spatial: bool, size: int) -> None:
    net = MCDUNet(7, 11, model_channels=16, spatial=spatial, heads=2)
    x = torch.randn(3, 7, size, size)
    c = torch.randn(3, 11, size, size)
    y = net(x, torch.randn(3), c)
    assert y.shape == x.shape
    # cached condition features give the same output
    assert torch.allclose(net(x, torch.zeros(3), net.encode_condition(c)), net(x, torch.zeros(3), c))


@pytest.mark.parametrize("spatial,size", [(False, 1), (True, 8)])
def test_output_depends_on_condition_noise_and_input(spatial: bool, size: int) -> None:
    torch.manual_seed(0)
    net = MCDUNet(5, 9, model_channels=32, spatial=spatial).eval()
    with torch.no_grad():  # zero-initialised output convs would hide the noise path at init
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    x = torch.randn(4, 5, size, size)
    c = torch.randn(4, 9, size, size)
    t = torch.zeros(4)
    base = net(x, t, c)
    assert (net(x, t, c + torch.randn_like(c)) - base).abs().mean() > 1e-3
    assert (net(x, t + 1.0, c) - base).abs().mean() > 1e-4
    assert (net(x + torch.randn_like(x), t, c) - base).abs().mean() > 1e-3


def test_channel_attention_mixes_channels_at_1x1() -> None:
    torch.manual_seed(0)
    att = ChannelAttention(16, heads=2)
    torch.nn.init.normal_(att.proj.weight)
    x = torch.randn(2, 16, 1, 1, requires_grad=True)
    y = att(x)
    y[:, 0].sum().backward()
    # output channel 0 depends on other input channels
    assert x.grad[:, 1:].abs().sum() > 0


def test_squeeze_excitation_is_a_gate() -> None:
    se = SqueezeExcitation(8)
    z = torch.randn(2, 8, 5, 5).abs()
    out = se(z)
    ratio = out / z
    assert torch.all(ratio >= 0) and torch.all(ratio <= 1)
    # one weight per channel, constant over space
    assert torch.allclose(ratio[:, :, 0, 0, None, None].expand_as(ratio), ratio, atol=1e-6)


def test_output_recalibration_starts_as_identity() -> None:
    rec = OutputRecalibration(6)
    y = torch.randn(3, 6, 1, 1)
    assert torch.equal(rec(y), y)
