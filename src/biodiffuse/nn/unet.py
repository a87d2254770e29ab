"""MCD's UNet: a diffusion branch and a mirrored condition branch with SE-gated injection.

Layout (MCD section 3 and appendix C): a 3-level UNet whose blocks are residual block ->
spatial attention -> channel attention; a condition network with the same encoder; at every
skip connection and at the middle block the condition features are injected as
``z = D(x_t) + SE(E(c))``; the output is a conv to data channels followed by the output
recalibration ``y + Conv1x1(SE(y))``. With ``spatial=False`` every kernel is 1x1 and there is
no down/up-sampling, so the same network serves tabular data (each cell a 1x1 image).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .attention import OutputRecalibration, SqueezeExcitation, _groups
from .blocks import Downsample, UNetBlock, Upsample
from .conv import Conv2d
from .embeddings import NoiseEmbedding

__all__ = ["MCDUNet", "ConditionEncoder"]


class _Encoder(nn.Module):
    """Encoder half shared by both branches; returns the skip features and the middle feature."""

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_blocks: int,
        emb_channels: int | None,
        spatial: bool,
        attention_levels: Sequence[int],
        dropout: float,
        heads: int,
    ) -> None:
        super().__init__()
        k = 3 if spatial else 1
        self.conv_in = Conv2d(in_channels, model_channels, k, padding=k // 2)
        self.blocks = nn.ModuleList()
        self.skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            out = model_channels * mult
            for _ in range(num_blocks):
                self.blocks.append(
                    UNetBlock(ch, out, emb_channels, k, dropout, spatial and level in attention_levels, True, heads)
                )
                ch = out
                self.skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.blocks.append(Downsample(ch, spatial))
                self.skip_channels.append(ch)
        self.mid = nn.ModuleList(
            [
                UNetBlock(ch, ch, emb_channels, k, dropout, spatial, True, heads),
                UNetBlock(ch, ch, emb_channels, k, dropout, False, True, heads),
            ]
        )
        self.out_channels = ch

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        h = self.conv_in(x)
        skips = [h]
        for block in self.blocks:
            h = block(h) if isinstance(block, Downsample) else block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        return skips, h


class ConditionEncoder(nn.Module):
    """The condition branch ``E``: the diffusion encoder's architecture without noise input.

    Its output does not depend on the noise level, so a sampler computes it once per batch
    and reuses it at every step.

    Parameters
    ----------
    cond_channels
        Channels of the condition ``c``.
    input_dropout
        Dropout on the condition input.
    **encoder_kwargs
        The encoder's architecture, as in :class:`MCDUNet`: ``model_channels``,
        ``channel_mult``, ``num_blocks``, ``spatial``, ``attention_levels``, ``dropout``,
        ``heads`` (all required).

    Examples
    --------
    >>> enc = bd.nn.ConditionEncoder(2000, model_channels=32, channel_mult=(1, 2), num_blocks=1,
    ...                              spatial=False, attention_levels=(), dropout=0.0, heads=1)
    >>> feats = enc(torch.randn(4, 2000, 1, 1))                # one feature map per skip, then the middle
    >>> [f.shape[1] for f in feats]
    [32, 32, 32, 64, 64]
    """

    def __init__(self, cond_channels: int, input_dropout: float = 0.0, **encoder_kwargs) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.encoder = _Encoder(cond_channels, emb_channels=None, **encoder_kwargs)

    def forward(self, c: torch.Tensor) -> list[torch.Tensor]:
        skips, mid = self.encoder(self.input_dropout(c), None)
        return [*skips, mid]


class MCDUNet(nn.Module):
    """Multi-channel diffusion UNet with hierarchical SE-gated condition injection.

    Parameters
    ----------
    channels
        Number of data (target) channels ``C``.
    cond_channels
        Number of condition channels (e.g. genes, or ``2 C`` for masked values + mask).
    model_channels
        Base width ``D``.
    channel_mult
        Width multiplier per level (3 levels by default).
    num_blocks
        UNet blocks per level in the encoder (the decoder has one more).
    spatial
        ``False`` for tabular data (1x1 kernels, no resampling, no spatial attention).
    attention_levels
        Levels (0 = full resolution) whose blocks carry spatial attention.
    dropout
        Dropout inside residual blocks.
    cond_dropout
        Dropout on the condition input (useful with thousands of gene channels).
    heads
        Attention heads.

    Notes
    -----
    ``forward(x, c_noise, cond)`` accepts ``cond`` either as the raw condition tensor
    (B, cond_channels, H, W) or as the list returned by :meth:`encode_condition`.

    Examples
    --------
    >>> net = bd.nn.MCDUNet(40, cond_channels=80, model_channels=32, heads=2)   # masked values + mask
    >>> x, cond = torch.randn(2, 40, 16, 16), torch.randn(2, 80, 16, 16)
    >>> net(x, torch.zeros(2), cond).shape
    torch.Size([2, 40, 16, 16])
    >>> tabular = bd.nn.MCDUNet(40, cond_channels=2000, spatial=False)          # cells as 1 x 1 images
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        spatial: bool = True,
        attention_levels: Sequence[int] = (1, 2),
        dropout: float = 0.0,
        cond_dropout: float = 0.0,
        heads: int = 1,
    ) -> None:
        super().__init__()
        if channels < 1 or cond_channels < 1:
            raise ValueError(f"Need at least one data and one condition channel, got {channels}, {cond_channels}.")
        emb_channels = 4 * model_channels
        enc_kwargs = dict(
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            num_blocks=num_blocks,
            spatial=spatial,
            attention_levels=tuple(attention_levels),
            dropout=dropout,
            heads=heads,
        )
        self.spatial = spatial
        self.noise_embedding = NoiseEmbedding(model_channels, emb_channels)
        self.encoder = _Encoder(channels, emb_channels=emb_channels, **enc_kwargs)
        self.condition = ConditionEncoder(cond_channels, input_dropout=cond_dropout, **enc_kwargs)
        self.inject = nn.ModuleList(
            [SqueezeExcitation(ch) for ch in [*self.encoder.skip_channels, self.encoder.out_channels]]
        )
        k = 3 if spatial else 1
        self.decoder = nn.ModuleList()
        ch = self.encoder.out_channels
        skip_channels = list(self.encoder.skip_channels)
        for level, mult in reversed(list(enumerate(channel_mult))):
            out = model_channels * mult
            for _ in range(num_blocks + 1):
                self.decoder.append(
                    UNetBlock(
                        ch + skip_channels.pop(), out, emb_channels, k, dropout,
                        spatial and level in attention_levels, True, heads,
                    )
                )
                ch = out
            if level > 0:
                self.decoder.append(Upsample(ch, spatial))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out_conv = Conv2d(ch, channels, k, padding=k // 2)
        self.out_recalibration = OutputRecalibration(channels)

    def encode_condition(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Condition features ``E_l(c)`` at every skip and the middle block (noise-independent)."""
        return self.condition(cond)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        feats = self.encode_condition(cond) if isinstance(cond, torch.Tensor) else cond
        emb = self.noise_embedding(c_noise)
        skips, h = self.encoder(x, emb)
        # z = D(x_t) + SE(E(c)) at every skip and at the middle block.
        skips = [s + gate(f) for s, gate, f in zip(skips, self.inject[:-1], feats[:-1])]
        h = h + self.inject[-1](feats[-1])
        for block in self.decoder:
            if isinstance(block, Upsample):
                h = block(h, skips[-1].shape[-2:])
            else:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        y = self.out_conv(F.silu(self.out_norm(h)))
        return self.out_recalibration(y)
