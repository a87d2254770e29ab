"""StainDiffuser's maths without SpatialData: network, multi-task objective and the sampler's ``prepare``.

* **Network** (:func:`build_network`): one :class:`~biodiffuse.nn.ConditionalImageUNet` whose
  image condition is the H&E crop (concatenated to the noisy input, so the first convolution and
  the whole encoder read H&E and the noisy targets together).

  - ``"joint"``: the diffused image is the stack ``[stains (C), masks (C)]``: the staining
    process and the segmentation process are ONE denoising problem over ``2 C`` channels. The
    shared trunk is the paper's shared H&E encoder, and the two processes attend to each other
    through the trunk's spatial self-attention (one attention map over features of both); the
    two losses are separate terms of the same forward pass, ``L = L_gen + lambda L_seg``.
  - ``"token"``: the paper's virtual multiplexing: the network generates ONE stain and its
    mask (2 channels) per call; a one-hot stain id (``cond_dim = C``) enters through the time
    embedding (FiLM in every block). Training draws one stain per tile, so the same H&E encoder
    serves every stain, and stains may be learnt from tiles that hold only one of them.
* **Scale**: uint8 images are trained and sampled as ``x / 255 * 2 - 1``; masks (0/1) as
  ``2 m - 1``. :func:`to_unit` maps back to ``[0, 1]``.
* **Objective** (:class:`StainDiffuserObjective`): EDM (:class:`~biodiffuse.diffusion.EDMLoss`
  around :class:`~biodiffuse.diffusion.EDMPrecond`) on a random ``crop_size`` crop of every
  tile (the same crop for H&E and targets) with one random rotation / flip per batch.
* **Sampling** (:func:`make_prepare`): EDM Heun through
  :func:`~biodiffuse.diffusion.sample_rows`, one row per crop (``"joint"``) or per (crop,
  stain) pair (``"token"``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from ..diffusion import Batch, EDMLoss, EDMPrecond, FixedChunks
from ..nn import ConditionalImageUNet

__all__ = [
    "MULTIPLEX",
    "SIGMA_DATA",
    "StainDiffuserObjective",
    "build_network",
    "make_prepare",
    "to_model",
    "to_unit",
]

MULTIPLEX = ("joint", "token")
#: EDM's data standard deviation for images in [-1, 1] (Karras et al.).
SIGMA_DATA = 0.5


def to_model(x: torch.Tensor | np.ndarray, *, mask: bool = False) -> torch.Tensor:
    """uint8 pixels (``x / 255``) or 0/1 masks (``mask=True``) -> the model's ``[-1, 1]``, float32."""
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
    return t * 2.0 - 1.0 if mask else t / 127.5 - 1.0


def to_unit(x: np.ndarray) -> np.ndarray:
    """The model's scale -> ``[0, 1]`` (clipped)."""
    return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)


def build_network(
    n_stains: int,
    source_channels: int,
    *,
    multiplex: str = "joint",
    model_channels: int = 32,
    channel_mult: tuple[int, ...] = (1, 2, 2),
    num_blocks: int = 1,
    heads: int = 4,
    dropout: float = 0.0,
) -> ConditionalImageUNet:
    """The UNet of ``multiplex`` mode: ``2 n_stains`` channels (``"joint"``) or 2 channels with a
    ``n_stains``-wide stain id (``"token"``), conditioned on ``source_channels`` H&E channels."""
    if multiplex not in MULTIPLEX:
        raise ValueError(f"multiplex must be one of {MULTIPLEX}, got {multiplex!r}.")
    channels = 2 * int(n_stains) if multiplex == "joint" else 2
    return ConditionalImageUNet(
        channels, channels, model_channels=int(model_channels), channel_mult=tuple(channel_mult),
        num_blocks=int(num_blocks), heads=int(heads), dropout=float(dropout),
        cond_dim=int(n_stains) if multiplex == "token" else None, image_cond_channels=int(source_channels),
    )


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> list[int]:
    dev = generator.device if generator is not None else device
    return torch.randint(0, int(high), (n,), generator=generator, device=dev).tolist()


