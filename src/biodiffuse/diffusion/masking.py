"""Random channel masking (MCD Algorithm 1) and the masked condition it builds."""

from __future__ import annotations

import torch

__all__ = ["random_channel_mask", "masked_condition"]


def random_channel_mask(
    n: int,
    n_channels: int,
    observed_fraction: float,
    available: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw which channels are observed, independently ``Bern(observed_fraction)`` per entry.

    Parameters
    ----------
    n
        Number of samples (rows).
    n_channels
        Number of channels.
    observed_fraction
        Probability ``p`` that a channel is observed (paper: 0.9). ``0`` gives no observed
        channel, ``1`` all of them.
    available
        Optional boolean (n, n_channels): which channels were measured at all for each row
        (union of panels, NaN entries). Unavailable channels are never observed.
    generator
        Random generator.
    device
        Device of the result (defaults to ``available``'s device).

    Returns
    -------
    Boolean tensor (n, n_channels), ``True`` where the channel is observed.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = bd.diffusion.random_channel_mask(256, 40, 0.9, generator=g)      # (256, 40) bool
    >>> mask = bd.diffusion.random_channel_mask(256, 40, 0.9, available=~torch.isnan(x), generator=g)
    """
    if not 0.0 <= observed_fraction <= 1.0:
        raise ValueError(f"observed_fraction must lie in [0, 1], got {observed_fraction}.")
    if available is not None:
        if tuple(available.shape) != (n, n_channels):
            raise ValueError(f"available has shape {tuple(available.shape)}, expected {(n, n_channels)}.")
        device = available.device
    u = torch.rand((n, n_channels), generator=generator, device=device)
    mask = u < observed_fraction
    if available is not None:
        mask &= available.bool()
    return mask


def masked_condition(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Build the condition ``[x * m, m]`` along the channel axis (dim 1).

    Unobserved channels are zero in the first half, and the second half tells the network
    which zeros are data and which are missing (a zero never pretends to be a measurement).

    Parameters
    ----------
    x
        Values, shape (B, C, ...). Entries where ``mask`` is False may hold anything (even NaN).
    mask
        Boolean (B, C) or (B, C, ...), True where observed.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> bd.diffusion.masked_condition(x, torch.tensor([[True, False, True]]))
    tensor([[1., 0., 3., 1., 0., 1.]])
    """
    m = mask.to(x.dtype)
    while m.ndim < x.ndim:
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    values = torch.where(m > 0, x, torch.zeros_like(x))
    return torch.cat([values, m], dim=1)
