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
  ``segmentation=False`` drops the mask channels (the single-task model).
* **Baselines on the same network and data path**: ``kind="l1"`` (the UNet regressing the
  stains from the H&E with an L1 loss: one evaluation at ``x = 0``, as
  :func:`~biodiffuse.diffusion.point_sampler` samples it) and :class:`Pix2PixObjective`
  (``kind="pix2pix"``: the same regression with pix2pix's loss ``100 L1 + GAN`` against a
  :class:`~biodiffuse.nn.PatchDiscriminator`, optimised by the shared trainer's adversarial
  step).
* **Sampling** (:func:`make_prepare`; the model chooses the sampler): the EDM ODE sampler on the
  model's schedule (or one evaluation for the point models) through :func:`~biodiffuse.diffusion.sample_rows`, one row per crop
  (``"joint"``) or per (crop, stain) pair (``"token"``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from ..diffusion import Batch, EDMLoss, EDMPrecond, FixedChunks, point_sampler
from ..diffusion.edm import masked_mean
from ..nn import ConditionalImageUNet, PatchDiscriminator

__all__ = [
    "KINDS",
    "MULTIPLEX",
    "Pix2PixObjective",
    "SIGMA_DATA",
    "StainDiffuserObjective",
    "build_adversary",
    "build_network",
    "make_prepare",
    "to_model",
    "to_unit",
]

MULTIPLEX = ("joint", "token")
#: Objectives: the diffusion model and the two point baselines on the same UNet.
KINDS = ("edm", "l1", "pix2pix")
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
    segmentation: bool = True,
) -> ConditionalImageUNet:
    """The UNet of ``multiplex`` mode: ``n_stains`` stain channels (``"joint"``) or one with a
    ``n_stains``-wide stain id (``"token"``), each followed by its mask channel when
    ``segmentation``, conditioned on ``source_channels`` H&E channels."""
    if multiplex not in MULTIPLEX:
        raise ValueError(f"multiplex must be one of {MULTIPLEX}, got {multiplex!r}.")
    channels = (int(n_stains) if multiplex == "joint" else 1) * (2 if segmentation else 1)
    return ConditionalImageUNet(
        channels, channels, model_channels=int(model_channels), channel_mult=tuple(channel_mult),
        num_blocks=int(num_blocks), heads=int(heads), dropout=float(dropout),
        cond_dim=int(n_stains) if multiplex == "token" else None, image_cond_channels=int(source_channels),
    )


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> list[int]:
    dev = generator.device if generator is not None else device
    return torch.randint(0, int(high), (n,), generator=generator, device=dev).tolist()


