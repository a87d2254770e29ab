"""Noise-level (time) embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionalEmbedding", "NoiseEmbedding"]


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a real-valued noise label (e.g. EDM's ``ln(sigma) / 4``).

    Parameters
    ----------
    num_channels
        Output width (even).
    max_positions
        Sets the lowest frequency, as in the transformer position encoding.

    Examples
    --------
    >>> pos = bd.nn.PositionalEmbedding(64)
    >>> pos(torch.tensor([0.0, 0.25, -1.0])).shape             # cosines then sines
    torch.Size([3, 64])
    """

    def __init__(self, num_channels: int, max_positions: int = 10000) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}.")
        half = num_channels // 2
        freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed ``t`` of shape (B,) to (B, num_channels)."""
        # EDM labels are O(1) real numbers: scale them so that the fast frequencies see them.
        args = (t.float() * 1000.0)[:, None] * self.freqs[None, :]
        return torch.cat([args.cos(), args.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the noise label followed by a two-layer MLP.

    Parameters
    ----------
    base_channels
        Width of the sinusoidal features (:class:`PositionalEmbedding`; even).
    emb_channels
        Output width of the MLP.

    Examples
    --------
    >>> emb = bd.nn.NoiseEmbedding(64, 256)
    >>> sigma = torch.full((8,), 0.5)
    >>> emb(sigma.log() / 4).shape                             # EDM's c_noise = ln(sigma) / 4
    torch.Size([8, 256])
    """

    def __init__(self, base_channels: int, emb_channels: int) -> None:
        super().__init__()
        self.pos = PositionalEmbedding(base_channels)
        self.mlp = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pos(t))