class StainDiffuserObjective:
    """The multi-task EDM loss ``L_gen + seg_weight * L_seg`` of one network.

    Batches hold ``source`` (B, S, T, T) and ``target`` (B, C, T, T) uint8 tiles and ``mask``
    (B, C, T, T) 0/1 segmentation labels. Each tile gets its own random ``crop_size`` crop (the
    same window in all three), then the batch one random rotation by a multiple of 90 degrees
    and a random flip.

    ``L_gen`` and ``L_seg`` are the EDM losses (mean weighted squared error) on the stain and the
    mask channels of ONE forward pass: :class:`~biodiffuse.diffusion.EDMLoss`'s masked mean
    with the per-channel weights ``(1, ..., 1, lambda, ..., lambda)`` times ``1 + lambda`` is
    exactly ``mean_stains + lambda * mean_masks``.

    Parameters
    ----------
    multiplex
        ``"joint"`` (all stains and masks at once) or ``"token"`` (one random stain per tile,
        its one-hot id as the vector condition).
    n_stains
        Stains ``C``.
    seg_weight
        The paper's ``lambda`` (>= 0).
    crop_size
        Side of the training crops.
    augment
        Random rotations / flips.
    """

    def __init__(self, multiplex: str, n_stains: int, *, seg_weight: float = 1.0, crop_size: int = 64,
                 augment: bool = True) -> None:
        if multiplex not in MULTIPLEX:
            raise ValueError(f"multiplex must be one of {MULTIPLEX}, got {multiplex!r}.")
        self.multiplex, self.n_stains = multiplex, int(n_stains)
        self.seg_weight, self.crop_size, self.augment = float(seg_weight), int(crop_size), bool(augment)
        self.edm = EDMLoss(sigma_data=SIGMA_DATA)

    def inputs(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        """The clean diffused crops ``x`` and the condition ``{"image"[, "vector"]}`` of a batch."""
        src, tgt, msk = batch["source"], batch["target"], batch["mask"]
        b, _, h, w = src.shape
        c = self.crop_size
        ys, xs = _randint(h - c + 1, b, generator, src.device), _randint(w - c + 1, b, generator, src.device)

        def crop(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[i, :, y : y + c, x : x + c] for i, (y, x) in enumerate(zip(ys, xs))])

        src, tgt, msk = to_model(crop(src)), to_model(crop(tgt)), to_model(crop(msk), mask=True)
        cond: dict[str, torch.Tensor] = {}
        if self.multiplex == "joint":
            x = torch.cat([tgt, msk], dim=1)
        else:
            stain = torch.as_tensor(_randint(self.n_stains, b, generator, src.device), device=src.device)
            rows = torch.arange(b, device=src.device)
            x = torch.stack([tgt[rows, stain], msk[rows, stain]], dim=1)
            cond["vector"] = F.one_hot(stain, self.n_stains).to(x.dtype)
        if self.augment:
            k, flip = _randint(4, 2, generator, src.device)
            x, src = (torch.rot90(t, k, dims=(-2, -1)) for t in (x, src))
            if flip % 2:
                x, src = torch.flip(x, dims=(-1,)), torch.flip(src, dims=(-1,))
        cond["image"] = src
        return x, cond

    def __call__(self, network: torch.nn.Module, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, cond = self.inputs(batch, generator)
        half = x.shape[1] // 2  # stains first, then their masks
        lam = self.seg_weight
        weights = torch.tensor([1.0] * half + [lam] * half, device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
        return (1.0 + lam) * self.edm(EDMPrecond(network, SIGMA_DATA), x, cond, loss_mask=weights, generator=generator)


def make_prepare(
    network: torch.nn.Module,
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    *,
    n_stains: int,
    chunk: int,
) -> Callable[[np.ndarray, torch.device], Batch]:
    """The ``prepare(rows, device)`` of :func:`~biodiffuse.diffusion.sample_rows`.

    Parameters
    ----------
    network
        The trained UNet (eval mode, on the sampling device).
    read
        ``read(rows) -> (source, stain)``: H&E crops (B, S, c, c) uint8 and, in token mode, the
        stain index of each row (B,) int (None in joint mode).
    n_stains
        Width of the one-hot stain id (token mode).
    chunk
        Evaluate on chunks of exactly this many draws (:class:`~biodiffuse.diffusion.FixedChunks`),
        so that a row's draws are bit-identical whatever the batch size.
    """
    denoiser = FixedChunks(EDMPrecond(network, SIGMA_DATA), chunk)

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        source, stain = read(rows)
        cond = {"image": to_model(np.ascontiguousarray(source)).to(device)}
        if stain is not None:
            cond["vector"] = F.one_hot(torch.as_tensor(np.asarray(stain), dtype=torch.long), int(n_stains)).float().to(device)
        return Batch(denoiser, cond)

    return prepare
