"""Channel-wise attention modules of MCD: squeeze-excitation, channel self-attention, and
ordinary spatial self-attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .conv import Conv2d
from .paths import fast_paths_enabled

__all__ = ["SqueezeExcitation", "ChannelAttention", "SpatialAttention", "OutputRecalibration"]


def _groups(channels: int, min_group_size: int = 16) -> int:
    """GroupNorm groups with at least ``min_group_size`` channels each.

    Small groups matter on 1x1 inputs: a group of one channel at one position normalises
    to a constant and erases the signal.
    """
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= min_group_size:
            return g
    return 1


class SqueezeExcitation(nn.Module):
    """Soft channel gating (Hu et al. 2018; MCD eq. 3): ``z * sigmoid(W2 relu(W1 GAP(z))))``.

    The spatial layout is untouched; each channel is scaled by a weight computed from the
    global average of all channels.

    Parameters
    ----------
    channels
        Channels of the input.
    reduction
        Hidden width of the gate: ``max(channels // reduction, 4)``.

    Examples
    --------
    >>> se = bd.nn.SqueezeExcitation(64, reduction=4)
    >>> se(torch.randn(2, 64, 16, 16)).shape                   # each channel scaled by a weight in (0, 1)
    torch.Size([2, 64, 16, 16])
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        alpha = z.mean(dim=(-2, -1))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(alpha))))
        return z * w[:, :, None, None]


class ChannelAttention(nn.Module):
    """Self-attention with the latent channels as tokens (MCD eqs. 4-5), residual.

    Queries, keys and values are 1x1 convolutions of the normalised input; the attention
    matrix is (D x D) per head and the spatial positions are the token features, so the
    block works at any resolution including 1x1 (where it mixes channels by their values).

    Parameters
    ----------
    channels
        Input (and output) channels ``D``; divisible by ``heads``.
    heads
        Attention heads, each over ``D / heads`` channels.

    Examples
    --------
    >>> attn = bd.nn.ChannelAttention(64, heads=4)
    >>> attn(torch.randn(2, 64, 16, 16)).shape                 # also works on 1 x 1 inputs
    torch.Size([2, 64, 16, 16])
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q = q * (self.temperature / (h * w) ** 0.5)
        if h * w == 1 and torch.is_grad_enabled() and fast_paths_enabled():
            # 1 x 1 inputs (tables) in training: the same attention as outer products, whose backward is far
            # cheaper on CPU than SDPA's; without gradients (sampling) SDPA's fused kernel is the faster one
            attn = torch.softmax(q * k.transpose(-2, -1), dim=-1)  # (b, heads, d, d): outer products
            out = (attn * v.transpose(-2, -1)).sum(dim=-1, keepdim=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.proj(out.reshape(b, c, h, w))


class SpatialAttention(nn.Module):
    """Multi-head self-attention over spatial positions (tokens = pixels), residual.

    Parameters
    ----------
    channels
        Input (and output) channels; divisible by ``heads``.
    heads
        Attention heads.

    Examples
    --------
    >>> attn = bd.nn.SpatialAttention(64, heads=2)
    >>> attn(torch.randn(2, 64, 8, 8)).shape                   # tokens: the 64 pixels
    torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1))
        return x + self.proj(out.transpose(-2, -1).reshape(b, c, h, w))


class OutputRecalibration(nn.Module):
    """Output channel attention in data space (MCD eq. 6): ``y + Conv1x1(SE(y))``.

    Parameters
    ----------
    channels
        Data channels ``C`` of the output ``y``.

    Examples
    --------
    >>> recal = bd.nn.OutputRecalibration(40)                  # starts as the identity (zero conv)
    >>> y = torch.randn(8, 40, 1, 1)
    >>> torch.equal(recal(y), y)
    True
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.se = SqueezeExcitation(channels, reduction=2)
        self.conv = Conv2d(channels, channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.conv(self.se(y))
