"""The conditional image UNet (GeneFlow, StainDiffuser) and GeneFlow's RNA encoder."""

from __future__ import annotations

import pytest
import torch

from biodiffuse.diffusion import EDMLoss, EDMPrecond
from biodiffuse.nn import ConditionalImageUNet, RNAEncoder

TINY = dict(model_channels=8, channel_mult=(1, 2, 2), num_blocks=1, heads=2)


def _perturb(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Give the zero-initialised convs random weights, as after training (at init the output is 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


def _cond(b: int, h: int, w: int, cond_dim: int | None, img_ch: int) -> dict | None:
    c = {}
    if cond_dim:
        c["vector"] = torch.randn(b, cond_dim)
    if img_ch:
        c["image"] = torch.randn(b, img_ch, h, w)
    return c or None


# ---------------------------------------------------------------------------- UNet
@pytest.mark.parametrize("size", [(8, 8), (16, 16), (32, 32), (16, 32)])
@pytest.mark.parametrize(
    "cond_dim,img_ch,heads",
    [(None, 0, None), (6, 0, None), (None, 3, None), (6, 3, {"seg": 1, "dist": 2})],
)
def test_unet_shapes(size, cond_dim, img_ch, heads) -> None:
    h, w = size
    net = ConditionalImageUNet(2, 3, cond_dim=cond_dim, image_cond_channels=img_ch, extra_heads=heads, **TINY)
    x = torch.randn(2, 2, h, w)
    y = net(x, torch.randn(2), _cond(2, h, w, cond_dim, img_ch))
    if heads is None:
        assert isinstance(y, torch.Tensor) and y.shape == (2, 3, h, w)
    else:
        assert set(y) == {"out", *heads}
        assert y["out"].shape == (2, 3, h, w)
        for name, c in heads.items():
            assert y[name].shape == (2, c, h, w)


def test_unet_256_tile_and_default_config() -> None:
    net = ConditionalImageUNet(3, 3, model_channels=8, channel_mult=(1, 2, 2, 2), num_blocks=1, heads=2)
    assert net(torch.randn(1, 3, 256, 256), torch.zeros(1)).shape == (1, 3, 256, 256)
    default = ConditionalImageUNet(3, 3)
    n_params = sum(p.numel() for p in default.parameters())
    assert 10e6 < n_params < 30e6  # ~19.1 M, independent of the tile size (fully convolutional)
    with torch.no_grad():
        assert default(torch.randn(1, 3, 64, 64), torch.zeros(1)).shape == (1, 3, 64, 64)


def test_output_is_zero_at_init_and_conditions_change_it_after() -> None:
    torch.manual_seed(0)
    net = ConditionalImageUNet(2, 2, cond_dim=5, image_cond_channels=3, extra_heads={"seg": 1}, **TINY).eval()
    x, t = torch.randn(3, 2, 16, 16), torch.zeros(3)
    vec, img = torch.randn(3, 5), torch.randn(3, 3, 16, 16)
    out0 = net(x, t, {"vector": vec, "image": img})
    assert not out0["out"].any() and not out0["seg"].any()  # zero-initialised output convs
    _perturb(net)
    with torch.no_grad():
        base = net(x, t, {"vector": vec, "image": img})
        for key in ("out", "seg"):
            other_vec = net(x, t, {"vector": vec + torch.randn_like(vec), "image": img})[key]
            other_img = net(x, t, {"vector": vec, "image": img + torch.randn_like(img)})[key]
            other_t = net(x, t + 1.0, {"vector": vec, "image": img})[key]
            other_x = net(x + torch.randn_like(x), t, {"vector": vec, "image": img})[key]
            for other in (other_vec, other_img, other_t, other_x):
                assert (other - base[key]).abs().mean() > 1e-3 * base[key].abs().mean()
        # samples are independent: changing sample 0's condition leaves sample 1 alone
        vec2 = vec.clone()
        vec2[0] += 1.0
        moved = net(x, t, {"vector": vec2, "image": img})["out"]
        assert not torch.allclose(moved[0], base["out"][0])
        assert torch.allclose(moved[1:], base["out"][1:], atol=1e-6)


def test_tensor_cond_shortcuts_equal_mapping() -> None:
    torch.manual_seed(0)
    vnet = _perturb(ConditionalImageUNet(1, 1, cond_dim=4, **TINY))
    inet = _perturb(ConditionalImageUNet(1, 1, image_cond_channels=2, **TINY))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    v, im = torch.randn(2, 4), torch.randn(2, 2, 8, 8)
    assert torch.equal(vnet(x, t, v), vnet(x, t, {"vector": v}))
    assert torch.equal(inet(x, t, im), inet(x, t, {"image": im}))
    # a scalar time (ODE solvers) is broadcast over the batch
    assert torch.equal(vnet(x, torch.tensor(0.3), v), vnet(x, torch.full((2,), 0.3), v))


def test_unet_inside_edm_precond_and_as_velocity_net() -> None:
    net = ConditionalImageUNet(3, 3, cond_dim=4, **TINY)
    den = EDMPrecond(net)
    x, v = torch.randn(2, 3, 16, 16), torch.randn(2, 4)
    assert den(x, torch.tensor([0.5, 2.0]), v).shape == x.shape
    assert net(x, torch.rand(2), v).shape == x.shape


@pytest.mark.parametrize(
    "kwargs,x_shape,t_shape,cond,match",
    [
        ({}, (2, 3, 16, 16), (2,), None, "channels"),
        ({}, (2, 2, 18, 16), (2,), None, "not divisible"),
        ({}, (2, 2, 16), (2,), None, r"\(B, C, H, W\)"),
        ({}, (2, 2, 16, 16), (3,), None, "t must"),
        ({"cond_dim": 4}, (2, 2, 16, 16), (2,), None, "vector condition"),
        ({"cond_dim": 4}, (2, 2, 16, 16), (2,), torch.randn(2, 5), "must be"),
        ({}, (2, 2, 16, 16), (2,), torch.randn(2, 4), "no vector condition"),
        ({"image_cond_channels": 3}, (2, 2, 16, 16), (2,), None, "image condition"),
        ({"image_cond_channels": 3}, (2, 2, 16, 16), (2,), torch.randn(2, 3, 8, 8), "like x"),
        ({}, (2, 2, 16, 16), (2,), {"vec": torch.randn(2, 4)}, "keys"),
        ({}, (2, 2, 16, 16), (2,), torch.randn(2, 4, 3), "cond as a tensor"),
    ],
)
def test_unet_bad_input(kwargs, x_shape, t_shape, cond, match) -> None:
    net = ConditionalImageUNet(2, 2, **{**TINY, **kwargs})
    with pytest.raises(ValueError, match=match):
        net(torch.randn(x_shape), torch.zeros(t_shape), cond)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"extra_heads": {"out": 1}},
        {"extra_heads": {"seg": 0}},
        {"attention_levels": (3,)},
        {"channel_mult": ()},
        {"cond_dim": 0},
        {"num_blocks": 0},
    ],
)
def test_unet_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        ConditionalImageUNet(2, 2, **{**TINY, **kwargs})


