"""Any-subset protein imputation benchmark on real ADT-only CITE-seq (dsb PBMC, no RNA).

Run ``python benchmarks/channels.py --help``. 2,872 cells x 87 ADTs (isotype
controls dropped), one split over cells (80 / 20, fixed seed). Proteins are normalised with a
Yeo-Johnson + percentile normaliser fitted on the training cells; every score is the
per-protein Pearson over the test cells in that normalised space.

* (a) one fixed held-out set of proteins, imputed from all the others;
* (b) random unseen masks: several random sets of held-out proteins (10 % of the panel each),
  each imputed from the rest.

MCD is trained once, with random channel masks (p = 0.9); the baselines (most-correlated
observed protein, ridge, kNN, kernel ridge) are refitted for every held-out set, with
hyper-parameters chosen by cross-validation on the training cells.

With ``n_samples >= 2`` the held-out proteins are also scored as predictive distributions
(``bd.metrics.score_draws``: CRPS, energy score across the held-out proteins, 50 / 80 / 90 %
coverage, normalised scale): MCD's draws against ridge + Gaussian, ridge + residuals and kNN
neighbours (``bd.baselines.fit_predict_draws``), refitted per held-out set like the points.
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
from biodiffuse.data import ChannelNormalizer, is_isotype_control
from biodiffuse.metrics import pearson_per_channel, score_draws
from biodiffuse.models import MCD

__all__ = ["FIXED_HELD_OUT", "run", "main"]

FIXED_HELD_OUT = ("CD3_PROT", "CD4_PROT", "CD8_PROT", "CD14_PROT", "CD16_PROT", "CD19_PROT", "CD56_PROT", "CD45RA_PROT", "HLA-DR_PROT", "CD25_PROT")
BASELINES = ("most_correlated", "ridge", "knn", "krr")
BASELINE_DRAWS = (("ridge", "gaussian"), ("ridge", "residuals"), ("knn", "neighbours"))
LEVELS = (0.5, 0.8, 0.9)


def _distribution(truth: np.ndarray, draws: np.ndarray) -> dict[str, float]:
    s = score_draws(truth, draws, levels=LEVELS)
    return {k: s[k] for k in ("crps", "energy_score", "crps_fair", "energy_score_fair", *(f"coverage{round(100 * q)}" for q in LEVELS))}


def run(n_random: int = 3, max_epochs: int | None = None, steps: tuple[int, ...] = (1, 18), n_samples: int = 10, seed: int = 0,
        path: str | None = None, baselines: tuple[str, ...] = BASELINES, recentre: bool = False,
        sampler: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fixed and random held-out sets; ``max_epochs`` None: MCD's default training length;
    ``baselines``: the point baselines to run (their draws: ridge and kNN, when listed);
    ``recentre``: also every multi-step sampler with its draws centred on the one-step mean
    (rows "recentred", at no extra evaluation); ``sampler``: MCD's solver and schedule (the
    constructor's keywords; default: the model's)."""
    from biodiffuse.datasets import dsb_adt_pbmc

    adata = dsb_adt_pbmc(path)
    keep = [n for n in map(str, adata.var_names) if not is_isotype_control(n.removesuffix("_PROT"))]
    adata = adata[:, keep].copy()
    names = keep
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    norm = ChannelNormalizer().fit(x[tr])
    z = norm.transform(x)
    train_df, test_df = pd.DataFrame(z[tr], columns=names), pd.DataFrame(z[te], columns=names)

    rng = np.random.default_rng(seed + 1)
    missing_sets = {"fixed": list(FIXED_HELD_OUT)}
    for k in range(n_random):
        missing_sets[f"random_{k}"] = sorted(rng.choice(names, size=max(1, round(0.1 * len(names))), replace=False).tolist())

    train_ad = adata[tr].copy()
    MCD.setup_anndata(train_ad)
    model = MCD(train_ad, **(sampler or {}))
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, enable_progress_bar=False, seed=seed)
    fit_s = time.perf_counter() - t0
    query = adata[te].copy()

    rows = []
    for set_name, held in missing_sets.items():
        observed = [n for n in names if n not in held]
        idx = [names.index(h) for h in held]
        truth = z[te][:, idx]
        for st, rc in [(st, rc) for st in steps for rc in ((False, True) if recentre and st > 1 else (False,))]:
            t0 = time.perf_counter()
            post = model.posterior(query, observed=observed, n_samples=n_samples, steps=st, seed=seed, recentre=rc,
                                   return_draws=n_samples >= 2)
            el = time.perf_counter() - t0
            r = pearson_per_channel(truth, post["mean_normalized"][:, idx])
            dist = _distribution(truth, post["draws_normalized"][:, :, idx]) if n_samples >= 2 else {}
            name = f"MCD ({st} step{'s' if st > 1 else ''}{', recentred' if rc else ''})"
            rows.append(dict(held_out=set_name, method=name, mean_r=float(np.nanmean(r)), median_r=float(np.nanmedian(r)),
                             fit_s=fit_s, predict_s=el, nfe_per_cell=n_samples * model.network_evaluations(steps=st),
                             per_channel=dict(zip(held, r.tolist())), **dist))
        for method in baselines:
            t0 = time.perf_counter()
            pred = fit_predict_channels(method, train_df, test_df, observed, held, seed=seed)
            el = time.perf_counter() - t0
            r = pearson_per_channel(truth, pred[held].to_numpy())
            rows.append(dict(held_out=set_name, method=method, mean_r=float(np.nanmean(r)), median_r=float(np.nanmedian(r)), fit_s=el, predict_s=np.nan, per_channel=dict(zip(held, r.tolist()))))
        for method, kind in [(m, k) for m, k in BASELINE_DRAWS if m in baselines] if n_samples >= 2 else ():
            t0 = time.perf_counter()
            out = fit_predict_draws(method, train_df[observed].to_numpy(), train_df[held].to_numpy(), test_df[observed].to_numpy(),
                                    kind=kind, n_samples=n_samples, seed=seed)
            el = time.perf_counter() - t0
            r = pearson_per_channel(truth, out["mean"])
            rows.append(dict(held_out=set_name, method=f"{method} + {kind}", mean_r=float(np.nanmean(r)), median_r=float(np.nanmedian(r)), fit_s=el,
                             predict_s=np.nan, per_channel=dict(zip(held, r.tolist())), **_distribution(truth, out["draws"])))
        print(pd.DataFrame([r for r in rows if r["held_out"] == set_name])[["held_out", "method", "mean_r", "median_r"]].to_string(index=False), flush=True)
    return {
        "dataset": f"dsb_adt_pbmc_cells: {adata.n_obs} cells x {len(names)} ADTs (isotype controls dropped)",
        "split": f"one 80/20 split over cells (seed {seed}): {len(tr)} train / {len(te)} test",
        "missing_sets": missing_sets, "rows": rows, "epochs": len(model.history),
        "best_val_loss": float(model.history["val_loss"].min()), "n_samples": n_samples, "sampler": model.sampler_settings,
    }


