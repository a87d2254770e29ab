"""GeneFlow against its baselines on held-out regions of real data: Xenium bone marrow (DAPI,
single cells) and HER2ST (H&E, ST spots).

For each data set: GeneFlow (rectified flow, Euler steps) and, on the same held-out rows,
nearest-tile retrieval in PCA space of the expression, the same networks trained with MSE
(the paper's conditional UNet) and with EDM (the paper's diffusion baseline), and GeneFlow fed
shuffled expression (the held-out rows' expression permuted). Metrics: KID (Inception
features, mean ± sd over subsets), nuclear-morphometry Wasserstein distance (DAPI nuclei /
haematoxylin of ``rgb2hed``), conditioning fidelity (a classifier of the cluster / a
regressor of the expression PCs trained on real training tiles, applied to the generated
tiles), SSIM / PSNR against the real tile; and the few-step sweep (Euler 1-8, Heun, dopri5:
evaluations per tile and KID).

Splits: Xenium, square blocks of the slide (region_split with a tile buffer: no held-out tile
shares a pixel with a training tile); HER2ST, by section (train C2-C5, test C6; the sections
sit side by side in one image for training).

    python benchmarks/geneflow.py                     # both data sets, CPU settings (~40 min on 2 cores)
    python benchmarks/geneflow.py --quick             # a smoke run (minutes)
    python benchmarks/geneflow.py --tile-size 256 --train-steps 20000 --model-channels 64 --accelerator gpu   # GPU
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def xenium_task(args) -> dict[str, Any]:
    """A crop of the Xenium slide, split by blocks into train (+ validation) and test."""
    import biodiffuse as bd

    sdata = bd.datasets.xenium_bone_marrow(crop=tuple(args.xenium_crop))
    table = sdata.tables["table"]
    ok = (np.asarray(table.X.sum(axis=1)).ravel() > 0) & table.obs["cluster"].notna().to_numpy()
    scale = args.tile_size / 64 if args.tile_size <= 64 else 1.0  # a 64-pixel (13.6 um) footprint
    scale = 1.0 / round(1.0 / scale)
    foot = int(round(args.tile_size / scale))
    labels = bd.data.region_split(
        table.obsm["spatial"], block_size=8 * foot, fractions=(0.75, 0.25), names=("train", "test"),
        seed=args.seed, tile_size=args.tile_size, scale=scale,
    )
    train, test = ok & (labels == "train"), ok & (labels == "test")
    return dict(name="xenium_bone_marrow", sdata=sdata, train=train, test=test, stain="dapi", scale=scale,
                genes=None, target=table.obs["cluster"].astype(str).to_numpy(), image_key="dapi",
                split=f"square blocks of {8 * foot} px ({8 * foot * 0.2125:.0f} um), 75 / 25 % of cells, tile buffer")


def her2st_task(args) -> dict[str, Any]:
    """HER2ST sections side by side in one image; train on all but the last, test on the last."""
    import anndata as ad
    import spatialdata as sd
    from spatialdata.models import Image2DModel, TableModel

    import biodiffuse as bd

    sections = list(args.her2st_sections)
    parts = [bd.datasets.her2st(s) for s in sections]
    h = max(p.images["he"].shape[1] for p in parts)
    widths = [p.images["he"].shape[2] for p in parts]
    mosaic = np.full((3, h, sum(widths)), 255, dtype=np.uint8)
    tables, x0 = [], 0
    for p, w in zip(parts, widths):
        img = np.asarray(p.images["he"].data)
        mosaic[:, : img.shape[1], x0 : x0 + w] = img
        t = p.tables["table"]
        t = ad.AnnData(t.X, obs=t.obs[["section", "array_x", "array_y"]].copy(), var=pd.DataFrame(index=t.var_names))
        t.obsm["spatial"] = np.asarray(p.tables["table"].obsm["spatial"], dtype=np.float64) + [x0, 0]
        tables.append(t)
        x0 += w
    table = ad.concat(tables, join="inner")
    img = Image2DModel.parse(mosaic, dims=("c", "y", "x"), c_coords=["R", "G", "B"], chunks=(3, 4096, 4096))
    sdata = sd.SpatialData(images={"he": img}, tables={"table": TableModel.parse(table)})
    test = (table.obs["section"] == sections[-1]).to_numpy()
    train = ~test
    genes = bd.data.select_genes(table, args.her2st_genes, train=train, min_fraction=0.1)
    # a spot (100 um, ~145 px) and its surroundings: 256 image pixels per tile side
    scale = args.tile_size / 256 if args.tile_size <= 256 else 1.0
    scale = 1.0 / round(1.0 / scale)
    return dict(name="her2st", sdata=sdata, train=train, test=test, stain="he", scale=scale, genes=genes,
                target=None, image_key="he",
                split=f"by section: train {','.join(sections[:-1])}, test {sections[-1]}; "
                      f"{len(genes)} HVGs (seurat, detected in >= 10 % of training spots)")


# ---------------------------------------------------------------------------------------------
# one data set
# ---------------------------------------------------------------------------------------------


def _train(bd, sdata, objective: str, task, args) -> Any:
    model = bd.models.GeneFlow(
        sdata, objective=objective, model_channels=args.model_channels, channel_mult=(1, 2, 2), dim=128, rank=16,
        seed=args.seed,
    )
    n_train = int(task["train"].sum())
    steps = args.train_steps if objective != "mse" else max(1, args.train_steps // 2)
    epochs = max(1, int(round(steps * args.batch_size / max(1, 0.85 * n_train))))
    t = time.time()
    model.train(max_epochs=epochs, batch_size=args.batch_size, lr=args.lr, cells=task["train"],
                enable_progress_bar=False, accelerator=args.accelerator, seed=args.seed, early_stopping=False)
    secs = time.time() - t
    _log(f"{task['name']}: trained {objective} for {epochs} epochs (~{steps} steps) in {secs:.0f} s")
    return model, secs, epochs


def _metrics(name: str, real: np.ndarray, fake: np.ndarray, feats_real: np.ndarray, morph_real, task, fid_clf,
             args) -> dict[str, Any]:
    import biodiffuse as bd
    from biodiffuse.metrics.conditioning import conditioning_fidelity

    feats = bd.metrics.inception_features(fake)
    m = min(len(real) // 2, len(fake) // 2, args.kid_subset)  # subsets of at most half: a spread that means something
    kid_mean, kid_sd = bd.metrics.kid(feats_real, feats, n_subsets=50, subset_size=m, seed=0)
    morph = bd.metrics.nuclei_morphometry(fake, stain=task["stain"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdist = bd.metrics.morphometry_distance(morph_real, morph)
    fid = fid_clf(fake)
    return {
        "method": name, "kid": kid_mean, "kid_sd": kid_sd, "morphometry": float(mdist["mean"]),
        "fidelity": fid["score"], "fidelity_sd": fid["score_sd"], "fidelity_per_row": fid["per_row"],
        "ssim": float(bd.metrics.ssim(real, fake)), "psnr": float(bd.metrics.psnr(real, fake)),
    }


def run_task(task: dict[str, Any], args) -> dict[str, Any]:
    import biodiffuse as bd
    from biodiffuse.baselines.histology import NearestTile
    from biodiffuse.metrics.conditioning import conditioning_fidelity, paired_difference

    sdata, name = task["sdata"], task["name"]
    bd.models.GeneFlow.setup_spatialdata(
        sdata, image_key=task["image_key"], tile_size=args.tile_size, scale=task["scale"], genes=task["genes"],
    )
    table = sdata.tables["table"]
    rng = np.random.default_rng(args.seed)
    test_rows = np.flatnonzero(task["test"])
    # the held-out rows with a whole tile inside the image, at most --n-test of them
    models, train_secs = {}, {}
    for objective in ("flow", "edm", "mse"):
        models[objective], train_secs[objective], _ = _train(bd, sdata, objective, task, args)
    flow = models["flow"]
    r = flow.registry
    scaling = (np.asarray(r["scaling_lo"]), np.asarray(r["scaling_hi"]))
    cut = dict(image_key=r["image_key"], tile_size=r["tile_size"], scale=r["scale"], scaling=scaling)
    real_test, kept_test = bd.data.cell_tiles(sdata, cells=test_rows, **cut)
    if len(kept_test) > args.n_test:
        pick = np.sort(rng.choice(len(kept_test), args.n_test, replace=False))
        real_test, kept_test = real_test[pick], kept_test[pick]
    real_train, kept_train = bd.data.cell_tiles(sdata, cells=np.flatnonzero(task["train"]), **cut)
    cols = table.var_names.get_indexer(flow.genes)

    def expr(rows: np.ndarray) -> np.ndarray:  # the model's normalisation (CPM of its genes + log1p), for the baselines
        x = table.X[rows][:, cols]
        return bd.data.cpm_log1p(x.toarray() if hasattr(x, "toarray") else np.asarray(x))

    _log(f"{name}: {len(kept_train)} training tiles, {len(kept_test)} held-out tiles of {args.tile_size} px")

    # conditioning-fidelity target: cluster (Xenium) or the expression PCs of the training spots (HER2ST)
    if task["target"] is not None:
        y_train, y_test = task["target"][kept_train], task["target"][kept_test]
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=5, random_state=0).fit(expr(kept_train))
        y_train, y_test = pca.transform(expr(kept_train)), pca.transform(expr(kept_test))
    fid_clf = lambda tiles: conditioning_fidelity(real_train, y_train, tiles, y_test, seed=0)  # noqa: E731
    feats_real = bd.metrics.inception_features(real_test)
    morph_real = bd.metrics.nuclei_morphometry(real_test, stain=task["stain"])

    query = table[kept_test].copy()
    query.obsm.clear()
    shuffled = query.copy()
    shuffled.X = shuffled.X[rng.permutation(shuffled.n_obs)]
    gen: dict[str, tuple[np.ndarray, float, float]] = {}

    def run(label: str, model, q, **kw) -> None:
        t = time.time()
        tiles = model.generate(q, key_added=f"bench_{len(gen)}", **kw)
        gen[label] = (tiles.values[:, 0], float(tiles.attrs["nfe"]), time.time() - t)

    run("GeneFlow (Euler 8)", flow, query, steps=8)
    run("GeneFlow, shuffled expression", flow, shuffled, steps=8)
    run("EDM (Heun 8, same nets)", models["edm"], query, steps=8)
    run("UNet-MSE (same nets)", models["mse"], query)
    t = time.time()
    nn_tiles = NearestTile(n_components=50, seed=args.seed).fit(expr(kept_train), real_train).predict(expr(kept_test))
    gen["nearest tile (PCA)"] = (nn_tiles, 0.0, time.time() - t)
    for label, kw in [("Euler 1", dict(steps=1)), ("Euler 2", dict(steps=2)), ("Euler 4", dict(steps=4)),
                      ("Heun 2", dict(steps=2, method="heun")), ("Heun 4", dict(steps=4, method="heun")),
                      ("dopri5", dict(method="dopri5", steps=1))]:
        run(f"GeneFlow ({label})", flow, query, **kw)
    _log(f"{name}: generated {len(gen)} sets")

    rows = []
    for label, (tiles, nfe, secs) in gen.items():
        row = _metrics(label, real_test, tiles, feats_real, morph_real, task, fid_clf, args)
        row.update(nfe_per_tile=nfe, generate_s=secs)
        rows.append(row)
        _log(f"{name}: {label}: KID {row['kid']:.4f} ± {row['kid_sd']:.4f}, morph {row['morphometry']:.3f}, "
             f"fidelity {row['fidelity']:.3f}")
    real_fid = fid_clf(real_test)
    by = {r_["method"]: r_ for r_ in rows}
    # per row: 0/1 correctness (classification) or squared error of the standardised PCs (regression, negated so
    # that a positive difference always means "right expression beats shuffled expression")
    sign = 1.0 if real_fid["task"] == "classification" else -1.0
    diff = paired_difference(sign * by["GeneFlow (Euler 8)"]["fidelity_per_row"],
                             sign * by["GeneFlow, shuffled expression"]["fidelity_per_row"], seed=0)
    for r_ in rows:
        r_.pop("fidelity_per_row")
    return {
        "dataset": name, "split": task["split"], "tile_size": args.tile_size, "scale": task["scale"],
        "n_train_tiles": int(len(kept_train)), "n_test_tiles": int(len(kept_test)), "n_genes": len(flow.genes),
        "train_steps": args.train_steps, "batch_size": args.batch_size, "train_seconds": train_secs,
        "fidelity_task": real_fid["task"], "fidelity_real_tiles": real_fid["score"], "fidelity_chance": real_fid["chance"],
        "fidelity_right_minus_shuffled": {k: (float(v) if np.ndim(v) == 0 else v) for k, v in diff.items()},
        "rows": rows,
    }


def format_table(res: dict[str, Any]) -> str:
    df = pd.DataFrame(res["rows"]).set_index("method")
    out = pd.DataFrame({
        "KID x1e3": [f"{k * 1e3:.1f} ± {s * 1e3:.1f}" for k, s in zip(df["kid"], df["kid_sd"])],
        "morphometry": df["morphometry"].map("{:.3f}".format),
        "fidelity": [f"{f:.3f} ± {s:.3f}" for f, s in zip(df["fidelity"], df["fidelity_sd"])],
        "SSIM": df["ssim"].map("{:.3f}".format),
        "PSNR": df["psnr"].map("{:.2f}".format),
        "evals / tile": df["nfe_per_tile"].map("{:.1f}".format),
    }, index=df.index)
    lines = ["| method | " + " | ".join(out.columns) + " |", "|---" * (len(out.columns) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in zip(out.index, out.to_numpy())]
    return "\n".join(lines)


def common_arguments(p: argparse.ArgumentParser) -> None:
    """Data, split and training options shared with ``geneflow_importance.py`` (same tasks, same settings)."""
    p.add_argument("--dataset", choices=["xenium", "her2st", "both"], default="both")
    p.add_argument("--tile-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=800, help="optimiser steps of the flow / EDM models (MSE: half)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--model-channels", type=int, default=16)
    p.add_argument("--xenium-crop", type=int, nargs=4, default=[4000, 2000, 7000, 5000])
    p.add_argument("--her2st-sections", nargs="+", default=["C2", "C3", "C4", "C5", "C6"])
    p.add_argument("--her2st-genes", type=int, default=1000)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    p.add_argument("--n-test", type=int, default=250, help="held-out tiles scored (a random subset)")
    p.add_argument("--kid-subset", type=int, default=200, help="rows per KID subset (at most half the held-out set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 60 test tiles, a small crop")
    p.add_argument("--out", default="results/geneflow")
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.n_test, args.kid_subset = 60, 60, 50
        args.xenium_crop, args.her2st_sections = [4000, 2000, 5500, 3500], ["C2", "C3"]
    from _cli import limit_threads

    limit_threads(args.threads)
    results = []
    for which in (["xenium", "her2st"] if args.dataset == "both" else [args.dataset]):
        task = (xenium_task if which == "xenium" else her2st_task)(args)
        res = run_task(task, args)
        results.append(res)
        table = format_table(res)
        d = res["fidelity_right_minus_shuffled"]
        header = (f"{res['dataset']}: {res['n_train_tiles']} training / {res['n_test_tiles']} held-out tiles of "
                  f"{res['tile_size']} px (scale {res['scale']}), {res['n_genes']} genes, split {res['split']}; "
                  f"~{res['train_steps']} training steps (batch {res['batch_size']}); fidelity = "
                  f"{'balanced accuracy of the cluster' if res['fidelity_task'] == 'classification' else 'mean r of 5 expression PCs'}"
                  f" (real held-out tiles: {res['fidelity_real_tiles']:.3f}, chance {res['fidelity_chance']:.3f}); "
                  f"GeneFlow right - shuffled expression, per row ({'accuracy' if res['fidelity_task'] == 'classification' else '- squared error of the standardised PCs'}; > 0: the expression matters): {d['difference']:.3f} (95 % CI {d['ci_low']:.3f} .. {d['ci_high']:.3f})")
        print("\n" + header + "\n\n" + table + "\n", flush=True)
        res["header"], res["table"] = header, table
        out = Path(args.out)  # written after every data set
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
        Path(f"{out}.md").write_text("\n\n".join(r["header"] + "\n\n" + r["table"] for r in results) + "\n")
    return {"results": results}


if __name__ == "__main__":
    main()
