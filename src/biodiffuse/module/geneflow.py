"""GeneFlow's maths without AnnData: network, objectives and the sampler's ``prepare``.

* **Network** (:class:`GeneFlowNetwork`): the RNA encoder of the paper's appendix
  (:class:`~biodiffuse.nn.RNAEncoder`: one cell, or the cells of a window with padding masked)
  gives a vector ``z`` that conditions :class:`~biodiffuse.nn.ConditionalImageUNet` through its
  time embedding. Called as ``net(x, t, cond)`` with ``cond = {"genes": (B, G) or (B, N, G)[,
  "mask": (B, N)]}``, it is a rectified-flow velocity field and, inside
  :class:`~biodiffuse.diffusion.EDMPrecond`, an EDM raw network.
* **Image scale**: tiles in ``[0, 1]`` are trained and sampled as ``2 * tile - 1``
  (:func:`to_model`, :func:`to_tiles`).
* **Objectives** (:class:`GeneFlowObjective`), one network, three ways to train it:
  ``"flow"`` (GeneFlow: rectified flow with the small stochastic term), ``"edm"`` (the
  paper's diffusion baseline, on the shared EDM core) and ``"mse"`` (the paper's conditional
  UNet regressed on the tile: one deterministic evaluation at ``x = 0, t = 0``).
* **Sampling** (:func:`make_prepare`): the ``prepare`` of
  :func:`biodiffuse.diffusion.sample_rows`; the model (:class:`~biodiffuse.models.GeneFlow`)
  picks the loop sampler of its objective.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..diffusion import Batch, EDMLoss, EDMPrecond, FixedChunks, FlowLoss, point_sampler
from ..nn import ConditionalImageUNet, RNAEncoder

__all__ = [
    "OBJECTIVES",
    "GeneFlowNetwork",
    "GeneFlowObjective",
    "build_network",
    "make_prepare",
    "to_model",
    "to_tiles",
]

OBJECTIVES = ("flow", "edm", "mse")
#: EDM's data standard deviation for images in [-1, 1] (Karras et al.).
SIGMA_DATA = 0.5


def to_model(tiles: torch.Tensor) -> torch.Tensor:
    """Tiles in ``[0, 1]`` -> the model's scale ``[-1, 1]``."""
    return tiles * 2.0 - 1.0


def to_tiles(x: np.ndarray) -> np.ndarray:
    """The model's scale -> tiles, clipped to ``[0, 1]``."""
    return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)


