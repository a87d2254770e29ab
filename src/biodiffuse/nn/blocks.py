"""Residual building blocks shared by the UNets."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .conv import Conv2d
from .attention import ChannelAttention, SpatialAttention, _groups

__all__ = ["ResBlock", "UNetBlock", "Downsample", "Upsample"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with an optional scale/shift from an embedding, residual.

    Parameters
    ----------
    in_channels, out_channels
        Widths.
    emb_channels
        Width of the noise embedding, or ``None`` for an unconditioned block (the condition
        branch of MCD has no noise input).
    kernel_size
        3 for images, 1 for tabular data (H = W = 1).
    dropout
        Dropout before the second convolution.

    Examples
    --------
    >>> block = bd.nn.ResBlock(32, 64, emb_channels=128)
    >>> block(torch.randn(2, 32, 16, 16), torch.randn(2, 128)).shape      # x, noise embedding
    torch.Size([2, 64, 16, 16])
    >>> tabular = bd.nn.ResBlock(32, 32, emb_channels=None, kernel_size=1)   # condition branch, 1x1
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int | None,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size, padding=pad)
        self.emb = nn.Linear(emb_channels, 2 * out_channels) if emb_channels else None
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            if emb is None:
                raise ValueError("This block needs a noise embedding.")
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNetBlock(nn.Module):
    """MCD's UNet block: residual block, then spatial attention (optional), then channel attention.

    Parameters
    ----------
    in_channels, out_channels
        Widths.
    emb_channels
        Width of the noise embedding, or ``None`` for an unconditioned block.
    kernel_size
        3 for images, 1 for tabular data.
    dropout
        Dropout inside the residual block.
    spatial_attention
        Add a :class:`SpatialAttention` after the residual block.
    channel_attention
        Add a :class:`ChannelAttention` at the end.
    heads
        Heads of both attentions.

    Examples
    --------
    >>> block = bd.nn.UNetBlock(32, 64, emb_channels=128, spatial_attention=True, heads=2)
    >>> block(torch.randn(2, 32, 16, 16), torch.randn(2, 128)).shape
    torch.Size([2, 64, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int | None,
        kernel_size: int = 3,
        dropout: float = 0.0,
        spatial_attention: bool = False,
        channel_attention: bool = True,
        heads: int = 1,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_channels, kernel_size, dropout)
        self.sattn = SpatialAttention(out_channels, heads) if spatial_attention else None
        self.cattn = ChannelAttention(out_channels, heads) if channel_attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.res(x, emb)
        if self.sattn is not None:
            x = self.sattn(x)
        if self.cattn is not None:
            x = self.cattn(x)
        return x


class Downsample(nn.Module):
    """Halve the resolution with a strided convolution; identity for tabular data.

    Parameters
    ----------
    channels
        Input (and output) channels.
    spatial
        ``True``: stride-2 3x3 convolution; ``False`` (tabular data, 1x1 inputs): identity.

    Examples
    --------
    >>> bd.nn.Downsample(32, spatial=True)(torch.randn(2, 32, 16, 16)).shape
    torch.Size([2, 32, 8, 8])
    """

    def __init__(self, channels: int, spatial: bool) -> None:
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1) if spatial else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size followed by a 3x3 conv; identity for tabular data.

    Parameters
    ----------
    channels
        Input (and output) channels.
    spatial
        ``True``: nearest-neighbour upsampling to ``size`` then a 3x3 convolution; ``False``:
        identity.

    Examples
    --------
    >>> up = bd.nn.Upsample(32, spatial=True)
    >>> up(torch.randn(2, 32, 8, 8), size=(16, 16)).shape      # forward(x, size)
    torch.Size([2, 32, 16, 16])
    """

    def __init__(self, channels: int, spatial: bool) -> None:
        super().__init__()
        self.spatial = spatial
        self.conv = Conv2d(channels, channels, 3, padding=1) if spatial else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if not self.spatial:
            return x
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
