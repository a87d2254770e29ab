"""SpaDiT prediction time and memory at scale (default: 10,000 spots x 1,000 predicted genes).

Counts are simulated (negative binomial around a low-rank profile: cell types x genes), since
the timing does not depend on the values: a reference of ``--ref-cells`` cells x (panel +
targets) genes and a spatial object of ``--spots`` spots x ``--panel`` genes. The model is
trained for ``--epochs`` epochs (timed separately, not the target), then ``predict`` is timed
for each (steps, n_samples) setting. Peak memory is the process's resident set size (Linux
``ru_maxrss``) after each step, so it includes Python, torch and the data.

``python benchmarks/spadit_scaling.py --threads 2 --out results/spadit_scaling``
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from _cli import limit_threads

__all__ = ["simulate_counts", "run_scaling"]


def simulate_counts(n_cells: int, n_genes: int, n_types: int = 10, seed: int = 0, depth: float = 2000.0) -> tuple[np.ndarray, np.ndarray]:
    """Negative binomial counts (dispersion 2) around cell-type profiles; returns counts
    (cells x genes, float32) and the cell types."""
    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(n_genes, 0.3), size=n_types)
    types = rng.integers(n_types, size=n_cells)
    mu = profiles[types] * depth * rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)
    return counts, types


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_scaling(
    spots: int = 10_000,
    targets: int = 1_000,
    panel: int = 100,
    ref_cells: int = 2_000,
    epochs: int = 1,
    settings: Sequence[tuple[int, int]] = ((1, 1), (4, 2)),
    batch_size: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """Train briefly, then time ``predict`` of ``targets`` genes for ``spots`` spots; one row
    per (steps, n_samples) setting plus one for training."""
    from biodiffuse.models import SpaDiT

    genes = [f"g{i}" for i in range(panel + targets)]
    ref_counts, _ = simulate_counts(ref_cells, len(genes), seed=seed)
    sp_counts, _ = simulate_counts(spots, len(genes), seed=seed + 1)
    ref = AnnData(sparse.csr_matrix(ref_counts))
    ref.var_names = genes
    sp = AnnData(sparse.csr_matrix(sp_counts[:, :panel]))
    sp.var_names = genes[:panel]
    del ref_counts, sp_counts
    rows = []
    SpaDiT.setup_anndata(sp, reference=ref)
    model = SpaDiT(sp, reference=ref, seed=seed)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False, early_stopping=False, seed=seed)
    rows.append(dict(stage="train", steps=np.nan, n_samples=np.nan, seconds=time.perf_counter() - t0, peak_rss_mib=_peak_rss_mib()))
    tokens = model.network.n_tokens
    for steps, n_samples in settings:
        t0 = time.perf_counter()
        pred = model.predict(n_samples=n_samples, steps=steps, batch_size=batch_size, seed=seed, overwrite=True)
        secs = time.perf_counter() - t0
        assert pred.shape == (spots, targets)
        rows.append(dict(stage="predict", steps=steps, n_samples=n_samples, seconds=secs, peak_rss_mib=_peak_rss_mib()))
        print(f"predict steps={steps} n_samples={n_samples}: {secs:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    table["spots"], table["targets"], table["panel"], table["tokens"] = spots, targets, panel, tokens
    return table


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spots", type=int, default=10_000)
    p.add_argument("--targets", type=int, default=1_000)
    p.add_argument("--panel", type=int, default=100)
    p.add_argument("--ref-cells", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/spadit_scaling")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    table = run_scaling(args.spots, args.targets, args.panel, args.ref_cells, args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"config": vars(args), "rows": json.loads(table.to_json(orient="records"))}, indent=1))
    print(table.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
