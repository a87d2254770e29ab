"""Multiplexed-image channel imputation benchmark on the real MIBI-TOF granuloma field.

Run ``python benchmarks/imaging.py --help``. One 1024 x 1024 field of view
(39 antibody channels after dropping the 8 elemental / background channels), a spatial
split into a 4 x 4 grid of blocks with a quarter held out (no training tile touches the test
blocks), one fixed set of held-out channels imputed from all the others. MCD is trained with
random channel masks (p = 0.9), so the held-out set is just one of the subsets it can
impute. Scores on the test region:

* per-channel Pearson over pixels at the model's resolution (4 x 4 block means) and over
  cells (per-cell means through the segmentation mask, cells whose centroid lies in the
  test region), against the most-correlated observed channel, ridge, kNN and kernel ridge
  regression (per pixel and per cell, trained on the training region / cells);
* calibration (MCD paper): Pearson between the generated and the true channel-channel
  correlation matrices (pairs involving an imputed channel), and the Spearman correlation
  between the local (per 64-pixel tile) Pearson and the mean sample variance;
* the predictive distribution per test pixel and held-out channel (normalised scale): MCD's
  mean and sample variance as a Gaussian against ridge with its out-of-fold residual
  variance (``bd.baselines.fit_predict_draws(kind="gaussian")``), both scored from 20 draws
  by ``bd.metrics.score_draws`` (CRPS, central-interval coverage), and the Spearman
  correlation between the mean absolute error and the mean predicted sd per (test tile,
  channel): positive when the spread flags where the model errs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biodiffuse.baselines import fit_predict_channels, fit_predict_draws
from biodiffuse.data import ChannelNormalizer, image_array, image_channels
from biodiffuse.data.tiles import crop_to_factor, downsample_mask, downsample_mean, spatial_split, upsample_to
from biodiffuse.diffusion import schedule_grid
from biodiffuse.metrics import gaussian_samples, pearson_per_channel, score_draws
from biodiffuse.models import MCD

__all__ = ["DEFAULT_HELD_OUT", "run", "format_distribution", "main"]

DEFAULT_HELD_OUT = ("CD3", "CD8", "CD20", "CD68", "Ki67", "PD-L1")
PIXEL_BASELINES = ("most_correlated", "ridge", "knn", "krr")


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(n, k), replace=False))


def _baselines(train: pd.DataFrame, test: pd.DataFrame, observed: list[str], held: list[str], max_train: int, seed: int) -> dict[str, tuple[pd.DataFrame, float]]:
    out = {}
    for method in PIXEL_BASELINES:
        sub = train.iloc[_subsample(len(train), max_train if method in ("krr", "knn") else 50_000, seed)]
        t0 = time.perf_counter()
        pred = fit_predict_channels(method, sub, test, observed, held, seed=seed)
        out[method] = (pred, time.perf_counter() - t0)
    return out


def _calibration(truth: np.ndarray, pred: np.ndarray, held_idx: np.ndarray) -> float:
    """Pearson between generated and true channel-channel correlations (pairs with an imputed channel)."""
    ct, cp = np.corrcoef(truth.T), np.corrcoef(pred.T)
    c = truth.shape[1]
    iu = np.triu_indices(c, 1)
    keep = np.isin(iu[0], held_idx) | np.isin(iu[1], held_idx)
    a, b = ct[iu][keep], cp[iu][keep]
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _test_tiles(test_small: np.ndarray, tile: int) -> list[tuple[slice, slice]]:
    """The (rows, columns) slices of the ``tile`` x ``tile`` grid cells lying entirely in the test region."""
    h, w = test_small.shape
    cells = [(slice(y0, y0 + tile), slice(x0, x0 + tile)) for y0 in range(0, h - tile + 1, tile) for x0 in range(0, w - tile + 1, tile)]
    return [(ys, xs) for ys, xs in cells if test_small[ys, xs].all()]


def _accuracy_uncertainty(truth: np.ndarray, mean: np.ndarray, var: np.ndarray, test_small: np.ndarray, held_idx: np.ndarray, tile: int) -> float:
    """Spearman over (test tile, held-out channel) of local Pearson vs mean sample variance."""
    from scipy.stats import spearmanr

    r, v = [], []
    for ys, xs in _test_tiles(test_small, tile):
        for j in held_idx:
            a, b = truth[j, ys, xs].ravel(), mean[j, ys, xs].ravel()
            if a.std() > 0 and b.std() > 0:
                r.append(np.corrcoef(a, b)[0, 1])
                v.append(var[j, ys, xs].mean())
    return float(spearmanr(r, v).statistic) if len(r) > 2 else float("nan")


def _tile_means(values: np.ndarray, test_small: np.ndarray, held_idx: np.ndarray, tile: int) -> np.ndarray:
    """(test tiles x held-out channels) means of ``values`` (C, H, W) over the tiles lying in the test region."""
    out = [values[held_idx, ys, xs].mean(axis=(1, 2)) for ys, xs in _test_tiles(test_small, tile)]
    return np.asarray(out).reshape(-1, len(held_idx))


def _error_uncertainty(truth: np.ndarray, mean: np.ndarray, var: np.ndarray, test_small: np.ndarray, held_idx: np.ndarray, tile: int) -> float:
    """Spearman over (test tile, held-out channel) of the mean absolute error vs the mean predicted sd."""
    from scipy.stats import spearmanr

    err = _tile_means(np.abs(truth - mean), test_small, held_idx, tile).ravel()
    sd = _tile_means(np.sqrt(np.maximum(var, 0.0)), test_small, held_idx, tile).ravel()
    return float(spearmanr(err, sd).statistic) if len(err) > 2 else float("nan")


def _distribution_rows(y: np.ndarray, draws: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Score the draws ``{name: (pixels, draws, channels)}`` of the pixels ``y`` (pixels x channels)."""
    rows = []
    for name, d in draws.items():
        s = score_draws(y, d, energy=False)
        rows.append(dict(method=name, crps=s["crps"], crps_fair=s["crps_fair"], r_p=s["r_p"], **{k: v for k, v in s.items() if k.startswith("coverage")}))
    return rows


