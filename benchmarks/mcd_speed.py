"""Cost of one MCD training step and one sampling call on tables (cells as 1 x 1 images).

Run ``python benchmarks/mcd_speed.py --help``. Times, as medians over repeats, one optimiser
step (forward, backward, AdamW) on a batch of 256 cells and one denoiser call on 2,560 draws,
for the gene -> protein network at the ECCITE-seq shape (1,000 condition genes, 49 proteins,
MCD's default sizes), in three versions: "plain" (ordinary convolutions,
``scaled_dot_product_attention`` and AdamW's loop over the weight tensors: what training ran
before the faster paths existed), the package's 1 x 1 paths (convolutions as matrix products,
channel attention as outer products) with that AdamW loop, and the 1 x 1 paths with the fused
AdamW that training now uses. All compute the same function to float rounding
(tests/test_nn.py); sampling does not use the optimiser, so its two 1 x 1 rows differ by noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from biodiffuse.module.mcd import MCDObjective, build_network
from biodiffuse.nn import fast_paths
from biodiffuse.train import GenerativeModule

__all__ = ["PATHS", "time_network", "main"]

#: (label, plain network paths, fused AdamW)
PATHS = (("plain conv + SDPA, AdamW loop", True, False), ("1x1 paths, AdamW loop", False, False), ("1x1 paths, fused AdamW", False, True))


def time_network(plain: bool, n_genes: int = 1000, n_proteins: int = 49, batch: int = 256, repeats: int = 20, seed: int = 0,
                 fused: bool | None = None) -> dict:
    """Median seconds of a training step and of a sampling call (``10 * batch`` draws); ``fused``
    (default: not ``plain``) takes the package's fused AdamW instead of AdamW's loop."""
    torch.manual_seed(seed)
    net = build_network(n_proteins, n_genes, spatial=False, model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, heads=4,
                        dropout=0.1, cond_dropout=0.5, sigma_data=0.5)
    with fast_paths(not plain):
        objective = MCDObjective(0.0, "all", 0.5)
        data = {"x": torch.rand(batch, n_proteins) * 2 - 1, "available": torch.ones(batch, n_proteins, dtype=torch.bool),
                "genes": torch.randn(batch, n_genes)}
        if (not plain) if fused is None else fused:  # what training runs: the shared module's optimiser
            opt = GenerativeModule(net, objective, lr=1e-3).configure_optimizers()
        else:  # AdamW's loop over the weight tensors, as before the fused optimiser
            opt = torch.optim.AdamW(net.parameters(), 1e-3, fused=False, foreach=False)

        def step() -> None:
            loss = objective(net, data, None)
            opt.zero_grad()
            loss.backward()
            opt.step()

        draws = torch.randn(10 * batch, n_proteins, 1, 1)
        cond = torch.randn(10 * batch, n_genes + 2 * n_proteins, 1, 1)

        @torch.no_grad()
        def sample() -> None:
            net.eval()
            feats = net.encode_condition(cond)
            net(draws, torch.full((len(draws),), 1.0), feats)
            net.train()

        out = {}
        for name, fn in (("train_step_s", step), ("sample_call_s", sample)):
            for _ in range(3):
                fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name] = float(np.median(ts))
        out["train_cells_per_s"] = batch / out["train_step_s"]
        out["sample_draws_per_s"] = len(draws) / out["sample_call_s"]
        return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="results/mcd_speed")
    args = p.parse_args(argv)
    rows = []
    before = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for path, plain, fused in PATHS:
                rows.append(dict(threads=threads, path=path, **time_network(plain, repeats=args.repeats, fused=fused)))
    finally:
        torch.set_num_threads(before)
    lines = ["| threads | path | train step (ms, batch 256) | train cells / s | sampling call (ms, 2,560 draws) | draws / s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['path']} | {1e3 * r['train_step_s']:.0f} | {r['train_cells_per_s']:.0f} | "
                     f"{1e3 * r['sample_call_s']:.0f} | {r['sample_draws_per_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(text + "\n")
    Path(f"{out}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