class StainDiffuserObjective:
    """The multi-task loss ``L_gen + seg_weight * L_seg`` of one network.

    Batches hold ``source`` (B, S, T, T) and ``target`` (B, C, T, T) uint8 tiles and ``mask``
    (B, C, T, T) 0/1 segmentation labels. Each tile gets its own random ``crop_size`` crop (the
    same window in all three), then the batch one random rotation by a multiple of 90 degrees
    and a random flip.

    ``L_gen`` and ``L_seg`` are the losses on the stain and the mask channels of ONE forward
    pass: the masked mean (:func:`~biodiffuse.diffusion.edm.masked_mean`) with the per-channel
    weights ``(1, ..., 1, lambda, ..., lambda)`` times ``1 + lambda`` is exactly
    ``mean_stains + lambda * mean_masks``.

    Parameters
    ----------
    multiplex
        ``"joint"`` (all stains [and masks] at once) or ``"token"`` (one random stain per tile,
        its one-hot id as the vector condition).
    n_stains
        Stains ``C``.
    kind
        ``"edm"`` (the EDM denoising loss: StainDiffuser) or ``"l1"`` (mean absolute error of the
        network's one evaluation at ``x = 0``: the L1 U-Net baseline).
    segmentation
        Learn the masks too (multi-task); ``False`` is the single-task model.
    seg_weight
        The paper's ``lambda`` (>= 0).
    crop_size
        Side of the training crops.
    augment
        Random rotations / flips.
    """

    def __init__(self, multiplex: str, n_stains: int, *, kind: str = "edm", segmentation: bool = True,
                 seg_weight: float = 1.0, crop_size: int = 64, augment: bool = True) -> None:
        if multiplex not in MULTIPLEX:
            raise ValueError(f"multiplex must be one of {MULTIPLEX}, got {multiplex!r}.")
        if kind not in KINDS:
            raise ValueError(f"objective must be one of {KINDS}, got {kind!r}.")
        self.multiplex, self.n_stains, self.kind = multiplex, int(n_stains), kind
        self.segmentation = bool(segmentation)
        self.seg_weight, self.crop_size, self.augment = float(seg_weight), int(crop_size), bool(augment)
        self.edm = EDMLoss(sigma_data=SIGMA_DATA)

    def inputs(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        """The clean crops ``x`` (stains, then their masks) and the condition ``{"image"[, "vector"]}``."""
        src, tgt, msk = batch["source"], batch["target"], batch["mask"]
        b, _, h, w = src.shape
        c = self.crop_size
        ys, xs = _randint(h - c + 1, b, generator, src.device), _randint(w - c + 1, b, generator, src.device)

        def crop(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[i, :, y : y + c, x : x + c] for i, (y, x) in enumerate(zip(ys, xs))])

        src, tgt, msk = to_model(crop(src)), to_model(crop(tgt)), to_model(crop(msk), mask=True)
        cond: dict[str, torch.Tensor] = {}
        if self.multiplex == "token":
            stain = torch.as_tensor(_randint(self.n_stains, b, generator, src.device), device=src.device)
            rows = torch.arange(b, device=src.device)
            tgt, msk = tgt[rows, stain][:, None], msk[rows, stain][:, None]
            cond["vector"] = F.one_hot(stain, self.n_stains).to(tgt.dtype)
        x = torch.cat([tgt, msk], dim=1) if self.segmentation else tgt
        if self.augment:
            k, flip = _randint(4, 2, generator, src.device)
            x, src = (torch.rot90(t, k, dims=(-2, -1)) for t in (x, src))
            if flip % 2:
                x, src = torch.flip(x, dims=(-1,)), torch.flip(src, dims=(-1,))
        cond["image"] = src
        return x, cond

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor | None, float]:
        """Per-channel loss weights of ``x`` and the factor that turns their masked mean into
        ``L_gen + lambda L_seg`` (no weights, factor 1, without segmentation)."""
        if not self.segmentation:
            return None, 1.0
        half, lam = x.shape[1] // 2, self.seg_weight
        w = torch.tensor([1.0] * half + [lam] * half, device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
        return w, 1.0 + lam

    def l1(self, network: torch.nn.Module, x: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The point prediction of ``x`` and its weighted L1 loss."""
        fake = point_sampler(network, x, cond, None)[0]
        w, factor = self.weights(x)
        return fake, factor * masked_mean((fake - x).abs(), w)

    def __call__(self, network: torch.nn.Module, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, cond = self.inputs(batch, generator)
        if self.kind == "edm":
            w, factor = self.weights(x)
            return factor * self.edm(EDMPrecond(network, SIGMA_DATA), x, cond, loss_mask=w, generator=generator)
        return self.l1(network, x, cond)[1]


class Pix2PixObjective(StainDiffuserObjective):
    """Pix2Pix (Isola et al.): the UNet as a point generator, ``l1_weight * L1 + GAN`` against a
    conditional :class:`~biodiffuse.nn.PatchDiscriminator` that reads ``(H&E, stains [+ masks])``.

    Calling the objective gives the L1 loss (the validation loss); the shared trainer
    (:class:`~biodiffuse.train.module.GenerativeModule`) optimises :meth:`adversarial_losses`
    with alternating steps. Joint multiplexing only.

    Parameters
    ----------
    n_stains, segmentation, seg_weight, crop_size, augment
        As :class:`StainDiffuserObjective`.
    adversary
        The discriminator (kept by the model across ``train()`` calls).
    l1_weight
        pix2pix's ``lambda`` (100).
    """

    def __init__(self, n_stains: int, *, adversary: torch.nn.Module, l1_weight: float = 100.0, **kwargs) -> None:
        super().__init__("joint", n_stains, kind="l1", **kwargs)
        self.kind = "pix2pix"
        self.adversary = adversary
        self.l1_weight = float(l1_weight)

    def adversarial_losses(self, network: torch.nn.Module, batch: Mapping[str, torch.Tensor],
                           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(generator loss, discriminator loss)`` of one forward pass (the discriminator's
        reads the generated images detached)."""
        x, cond = self.inputs(batch, generator)
        fake, l1 = self.l1(network, x, cond)
        src = cond["image"]
        bce = F.binary_cross_entropy_with_logits
        fooled = self.adversary(src, fake)
        net_loss = self.l1_weight * l1 + bce(fooled, torch.ones_like(fooled))
        real, faked = self.adversary(src, x), self.adversary(src, fake.detach())
        adv_loss = 0.5 * (bce(real, torch.ones_like(real)) + bce(faked, torch.zeros_like(faked)))
        return net_loss, adv_loss


def build_adversary(n_stains: int, source_channels: int, *, crop_size: int, segmentation: bool = True,
                    base_channels: int = 32) -> PatchDiscriminator:
    """The PatchGAN of :class:`Pix2PixObjective` for ``n_stains`` (+ masks) on ``source_channels``:
    pix2pix's 3 stride-2 layers (70-pixel patches), fewer for crops under 64 pixels (so that
    the last feature map keeps at least 8 x 8 positions)."""
    layers = int(np.clip(int(np.log2(max(int(crop_size), 2))) - 3, 1, 3))
    return PatchDiscriminator(int(source_channels) + int(n_stains) * (2 if segmentation else 1),
                              base_channels=int(base_channels), layers=layers)


def make_prepare(
    network: torch.nn.Module,
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    *,
    n_stains: int,
    chunk: int,
    kind: str = "edm",
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
    kind
        The objective the network was trained with (``"edm"`` wraps it in EDM preconditioning).
    """
    denoiser = FixedChunks(EDMPrecond(network, SIGMA_DATA) if kind == "edm" else network, chunk)

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        source, stain = read(rows)
        cond = {"image": to_model(np.ascontiguousarray(source)).to(device)}
        if stain is not None:
            cond["vector"] = F.one_hot(torch.as_tensor(np.asarray(stain), dtype=torch.long), int(n_stains)).float().to(device)
        return Batch(denoiser, cond)

    return prepare
