"""Shared pieces of the benchmark command lines.

The drivers import it as a sibling module (``from _cli import limit_threads``): Python puts a
script's own folder on ``sys.path``, so ``python benchmarks/<name>.py`` finds it.
"""

from __future__ import annotations


def limit_threads(threads: int | None) -> None:
    """Fix the threads: ``biodiffuse.settings.num_threads`` (training and sampling), torch's and
    the BLAS / OpenMP pools' (``None`` or 0: leave them, i.e. the package's ``"auto"``)."""
    if not threads:
        return
    import torch
    from threadpoolctl import threadpool_limits

    import biodiffuse

    biodiffuse.settings.num_threads = int(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)
