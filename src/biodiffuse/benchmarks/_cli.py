"""Shared pieces of the benchmark command lines."""

from __future__ import annotations


def limit_threads(threads: int | None) -> None:
    """Cap torch's and the BLAS / OpenMP pools' threads (``None`` or 0: leave them)."""
    if not threads:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
