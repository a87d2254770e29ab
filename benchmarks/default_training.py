"""How long each model trains with its defaults on CPU, on real data of a few thousand cells.

Run ``python benchmarks/default_training.py --help``. Every model is built and trained with
its defaults (early stopping on; nothing but the data and the thread count given), timed, and
reported with the epochs its schedule chose for these data (``registry["training_plan"]``),
the epochs it ran, whether early stopping ended it, seconds and training cells (or tiles) / s.

* ``mcd``: gene -> protein on Abseq bone marrow (``bd.datasets.triana_bm_abseq``), ``--cells``
  random cells (all 422 mRNAs -> 97 proteins).
* ``spadit``: within-panel SpaDiT on Xenium bone marrow (``bd.datasets.xenium_bone_marrow``'s
  table), ``--cells`` random cells x the ``--genes`` genes with the most counts.
* ``mcd-image``: MCD on the MIBI-TOF granuloma image (39 channels, 1,024 x 1,024, the
  default 64-pixel tiles at 16 x 16).

``--init`` replaces constructor defaults (e.g. an older network size). ``--max-epochs`` caps
every run (for models whose default training takes hours on CPU); a capped row also gives
the time its default epochs would take at the measured seconds per epoch ("projected", an
estimate: early stopping could end it sooner).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODELS", "run_model", "main"]

MODELS = ("mcd", "spadit", "mcd-image")


def _abseq(cells: int, seed: int, init: dict[str, Any]):
    from biodiffuse.datasets import triana_bm_abseq
    from biodiffuse.models import MCD

    adata = triana_bm_abseq()
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, min(cells, adata.n_obs), replace=False))
    adata = adata[rows].copy()
    MCD.setup_anndata(adata, protein_obsm_key="protein_expression")
    return MCD(adata, **init), f"Abseq bone marrow, {adata.n_obs} cells x {adata.n_vars} mRNAs -> 97 proteins"


def _xenium(cells: int, genes: int, seed: int, crop: tuple[int, int, int, int], init: dict[str, Any]):
    import anndata as ad
    import pandas as pd

    from biodiffuse.datasets import xenium_bone_marrow
    from biodiffuse.models import SpaDiT

    table = xenium_bone_marrow(crop=crop).tables["table"]
    counts = np.asarray(table.X.sum(axis=0)).ravel()
    keep_genes = np.sort(np.argsort(-counts, kind="stable")[:genes])
    expressed = np.flatnonzero(np.asarray(table.X[:, keep_genes].sum(axis=1)).ravel() > 0)
    rows = np.sort(np.random.default_rng(seed).choice(expressed, min(cells, len(expressed)), replace=False))
    sub = table[rows][:, keep_genes]
    adata = ad.AnnData(sub.X.copy(), var=pd.DataFrame(index=sub.var_names.copy()))
    SpaDiT.setup_anndata(adata)
    return SpaDiT(adata, **init), f"Xenium bone marrow crop {crop} (within panel), {adata.n_obs} cells x {adata.n_vars} genes"


def _mibi(init: dict[str, Any]):
    from biodiffuse.datasets import mibi_granuloma
    from biodiffuse.models import MCD

    sdata = mibi_granuloma()
    MCD.setup_spatialdata(sdata, image_key="mibi")
    c, h, w = sdata.images["mibi"].shape
    return MCD(sdata, **init), f"MIBI-TOF granuloma image, {c} channels, {h} x {w}"


def run_model(name: str, cells: int = 3000, genes: int = 158, max_epochs: int | None = None, seed: int = 0,
              crop: tuple[int, int, int, int] = (0, 0, 8000, 8571), init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``name`` with its defaults (``init``: constructor arguments that replace some) on its data
    set, train (defaults; ``max_epochs`` caps), time it."""
    init = dict(init or {})
    if name == "mcd":
        model, data = _abseq(cells, seed, init)
    elif name == "spadit":
        model, data = _xenium(cells, genes, seed, crop, init)
    elif name == "mcd-image":
        model, data = _mibi(init)
    else:
        raise ValueError(f"Unknown model {name!r}; choose from {MODELS}.")
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, seed=seed)
    seconds = time.perf_counter() - t0
    plan = model.registry["training_plan"]
    epochs = len(model.history)
    per_epoch = seconds / max(epochs, 1)
    return dict(
        model=name + (f" {json.dumps(init)}" if init else ""), data=data, n_train=plan["n_train"], batch_size=plan["batch_size"], default_epochs=plan["default_max_epochs"],
        default_steps=plan["default_max_epochs"] * plan["steps_per_epoch"], max_epochs=plan["max_epochs"], epochs=epochs,
        early_stopped=epochs < plan["max_epochs"], seconds=seconds, s_per_epoch=per_epoch,
        train_rows_per_s=plan["n_train"] * epochs / seconds,
        projected_default_s=None if plan["max_epochs"] >= plan["default_max_epochs"] else per_epoch * plan["default_max_epochs"],
        parameters=int(sum(p.numel() for p in model.network.parameters())),
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | data | training rows | default epochs (steps) | epochs run | early stop | seconds | s / epoch | "
             "rows / s | default, projected s | weights |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        proj = "-" if r["projected_default_s"] is None else f"{r['projected_default_s']:,.0f}"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['n_train']:,} | {r['default_epochs']} ({r['default_steps']:,}) | {r['epochs']} | "
            f"{'yes' if r['early_stopped'] else 'no'} | {r['seconds']:,.0f} | {r['s_per_epoch']:.2f} | {r['train_rows_per_s']:,.0f} | "
            f"{proj} | {r['parameters']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--cells", type=int, default=3000, help="training cells for mcd and spadit (the split keeps 10 %% for validation)")
    p.add_argument("--genes", type=int, default=158, help="spadit: genes with the most counts")
    p.add_argument("--crop", type=int, nargs=4, default=[0, 0, 8000, 8571], help="spadit: Xenium image box (x0 y0 x1 y1) the cells come from")
    p.add_argument("--max-epochs", type=int, default=None, help="cap every run (default: the models' own schedules)")
    p.add_argument("--init", type=json.loads, default=None,
                   help='constructor arguments for every model run, as JSON (e.g. \'{"dim": 128, "depth": 4}\' for spadit)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/default_training")
    args = p.parse_args(argv)
    from _cli import limit_threads  # sibling module of the drivers

    limit_threads(args.threads)
    rows = []
    for name in args.models:
        rows.append(run_model(name, args.cells, args.genes, args.max_epochs, args.seed, tuple(args.crop), args.init))
        print(f"{name}: {rows[-1]['epochs']} epochs in {rows[-1]['seconds']:.0f} s", flush=True)
    import torch

    header = f"defaults on CPU ({torch.get_num_threads()} torch thread(s)); seed {args.seed}" + (
        f"; capped at {args.max_epochs} epochs" if args.max_epochs else "")
    text = header + "\n\n" + format_table(rows)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(text + "\n")
    Path(f"{out}.json").write_text(json.dumps({"header": header, "args": vars(args), "rows": rows}, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
