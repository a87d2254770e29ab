"""MCD's maths without AnnData: network, objective, condition and the sampler's ``prepare``.

* **Network** (:func:`build_network`): :class:`~biodiffuse.nn.MCDUNet` (diffusion branch +
  mirrored condition branch, SE-gated injection ``z = D(x_t) + SE(E(c))``) inside EDM
  preconditioning (:class:`MCDNetwork`, an :class:`~biodiffuse.diffusion.EDMPrecond` whose
  state-dict keys are those of the plain wrapper, so saved models load).
* **Condition** (:func:`build_condition`): ``[genes, x * m, m]`` (genes only for
  gene -> protein models); tables are 1x1 images.
* **Objective** (:class:`MCDObjective`): EDM loss with random channel masks ``m ~ Bern(p)``
  (or a fixed set of hidden target channels).
* **Sampling** (:func:`make_prepare`): the ``prepare`` function of
  :func:`biodiffuse.diffusion.sample_rows`; the condition branch runs once per batch, and
  observed channels are clamped to their values.
* **Residual base** (:mod:`biodiffuse.module.residual_base`, gene -> protein with
  ``residual="ridge"`` or ``"krr"``) lives in its own module.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..diffusion import Batch, EDMLoss, EDMPrecond, FixedChunks, masked_condition, random_channel_mask
from ..nn import MCDUNet

__all__ = ["MCDNetwork", "MCDObjective", "build_network", "build_condition", "make_prepare"]


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1); images pass through."""
    return x[:, :, None, None] if x.ndim == 2 else x


def build_condition(x: torch.Tensor, mask: torch.Tensor, genes: torch.Tensor | None) -> torch.Tensor:
    """MCD's condition ``[genes, x * m, m]``.

    Parameters
    ----------
    x
        ``(B, C)`` or ``(B, C, H, W)`` values in model scale.
    mask
        ``(B, C)`` booleans: channels observed (conditioned on).
    genes
        ``(B, G)`` condition genes (gene -> protein models) or None.
    """
    cond = masked_condition(_as_image(x), mask)
    if genes is not None:
        cond = torch.cat([_as_image(genes), cond], dim=1)
    return cond


