"""Shared pieces of the benchmark command lines.

The drivers import it as a sibling module (``from _cli import limit_threads``): Python puts a
script's own folder on ``sys.path``, so ``python benchmarks/<name>.py`` finds it.
"""

from __future__ import annotations

from typing import Any


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


def sampler_arg(text: str | None) -> dict[str, Any] | None:
    """``"euler,80,0.002,3"`` -> EDM sampler settings (``set_sampler``'s keywords); None stays None."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise SystemExit(f"A sampler is SOLVER,SIGMA_MAX,SIGMA_MIN,RHO, got {text!r}")
    return dict(solver=parts[0], sigma_max=float(parts[1]), sigma_min=float(parts[2]), rho=float(parts[3]))
