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

Conditioning fidelity has two probes: simple pixel features (pooled pixels, intensity
histograms) of all training tiles, and the 50 leading principal components of the Inception
features (the KID network's, so no extra network) of ``--probe-train`` training tiles. GeneFlow
is trained again with ``--model-seeds`` (Euler 8, right and shuffled expression) so that its
scores come with the model's spread over trainings, not only the metric's over subsets.

Splits: Xenium, square blocks of the slide (region_split with a tile buffer: no held-out tile
shares a pixel with a training tile); HER2ST, by section (train C2-C5, test C6; the sections
sit side by side in one image for training).

    python benchmarks/geneflow.py                     # both data sets, CPU settings (86 min on 2 cores, probes refitted per set)
    python benchmarks/geneflow.py --quick             # a smoke run (minutes)
    python benchmarks/geneflow.py --dataset xenium --xenium-mode window --xenium-crop 6000 0 12000 4000   # windows of cells
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
    """A crop of the Xenium slide, split by blocks into train (+ validation) and test.

    Single mode: a tile centred on each cell (footprint ``--xenium-footprint`` image pixels),
    probe target its cluster. Window mode: a tile per grid window of that footprint, conditioned
    on its cells, probe target the window's expression PCs."""
    import biodiffuse as bd

    sdata = bd.datasets.xenium_bone_marrow(crop=tuple(args.xenium_crop))
    table = sdata.tables["table"]
    ok = np.asarray(table.X.sum(axis=1)).ravel() > 0
    if args.xenium_mode == "single":
        ok &= table.obs["cluster"].notna().to_numpy()
    foot = args.xenium_footprint  # image pixels per tile side (64: 13.6 um)
    scale = args.tile_size / foot if args.tile_size <= foot else 1.0
    scale = 1.0 / round(1.0 / scale)
    foot = int(round(args.tile_size / scale))
    labels = bd.data.region_split(
        table.obsm["spatial"], block_size=8 * foot, fractions=(0.75, 0.25), names=("train", "test"),
        seed=args.seed, tile_size=args.tile_size, scale=scale,
    )
    train, test = ok & (labels == "train"), ok & (labels == "test")
    window = args.xenium_mode == "window"
    return dict(name="xenium_bone_marrow" + (" (windows)" if window else ""), sdata=sdata, train=train, test=test,
                stain="dapi", scale=scale, genes=None, mode=args.xenium_mode, image_key="dapi",
                target=None if window else table.obs["cluster"].astype(str).to_numpy(),
                split=f"square blocks of {8 * foot} px ({8 * foot * 0.2125:.0f} um), 75 / 25 % of cells, tile buffer"
                      + (f"; windows of {foot} px ({foot * 0.2125:.1f} um) whose cells are all in one split"
                         if window else ""))


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


def _training_rows(model, task: dict[str, Any]) -> int:
    """What one epoch runs over: the training cells, or in window mode the windows whose cells all train."""
    if task.get("mode", "single") != "window":
        return int(task["train"].sum())
    return int(model.windows(task["sdata"]).within(task["train"]).sum())


def _train(bd, sdata, objective: str, task, args, seed: int | None = None) -> Any:
    seed = args.seed if seed is None else seed
    model = bd.models.GeneFlow(
        sdata, objective=objective, model_channels=args.model_channels, channel_mult=(1, 2, 2), dim=128, rank=16,
        seed=seed,
    )
    n_train = _training_rows(model, task)
    steps = args.train_steps if objective != "mse" else max(1, args.train_steps // 2)
    epochs = max(1, int(round(steps * args.batch_size / max(1, 0.85 * n_train))))
    t = time.time()
    model.train(max_epochs=epochs, batch_size=args.batch_size, lr=args.lr, cells=task["train"],
                enable_progress_bar=False, accelerator=args.accelerator, seed=seed, early_stopping=False)
    secs = time.time() - t
    _log(f"{task['name']}: trained {objective} (seed {seed}) for {epochs} epochs (~{steps} steps) in {secs:.0f} s")
    return model, secs, epochs


def _metrics(name: str, real: np.ndarray, fake: np.ndarray, feats_real: np.ndarray, morph_real, task, probes,
             args) -> dict[str, Any]:
    import biodiffuse as bd

    feats = bd.metrics.inception_features(fake)
    m = min(len(real) // 2, len(fake) // 2, args.kid_subset)  # subsets of at most half: a spread that means something
    kid_mean, kid_sd = bd.metrics.kid(feats_real, feats, n_subsets=50, subset_size=m, seed=0)
    morph = bd.metrics.nuclei_morphometry(fake, stain=task["stain"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdist = bd.metrics.morphometry_distance(morph_real, morph)
    row = {"method": name, "kid": kid_mean, "kid_sd": kid_sd, "morphometry": float(mdist["mean"]),
           "ssim": float(bd.metrics.ssim(real, fake)), "psnr": float(bd.metrics.psnr(real, fake))}
    for probe, fid in probes(fake, feats).items():
        row.update({f"fidelity_{probe}": fid["score"], f"fidelity_{probe}_sd": fid["score_sd"],
                    f"fidelity_{probe}_per_row": fid["per_row"]})
    return row


PROBES = ("pixels", "inception")


def fidelity_differences(right: dict[str, Any], shuffled: dict[str, Any], task: str) -> dict[str, dict[str, float]]:
    """Per probe, the paired bootstrap of right minus shuffled expression over the held-out rows.

    ``task`` is the probe's task: per row, 0/1 correctness (classification) or the squared error
    of the standardised targets (regression, negated), so that a positive difference always
    means "the right expression beats shuffled expression".
    """
    from biodiffuse.metrics.conditioning import paired_difference

    sign = 1.0 if task == "classification" else -1.0
    out = {}
    for probe in PROBES:
        d = paired_difference(sign * np.asarray(right[f"fidelity_{probe}_per_row"]),
                              sign * np.asarray(shuffled[f"fidelity_{probe}_per_row"]), seed=0)
        out[probe] = {k: float(v) for k, v in d.items()}
    return out


def seed_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over training seeds of GeneFlow's scores (the model's spread, not the metric's).

    ``per_seed``: one dict per seed with ``kid``, ``morphometry``, ``fidelity_<probe>`` and
    ``shuffled_fidelity_<probe>``, ``difference_<probe>`` (right - shuffled, per row).
    """
    keys = ["kid", "morphometry"] + [f"{pre}fidelity_{p}" for p in PROBES for pre in ("", "shuffled_")]
    keys += [f"difference_{p}" for p in PROBES]
    out: dict[str, Any] = {"n_seeds": len(per_seed), "seeds": [r["seed"] for r in per_seed]}
    for k in keys:
        v = np.array([r[k] for r in per_seed], dtype=float)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan")}
    return out


def _cut(flow) -> dict[str, Any]:
    """How the model cuts its tiles (image, size, scale, intensity scaling): the real tiles are cut the same way."""
    r = flow.registry
    scaling = (np.asarray(r["scaling_lo"]), np.asarray(r["scaling_hi"]))
    return dict(image_key=r["image_key"], tile_size=r["tile_size"], scale=r["scale"], scaling=scaling)


def _expression_pcs(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 5 leading PCs of the expression, fitted on the training rows: the regression probe's target."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=5, random_state=0).fit(x_train)
    return pca.transform(x_train), pca.transform(x_test)


def single_rows(bd, task: dict[str, Any], flow, args, rng: np.random.Generator) -> dict[str, Any]:
    """Single mode: a tile per cell / spot. The held-out rows with a whole tile inside the image (at
    most ``--n-test``), the training tiles, the probe targets, the nearest-tile baseline, and
    generation from the right or the shuffled expression (permuted among the held-out rows)."""
    from biodiffuse.baselines.histology import NearestTile

    sdata = task["sdata"]
    table = sdata.tables["table"]
    cut = _cut(flow)
    real_test, kept_test = bd.data.cell_tiles(sdata, cells=np.flatnonzero(task["test"]), **cut)
    if len(kept_test) > args.n_test:
        pick = np.sort(rng.choice(len(kept_test), args.n_test, replace=False))
        real_test, kept_test = real_test[pick], kept_test[pick]
    real_train, kept_train = bd.data.cell_tiles(sdata, cells=np.flatnonzero(task["train"]), **cut)
    cols = table.var_names.get_indexer(flow.genes)

    def expr(rows: np.ndarray) -> np.ndarray:  # the model's normalisation (CPM of its genes + log1p), for the baselines
        x = table.X[rows][:, cols]
        return bd.data.cpm_log1p(x.toarray() if hasattr(x, "toarray") else np.asarray(x))

    x_train, x_test = expr(kept_train), expr(kept_test)
    # conditioning-fidelity target: the cluster (Xenium) or the expression PCs of the training spots (HER2ST)
    if task["target"] is not None:
        y_train, y_test = task["target"][kept_train], task["target"][kept_test]
    else:
        y_train, y_test = _expression_pcs(x_train, x_test)
    query = table[kept_test].copy()
    query.obsm.clear()
    shuffled = query.copy()
    shuffled.X = shuffled.X[rng.permutation(shuffled.n_obs)]
    return dict(
        real_train=real_train, real_test=real_test, y_train=y_train, y_test=y_test, unit="tiles", rows=kept_test,
        nearest=lambda: NearestTile(n_components=50, seed=args.seed).fit(x_train, real_train).predict(x_test),
        generate=lambda model, shuffle, key, **kw: model.generate(shuffled if shuffle else query, key_added=key, **kw),
    )


def window_rows(bd, task: dict[str, Any], flow, args, rng: np.random.Generator) -> dict[str, Any]:
    """Window mode: a tile per grid window, conditioned on all its cells. Held-out windows are those
    whose cells are all held out (at most ``--n-test``); training windows those whose cells all
    train (the model's own rule). Windows never share pixels (a grid side by side). Probe target:
    the 5 PCs of the window's mean expression. Shuffled control: the expression of the held-out
    windows' cells permuted among those cells (positions, and so the windows, unchanged)."""
    import spatialdata as sd

    from biodiffuse.baselines.histology import NearestTile

    sdata = task["sdata"]
    table = sdata.tables["table"]
    win = flow.windows(sdata)
    cut = _cut(flow)

    def windows_of(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        only = np.flatnonzero(win.within(cells))
        tiles, kept = bd.data.cell_tiles(sdata, centres=win.centres[only], **cut)
        return tiles, only[kept]

    real_test, w_test = windows_of(task["test"])
    if len(w_test) > args.n_test:
        pick = np.sort(rng.choice(len(w_test), args.n_test, replace=False))
        real_test, w_test = real_test[pick], w_test[pick]
    real_train, w_train = windows_of(task["train"])
    pooled = lambda w: (win.values[w] * win.mask[w][..., None]).sum(axis=1) / win.mask[w].sum(axis=1)[:, None]  # noqa: E731
    y_train, y_test = _expression_pcs(pooled(w_train), pooled(w_test))
    cells = np.unique(win.index[w_test][win.mask[w_test]])
    order = np.arange(table.n_obs)
    order[cells] = cells[rng.permutation(len(cells))]
    permuted = table.copy()
    permuted.X = table.X[order]
    shuffled = sd.SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": permuted})

    def nearest() -> np.ndarray:
        nt = NearestTile(n_components=50, seed=args.seed).fit(win.values[w_train], real_train, mask=win.mask[w_train])
        return nt.predict(win.values[w_test], mask=win.mask[w_test])

    return dict(
        real_train=real_train, real_test=real_test, y_train=y_train, y_test=y_test, unit="windows", rows=w_test,
        nearest=nearest, cells_per_window=float(win.mask[w_test].sum(axis=1).mean()), shuffled=shuffled,
        generate=lambda model, shuffle, key, **kw: model.generate(shuffled if shuffle else sdata, indices=w_test,
                                                                  key_added=key, **kw),
    )


def _edm_rows(model, run, args) -> dict[str, Any]:
    """Generate with the EDM model three ways: EDM's Heun 8 from 80 (the first runs' row; 15
    evaluations per tile), the other image models' Euler 8 from 80 with rho 3, and the schedule
    ``tune_sampler`` chooses at 8 evaluations per tile on the model's validation blocks. Returns
    the tuning's best row and time."""
    from biodiffuse.models._edm_sampling import EDM_HEUN, IMAGE_EULER

    model.set_sampler(**EDM_HEUN)
    run("EDM (EDM's Heun 8 from 80)", model, steps=8)
    model.set_sampler(**IMAGE_EULER)
    run("EDM (Euler 8 from 80, rho 3)", model, steps=8)
    t = time.time()
    table = model.tune_sampler(nfe=8, n_samples=4, max_tiles=args.tune_tiles, seed=args.seed)
    best = table.iloc[0]
    label = (f"EDM (tuned: {best['solver']} {int(best['steps'])}, sigma {best['sigma_max']:g} -> {best['sigma_min']:g}, "
             f"rho {best['rho']:g})")
    run(label, model, steps=int(best["steps"]))
    return {"best": model.registry["sampler_tuning"], "seconds": time.time() - t, "label": label,
            "n_candidates": int(len(table))}


def run_task(task: dict[str, Any], args) -> dict[str, Any]:
    import biodiffuse as bd
    from biodiffuse.metrics.conditioning import FidelityProbe

    sdata, name, mode = task["sdata"], task["name"], task.get("mode", "single")
    bd.models.GeneFlow.setup_spatialdata(
        sdata, image_key=task["image_key"], tile_size=args.tile_size, scale=task["scale"], genes=task["genes"],
        mode=mode,
    )
    rng = np.random.default_rng(args.seed)
    models, train_secs = {}, {}
    for objective in ("flow", "edm", "mse"):
        if objective not in args.skip:
            models[objective], train_secs[objective], _ = _train(bd, sdata, objective, task, args)
    flow = models["flow"]
    data = (window_rows if mode == "window" else single_rows)(bd, task, flow, args, rng)
    real_train, real_test, y_train, y_test = data["real_train"], data["real_test"], data["y_train"], data["y_test"]
    _log(f"{name}: {len(real_train)} training {data['unit']}, {len(real_test)} held-out of {args.tile_size} px")

    # two probes: simple pixel features of all training tiles, and the 50 leading PCs of the Inception features
    # (the KID network's) of at most --probe-train training tiles
    probe_rng = np.random.default_rng([args.seed, 1])  # its own stream: the other draws stay as before
    probe_rows = np.sort(probe_rng.choice(len(real_train), min(args.probe_train, len(real_train)), replace=False))
    feats_train = bd.metrics.inception_features(real_train[probe_rows])
    pixel_probe = FidelityProbe("pixels", seed=0).fit(real_train, y_train)  # fitted once, scored per set
    inception_probe = FidelityProbe("precomputed", n_components=50, seed=0).fit(feats_train, y_train[probe_rows])

    def probes(tiles: np.ndarray, feats: np.ndarray) -> dict[str, dict[str, Any]]:
        return {"pixels": pixel_probe.score(tiles, y_test), "inception": inception_probe.score(feats, y_test)}

    feats_real = bd.metrics.inception_features(real_test)
    morph_real = bd.metrics.nuclei_morphometry(real_test, stain=task["stain"])
    gen: dict[str, tuple[np.ndarray, float, float]] = {}

    def run(label: str, model, shuffle: bool = False, **kw) -> None:
        t = time.time()
        tiles = data["generate"](model, shuffle, f"bench_{len(gen)}", **kw)
        gen[label] = (tiles.values[:, 0], float(tiles.attrs["nfe"]), time.time() - t)

    run("GeneFlow (Euler 8)", flow, steps=8)
    run("GeneFlow, shuffled expression", flow, shuffle=True, steps=8)
    tuning = None
    if "edm" in models:  # the same EDM model under EDM's own sampler, the image default, and the tuned schedule
        tuning = _edm_rows(models["edm"], run, args)
    if "mse" in models:
        run("UNet-MSE (same nets)", models["mse"])
    t = time.time()
    gen["nearest tile (PCA)"] = (data["nearest"](), 0.0, time.time() - t)
    sweep = [("Euler 1", dict(steps=1)), ("Euler 2", dict(steps=2)), ("Euler 4", dict(steps=4)),
             ("Heun 2", dict(steps=2, method="heun")), ("Heun 4", dict(steps=4, method="heun")),
             ("dopri5", dict(method="dopri5", steps=1))]
    for label, kw in ([] if "sweep" in args.skip else sweep):
        run(f"GeneFlow ({label})", flow, **kw)
    _log(f"{name}: generated {len(gen)} sets")

    rows = []
    for label, (tiles, nfe, secs) in gen.items():
        row = _metrics(label, real_test, tiles, feats_real, morph_real, task, probes, args)
        row.update(nfe_per_tile=nfe, generate_s=secs)
        rows.append(row)
        _log(f"{name}: {label}: KID {row['kid']:.4f} ± {row['kid_sd']:.4f}, morph {row['morphometry']:.3f}, "
             f"fidelity pixels {row['fidelity_pixels']:.3f}, Inception {row['fidelity_inception']:.3f}")
    real_fid = probes(real_test, feats_real)
    fid_task = real_fid["pixels"]["task"]
    by = {r_["method"]: r_ for r_ in rows}
    main_row, shuffled_row = by["GeneFlow (Euler 8)"], by["GeneFlow, shuffled expression"]

    def seed_row(seed: int, right: dict, shuf: dict) -> dict[str, Any]:
        diff = fidelity_differences(right, shuf, fid_task)
        out = {"seed": seed, "kid": right["kid"], "morphometry": right["morphometry"]}
        for probe in PROBES:
            out.update({f"fidelity_{probe}": right[f"fidelity_{probe}"],
                        f"shuffled_fidelity_{probe}": shuf[f"fidelity_{probe}"],
                        f"difference_{probe}": diff[probe]["difference"], f"ci_{probe}": diff[probe]})
        return out

    # further training seeds of the flow model: the model's spread (Euler 8, right and shuffled expression)
    per_seed = [seed_row(args.seed, main_row, shuffled_row)]
    for seed in args.model_seeds:
        model, secs, _ = _train(bd, sdata, "flow", task, args, seed=seed)
        train_secs[f"flow seed {seed}"] = secs
        sets = {}
        for label in ("right", "shuffled"):
            tiles = data["generate"](model, label == "shuffled", f"seed_{seed}_{label}", steps=8).values[:, 0]
            sets[label] = _metrics(f"GeneFlow seed {seed}, {label}", real_test, tiles, feats_real, morph_real, task,
                                   probes, args)
        per_seed.append(seed_row(seed, sets["right"], sets["shuffled"]))
        _log(f"{name}: seed {seed}: KID {per_seed[-1]['kid']:.4f}, Inception fidelity right - shuffled "
             f"{per_seed[-1]['difference_inception']:.3f}")
    diff = fidelity_differences(main_row, shuffled_row, fid_task)
    for r_ in rows:
        for probe in PROBES:
            r_.pop(f"fidelity_{probe}_per_row")
    return {
        "dataset": name, "split": task["split"], "tile_size": args.tile_size, "scale": task["scale"],
        "mode": mode, "cells_per_window": data.get("cells_per_window"),
        "n_train_tiles": int(len(real_train)), "n_test_tiles": int(len(real_test)), "n_genes": len(flow.genes),
        "n_probe_train": int(len(probe_rows)), "train_steps": args.train_steps, "batch_size": args.batch_size,
        "train_seconds": train_secs, "edm_sampler_tuning": tuning, "fidelity_task": fid_task,
        "fidelity_real_tiles": {p_: real_fid[p_]["score"] for p_ in PROBES},
        "fidelity_chance": real_fid["pixels"]["chance"],
        "fidelity_right_minus_shuffled": diff, "seeds": per_seed, "seed_summary": seed_summary(per_seed),
        "rows": rows,
    }


def format_table(res: dict[str, Any]) -> str:
    df = pd.DataFrame(res["rows"]).set_index("method")
    out = pd.DataFrame({
        "KID x1e3": [f"{k * 1e3:.1f} ± {s * 1e3:.1f}" for k, s in zip(df["kid"], df["kid_sd"])],
        "morphometry": df["morphometry"].map("{:.3f}".format),
        "fidelity (pixels)": [f"{f:.3f} ± {s:.3f}" for f, s in zip(df["fidelity_pixels"], df["fidelity_pixels_sd"])],
        "fidelity (Inception)": [f"{f:.3f} ± {s:.3f}"
                                 for f, s in zip(df["fidelity_inception"], df["fidelity_inception_sd"])],
        "SSIM": df["ssim"].map("{:.3f}".format),
        "PSNR": df["psnr"].map("{:.2f}".format),
        "evals / tile": df["nfe_per_tile"].map("{:.1f}".format),
    }, index=df.index)
    lines = ["| method | " + " | ".join(out.columns) + " |", "|---" * (len(out.columns) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in zip(out.index, out.to_numpy())]
    return "\n".join(lines)


def format_seeds(res: dict[str, Any]) -> str:
    """GeneFlow (Euler 8) per training seed, and the mean ± sd over seeds."""
    cols = ["KID x1e3", "morphometry", "pixels: right / shuffled", "Inception: right / shuffled",
            "right - shuffled, pixels (95 % CI)", "right - shuffled, Inception (95 % CI)"]
    lines = ["| seed | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in res["seeds"]:
        cells = [f"{r['kid'] * 1e3:.1f}", f"{r['morphometry']:.3f}"]
        cells += [f"{r[f'fidelity_{p}']:.3f} / {r[f'shuffled_fidelity_{p}']:.3f}" for p in PROBES]
        cells += [f"{r[f'difference_{p}']:.3f} ({r[f'ci_{p}']['ci_low']:.3f} .. {r[f'ci_{p}']['ci_high']:.3f})"
                  for p in PROBES]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    m = res["seed_summary"]
    if m["n_seeds"] > 1:
        ms = lambda k, f=3, x=1.0: f"{m[k]['mean'] * x:.{f}f} ± {m[k]['sd'] * x:.{f}f}"  # noqa: E731
        cells = [ms("kid", 1, 1e3), ms("morphometry")]
        cells += [f"{ms(f'fidelity_{p}')} / {ms(f'shuffled_fidelity_{p}')}" for p in PROBES]
        cells += [ms(f"difference_{p}") for p in PROBES]
        lines.append(f"| mean ± sd over {m['n_seeds']} seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_header(res: dict[str, Any]) -> str:
    """One paragraph: data, split, training, the probes' targets and what real held-out tiles score."""
    cls = res["fidelity_task"] == "classification"
    real = res["fidelity_real_tiles"]
    d = res["fidelity_right_minus_shuffled"]
    diffs = "; ".join(f"{p} {d[p]['difference']:.3f} (95 % CI {d[p]['ci_low']:.3f} .. {d[p]['ci_high']:.3f})"
                      for p in PROBES)
    return (f"{res['dataset']}: {res['n_train_tiles']} training / {res['n_test_tiles']} held-out tiles of "
            f"{res['tile_size']} px (scale {res['scale']}), {res['n_genes']} genes, split {res['split']}; "
            + (f"window mode, {res['cells_per_window']:.1f} cells per held-out window on average; "
                  if res.get("mode") == "window" else "")
            + f"~{res['train_steps']} training steps (batch {res['batch_size']}); fidelity = "
            f"{'balanced accuracy of the cluster' if cls else 'mean r of 5 expression PCs'}, probes fitted on real "
            f"training tiles: pixel features (all {res['n_train_tiles']}) and 50 PCs of the Inception features "
            f"({res['n_probe_train']} tiles); real held-out tiles score pixels {real['pixels']:.3f}, Inception "
            f"{real['inception']:.3f} (chance {res['fidelity_chance']:.3f}); GeneFlow right - shuffled expression, "
            f"per row ({'accuracy' if cls else '- squared error of the standardised PCs'}; > 0: the expression "
            f"matters): {diffs}")


def common_arguments(p: argparse.ArgumentParser) -> None:
    """Data, split and training options shared with ``geneflow_importance.py`` (same tasks, same settings)."""
    p.add_argument("--dataset", choices=["xenium", "her2st", "both"], default="both")
    p.add_argument("--tile-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=800, help="optimiser steps of the flow / EDM models (MSE: half)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--model-channels", type=int, default=16)
    p.add_argument("--xenium-crop", type=int, nargs=4, default=[4000, 2000, 7000, 5000])
    p.add_argument("--xenium-mode", choices=["single", "window"], default="single",
                   help="a tile per cell, or per grid window conditioned on all its cells")
    p.add_argument("--xenium-footprint", type=int, default=64, help="image pixels per tile side (64 px = 13.6 um)")
    p.add_argument("--her2st-sections", nargs="+", default=["C2", "C3", "C4", "C5", "C6"])
    p.add_argument("--her2st-genes", type=int, default=1000)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    p.add_argument("--n-test", type=int, default=250, help="held-out tiles scored (a random subset)")
    p.add_argument("--kid-subset", type=int, default=200, help="rows per KID subset (at most half the held-out set)")
    p.add_argument("--seed", type=int, default=0, help="split, subsets, baselines and the main GeneFlow model")
    p.add_argument("--model-seeds", type=int, nargs="*", default=[1, 2],
                   help="further training seeds of GeneFlow (Euler 8, right and shuffled expression): the model's spread")
    p.add_argument("--skip", nargs="*", default=[], choices=["edm", "mse", "sweep"],
                   help="leave out the EDM / UNet-MSE baselines or the few-step sweep (e.g. for a learning curve)")
    p.add_argument("--tune-tiles", type=int, default=64,
                   help="validation tiles the EDM model's tune_sampler scores (8 evaluations per draw, 4 draws)")
    p.add_argument("--probe-train", type=int, default=2000,
                   help="training tiles (a random subset) whose Inception features fit the Inception fidelity probe")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 60 test tiles, a small crop")
    p.add_argument("--out", default="results/geneflow")
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.n_test, args.kid_subset, args.probe_train = 60, 60, 50, 200
        args.model_seeds = args.model_seeds[:1]
        args.xenium_crop, args.her2st_sections = [4000, 2000, 5500, 3500], ["C2", "C3"]
    from _cli import limit_threads

    limit_threads(args.threads)
    results = []
    for which in (["xenium", "her2st"] if args.dataset == "both" else [args.dataset]):
        task = (xenium_task if which == "xenium" else her2st_task)(args)
        res = run_task(task, args)
        results.append(res)
        header = format_header(res)
        table = format_table(res) + "\n\nGeneFlow (Euler 8) by training seed:\n\n" + format_seeds(res)
        print("\n" + header + "\n\n" + table + "\n", flush=True)
        res["header"], res["table"] = header, table
        out = Path(args.out)  # written after every data set
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
        Path(f"{out}.md").write_text("\n\n".join(r["header"] + "\n\n" + r["table"] for r in results) + "\n")
    return {"results": results}


if __name__ == "__main__":
    main()
