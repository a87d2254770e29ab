"""Conditional image UNet shared by GeneFlow (expression -> tile) and StainDiffuser (H&E -> IHC).

One network, three kinds of condition, all optional:

* the noise level / time ``t`` (sinusoidal features -> MLP, the usual diffusion embedding);
* a vector condition of width ``cond_dim`` (GeneFlow's RNA embedding), projected by an MLP and
  added to the time embedding, so that it reaches every residual block through the blocks'
  scale/shift (FiLM) - GeneFlow eq. ``Linear(gamma(t) + Linear(z))``;
* an image condition of ``image_cond_channels`` channels (StainDiffuser's H&E tile),
  concatenated to the noisy input.

The layout is the standard diffusion UNet: ``num_blocks`` residual blocks per level (with
spatial self-attention at the levels in ``attention_levels``), strided-conv downsampling,
a middle block (res, attention, res), a mirrored decoder with ``num_blocks + 1`` blocks per
level fed by skip connections, and GroupNorm-SiLU-conv output. ``extra_heads`` adds 3x3 conv
heads on the last decoder features (StainDiffuser's segmentation head).

The call convention is ``net(x, t, cond)``, the one :class:`biodiffuse.diffusion.EDMPrecond`
uses (``t`` = ``c_noise``) and the one a rectified-flow velocity network uses (``t`` in [0, 1]).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .attention import _groups
from .blocks import Downsample, UNetBlock, Upsample
from .embeddings import NoiseEmbedding

__all__ = ["ConditionalImageUNet"]

Cond = torch.Tensor | Mapping[str, torch.Tensor] | None


class ConditionalImageUNet(nn.Module):
    """Diffusion / flow UNet for image tiles with an optional vector and image condition.

    Parameters
    ----------
    in_channels
        Channels of the noisy image ``x`` (e.g. 3 for RGB H&E, 1 for DAPI).
    out_channels
        Channels of the main output (usually ``in_channels``: denoiser output or velocity).
    model_channels
        Base width; level ``l`` has ``model_channels * channel_mult[l]`` channels.
    channel_mult
        Width multiplier per level. ``len(channel_mult)`` levels, so tiles must have a side
        divisible by ``2 ** (len(channel_mult) - 1)``.
    num_blocks
        Residual blocks per encoder level (the decoder has one more per level).
    attention_levels
        Levels (0 = full resolution) whose blocks carry spatial self-attention; ``None``
        (default) means the lowest-resolution level only. The middle block always has one.
        Levels rather than resolutions, because the network is fully convolutional and the
        same weights serve 32-, 64- and 256-pixel tiles.
    heads
        Attention heads (must divide the width of every attention level).
    dropout
        Dropout inside the residual blocks.
    cond_dim
        Width of the vector condition, or ``None`` for none.
    image_cond_channels
        Channels of the image condition (concatenated to ``x``), 0 for none.
    extra_heads
        ``{name: channels}`` of additional outputs computed from the last decoder features
        (e.g. ``{"seg": 1}`` for StainDiffuser's segmentation logits).

    Notes
    -----
    ``forward`` returns a tensor ``(B, out_channels, H, W)`` when ``extra_heads`` is empty, and
    a dict ``{"out": ..., name: (B, channels, H, W), ...}`` otherwise. A dict output does not
    go through :class:`~biodiffuse.diffusion.EDMPrecond` as is: wrap ``out`` there and read the
    heads from the same forward pass.

    Initialisation: the residual blocks' second convolution, the output convolution and the
    extra heads start at zero (the usual diffusion-UNet choice, so training starts from the
    identity / zero velocity). At initialisation the output is therefore exactly zero and does
    not depend on ``t`` or the conditions; the condition projections themselves are not
    zero-initialised, so gradients reach them from the first step.

    Examples
    --------
    >>> net = bd.nn.ConditionalImageUNet(1, 1, model_channels=32, channel_mult=(1, 2), cond_dim=256)
    >>> net(torch.randn(2, 1, 32, 32), torch.rand(2), torch.randn(2, 256)).shape   # DAPI tiles, flow time
    torch.Size([2, 1, 32, 32])
    >>> staining = bd.nn.ConditionalImageUNet(4, 4, image_cond_channels=3, extra_heads={"seg": 4})
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        num_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        heads: int = 4,
        dropout: float = 0.0,
        cond_dim: int | None = None,
        image_cond_channels: int = 0,
        extra_heads: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}.")
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}.")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}.")
        if cond_dim is not None and cond_dim < 1:
            raise ValueError(f"cond_dim must be a positive int or None, got {cond_dim}.")
        if image_cond_channels < 0:
            raise ValueError(f"image_cond_channels must be >= 0, got {image_cond_channels}.")
        extra_heads = dict(extra_heads or {})
        if "out" in extra_heads or any(int(c) < 1 for c in extra_heads.values()):
            raise ValueError(f"extra_heads needs names other than 'out' and positive channel counts, got {extra_heads}.")
        n_levels = len(channel_mult)
        attention_levels = (n_levels - 1,) if attention_levels is None else tuple(attention_levels)
        if any(not 0 <= lv < n_levels for lv in attention_levels):
            raise ValueError(f"attention_levels must lie in [0, {n_levels - 1}], got {attention_levels}.")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cond_dim = cond_dim
        self.image_cond_channels = image_cond_channels
        self.factor = 2 ** (n_levels - 1)
        emb = 4 * model_channels

        self.time_embedding = NoiseEmbedding(model_channels, emb)
        self.cond_embedding = (
            nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb)) if cond_dim else None
        )

        def block(cin: int, cout: int, attn: bool) -> UNetBlock:
            return UNetBlock(cin, cout, emb, 3, dropout, spatial_attention=attn, channel_attention=False, heads=heads)

        self.conv_in = nn.Conv2d(in_channels + image_cond_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(block(ch, model_channels * mult, level in attention_levels))
                ch = model_channels * mult
                skips.append(ch)
            if level < n_levels - 1:
                self.down.append(Downsample(ch, spatial=True))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch, True), block(ch, ch, False)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(block(ch + skips.pop(), model_channels * mult, level in attention_levels))
                ch = model_channels * mult
            if level > 0:
                self.up.append(Upsample(ch, spatial=True))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        self.heads = nn.ModuleDict({k: _zero(nn.Conv2d(ch, int(c), 3, padding=1)) for k, c in extra_heads.items()})

    # ------------------------------------------------------------------ conditions
    def _split_cond(self, cond: Cond) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(vector, image)`` from ``cond`` (None, a tensor, or a mapping)."""
        if cond is None:
            vec = img = None
        elif isinstance(cond, torch.Tensor):
            if cond.ndim == 2:
                vec, img = cond, None
            elif cond.ndim == 4:
                vec, img = None, cond
            else:
                raise ValueError(
                    f"cond as a tensor must be (B, cond_dim) or (B, C, H, W), got shape {tuple(cond.shape)}."
                )
        elif isinstance(cond, Mapping):
            unknown = set(cond) - {"vector", "image"}
            if unknown:
                raise ValueError(f"cond mapping accepts the keys 'vector' and 'image', got {sorted(unknown)}.")
            vec, img = cond.get("vector"), cond.get("image")
        else:
            raise TypeError(f"cond must be None, a tensor or a mapping, got {type(cond).__name__}.")
        if (vec is None) != (self.cond_embedding is None):
            need = f"a vector condition of width {self.cond_dim}" if self.cond_embedding is not None else "no vector condition"
            raise ValueError(f"This network takes {need}; got {'none' if vec is None else 'one'}.")
        if (img is None) != (self.image_cond_channels == 0):
            need = (
                f"an image condition with {self.image_cond_channels} channels" if self.image_cond_channels else "no image condition"
            )
            raise ValueError(f"This network takes {need}; got {'none' if img is None else 'one'}.")
        return vec, img

    def _validate(self, x: torch.Tensor, t: torch.Tensor, vec: torch.Tensor | None, img: torch.Tensor | None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}.")
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"x has {c} channels, the network expects in_channels={self.in_channels}.")
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"Tile size {h}x{w} is not divisible by 2**(levels-1) = {self.factor}; crop or pad the tiles."
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}.")
        if vec is not None and vec.shape != (b, self.cond_dim):
            raise ValueError(f"Vector condition must be ({b}, {self.cond_dim}), got {tuple(vec.shape)}.")
        if img is not None and img.shape != (b, self.image_cond_channels, h, w):
            raise ValueError(
                f"Image condition must be ({b}, {self.image_cond_channels}, {h}, {w}) like x, got {tuple(img.shape)}."
            )
        return t

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Predict the denoiser output / velocity for ``x`` at time or noise label ``t``.

        Parameters
        ----------
        x
            Noisy tiles, (B, in_channels, H, W) with H and W divisible by ``2**(levels-1)``.
        t
            Noise label (EDM's ``c_noise``) or flow time, shape (B,) or a scalar.
        cond
            ``None``; a (B, cond_dim) tensor (vector condition); a (B, image_cond_channels, H, W)
            tensor (image condition); or a mapping with keys ``"vector"`` and/or ``"image"``.
            Exactly the conditions the network was built for must be given.

        Returns
        -------
        (B, out_channels, H, W), or ``{"out": ..., **extra_heads}`` when extra heads exist.
        """
        vec, img = self._split_cond(cond)
        t = self._validate(x, t, vec, img)
        emb = self.time_embedding(t)
        if self.cond_embedding is not None:
            emb = emb + self.cond_embedding(vec.to(emb.dtype))
        h = self.conv_in(x if img is None else torch.cat([x, img.to(x.dtype)], dim=1))
        skips = [h]
        for blk in self.down:
            h = blk(h) if isinstance(blk, Downsample) else blk(h, emb)
            skips.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blk in self.up:
            if isinstance(blk, Upsample):
                h = blk(h, skips[-1].shape[-2:])
            else:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
        h = F.silu(self.out_norm(h))
        out = self.out_conv(h)
        if not self.heads:
            return out
        return {"out": out, **{k: head(h) for k, head in self.heads.items()}}


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module
