"""A diffusion transformer over gene groups (adaLN-zero, Peebles & Xie 2023) and an
attention over reference cells, the two networks of SpaDiT.

* :class:`ReferenceAttention` is SpaDiT's reference condition ``psi``: every query cell
  attends to a bank of reference cells (full profiles) through a distance computed on the
  query's *observed* genes only, with learned per-head gene weights and temperatures. Its
  output is, per head, an attention-weighted reference profile over all genes (a learned,
  differentiable nearest-neighbour transfer). It never reads a query's unobserved entries.
* :class:`GeneDiT` is the denoiser: genes are cut into groups of ``genes_per_token``; each
  token embeds, for its genes, the noisy input, the observed values times their mask, the
  mask and the reference heads (the paper's concatenation ``Phi``); transformer blocks with
  adaLN-zero modulation by the noise level; a final adaLN layer maps tokens back to genes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .embeddings import NoiseEmbedding

__all__ = ["ReferenceAttention", "DiTBlock", "GeneDiT"]


class ReferenceAttention(nn.Module):
    """Attention of query cells over a fixed bank of reference cells.

    Head ``h`` scores bank cell ``j`` for query ``i`` by the weighted mean squared
    difference over the query's observed genes,
    ``d_h(i, j) = sum_g w_hg m_ig (x_ig - r_jg)^2 / sum_g w_hg m_ig``, and returns
    ``sum_j softmax_j(-d_h(i, j) / tau_h) r_j``.

    Parameters
    ----------
    bank
        (M, G) reference profiles in model scale (a buffer: saved with the weights).
    heads
        Number of heads (each with its own gene weights and temperature).
    temperature
        Initial temperature of every head.

    Examples
    --------
    >>> attn = bd.nn.ReferenceAttention(torch.randn(512, 100), heads=4)   # bank: 512 reference cells
    >>> x, mask = torch.randn(8, 100), torch.rand(8, 100) > 0.2          # observed genes per query
    >>> attn(x, mask).shape                                               # one profile per head
    torch.Size([8, 4, 100])
    """

    def __init__(self, bank: torch.Tensor, heads: int = 4, temperature: float = 1.0) -> None:
        super().__init__()
        if bank.ndim != 2 or bank.shape[0] < 2:
            raise ValueError(f"bank must be (M >= 2, G), got shape {tuple(bank.shape)}.")
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_sq", (bank.float() ** 2).T.contiguous())  # (G, M)
        g = bank.shape[1]
        # Heads start with different gene weightings so that they do not stay identical.
        init = 0.5 * torch.randn(heads, g, generator=torch.Generator().manual_seed(0))
        init[0] = 0.0
        self.log_weight = nn.Parameter(init)
        self.log_temperature = nn.Parameter(torch.full((heads,), math.log(temperature)))
        self.heads = heads

    def set_bank(self, bank: torch.Tensor) -> None:
        """Replace the bank by ``bank`` (M >= 2, G) reference profiles (same G)."""
        if bank.ndim != 2 or bank.shape[0] < 2 or bank.shape[1] != self.bank.shape[1]:
            raise ValueError(f"bank must be (M >= 2, {self.bank.shape[1]}), got shape {tuple(bank.shape)}.")
        bank = bank.detach().to(device=self.bank.device, dtype=torch.float32).contiguous()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank**2).T.contiguous())

    def forward(self, x: torch.Tensor, mask: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Reference profiles per head, shape (B, heads, G).

        Parameters
        ----------
        x
            (B, G) query values (only entries with ``mask`` are read).
        mask
            (B, G) 0/1 observed genes of each query.
        exclude
            Optional (B,) bank index to leave out per query (the query itself when it is a
            bank cell during training), -1 for none.
        """
        m = mask.to(x.dtype)
        xm = x * m
        w = self.log_weight.exp()[None] * m[:, None, :]  # (B, H, G)
        denom = w.sum(-1, keepdim=True).clamp_min(1e-6)
        # sum_g w (x - r)^2 = w.x^2 - 2 (w x).r + w.r^2, as matmuls (no B x M x G tensor)
        d = (w * (xm**2)[:, None, :]).sum(-1, keepdim=True) - 2.0 * (w * xm[:, None, :]) @ self.bank.T + w @ self.bank_sq
        logits = -(d / denom) / self.log_temperature.exp()[None, :, None]
        if exclude is not None:
            hit = (exclude[:, None] == torch.arange(self.bank.shape[0], device=x.device)[None, :])  # (B, M)
            logits = logits.masked_fill(hit[:, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1) @ self.bank


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-zero: shift, scale and gate of both sub-layers come from
    the conditioning vector, the gates starting at zero (the block starts as the identity).

    Parameters
    ----------
    dim
        Token width (and width of the conditioning vector).
    heads
        Attention heads (must divide ``dim``).
    mlp_ratio
        Hidden width of the MLP as a multiple of ``dim``.
    dropout
        Dropout in attention and the MLP.

    Examples
    --------
    >>> block = bd.nn.DiTBlock(128, heads=4)
    >>> block(torch.randn(2, 16, 128), torch.randn(2, 128)).shape   # tokens (B, T, dim), condition (B, dim)
    torch.Size([2, 16, 128])
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None, :] * self.attn(h, h, h, need_weights=False)[0]
        return x + g2[:, None, :] * self.mlp(_modulate(self.norm2(x), s2, sc2))