class GeneFlowNetwork(nn.Module):
    """RNA encoder + conditional image UNet.

    Parameters
    ----------
    n_genes
        Genes per cell.
    channels
        Image channels (1 for DAPI, 3 for H&E).
    encoder
        :class:`~biodiffuse.nn.RNAEncoder` arguments (``dim``, ``rank``, ``heads``, ``layers``,
        ``dropout``, ``pool``).
    unet
        :class:`~biodiffuse.nn.ConditionalImageUNet` arguments (``model_channels``,
        ``channel_mult``, ``num_blocks``, ``attention_levels``, ``heads``, ``dropout``).
    """

    def __init__(self, n_genes: int, channels: int, *, encoder: Mapping[str, Any], unet: Mapping[str, Any]) -> None:
        super().__init__()
        self.encoder = RNAEncoder(int(n_genes), **dict(encoder))
        self.unet = ConditionalImageUNet(int(channels), int(channels), cond_dim=self.encoder.dim, **dict(unet))

    def encode(self, genes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The condition vector ``z`` (B, dim) of expression (B, G) or (B, N, G) with ``mask`` (B, N)."""
        return self.encoder(genes, mask)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The UNet on tiles ``x`` at time / noise label ``t`` given encoded ``z``."""
        return self.unet(x, t, z)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``velocity(x, t, encode(cond["genes"], cond.get("mask")))``."""
        return self.velocity(x, t, self.encode(cond["genes"], cond.get("mask")))


def build_network(n_genes: int, channels: int, **kwargs: Any) -> GeneFlowNetwork:
    """:class:`GeneFlowNetwork` from flat arguments: ``dim``, ``rank``, ``encoder_heads``,
    ``encoder_layers``, ``pool``, ``model_channels``, ``channel_mult``, ``num_blocks``,
    ``attention_levels``, ``heads``, ``dropout``."""
    encoder = dict(
        dim=kwargs.get("dim", 128), rank=kwargs.get("rank", 16), heads=kwargs.get("encoder_heads", 4),
        layers=kwargs.get("encoder_layers", 2), dropout=kwargs.get("dropout", 0.0), pool=kwargs.get("pool", "attention"),
    )
    levels = kwargs.get("attention_levels")
    unet = dict(
        model_channels=kwargs.get("model_channels", 32), channel_mult=tuple(kwargs.get("channel_mult", (1, 2, 2))),
        num_blocks=kwargs.get("num_blocks", 1), attention_levels=None if levels is None else tuple(levels),
        heads=kwargs.get("heads", 4), dropout=kwargs.get("dropout", 0.0),
    )
    return GeneFlowNetwork(n_genes, channels, encoder=encoder, unet=unet)


def _cond(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("genes", "mask") if k in batch}


class GeneFlowObjective:
    """The training loss of one :class:`GeneFlowNetwork`.

    Batches hold ``image`` (B, C, T, T) in ``[0, 1]`` and ``genes`` (B, G) or (B, N, G) with
    ``mask`` (B, N). Every batch gets one random rotation by a multiple of 90 degrees and a
    random flip (tissue has no orientation).

    Parameters
    ----------
    kind
        ``"flow"`` (:class:`~biodiffuse.diffusion.FlowLoss`, GeneFlow), ``"edm"``
        (:class:`~biodiffuse.diffusion.EDMLoss` around :class:`~biodiffuse.diffusion.EDMPrecond`)
        or ``"mse"`` (the tile regressed from the expression alone).
    sigma, sigma_schedule
        The flow's stochastic term (GeneFlow: 0.05, decaying as ``(1 - t) sigma``).
    time_sampling
        Flow training times (``"uniform"`` or ``"logit_normal"``).
    gene_l1
        Weight of the paper's sparsity penalty ``|W_1|_1`` on the encoder's gene-reading
        weights (divided by their number, so the weight does not scale with the panel).
    augment
        Random rotations / flips of the training tiles.
    """

    def __init__(
        self, kind: str = "flow", *, sigma: float = 0.05, sigma_schedule: str = "decay",
        time_sampling: str = "uniform", gene_l1: float = 0.0, augment: bool = True,
    ) -> None:
        if kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {kind!r}.")
        self.kind = kind
        self.flow = FlowLoss(sigma=sigma, sigma_schedule=sigma_schedule, time_sampling=time_sampling)
        self.edm = EDMLoss(sigma_data=SIGMA_DATA)
        self.gene_l1 = float(gene_l1)
        self.augment = bool(augment)

    def __call__(self, network: GeneFlowNetwork, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x = to_model(batch["image"])
        if self.augment:
            k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
            x = torch.rot90(x, k, dims=(-2, -1))
            if flip % 2:
                x = torch.flip(x, dims=(-1,))
        cond = _cond(batch)
        if self.kind == "flow":
            loss = self.flow(network, x, cond, generator=generator)
        elif self.kind == "edm":
            loss = self.edm(EDMPrecond(network, SIGMA_DATA), x, cond, generator=generator)
        else:
            loss = ((point_sampler(network, x, cond, None)[0] - x) ** 2).mean()
        if self.gene_l1 > 0:
            enc = network.encoder
            n = enc.relation_net[0].weight.numel() + enc.in_proj.weight.numel()
            loss = loss + self.gene_l1 * enc.gene_l1() / n
        return loss


def make_prepare(
    network: GeneFlowNetwork,
    kind: str,
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    *,
    chunk: int | None = None,
) -> Callable[[np.ndarray, torch.device], Batch]:
    """The ``prepare(rows, device)`` of :func:`~biodiffuse.diffusion.sample_rows`.

    Parameters
    ----------
    network
        The trained network (eval mode, on the sampling device).
    kind
        The objective it was trained with (``"edm"`` wraps it in EDM preconditioning).
    read
        ``read(rows) -> (genes, mask)``: model-ready expression (B, G) or (B, N, G) float32 and
        the (B, N) mask of real cells (None for one cell per tile).
    chunk
        Evaluate on chunks of exactly this many draws (:class:`~biodiffuse.diffusion.FixedChunks`),
        so that a row's draws are bit-identical whatever the batch size.
    """
    denoiser: Any = EDMPrecond(network, SIGMA_DATA) if kind == "edm" else network

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        genes, mask = read(rows)
        cond = {"genes": torch.from_numpy(np.ascontiguousarray(genes, dtype=np.float32)).to(device)}
        if mask is not None:
            cond["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(device)
        return Batch(denoiser if chunk is None else FixedChunks(denoiser, chunk), cond)

    return prepare