class MCDNetwork(EDMPrecond):
    """EDM-preconditioned :class:`~biodiffuse.nn.MCDUNet` with a condition encoder.

    The same module tree as ``EDMPrecond(MCDUNet(...))`` (weights under ``net.``).
    """

    def encode_condition(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Noise-independent condition features ``E_l(c)``: computed once per batch and passed
        as ``cond`` at every sampler step."""
        return self.net.encode_condition(cond)


def build_network(
    n_targets: int,
    n_condition: int,
    *,
    spatial: bool,
    model_channels: int,
    channel_mult: Sequence[int],
    num_blocks: int,
    heads: int,
    dropout: float,
    cond_dropout: float,
    sigma_data: float,
) -> MCDNetwork:
    """The MCD network for ``n_targets`` data channels and ``n_condition`` extra condition
    channels (genes / gene PCs; 0 otherwise); the condition has ``n_condition + 2 n_targets``
    channels."""
    unet = MCDUNet(
        channels=n_targets, cond_channels=n_condition + 2 * n_targets, model_channels=model_channels,
        channel_mult=list(channel_mult), num_blocks=num_blocks, spatial=spatial,
        dropout=dropout, cond_dropout=cond_dropout, heads=heads,
    )
    return MCDNetwork(unet, sigma_data=sigma_data)


class MCDObjective:
    """EDM loss with random channel masking (MCD Algorithm 1).

    Batches hold ``x`` (B, C[, H, W]) in model scale with 0 where unmeasured, ``available``
    (B, C) booleans, and optionally ``genes`` (B, G). With ``target_mask`` (C,) the mask is not
    random: the target channels are always hidden and every other available channel observed
    (the paper's channel-specific setting).

    Parameters
    ----------
    observed_fraction
        ``p`` of the Bern(p) channel masks.
    loss_on
        ``"all"`` measured channels or only the ``"missing"`` (masked) ones.
    sigma_data
        EDM's data standard deviation.
    target_mask
        Optional (C,) booleans of always-hidden channels.
    P_mean, P_std
        The lognormal training noise levels, ``ln sigma ~ N(P_mean, P_std^2)``.
    """

    def __init__(
        self, observed_fraction: float, loss_on: str, sigma_data: float, target_mask: torch.Tensor | None = None,
        *, P_mean: float = -1.2, P_std: float = 1.2,
    ) -> None:
        self.observed_fraction = observed_fraction
        self.loss_on = loss_on
        self.loss = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)
        self.target_mask = target_mask

    def __call__(self, denoiser: EDMPrecond, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, avail = batch["x"], batch["available"]
        if x.ndim == 4 and x.shape[-1] > 1:  # image tiles: a random rotation / flip of the batch
            k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
            x = torch.rot90(x, k, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip % 2 else x
        if self.target_mask is not None:
            mask = avail & ~self.target_mask.to(avail.device)[None, :]
        else:
            mask = random_channel_mask(x.shape[0], x.shape[1], self.observed_fraction, available=avail, generator=generator)
        cond = build_condition(x, mask, batch.get("genes"))
        counted = avail & ~mask if self.loss_on == "missing" else avail
        x4 = _as_image(x)
        loss_mask = counted.reshape(*counted.shape, *([1] * (x4.ndim - 2)))
        return self.loss(denoiser, x4, cond, loss_mask=loss_mask, generator=generator)


RowReader = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray, np.ndarray | None]"]


def make_prepare(network: MCDNetwork, read: RowReader, chunk: int | None = None) -> Callable[[np.ndarray, torch.device], Batch]:
    """The ``prepare(rows, device)`` of :func:`~biodiffuse.diffusion.sample_rows` for MCD.

    Parameters
    ----------
    network
        The trained network (in eval mode, on the sampling device).
    read
        ``read(rows) -> (x, observed, genes)`` for an index array of rows: ``x`` (B, C) or
        (B, C, T, T) float32 in model scale (anything where not observed), ``observed`` (B, C)
        booleans, ``genes`` (B, G) float32 or None.
    chunk
        Evaluate the network on chunks of exactly this many draws (:class:`FixedChunks`), so
        that results are bit-identical whatever the batch size; None: the whole batch at once.

    Returns
    -------
    A function building the :class:`~biodiffuse.diffusion.Batch`: condition features encoded
    once for the batch, observed channels clamped to ``x``.
    """

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        x, observed, genes = read(rows)
        xb = _as_image(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        mb = torch.from_numpy(np.array(observed, dtype=bool)).to(device)
        gb = None if genes is None else torch.from_numpy(np.ascontiguousarray(genes, dtype=np.float32)).to(device)
        xb = torch.where(mb[:, :, None, None], xb, torch.zeros_like(xb))
        cond = build_condition(xb, mb, gb)
        if chunk is None:
            feats = network.encode_condition(cond)
        else:  # the condition branch on fixed-size chunks too
            feats = [torch.cat(f) for f in zip(*(network.encode_condition(c) for c in _padded_chunks(cond, chunk)))]
            feats = [f[: len(cond)] for f in feats]
        clamp = mb[:, :, None, None].expand_as(xb)
        denoiser = network if chunk is None else FixedChunks(network, chunk)
        return Batch(denoiser, feats, clamp_values=xb, clamp_mask=clamp)

    return prepare


def _padded_chunks(t: torch.Tensor, k: int) -> list[torch.Tensor]:
    """``t`` cut into chunks of exactly ``k`` rows, the last padded by repeating its last row."""
    out = []
    for start in range(0, t.shape[0], k):
        c = t[start : start + k]
        out.append(torch.cat([c, c[-1:].expand(k - c.shape[0], *c.shape[1:])]) if c.shape[0] < k else c)
    return out
