"""GeneFlow's RNA encoder (paper appendix D.1): expression of one or many cells -> one vector.

Per cell: a low-rank gene-gene relation ``x~ = x + alpha ((x U) * g(x)) V``, a learned global
gene attention ``x' = x~ * G softmax(a)``, and a residual MLP giving a cell embedding. Per
tile: multi-head attention pooling over the cells (padded cells masked out), then
``z = LN(Linear(LN(z)))`` and the feature gate ``z * sigmoid(Linear(z))``.

Difference from the paper: the paper predicts full per-cell factors ``U_i (G x K)`` and
``V_i (K x G)`` from a 256-wide hidden layer, i.e. ``2 G K x 256`` parameters (82 M for a
5000-gene panel at K = 32). Here the factors are shared gene embeddings ``U``, ``V`` of rank
``K`` and the cell modulates them through a per-cell diagonal ``g(x) in R^K``
(``U diag(g(x)) V``): still a cell-specific rank-K relation, with ``O(G K)`` parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["RNAEncoder"]


class _ResidualMLP(nn.Module):
    """Pre-norm residual MLP block ``h + Dropout(W2 SiLU(W1 LN(h)))``."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.fc2(F.silu(self.fc1(self.norm(h)))))


class RNAEncoder(nn.Module):
    """Encode the expression of a cell, or of the cells of a tile, into one vector.

    Parameters
    ----------
    n_genes
        Number of genes ``G`` (input width).
    dim
        Width of cell embeddings and of the output.
    rank
        Rank ``K`` of the gene-gene relation.
    heads
        Cell-attention pooling heads (must divide ``dim``).
    layers
        Residual MLP blocks in the cell encoder.
    dropout
        Dropout in the relation network and the residual blocks.
    pool
        ``"attention"`` (the paper's multi-head attention pooling) or ``"mean"`` (masked mean).
    relation_scale
        ``alpha`` of the relation term (0.1 in the paper).

    Notes
    -----
    ``forward(x, mask=None)`` takes ``x`` of shape (B, G) (one cell per sample) or
    (B, N, G) with an optional boolean ``mask`` (B, N), True for real cells. Padded cells are
    zeroed before encoding and get zero pooling weight, so their values never reach the
    output and their gradient is exactly zero. Every operation is differentiable in ``x``
    (GeneFlow's gene importance is ``d ||v||^2 / d x``). :meth:`gene_l1` gives the paper's
    sparsity penalty ``|W_1|_1`` on the layers that read genes.

    Examples
    --------
    >>> enc = bd.nn.RNAEncoder(477, dim=128, heads=4)
    >>> enc(torch.rand(8, 477)).shape                               # one cell per tile
    torch.Size([8, 128])
    >>> x, mask = torch.rand(8, 16, 477), torch.rand(8, 16) > 0.5   # up to 16 cells per tile
    >>> enc(x, mask).shape
    torch.Size([8, 128])
    """

    def __init__(
        self,
        n_genes: int,
        *,
        dim: int = 256,
        rank: int = 32,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.0,
        pool: str = "attention",
        relation_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if n_genes < 1 or dim < 1 or rank < 1 or heads < 1 or layers < 0:
            raise ValueError(
                f"Need n_genes, dim, rank, heads >= 1 and layers >= 0; got {n_genes}, {dim}, {rank}, {heads}, {layers}."
            )
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool must be 'attention' or 'mean', got {pool!r}.")
        self.n_genes, self.dim, self.heads, self.pool = n_genes, dim, heads, pool
        self.relation_scale = float(relation_scale)
        # gene-gene relation: shared rank-K gene embeddings, modulated per cell
        self.gene_u = nn.Parameter(torch.randn(n_genes, rank) / n_genes**0.5)
        self.gene_v = nn.Parameter(torch.randn(rank, n_genes) / rank**0.5)
        self.relation_net = nn.Sequential(
            nn.Linear(n_genes, dim), nn.LayerNorm(dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(dim, rank)
        )
        # global gene attention (uniform at initialisation)
        self.gene_logits = nn.Parameter(torch.zeros(n_genes))
        # cell encoder
        self.in_norm = nn.LayerNorm(n_genes)
        self.in_proj = nn.Linear(n_genes, dim)
        self.blocks = nn.Sequential(*[_ResidualMLP(dim, dropout) for _ in range(layers)])
        # attention pooling: per-head scoring tanh network and per-head value projection
        if pool == "attention":
            self.score_hidden = nn.Linear(dim, dim)
            self.score_out = nn.Parameter(torch.randn(heads, dim // heads) / (dim // heads) ** 0.5)
            self.value = nn.Linear(dim, heads * dim)
        # final projection and feature gating
        self.out_norm1 = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)
        self.out_norm2 = nn.LayerNorm(dim)
        self.gate = nn.Linear(dim, dim)

    @property
    def gene_weights(self) -> torch.Tensor:
        """Global gene attention ``G softmax(a)`` (mean 1; interpretable gene weights)."""
        return self.n_genes * torch.softmax(self.gene_logits, dim=0)

    def gene_l1(self) -> torch.Tensor:
        """L1 norm of the weights that read the genes directly (the paper's ``lambda |W_1|_1`` term)."""
        return self.relation_net[0].weight.abs().sum() + self.in_proj.weight.abs().sum()

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim == 2:
            x = x[:, None, :]
            if mask is not None:
                raise ValueError("mask is only meaningful for (B, n_cells, n_genes) input.")
        if x.ndim != 3:
            raise ValueError(f"x must be (B, n_genes) or (B, n_cells, n_genes), got shape {tuple(x.shape)}.")
        b, n, g = x.shape
        if g != self.n_genes:
            raise ValueError(f"x has {g} genes in its last axis, the encoder expects n_genes={self.n_genes}.")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        elif mask.shape != (b, n):
            raise ValueError(f"mask must have shape ({b}, {n}), got {tuple(mask.shape)}.")
        elif mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = real cell), got {mask.dtype}.")
        if not mask.any(dim=1).all():
            raise ValueError("Every sample needs at least one unmasked cell.")
        return x, mask

    def encode_cells(self, x: torch.Tensor) -> torch.Tensor:
        """Cell embeddings (..., dim) from expression (..., n_genes): relation, gene attention, MLP."""
        g = self.relation_net(x)
        x = x + self.relation_scale * ((x @ self.gene_u) * g) @ self.gene_v
        x = x * self.gene_weights
        return self.blocks(self.in_proj(self.in_norm(x)))

    def pool_cells(self, e: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool cell embeddings (B, N, dim) over valid cells; return ``(z (B, dim), weights (B, heads, N))``."""
        b, n, d = e.shape
        w_mask = mask[:, None, :]
        if self.pool == "mean":
            w = w_mask.to(e.dtype) / mask.sum(1, keepdim=True)[:, None].to(e.dtype)
            return torch.einsum("bhn,bnd->bd", w, e), w
        hid = torch.tanh(self.score_hidden(e)).reshape(b, n, self.heads, d // self.heads)
        logits = torch.einsum("bnhk,hk->bhn", hid, self.score_out)
        w = torch.softmax(logits.masked_fill(~w_mask, float("-inf")), dim=-1)
        values = self.value(e).reshape(b, n, self.heads, d)
        values = values.masked_fill(~mask[:, :, None, None], 0.0)
        return torch.einsum("bhn,bnhd->bd", w, values) / self.heads, w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode expression ``x`` ((B, G) or (B, N, G), optional boolean ``mask`` (B, N)) to (B, dim)."""
        x, mask = self._check(x, mask)
        x = x.masked_fill(~mask[:, :, None], 0.0)
        z, _ = self.pool_cells(self.encode_cells(x), mask)
        z = self.out_norm2(self.out_proj(self.out_norm1(z)))
        return z * torch.sigmoid(self.gate(z))

    @torch.no_grad()
    def cell_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights (B, heads, N) of each cell: which cells the tile embedding attends to."""
        x, mask = self._check(x, mask)
        x = x.masked_fill(~mask[:, :, None], 0.0)
        return self.pool_cells(self.encode_cells(x), mask)[1]