class GeneDiT(nn.Module):
    """DiT denoiser over gene groups, called as ``net(x_in, c_noise, cond)``.

    Parameters
    ----------
    n_genes
        Genes per cell (the diffusion variable has this width).
    cond_features
        Per-gene condition features in ``cond`` (B, cond_features, G), e.g. observed
        values, mask and reference heads.
    genes_per_token
        Genes per token (the last token is zero-padded).
    dim, depth, heads
        Transformer width, number of blocks and attention heads.
    dropout
        Dropout in attention and MLPs.

    Examples
    --------
    >>> net = bd.nn.GeneDiT(n_genes=100, cond_features=2, genes_per_token=8, dim=64, depth=2)
    >>> x, cond = torch.randn(4, 100), torch.randn(4, 2, 100)      # cond: e.g. observed values and mask
    >>> net(x, torch.zeros(4), cond).shape                         # net(x_in, c_noise, cond)
    torch.Size([4, 100])
    >>> denoiser = bd.diffusion.EDMPrecond(net, sigma_data=1.0)
    """

    def __init__(
        self,
        n_genes: int,
        cond_features: int,
        genes_per_token: int = 8,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_genes < 1 or genes_per_token < 1:
            raise ValueError("n_genes and genes_per_token must be positive.")
        self.n_genes = n_genes
        self.p = genes_per_token
        self.n_tokens = math.ceil(n_genes / genes_per_token)
        self.in_features = 1 + cond_features
        self.embed = nn.Linear(self.in_features * self.p, dim)
        self.pos = nn.Parameter(torch.randn(1, self.n_tokens, dim) * 0.02)
        self.time = NoiseEmbedding(dim, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, dropout=dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, self.p)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, g = x.shape
        if g != self.n_genes:
            raise ValueError(f"GeneDiT expects {self.n_genes} genes, got {g}.")
        feats = torch.cat([x[:, None, :], cond.to(x.dtype)], dim=1)  # (B, F, G)
        pad = self.n_tokens * self.p - g
        if pad:
            feats = nn.functional.pad(feats, (0, pad))
        tokens = feats.reshape(b, self.in_features, self.n_tokens, self.p).permute(0, 2, 1, 3)
        h = self.embed(tokens.reshape(b, self.n_tokens, -1)) + self.pos
        c = self.time(c_noise)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        y = self.out(_modulate(self.final_norm(h), shift, scale))  # (B, T, P)
        return y.reshape(b, -1)[:, :g]