def test_tiny_unet_in_edm_overfits_one_batch() -> None:
    """Smoke test of learning: one fixed batch (images, sigmas, noise) is fitted within 100 steps."""
    torch.manual_seed(0)
    den = EDMPrecond(ConditionalImageUNet(1, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, heads=2))
    x = torch.randn(4, 1, 16, 16).clamp(-2, 2) * 0.5
    loss_fn = EDMLoss()

    def batch_loss() -> torch.Tensor:
        return loss_fn(den, x, generator=torch.Generator().manual_seed(0))

    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    with torch.no_grad():
        first = batch_loss().item()
    for _ in range(100):
        opt.zero_grad()
        batch_loss().backward()
        opt.step()
    with torch.no_grad():
        last = batch_loss().item()
    assert last < first / 5, (first, last)


# ---------------------------------------------------------------------------- RNA encoder
def _encoder(pool: str = "attention", **kw) -> RNAEncoder:
    torch.manual_seed(0)
    return RNAEncoder(12, dim=16, rank=4, heads=4, layers=2, pool=pool, **kw).eval()


def test_rna_encoder_shapes_and_single_cell() -> None:
    enc = _encoder()
    x = torch.randn(3, 12).abs()
    assert enc(x).shape == (3, 16)
    assert torch.allclose(enc(x), enc(x[:, None, :]), atol=1e-6)
    xs = torch.randn(3, 5, 12).abs()
    assert enc(xs).shape == (3, 16)
    assert enc.cell_weights(xs).shape == (3, 4, 5)


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_rna_encoder_ignores_padding_cells(pool: str) -> None:
    enc = _encoder(pool)
    x = torch.randn(4, 5, 12).abs()
    n_valid = torch.tensor([5, 3, 1, 2])
    mask = torch.arange(5)[None, :] < n_valid[:, None]
    ref = enc(x, mask)
    # overwrite the padded cells and append more padding with wild values (incl. NaN / inf)
    junk = torch.randn(4, 3, 12) * 100
    junk[0, 0, 0], junk[1, 1, 3] = float("nan"), float("inf")
    x2 = torch.cat([torch.where(mask[..., None], x, torch.randn_like(x) * 50), junk], dim=1)
    mask2 = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    out = enc(x2, mask2)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-5)
    # ... the same as encoding only the valid cells of each sample
    for i in range(4):
        alone = enc(x[i : i + 1, : n_valid[i]])
        assert torch.allclose(alone, ref[i : i + 1], atol=1e-5)
    # and padded cells get exactly zero gradient, real cells a nonzero one
    x2 = x2.nan_to_num(posinf=1e3).requires_grad_(True)
    enc(x2, mask2).square().sum().backward()
    assert not x2.grad[~mask2].any()
    assert x2.grad[mask2].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_rna_encoder_permutation_invariant(pool: str) -> None:
    enc = _encoder(pool)
    x = torch.randn(2, 6, 12).abs()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    perm = torch.randperm(6)
    assert torch.allclose(enc(x, mask), enc(x[:, perm], mask[:, perm]), atol=1e-5)