def run(
    held_out: tuple[str, ...] = DEFAULT_HELD_OUT,
    max_epochs: int = 80,
    model_channels: int = 16,
    batch_size: int = 64,
    n_samples: int = 4,
    steps: tuple[int, ...] = (1, 18),
    baseline_max_train: int = 3000,
    seed: int = 0,
    path: str | None = None,
    tune_nfe: int | None = None,
    sampler: dict[str, Any] | None = None,
    solvers: tuple[str, ...] | None = None,
    recentre: bool = False,
) -> dict[str, Any]:
    """Train MCD on the training region, impute ``held_out`` channels, score everything on the test region.

    ``recentre``: also every multi-step sampler with each tile's draws centred on their one-step
    mean (``image_posterior(recentre=True)``; rows "recentred", no extra evaluation).

    ``tune_nfe``: also choose the sampler on the training run's validation tiles at this many network
    evaluations per draw (``MCD.tune_sampler``) and score the choice on the test region (rows "tuned").
    ``sampler``: ``MCD.set_sampler`` settings for the ``steps`` rows (default: the model's).
    ``solvers``: those of the tuning grid (default: :func:`~biodiffuse.diffusion.schedule_grid`'s).
    """
    from biodiffuse.datasets import mibi_granuloma

    sdata = mibi_granuloma(path)
    names = image_channels(sdata, "mibi")
    held = [h for h in held_out if h in names]
    if len(held) != len(held_out):
        raise ValueError(f"held-out channels not in the image: {sorted(set(held_out) - set(names))}")
    observed = [n for n in names if n not in held]
    held_idx = np.array([names.index(h) for h in held])
    tile_size, factor = 64, 4
    h, w = sdata.images["mibi"].shape[1:]
    _, test_mask = spatial_split(h, w, tile_size, test_fraction=0.25, n_blocks=4, seed=seed)

    MCD.setup_spatialdata(sdata, image_key="mibi", tile_size=tile_size, downsample=factor)
    model = MCD(sdata, model_channels=model_channels, heads=2, **(sampler or {}))
    fixed_sampler = model.sampler_settings  # of the ``steps`` rows (tune_sampler changes the model's)
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, batch_size=batch_size, holdout=test_mask, seed=seed, enable_progress_bar=False)
    fit_s = time.perf_counter() - t0
    posts, impute_s, nfe = {}, {}, {}

    def sample(label: str, st: int, rc: bool = False) -> None:
        t0 = time.perf_counter()
        posts[label] = model.image_posterior(sdata, missing=held, n_samples=n_samples, steps=st, seed=seed, recentre=rc)
        impute_s[label], nfe[label] = time.perf_counter() - t0, model.network_evaluations(steps=st)

    for st in steps:
        sample(f"{st} step{'s' if st > 1 else ''}", st)
        if recentre and st > 1:
            sample(f"{st} steps, recentred", st, True)
    post = posts[f"{steps[-1]} step{'s' if steps[-1] > 1 else ''}"]
    tuning = None
    if tune_nfe is not None:
        t0 = time.perf_counter()
        grid = None if solvers is None else schedule_grid(tune_nfe, solvers=solvers)
        tuning = model.tune_sampler(nfe=tune_nfe, n_samples=n_samples, seed=seed, candidates=grid)
        tune_s = time.perf_counter() - t0
        best = tuning.iloc[0]
        sample(f"tuned: {best['solver']} {int(best['steps'])} step{'s' if best['steps'] > 1 else ''} from {best['sigma_max']:g}", int(best["steps"]))

    # truth at model resolution, normalised with the model's (training-region) normaliser
    full = image_array(sdata, "mibi", names)
    small = downsample_mean(crop_to_factor(full, factor), factor)
    test_small = downsample_mask(test_mask, factor) & ~downsample_mask(~test_mask, factor)
    train_small = downsample_mask(~test_mask, factor) & ~downsample_mask(test_mask, factor)
    norm = ChannelNormalizer.from_dict(model.registry["normalizer"])
    c = len(names)
    z_true = norm.transform(small.reshape(c, -1).T).T.reshape(small.shape)
    pix_test = z_true[:, test_small].T
    pix_train = z_true[:, train_small].T
    df_train = pd.DataFrame(pix_train, columns=names)
    df_test = pd.DataFrame(pix_test, columns=names)

    rows: list[dict[str, Any]] = []
    per_channel: dict[str, list[float]] = {}
    for st, pst in posts.items():
        name = f"MCD ({st}, {n_samples} samples)"
        mcd_pix = pst["mean_normalized"][:, test_small].T
        r = pearson_per_channel(pix_test[:, held_idx], mcd_pix[:, held_idx])
        per_channel[name] = r.tolist()
        rows.append(dict(level="pixel", method=name, mean_r=float(np.nanmean(r)), fit_s=fit_s, impute_s=impute_s[st], nfe=nfe[st]))
    for method, (pred, el) in _baselines(df_train, df_test, observed, held, baseline_max_train, seed).items():
        r = pearson_per_channel(pix_test[:, held_idx], pred[held].to_numpy())
        per_channel[method] = r.tolist()
        rows.append(dict(level="pixel", method=method, mean_r=float(np.nanmean(r)), fit_s=el, impute_s=np.nan))

    # per cell: cells whose centroid lies in the test region
    from biodiffuse.io.channels import aggregate_by_labels

    table = sdata.tables["table"]
    labels = np.asarray(sdata.labels["mibi_labels"].data)
    xy = np.asarray(table.obsm["spatial"])
    in_test = test_mask[np.clip(xy[:, 1].round().astype(int), 0, h - 1), np.clip(xy[:, 0].round().astype(int), 0, w - 1)]
    cells_true = pd.DataFrame(np.asarray(table.X), index=table.obs["cell_id"].to_numpy(), columns=list(table.var_names))
    for st, pst in posts.items():
        mean_full = upsample_to(pst["mean"], factor, h, w)
        cells_mcd = aggregate_by_labels(mean_full, labels, names).reindex(cells_true.index)
        r = pearson_per_channel(cells_true.to_numpy()[in_test][:, held_idx], cells_mcd.to_numpy()[in_test][:, held_idx])
        name = f"MCD ({st}) (cells)"
        per_channel[name] = r.tolist()
        rows.append(dict(level="cell", method=name.replace(" (cells)", ""), mean_r=float(np.nanmean(r)), fit_s=np.nan, impute_s=np.nan))
    cnorm = ChannelNormalizer().fit(cells_true.to_numpy()[~in_test])
    ct = pd.DataFrame(cnorm.transform(cells_true.to_numpy()), index=cells_true.index, columns=names)
    for method in PIXEL_BASELINES:
        pred = fit_predict_channels(method, ct[~in_test], ct[in_test], observed, held, seed=seed)
        full_pred = np.zeros((pred.shape[0], c))
        full_pred[:, held_idx] = pred[held].to_numpy()
        orig = cnorm.inverse_transform(full_pred)[:, held_idx]
        r = pearson_per_channel(cells_true.to_numpy()[in_test][:, held_idx], orig)
        per_channel[f"{method} (cells)"] = r.tolist()
        rows.append(dict(level="cell", method=method, mean_r=float(np.nanmean(r)), fit_s=np.nan, impute_s=np.nan))

    mcd_pix = post["mean_normalized"][:, test_small].T
    calib = _calibration(pix_test, np.where(np.isin(np.arange(c), held_idx)[None, :], mcd_pix, pix_test), held_idx)
    acc_unc = _accuracy_uncertainty(z_true, post["mean_normalized"], post["variance_normalized"], test_small, held_idx, tile_size // factor)
    err_unc = {st: _error_uncertainty(z_true, p["mean_normalized"], p["variance_normalized"], test_small, held_idx, tile_size // factor)
               for st, p in posts.items()}
    # the predictive distribution per test pixel: MCD's mean / sample sd against ridge with its residual sd
    y_held = pix_test[:, held_idx]
    draws = {f"MCD ({st}, {n_samples} samples) as a Gaussian": gaussian_samples(
        p["mean_normalized"][held_idx][:, test_small].T, np.sqrt(np.maximum(p["variance_normalized"][held_idx][:, test_small].T, 0.0)),
        20, seed=seed) for st, p in posts.items()}
    sub = _subsample(len(pix_train), 50_000, seed)
    obs_idx = np.setdiff1d(np.arange(c), held_idx)
    draws["ridge + gaussian"] = fit_predict_draws("ridge", pix_train[sub][:, obs_idx], pix_train[sub][:, held_idx], pix_test[:, obs_idx],
                                                  kind="gaussian", n_samples=20, seed=seed)["draws"]
    distribution = _distribution_rows(y_held, draws)
    return {
        "dataset": "mibi_tb_granuloma_point14 (1 FOV, 1024x1024, 39 antibody channels)",
        "split": f"4x4 blocks, 4 test blocks (seed {seed}); {int(test_small.sum())} test / {int(train_small.sum())} train pixels at 1/{factor} resolution; {int(in_test.sum())} test / {int((~in_test).sum())} train cells",
        "held_out": held, "rows": rows, "per_channel_r": per_channel,
        "calibration_corr_of_corr": calib, "accuracy_uncertainty_spearman": acc_unc,
        "error_uncertainty_spearman": {str(k): v for k, v in err_unc.items()}, "distribution": distribution,
        "epochs": len(model.history), "best_val_loss": float(model.history["val_loss"].min()) if "val_loss" in model.history else None,
        "settings": dict(max_epochs=max_epochs, model_channels=model_channels, batch_size=batch_size, n_samples=n_samples, steps=steps,
                         baseline_max_train=baseline_max_train, tune_nfe=tune_nfe, sampler=fixed_sampler if sampler else None,
                         recentre=recentre),
        "nfe_per_draw": nfe,
        "sampler_tuning": None if tuning is None else {"seconds": tune_s, "table": json.loads(tuning.to_json(orient="records"))},
    }


def format_table(result: dict[str, Any]) -> str:
    lines = ["| level | method | mean r over held-out channels | " + " | ".join(result["held_out"]) + " | fit s | impute s |",
             "|---|---|---|" + "---|" * len(result["held_out"]) + "---|---|"]
    keys = iter(result["per_channel_r"].keys())
    for row in result["rows"]:
        rs = result["per_channel_r"][next(keys)]
        cells = " | ".join(f"{v:.3f}" for v in rs)
        fit = "-" if not np.isfinite(row["fit_s"]) else f"{row['fit_s']:.0f}"
        imp = "-" if not np.isfinite(row["impute_s"]) else f"{row['impute_s']:.0f}"
        lines.append(f"| {row['level']} | {row['method']} | {row['mean_r']:.3f} | {cells} | {fit} | {imp} |")
    return "\n".join(lines)


def format_distribution(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the per-pixel predictive distributions (held-out channels, test region)."""
    lines = ["| predictive distribution (Gaussian, 20 draws) | CRPS | CRPS (fair) | r_p | 50 / 80 / 90 % coverage |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['crps']:.4f} | {r['crps_fair']:.4f} | {r['r_p']:.3f} | "
                     f"{r['coverage50']:.2f} / {r['coverage80']:.2f} / {r['coverage90']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--held-out", nargs="+", default=list(DEFAULT_HELD_OUT))
    p.add_argument("--max-epochs", type=int, default=80)
    p.add_argument("--model-channels", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 18])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tune-nfe", type=int, default=None,
                   help="also choose the sampler on the validation tiles at this many network evaluations per draw")
    p.add_argument("--sampler", default=None, metavar="SOLVER,SIGMA_MAX,SIGMA_MIN,RHO",
                   help="the sampler of the --steps rows, e.g. euler,80,0.002,3 (default: the model's)")
    p.add_argument("--solvers", nargs="+", default=None, choices=["heun", "euler", "dpm2m"],
                   help="--tune-nfe: the solvers of the tuning grid (default: schedule_grid's)")
    p.add_argument("--recentre", action="store_true",
                   help="also score each multi-step sampler with every tile's draws centred on their one-step mean")
    p.add_argument("--out", default="results/imaging_mibi")
    args = p.parse_args(argv)
    from _cli import limit_threads, sampler_arg  # sibling module of the drivers

    limit_threads(args.threads)
    res = run(tuple(args.held_out), args.max_epochs, args.model_channels, n_samples=args.n_samples, steps=tuple(args.steps), seed=args.seed,
              tune_nfe=args.tune_nfe, sampler=sampler_arg(args.sampler), solvers=None if args.solvers is None else tuple(args.solvers),
              recentre=args.recentre)
    table = format_table(res)
    extra = (f"calibration (corr of channel-channel correlations, pairs with an imputed channel): {res['calibration_corr_of_corr']:.3f}; "
             f"accuracy-uncertainty Spearman (local r vs sample variance, per test tile x channel): {res['accuracy_uncertainty_spearman']:.3f}")
    extra += "; error-uncertainty Spearman (mean |error| vs mean sd, per test tile x channel): " + ", ".join(
        f"{st} {v:.3f}" for st, v in res["error_uncertainty_spearman"].items())
    extra += "\n\nnetwork evaluations per draw: " + ", ".join(f"{k} {v}" for k, v in res["nfe_per_draw"].items())
    if res["sampler_tuning"] is not None:
        tuned = pd.DataFrame(res["sampler_tuning"]["table"])
        extra += (f"\n\nsampler chosen on the validation tiles ({res['sampler_tuning']['seconds']:.0f} s; best 8 of {len(tuned)}):\n\n"
                  + tuned.head(8).to_markdown(index=False, floatfmt=".4f"))
    extra += "\n\n" + format_distribution(res["distribution"])
    print(res["dataset"] + "\n" + res["split"] + "\n" + table + "\n" + extra)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1, default=float))
    Path(f"{out}.md").write_text(res["dataset"] + "\n\n" + res["split"] + "\n\n" + table + "\n\n" + extra + "\n")
    return res


if __name__ == "__main__":
    main()
