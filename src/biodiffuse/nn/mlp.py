"""The MLP denoiser of multi-condition diffusion and Coherent Denoising (latent vectors).

As the Coherent Denoising paper: the input is ``[x | time embedding | per-condition
Linear(d_k -> d) * mask_k]``; hidden layers are Linear -> norm -> activation with the time
embedding concatenated again before every layer. We use LayerNorm instead of BatchNorm
(per-sample noise levels and batch-of-one sampling make batch statistics a poor fit).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .embeddings import NoiseEmbedding

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
    """Raw EDM network ``net(x_in, c_noise, cond)`` for a latent vector.

    Parameters
    ----------
    dim
        Width of the generated latent.
    cond_dims
        Width of each condition (may be empty: unconditional).
    hidden
        Hidden width.
    layers
        Number of hidden layers.
    emb_dim
        Width of the noise-level embedding.
    dropout
        Dropout after every hidden layer.

    Notes
    -----
    ``cond`` is a tuple ``(c, m)``: ``c`` a list of (B, d_k) tensors (or None) and ``m`` a
    (B, K) 0/1 tensor saying which conditions are present; an absent condition contributes
    zeros and its mask bit, never a value.

    Examples
    --------
    >>> net = bd.nn.MLPDenoiser(32, cond_dims=(16, 8))                 # a 32-d latent, two conditions
    >>> c = [torch.randn(4, 16), None]                                 # the second condition absent
    >>> m = torch.tensor([[1.0, 0.0]]).repeat(4, 1)
    >>> net(torch.randn(4, 32), torch.zeros(4), (c, m)).shape
    torch.Size([4, 32])
    """

    def __init__(
        self,
        dim: int,
        cond_dims: Sequence[int] = (),
        hidden: int = 256,
        layers: int = 3,
        emb_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cond_dims = list(cond_dims)
        self.cond_proj = nn.ModuleList(nn.Linear(k, dim) for k in self.cond_dims)
        self.time = NoiseEmbedding(emb_dim, emb_dim)
        n_cond = len(self.cond_dims)
        width = dim + emb_dim + n_cond * dim + n_cond
        self.hidden = nn.ModuleList()
        for _ in range(layers):
            self.hidden.append(nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout)))
            width = hidden + emb_dim
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: tuple | None = None) -> torch.Tensor:
        t = self.time(c_noise)
        parts = [x, t]
        if self.cond_dims:
            if cond is None:
                raise ValueError("This denoiser needs conditions (c, m).")
            cs, m = cond
            m = m.to(x.dtype)
            for k, proj in enumerate(self.cond_proj):
                ck = cs[k]
                parts.append(proj(ck.to(x.dtype)) * m[:, k : k + 1] if ck is not None else x.new_zeros(x.shape))
            parts.append(m)
        h = torch.cat(parts, dim=1)
        for layer in self.hidden:
            h = torch.cat([layer(h), t], dim=1)
        return self.out(h)