def test_rna_encoder_uses_every_valid_cell_and_gene() -> None:
    enc = _encoder()
    x = torch.randn(2, 4, 12).abs()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    base = enc(x, mask)
    x_cell = x.clone()
    x_cell[0, 2] += 1.0  # a valid cell that is not the first
    assert (enc(x_cell, mask)[0] - base[0]).abs().max() > 1e-4
    unmasked = mask.clone()
    unmasked[0, 3] = True  # un-padding a cell changes the output
    assert (enc(x, unmasked)[0] - base[0]).abs().max() > 1e-4


def test_gradients_reach_the_genes_through_encoder_and_unet() -> None:
    """GeneFlow's gene importance: d ||v||^2 / d genes must exist for every gene."""
    torch.manual_seed(0)
    enc = _encoder()
    unet = _perturb(ConditionalImageUNet(3, 3, cond_dim=16, **TINY))
    genes = torch.randn(2, 3, 12).abs().requires_grad_(True)
    v = unet(torch.randn(2, 3, 16, 16), torch.rand(2), enc(genes))
    v.square().sum().backward()
    assert genes.grad is not None and torch.isfinite(genes.grad).all()
    assert genes.grad.abs().sum(dim=(0, 1)).gt(0).all()
    assert enc.gene_l1() > 0 and enc.gene_weights.shape == (12,)


@pytest.mark.parametrize(
    "x_shape,mask,err,match",
    [
        ((2, 5, 11), None, ValueError, "n_genes"),
        ((2, 5, 12), torch.ones(2, 4, dtype=torch.bool), ValueError, "mask must have shape"),
        ((2, 5, 12), torch.ones(2, 5), TypeError, "boolean"),
        ((2, 5, 12), torch.tensor([[True] * 5, [False] * 5]), ValueError, "at least one"),
        ((2, 12), torch.ones(2, 1, dtype=torch.bool), ValueError, "mask is only"),
        ((12,), None, ValueError, "x must be"),
    ],
)
def test_rna_encoder_bad_input(x_shape, mask, err, match) -> None:
    with pytest.raises(err, match=match):
        _encoder()(torch.randn(x_shape), mask)


def test_rna_encoder_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible"):
        RNAEncoder(10, dim=10, heads=4)
    with pytest.raises(ValueError, match="pool"):
        RNAEncoder(10, dim=16, pool="max")


def test_patch_discriminator_scores_local_patches():
    """One logit per patch: a change in one corner moves the logits there far more than those of
    the far corner (which it reaches only through the instance norm's statistics), and the map
    shrinks with the stride-2 layers (pix2pix's 70-px PatchGAN at layers=3)."""
    import torch

    from biodiffuse.nn import PatchDiscriminator

    torch.manual_seed(0)
    d = PatchDiscriminator(5, base_channels=8, layers=3).eval()
    cond, img = torch.randn(2, 3, 64, 64), torch.randn(2, 2, 64, 64)
    out = d(cond, img)
    assert out.shape == (2, 1, 6, 6)
    img2 = img.clone()
    img2[:, :, :8, :8] += 5.0
    out2 = d(cond, img2)
    change = (out - out2).abs()[:, 0]
    assert change[:, :3, :3].mean() > 2.5 * change[:, 3:, 3:].mean()
    assert PatchDiscriminator(5, base_channels=8, layers=1)(cond, img).shape == (2, 1, 30, 30)
    with pytest.raises(ValueError, match="share"):
        d(cond[:1], img)
