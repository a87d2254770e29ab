"""Shared pieces of the benchmark command lines.

The drivers import it as a sibling module (``from _cli import limit_threads``): Python puts a
script's own folder on ``sys.path``, so ``python benchmarks/<name>.py`` finds it.
"""

from __future__ import annotations


def limit_threads(threads: int | None) -> None:
    """Cap torch's and the BLAS / OpenMP pools' threads (``None`` or 0: leave them)."""
    if not threads:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
