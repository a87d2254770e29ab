"""SpaDiT's maths without AnnData: network, condition, objective and the sampler's ``prepare``.

* **Network** (:func:`build_network`): :class:`SpaDiTNetwork` (the reference attention
  ``psi`` over a bank of reference cells and a :class:`~biodiffuse.nn.GeneDiT`) inside EDM
  preconditioning (:class:`SpaDiTDenoiser`, an :class:`~biodiffuse.diffusion.EDMPrecond`
  whose state-dict keys are those of the plain wrapper, so saved models load). The bank is a
  buffer: it is saved with the weights and set with :meth:`SpaDiTDenoiser.set_bank`.
* **Condition** (:meth:`SpaDiTDenoiser.condition`): ``[x * m, m, psi_1 .. psi_H]`` per gene
  (the paper's ``Phi``); it reads only observed entries.
* **Objective** (:class:`SpaDiTObjective`): the EDM loss on the genes not shown, with
  random Bern(p) gene masks limited to the *known* genes (reference mode: the spatial
  panel), so a target gene is never part of the condition in training.
* **Sampling** (:func:`make_prepare`): the ``prepare`` function of
  :func:`biodiffuse.diffusion.sample_rows`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..diffusion import Batch, EDMLoss, EDMPrecond, random_channel_mask
from ..nn import GeneDiT, ReferenceAttention

__all__ = ["SpaDiTNetwork", "SpaDiTDenoiser", "SpaDiTObjective", "build_network", "make_prepare"]


class SpaDiTNetwork(nn.Module):
    """The reference attention and the DiT, called as an EDM raw network.

    The output is the DiT's plus a learned mixture of the reference heads, so that at the
    start of training the denoiser at high noise already returns the reference estimate
    (a soft nearest-neighbour transfer) and the DiT learns the correction.

    Parameters
    ----------
    bank
        (M, G) reference profiles in model scale.
    ref_heads
        Heads of the reference attention.
    **dit_kwargs
        :class:`~biodiffuse.nn.GeneDiT` arguments (``genes_per_token``, ``dim``, ...).
    """

    def __init__(self, bank: torch.Tensor, ref_heads: int, **dit_kwargs: Any) -> None:
        super().__init__()
        self.reference = ReferenceAttention(bank, heads=ref_heads)
        self.dit = GeneDiT(bank.shape[1], cond_features=2 + ref_heads, **dit_kwargs)
        self.head_mix = nn.Parameter(torch.zeros(ref_heads))

    def condition(self, x: torch.Tensor, mask: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``[x * m, m, psi_1 .. psi_H]`` per gene, shape (B, 2 + H, G); reads only observed entries."""
        m = mask.to(x.dtype)
        xm = torch.where(mask, x, torch.zeros_like(x))
        psi = self.reference(xm, m, exclude)
        return torch.cat([xm[:, None], m[:, None], psi], dim=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        prior = (cond[:, 2:] * torch.softmax(self.head_mix, dim=0)[None, :, None].to(cond.dtype)).sum(dim=1)
        return self.dit(x, c_noise, cond) + prior.to(x.dtype)


class SpaDiTDenoiser(EDMPrecond):
    """EDM-preconditioned :class:`SpaDiTNetwork` with SpaDiT's condition and bank handling.

    Parameters
    ----------
    net
        The raw network.
    sigma_data
        EDM's data standard deviation.
    """

    net: SpaDiTNetwork

    def condition(self, x: torch.Tensor, mask: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """The condition of rows ``x`` (B, G) with observed genes ``mask`` (B, G); ``exclude``
        (B,) names each row's own bank row (-1: none), which it must not attend to."""
        return self.net.condition(x, mask, exclude)

    def set_bank(self, bank: torch.Tensor) -> None:
        """Use ``bank`` (M >= 2, G) reference profiles (model scale) in the reference attention."""
        self.net.reference.set_bank(bank)

    @property
    def bank_size(self) -> int:
        """Number of reference cells in the bank."""
        return int(self.net.reference.bank.shape[0])

    @property
    def genes_per_token(self) -> int:
        """Genes per DiT token."""
        return int(self.net.dit.p)

    @property
    def n_tokens(self) -> int:
        """DiT tokens per cell."""
        return int(self.net.dit.n_tokens)


def build_network(
    n_genes: int,
    *,
    bank: torch.Tensor | None = None,
    bank_rows: int = 2,
    ref_heads: int = 4,
    genes_per_token: int = 8,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    dropout: float = 0.0,
    sigma_data: float = 1.0,
) -> SpaDiTDenoiser:
    """SpaDiT's denoiser.

    Parameters
    ----------
    n_genes
        Genes per cell (known + targets).
    bank
        (M, G) initial bank; default zeros of ``bank_rows`` rows (a placeholder that
        :meth:`SpaDiTDenoiser.set_bank` or a state dict replaces).
    bank_rows
        Rows of the placeholder bank.
    ref_heads, genes_per_token, dim, depth, heads, dropout
        Reference attention heads and the DiT.
    sigma_data
        EDM's data standard deviation.
    """
    if bank is None:
        bank = torch.zeros(max(2, int(bank_rows)), int(n_genes))
    net = SpaDiTNetwork(bank, ref_heads, genes_per_token=genes_per_token, dim=dim, depth=depth, heads=heads, dropout=dropout)
    return SpaDiTDenoiser(net, sigma_data=sigma_data)


class SpaDiTObjective:
    """EDM loss on the genes not shown.

    Batches hold ``x`` (B, G) in model scale, ``available`` (B, G) and ``bank_index`` (B,)
    (each row's own bank row, -1 for none). Each available gene is shown with probability
    ``observed_fraction``, and only if it is a ``known`` gene; the loss counts the available
    genes not shown.

    Parameters
    ----------
    known
        (G,) bool: the genes that may be part of the condition (reference mode: the spatial
        panel); None: every gene (within-panel mode).
    observed_fraction
        Bern(p) probability that a known gene is shown.
    sigma_data, P_mean, P_std
        EDM loss settings.
    """

    def __init__(self, known: torch.Tensor | None, observed_fraction: float, sigma_data: float, P_mean: float = 0.0, P_std: float = 1.5) -> None:
        self.known = known
        self.observed_fraction = observed_fraction
        self.loss = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, denoiser: SpaDiTDenoiser, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, avail = batch["x"], batch["available"]
        b, g = x.shape
        mask = random_channel_mask(b, g, self.observed_fraction, available=avail, generator=generator)
        if self.known is not None:
            mask &= self.known.to(x.device)[None, :]
        cond = denoiser.condition(x, mask, batch["bank_index"])
        return self.loss(denoiser, x, cond, loss_mask=avail & ~mask, generator=generator)


def make_prepare(
    denoiser: SpaDiTDenoiser, read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> Callable[[np.ndarray, torch.device], Batch]:
    """The ``prepare(rows, device)`` of :func:`~biodiffuse.diffusion.sample_rows`.

    Parameters
    ----------
    denoiser
        The trained denoiser (already on the sampling device).
    read
        ``read(rows) -> (x, observed)``: model-scale values (B, G) float32 and the observed
        genes (B, G) bool of the given rows; unobserved entries are never read.
    """

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        x, observed = read(rows)
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        mb = torch.from_numpy(np.ascontiguousarray(observed, dtype=bool)).to(device)
        return Batch(denoiser, denoiser.condition(xb, mb))

    return prepare
