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


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_on_1x1_inputs_is_the_convolution(kernel: int) -> None:
    """The matrix-product path for 1 x 1 inputs gives the convolution's output and gradients."""
    from torch.nn import functional as F

    from biodiffuse.nn import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(6, 5, kernel, padding=kernel // 2)
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(4, 6, 1, 1, requires_grad=True)
    y = conv(x)
    ref_w = conv.weight.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(x_ref, ref_w, conv.bias.detach(), padding=kernel // 2)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    (y**2).sum().backward()
    (ref**2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.weight.grad, ref_w.grad, rtol=1e-5, atol=1e-6)
    # larger inputs take the ordinary convolution
    z = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(conv(z), F.conv2d(z, conv.weight, conv.bias, padding=kernel // 2))


def test_conv_without_same_padding_keeps_the_convolution() -> None:
    from biodiffuse.nn import Conv2d

    conv = Conv2d(3, 4, 3, padding=0)  # a 1 x 1 input is too small: the convolution must say so
    with pytest.raises(RuntimeError):
        conv(torch.randn(2, 3, 1, 1))


def test_channel_attention_1x1_path_matches_sdpa() -> None:
    """At 1 x 1 the attention is computed as outer products; it must equal SDPA's result."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    att = ChannelAttention(16, heads=4)
    torch.nn.init.normal_(att.proj.weight)
    with torch.no_grad():
        att.temperature.fill_(1.7)
    x = torch.randn(5, 16, 1, 1)
    b, c = x.shape[:2]
    q, k, v = att.qkv(att.norm(x)).reshape(b, 3, 4, c // 4, 1).unbind(1)
    ref = x + att.proj(F.scaled_dot_product_attention(q * att.temperature, k, v, scale=1.0).reshape(b, c, 1, 1))
    torch.testing.assert_close(att(x), ref, rtol=1e-5, atol=1e-6)


def test_fast_paths_switch_turns_the_1x1_paths_off_and_restores_them(monkeypatch) -> None:
    """Inside ``fast_paths(False)`` a 1 x 1 input takes the ordinary convolution and SDPA
    (same numbers); the switch is restored on leaving, also after an error."""
    from torch.nn import functional as F

    import biodiffuse.nn.attention as attention_module
    import biodiffuse.nn.conv as conv_module
    from biodiffuse.nn import Conv2d, fast_paths, fast_paths_enabled

    calls = {"linear": 0, "sdpa": 0}
    linear, sdpa = F.linear, F.scaled_dot_product_attention

    def counting_linear(*a, **k):
        calls["linear"] += 1
        return linear(*a, **k)

    def counting_sdpa(*a, **k):
        calls["sdpa"] += 1
        return sdpa(*a, **k)

    monkeypatch.setattr(conv_module.F, "linear", counting_linear)
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting_sdpa)
    torch.manual_seed(0)
    conv, att = Conv2d(6, 8, 3, padding=1), ChannelAttention(8, heads=2)
    x = torch.randn(3, 6, 1, 1)
    fast = att(conv(x))
    assert calls == {"linear": 3, "sdpa": 0}  # conv + qkv + proj as matrix products, outer-product attention
    with fast_paths(False):
        assert not fast_paths_enabled()
        plain = att(conv(x))
    assert calls == {"linear": 3, "sdpa": 1}
    torch.testing.assert_close(plain, fast, rtol=1e-5, atol=1e-6)
    assert fast_paths_enabled()
    with pytest.raises(RuntimeError), fast_paths(False):
        raise RuntimeError("boom")
    assert fast_paths_enabled()
