"""Random channel masking and the masked condition."""

from __future__ import annotations

import pytest
import torch

from biodiffuse.diffusion import masked_condition, random_channel_mask


def test_mask_fraction_and_independence() -> None:
    g = torch.Generator().manual_seed(0)
    m = random_channel_mask(20000, 10, 0.9, generator=g)
    assert m.dtype == torch.bool and m.shape == (20000, 10)
    frac = m.float().mean(0)
    assert torch.all((frac - 0.9).abs() < 0.01)
    # independent channels: P(both observed) ~ p^2
    both = (m[:, 0] & m[:, 1]).float().mean().item()
    assert abs(both - 0.81) < 0.015


def test_mask_extremes_and_availability() -> None:
    assert not random_channel_mask(5, 4, 0.0).any()
    assert random_channel_mask(5, 4, 1.0).all()
    avail = torch.tensor([[True, False, True, False]]).expand(5, 4)
    m = random_channel_mask(5, 4, 1.0, available=avail)
    assert torch.equal(m, avail)
    with pytest.raises(ValueError):
        random_channel_mask(5, 4, 1.5)
    with pytest.raises(ValueError):
        random_channel_mask(5, 4, 0.5, available=torch.ones(5, 3, dtype=torch.bool))


def test_mask_seeded() -> None:
    a = random_channel_mask(50, 7, 0.5, generator=torch.Generator().manual_seed(3))
    b = random_channel_mask(50, 7, 0.5, generator=torch.Generator().manual_seed(3))
    c = random_channel_mask(50, 7, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masked_condition_zeroes_and_flags() -> None:
    x = torch.tensor([[1.0, float("nan"), 3.0]])
    mask = torch.tensor([[True, False, True]])
    c = masked_condition(x, mask)
    assert c.shape == (1, 6)
    assert torch.equal(c, torch.tensor([[1.0, 0.0, 3.0, 1.0, 0.0, 1.0]]))
    img = torch.randn(2, 3, 4, 4)
    ci = masked_condition(img, torch.tensor([[True, False, True], [False, False, True]]))
    assert ci.shape == (2, 6, 4, 4)
    assert torch.all(ci[0, 1] == 0) and torch.all(ci[0, 4] == 0) and torch.all(ci[0, 3] == 1)
    assert torch.equal(ci[1, 2], img[1, 2])