def run_union(max_epochs: int = 150, seed: int = 0, n_held: int = 6, steps: int = 1) -> dict[str, Any]:
    """Union of two partly overlapping panels (dsb 83 + ECCITE 45 ADTs, 33 shared) against the
    intersection only: both models are scored on the same held-out dsb cells, imputing
    ``n_held`` shared proteins from the other shared proteins."""
    from anndata import AnnData

    from biodiffuse.data import harmonize_panels, union_panel_matrix
    from biodiffuse.datasets import dsb_adt_pbmc, eccite_pbmc

    dsb, ecc = dsb_adt_pbmc(), eccite_pbmc()
    frames = {
        "dsb": pd.DataFrame(np.asarray(dsb.X.toarray() if hasattr(dsb.X, "toarray") else dsb.X, dtype=float), index=dsb.obs_names, columns=list(map(str, dsb.var_names))),
        "eccite": ecc.obsm["protein_expression"].astype(float),
    }
    h = harmonize_panels(frames, on_duplicate="mean", drop_isotypes=True)
    values, source = union_panel_matrix(frames, on_duplicate="mean", drop_isotypes=True)
    shared = [c for c in values.columns if c in set(h["intersection"])]
    is_dsb = (source == "dsb").to_numpy()
    dsb_rows = np.flatnonzero(is_dsb)
    perm = np.random.default_rng(seed).permutation(dsb_rows)
    test_rows = np.sort(perm[: len(perm) // 5])
    train_rows = np.setdiff1d(np.arange(len(values)), test_rows)
    held = sorted(np.random.default_rng(seed + 1).choice(shared, size=n_held, replace=False).tolist())
    observed = [c for c in shared if c not in held]
    out = {"shared": len(shared), "union": values.shape[1], "held_out": held, "n_train_cells": {"union": int(len(train_rows)), "intersection_dsb_only": int(is_dsb[train_rows].sum())}, "rows": []}
    for setting, cols, rows in (
        ("union (dsb + eccite, all channels)", list(values.columns), train_rows),
        ("intersection (shared channels, dsb + eccite cells)", shared, train_rows),
        ("dsb only (shared channels)", shared, train_rows[is_dsb[train_rows]]),
    ):
        ad_train = AnnData(values.iloc[rows][cols].to_numpy(np.float32))
        ad_train.var_names = cols
        MCD.setup_anndata(ad_train)
        model = MCD(ad_train)
        t0 = time.perf_counter()
        model.train(max_epochs=max_epochs, enable_progress_bar=False, seed=seed)
        fit_s = time.perf_counter() - t0
        query = AnnData(values.iloc[test_rows][cols].to_numpy(np.float32))
        query.var_names = cols
        post = model.posterior(query, observed=observed, n_samples=1 if steps == 1 else 10, steps=steps, seed=seed)
        norm = ChannelNormalizer.from_dict(model.registry["normalizer"])
        idx = [cols.index(c) for c in held]
        truth = norm.transform(values.iloc[test_rows][cols].to_numpy())[:, idx]
        r = pearson_per_channel(truth, post["mean_normalized"][:, idx])
        out["rows"].append(dict(setting=setting, channels=len(cols), train_cells=len(rows), mean_r=float(np.nanmean(r)), fit_s=fit_s, per_channel=dict(zip(held, r.tolist()))))
        print(setting, round(float(np.nanmean(r)), 3), flush=True)
    return out


def run_channel_specific(n_targets: int = 2, max_epochs: int = 150, seed: int = 0) -> dict[str, Any]:
    """Channel-specific MCD (one model per target, always hidden in training; the paper's
    "single channel" setting) against one any-subset MCD, for the first ``n_targets`` proteins
    of :data:`FIXED_HELD_OUT`, each imputed from all other proteins (1 step)."""
    from biodiffuse.datasets import dsb_adt_pbmc

    adata = dsb_adt_pbmc()
    names = [n for n in map(str, adata.var_names) if not is_isotype_control(n.removesuffix("_PROT"))]
    adata = adata[:, names].copy()
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    train_ad, query = adata[tr].copy(), adata[te].copy()
    MCD.setup_anndata(train_ad)
    rows = []
    any_subset = MCD(train_ad)
    any_subset.train(max_epochs=max_epochs, enable_progress_bar=False, seed=seed)
    counts = np.asarray(query.X.toarray() if hasattr(query.X, "toarray") else query.X, dtype=float)
    for target in FIXED_HELD_OUT[:n_targets]:
        spec = MCD(train_ad, target_channels=[target])
        t0 = time.perf_counter()
        spec.train(max_epochs=max_epochs, enable_progress_bar=False, seed=seed)
        fit_s = time.perf_counter() - t0
        j = names.index(target)
        for label, model in (("any-subset MCD", any_subset), ("channel-specific MCD", spec)):
            post = model.posterior(query, observed=[n for n in names if n != target], n_samples=1, steps=1, seed=seed)
            truth = ChannelNormalizer.from_dict(model.registry["normalizer"]).transform(counts)[:, j]
            r = float(np.corrcoef(truth, post["mean_normalized"][:, j])[0, 1])
            rows.append(dict(target=target, model=label, r=r, fit_s=fit_s if label.startswith("channel") else np.nan))
            print(target, label, round(r, 3), flush=True)
    return {"rows": rows, "max_epochs": max_epochs, "split": f"80/20 over cells, seed {seed}"}


def format_table(res: dict[str, Any], value: str = "mean_r", fmt: str = "{:.3f}") -> str:
    """Markdown: one row per method, one column per held-out set, ``value`` in the cells."""
    df = pd.DataFrame(res["rows"])
    if value not in df:
        return ""
    df = df[df[value].notna()]
    piv = df.pivot_table(index="method", columns="held_out", values=value, sort=False)
    lines = ["| method | " + " | ".join(piv.columns) + " |", "|---|" + "---|" * len(piv.columns)]
    for m, row in piv.iterrows():
        lines.append(f"| {m} | " + " | ".join(fmt.format(v) for v in row) + " |")
    return "\n".join(lines)


def format_distribution(res: dict[str, Any]) -> str:
    """Markdown: CRPS, energy score and 90 % coverage per held-out set (methods that give draws)."""
    parts = [(f"{title} ({res['n_samples']} draws per cell, normalised scale):", format_table(res, col, fmt))
             for title, col, fmt in (("CRPS", "crps", "{:.4f}"), ("energy score", "energy_score", "{:.3f}"),
                                     ("CRPS, fair (of the distribution the draws come from)", "crps_fair", "{:.4f}"),
                                     ("energy score, fair", "energy_score_fair", "{:.3f}"), ("90 % interval coverage", "coverage90", "{:.2f}"))]
    return "\n\n".join(f"{t}\n\n{tab}" for t, tab in parts if tab)


def _write(out: str, res: dict[str, Any], text: str) -> None:
    """Print ``text`` and write ``{out}.json`` (the full result) and ``{out}.md`` (``text``)."""
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1, default=float))
    Path(f"{out}.md").write_text(text + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-random", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=None, help="MCD epochs (default: the model's default training length)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 18])
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--recentre", action="store_true", help="also score each multi-step sampler with its draws centred on the one-step mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, metavar="SOLVER,SIGMA_MAX,SIGMA_MIN,RHO",
                   help="MCD's sampler, e.g. dpm2m,10,0.05,7 (default: the model's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/channels_dsb")
    p.add_argument("--union", action="store_true", help="run the union-of-panels comparison instead")
    p.add_argument("--channel-specific", type=int, default=0, metavar="N", help="instead: channel-specific vs any-subset MCD on the first N fixed targets")
    a = p.parse_args(argv)
    from _cli import limit_threads, sampler_arg  # sibling module of the drivers

    limit_threads(a.threads)
    if a.channel_specific:
        res = run_channel_specific(a.channel_specific, max_epochs=a.max_epochs, seed=a.seed)
        table = "| target | any-subset MCD r | channel-specific MCD r |\n|---|---|---|\n" + "\n".join(
            f"| {t} | {next(r['r'] for r in res['rows'] if r['target'] == t and r['model'].startswith('any')):.3f} | "
            f"{next(r['r'] for r in res['rows'] if r['target'] == t and r['model'].startswith('channel')):.3f} |"
            for t in dict.fromkeys(r["target"] for r in res["rows"])
        )
        _write(f"{a.out}_specific", res, table)
        return res
    if a.union:
        res = run_union(max_epochs=a.max_epochs, seed=a.seed)
        lines = ["| training setting | channels | training cells | mean r on held-out dsb cells | fit s |", "|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['channels']} | {r['train_cells']} | {r['mean_r']:.3f} | {r['fit_s']:.0f} |" for r in res["rows"]]
        table = f"held-out shared proteins: {', '.join(res['held_out'])}\n\n" + "\n".join(lines)
        _write(f"{a.out}_union", res, table)
        return res
    res = run(a.n_random, a.max_epochs, tuple(a.steps), a.n_samples, a.seed, recentre=a.recentre, sampler=sampler_arg(a.sampler))
    _write(a.out, res, res["dataset"] + "\n\n" + res["split"] + f"; MCD {res['epochs']} epochs, sampler {res['sampler']}\n\n" + format_table(res)
           + "\n\n" + format_distribution(res))
    return res


if __name__ == "__main__":
    main()
