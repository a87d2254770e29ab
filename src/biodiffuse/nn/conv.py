"""A 2-D convolution that runs as a matrix product on 1 x 1 inputs.

MCD treats each cell of a table as a 1 x 1 image. A convolution with an odd kernel, stride 1
and "same" padding reduces there to the kernel's centre tap, i.e. a linear layer; running it
as ``F.linear`` gives the same numbers as ``nn.Conv2d`` (to float rounding) at a fraction of
the CPU cost of the convolution kernels (forward and backward). The module is an
``nn.Conv2d`` with the same parameters and state-dict keys, so saved models load either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .paths import fast_paths_enabled

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with a matrix-product path for 1 x 1 inputs.

    The path is taken when the input is ``(B, C, 1, 1)`` and the layer has an odd square
    kernel, stride 1, dilation 1, one group and ``padding = kernel // 2`` (the output is then
    ``(B, C_out, 1, 1)`` and only the centre tap of the kernel touches data). Otherwise it is
    the ordinary convolution (also inside ``with bd.nn.fast_paths(False)``).

    Parameters
    ----------
    *args, **kwargs
        As :class:`torch.nn.Conv2d`.

    Examples
    --------
    >>> conv = bd.nn.Conv2d(8, 16, 3, padding=1)
    >>> x = torch.randn(4, 8, 1, 1)
    >>> torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-6)
    True
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self._pointwise_ok = (
            kh == kw and kh % 2 == 1 and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
            and self.padding in ((kh // 2, kw // 2), "same") and self.padding_mode == "zeros"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise_ok and x.ndim == 4 and x.shape[-1] == 1 and x.shape[-2] == 1 and fast_paths_enabled():
            c = self.kernel_size[0] // 2
            w = self.weight[:, :, c, c] if self.kernel_size[0] > 1 else self.weight.flatten(1)
            return F.linear(x.flatten(1), w, self.bias)[:, :, None, None]
        return super().forward(x)
