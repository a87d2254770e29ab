"""A switch for the 1 x 1 fast paths of :class:`~biodiffuse.nn.Conv2d` and
:class:`~biodiffuse.nn.ChannelAttention` (tables run as 1 x 1 images).

The fast paths compute the same function as the ordinary convolution and SDPA attention, to
float rounding (tests/test_nn.py). :func:`fast_paths` turns them off, e.g. to time what they
save (``benchmarks/mcd_speed.py``) or to rule them out when a result looks wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["fast_paths", "fast_paths_enabled"]

_state = threading.local()


def fast_paths_enabled() -> bool:
    """Whether the 1 x 1 fast paths are on in this thread (they are unless :func:`fast_paths` turned them off).

    Returns
    -------
    bool

    Examples
    --------
    >>> bd.nn.fast_paths_enabled()
    True
    """
    return getattr(_state, "enabled", True)


@contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Turn the 1 x 1 fast paths on or off inside a ``with`` block (this thread only).

    Parameters
    ----------
    enabled
        False: :class:`~biodiffuse.nn.Conv2d` runs the ordinary convolution and
        :class:`~biodiffuse.nn.ChannelAttention` SDPA on 1 x 1 inputs too.

    Examples
    --------
    >>> with bd.nn.fast_paths(False):
    ...     reference = network(x, sigma, cond)                 # ordinary convolutions and SDPA
    """
    before = fast_paths_enabled()
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = before
