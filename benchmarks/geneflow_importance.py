"""Which genes drive GeneFlow's tiles, how stable that ranking is, and what it is enriched for.

On the training region of each data set (the same tasks and splits as ``benchmarks/geneflow.py``)
two GeneFlow models are trained with different seeds (initial weights, data order, noise).
Each ranks the genes by the mean absolute gradient of the velocity's squared norm
(``GeneFlow.gene_importance``: 8 stratified times x 4 noise draws per held-out cell / spot, on
the path to its real tile). Stability: overlap of the two top-k lists (k = 20, 50) with the
hypergeometric p (and a split check: the same model on two disjoint halves of the held-out
rows). Enrichment: GSEA pre-ranked (gseapy, offline) of the seed-0 ranking on the MSigDB
hallmark sets in ``../shared/data/genesets``.

    python benchmarks/geneflow_importance.py               # both data sets (~25 min on 2 CPU cores)
    python benchmarks/geneflow_importance.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import geneflow as gfb  # the sibling driver: data tasks and the training settings


def run(task: dict[str, Any], args) -> dict[str, Any]:
    import biodiffuse as bd

    sdata, name = task["sdata"], task["name"]
    bd.models.GeneFlow.setup_spatialdata(
        sdata, image_key=task["image_key"], tile_size=args.tile_size, scale=task["scale"], genes=task["genes"],
    )
    table = sdata.tables["table"]
    test = np.flatnonzero(task["test"])
    rng = np.random.default_rng(0)
    test = np.sort(rng.choice(test, min(len(test), args.n_test), replace=False))
    scores = {}
    for seed in (0, 1):
        args.seed = seed
        model, secs, _ = gfb._train(bd, sdata, "flow", task, args)
        t = time.time()
        scores[f"seed {seed}"] = model.gene_importance(sdata, indices=test, key_added=f"imp_{seed}", seed=seed)
        gfb._log(f"{name}: importance of seed {seed} in {time.time() - t:.0f} s")
        if seed == 0:
            half = len(test) // 2
            scores["seed 0, first half"] = model.gene_importance(sdata, indices=test[:half], key_added="imp_a")
            scores["seed 0, second half"] = model.gene_importance(sdata, indices=test[half:], key_added="imp_b")
    args.seed = 0
    pairs = {"seeds": ("seed 0", "seed 1"), "halves": ("seed 0, first half", "seed 0, second half")}
    stability = []
    for label, (a, b) in pairs.items():
        for k in (20, 50):
            r = bd.tl.top_overlap(scores[a], scores[b], k=k)
            stability.append({"comparison": label, **r})
    enr = bd.tl.enrichment(table, key="imp_0", gene_sets="hallmark", method="prerank", permutations=args.permutations,
                           case="upper", key_added="imp_0_hallmark")
    top = scores["seed 0"].head(15)
    return {
        "dataset": name, "n_genes": len(scores["seed 0"]), "n_rows": len(test), "split": task["split"],
        "train_steps": args.train_steps, "top_genes": {g: float(v) for g, v in top.items()},
        "stability": stability, "enrichment": json.loads(enr.head(10).to_json(orient="records")),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gfb.common_arguments(p)
    p.add_argument("--n-test", type=int, default=200, help="held-out rows the importance averages over")
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/geneflow_importance")
    args = p.parse_args(argv)
    args.seed = 0
    if args.quick:
        args.train_steps, args.n_test, args.permutations = 30, 20, 100
        args.xenium_crop, args.her2st_sections = [4000, 2000, 5500, 3500], ["C2", "C3"]
    from _cli import limit_threads

    limit_threads(args.threads)
    results = []
    for which in (["xenium", "her2st"] if args.dataset == "both" else [args.dataset]):
        task = (gfb.xenium_task if which == "xenium" else gfb.her2st_task)(args)
        res = run(task, args)
        results.append(res)
        st = pd.DataFrame(res["stability"])[["comparison", "k", "n_genes", "overlap", "expected", "p_value"]]
        enr = pd.DataFrame(res["enrichment"])
        cols = [c for c in ("Term", "NES", "FDR q-val", "Lead_genes") if c in enr.columns]
        print(f"\n{res['dataset']}: {res['n_genes']} genes, importance over {res['n_rows']} held-out rows\n"
              f"top genes: {', '.join(res['top_genes'])}\n\n{st.to_string(index=False)}\n\n"
              f"{enr[cols].head(8).to_string(index=False) if cols else enr.head(8)}\n", flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
