"""PatchGAN discriminator (Isola et al., pix2pix): a small fully convolutional classifier that
scores every overlapping patch of an (input, output) image pair as real or generated."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: ``D(condition, image) -> (B, 1, h, w)`` real/fake logits per patch.

    ``layers`` stride-2 4x4 convolutions (the first without normalisation), one stride-1 4x4
    convolution and a 4x4 output convolution, LeakyReLU(0.2) between them; with ``layers=3``
    every logit sees a 70 x 70 pixel patch (pix2pix's default). Instance normalisation keeps
    the scores of one image independent of the others in the batch.

    Parameters
    ----------
    in_channels
        Channels of the condition and the image together (e.g. 3 H&E + 4 stains = 7).
    base_channels
        Width of the first convolution; doubled per layer up to ``8 * base_channels``.
    layers
        Stride-2 convolutions (receptive field 16, 34, 70, 142 pixels for 1..4).

    Examples
    --------
    >>> d = PatchDiscriminator(7, base_channels=16)
    >>> d(torch.zeros(2, 3, 64, 64), torch.zeros(2, 4, 64, 64)).shape
    torch.Size([2, 1, 6, 6])
    """

    def __init__(self, in_channels: int, *, base_channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or layers < 1:
            raise ValueError(
                f"in_channels, base_channels and layers must be positive, got {in_channels}, {base_channels}, {layers}."
            )
        mods: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = base_channels
        for i in range(1, layers + 1):
            out = base_channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.InstanceNorm2d(out, affine=True),
                     nn.LeakyReLU(0.2)]
            width = out
        mods.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Logits per patch of ``image`` given ``condition`` (both ``(B, ., H, W)``)."""
        if condition.shape[0] != image.shape[0] or condition.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"condition {tuple(condition.shape)} and image {tuple(image.shape)} must share B, H, W.")
        return self.net(torch.cat([condition, image], dim=1))
