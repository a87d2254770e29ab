"""Spatial gene prediction benchmarks (SpaDiT issue).

1. **Reference mode** on osmFISH + Allen VISp (33 shared genes): K-fold over genes. In fold k
   the spatial object handed to a method holds only the other genes (the held-out genes'
   spatial values never reach it); every gene is predicted exactly once, from a model that
   never saw its spatial values. Truth and predictions are log1p(counts / library x 1e4) with
   the library summed over the fold's known genes.
2. **Within-panel** on the 915-gene imaging data (``--starmap``): a cell split; models train on
   the training cells (all genes) and predict held-out genes for test cells whose object
   lacks them. SpaDiT (no reference) against kNN regression and MCD's any-subset imputation.
3. **Predictive distributions** (``--distribution``, issue 15): the reference-mode folds,
   SpaDiT's draws against kNN's (neighbours as samples; kNN mean + leave-one-out Gaussian
   residual), scored by CRPS, energy score and interval coverage (:func:`kfold_distribution`).

``python benchmarks/spatial_genes.py --threads 1 --out results/spatial_genes``
``python benchmarks/spatial_genes.py --distribution --threads 2 --out results/spatial_distribution``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.model_selection import KFold

from _cli import limit_threads, sampler_arg

from biodiffuse.baselines import EXTERNAL_SPATIAL_BASELINES, SPATIAL_BASELINES
from biodiffuse.data import log_normalize
from biodiffuse.metrics import accuracy_score, spatial_gene_metrics

__all__ = ["fit_predict_spadit", "kfold_over_genes", "kfold_distribution", "held_out_truth", "summarize",
           "summarize_distribution", "within_panel"]

Method = Callable[..., pd.DataFrame]


def fit_predict_spadit(
    sp: AnnData,
    sc: AnnData,
    test_genes: Sequence[str],
    *,
    seed: int = 0,
    max_epochs: int | None = None,
    steps: int = 1,
    n_samples: int = 16,
    **model_kwargs,
) -> pd.DataFrame:
    """SpaDiT with the baselines' interface (``sp`` holds only the known genes).

    The prediction is the mean of ``n_samples`` one-step outputs (``steps=1``): the model's
    conditional-mean estimate, the better point prediction for PCC (see
    :meth:`~biodiffuse.models.SpaDiT.predict`)."""
    model = _fit_spadit(sp, sc, test_genes, seed=seed, max_epochs=max_epochs, **model_kwargs)
    return model.predict(genes=list(map(str, test_genes)), n_samples=n_samples, steps=steps, seed=seed)


def _fit_spadit(sp: AnnData, sc: AnnData, test_genes: Sequence[str], *, seed: int, max_epochs: int | None, **model_kwargs):
    """A SpaDiT trained on the reference for ``test_genes``, set up on a copy of ``sp`` (which
    must hold only the known genes)."""
    from biodiffuse.models import SpaDiT

    test_genes = list(map(str, test_genes))
    leak = sorted(set(test_genes) & set(map(str, sp.var_names)))
    if leak:
        raise ValueError(f"test genes are in the spatial object (leak): {leak[:5]}.")
    sp = sp.copy()
    SpaDiT.setup_anndata(sp, reference=sc)
    model = SpaDiT(sp, reference=sc, target_genes=test_genes, seed=seed, **model_kwargs)
    model.train(max_epochs=max_epochs, seed=seed, enable_progress_bar=False)
    return model


def kfold_distribution(
    sp: AnnData,
    sc: AnnData,
    *,
    n_folds: int = 5,
    max_folds: int | None = None,
    seed: int = 0,
    steps: Sequence[int] = (1, 18),
    samplers: Sequence[dict[str, Any]] = (),
    sampler_steps: Sequence[int] = (5,),
    tune_nfe: int | None = None,
    solvers: Sequence[str] | None = None,
    recentre: bool = False,
    n_samples: int = 10,
    k: int = 50,
    max_epochs: int | None = None,
    save: Path | None = None,
    resume: pd.DataFrame | None = None,
    **spadit_kwargs,
) -> pd.DataFrame:
    """Predictive distributions of the held-out genes, K-fold over genes as :func:`kfold_over_genes`.

    In each fold: SpaDiT's ``n_samples`` draws per cell at each of ``steps`` (the model's
    sampler), then under each of ``samplers`` (``set_sampler`` settings) at each of
    ``sampler_steps``, then (``tune_nfe``) under the schedule ``SpaDiT.tune_sampler`` chooses at
    that many evaluations on the training run's validation reference cells (``solvers``: those
    of its grid, default :func:`~biodiffuse.diffusion.schedule_grid`'s), with ``recentre`` every
    multi-step run again with its draws centred on the one-step mean (``recentre=True``; rows
    "recentred", one more evaluation per draw), and kNN's draws
    (``bd.baselines.fit_predict_knn_draws``: the ``k`` neighbours' values as samples, and the
    kNN mean with its leave-one-out Gaussian residual), all scored on the fold's genes by
    ``bd.metrics.score_draws`` (CRPS, energy score across the fold's genes, r_p of the draws'
    mean, 50 / 80 / 90 % coverage). One row per (fold, method), with ``n_genes``, the fit and
    sampling seconds and SpaDiT's network evaluations per draw. ``save``: a CSV path rewritten
    after every fold (an interrupted run keeps the folds it finished); ``resume``: the rows such a
    run saved (same data and settings), whose folds are kept and not run again.
    """
    from biodiffuse.baselines import fit_predict_knn_draws
    from biodiffuse.metrics import score_draws

    rows = [] if resume is None else resume.to_dict("records")
    done = set() if resume is None else set(resume["fold"].astype(int))
    for fold, (known, test) in enumerate(_gene_folds(sp, sc, n_folds, seed)):
        if max_folds is not None and fold >= max_folds:
            break
        if fold in done:
            continue
        sp_known = sp[:, known].copy()
        truth = held_out_truth(sp, known, test).to_numpy()
        base = dict(fold=fold, n_genes=len(test))

        def score(method: str, draws: np.ndarray, **extra) -> None:
            rows.append({**base, "method": method, **score_draws(truth, draws), **extra})

        for kind in ("neighbours", "gaussian"):
            t0 = time.perf_counter()
            out = fit_predict_knn_draws(sp_known, sc, test, kind=kind, n_samples=n_samples, seed=seed, k=k)
            score(f"kNN + {kind}", out["draws"], seconds=time.perf_counter() - t0)
        t0 = time.perf_counter()
        model = _fit_spadit(sp_known, sc, test, seed=seed, max_epochs=max_epochs, **spadit_kwargs)
        fit_s = time.perf_counter() - t0
        runs = [(f"SpaDiT ({st} step{'s' if st > 1 else ''})", None, st) for st in steps]
        runs += [(f"SpaDiT ({s_['solver']} {st}, sigma {s_['sigma_max']:g}, rho {s_['rho']:g})", s_, st)
                 for s_ in samplers for st in sampler_steps]
        default = model.sampler_settings
        tuned = {}
        if tune_nfe:
            t0 = time.perf_counter()
            from biodiffuse.diffusion import schedule_grid

            grid = None if solvers is None else schedule_grid(int(tune_nfe), solvers=tuple(solvers))
            best = model.tune_sampler(nfe=int(tune_nfe), seed=seed, candidates=grid).iloc[0]
            model.set_sampler(**default)
            tuned = {k: best[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}
            runs.append((f"SpaDiT (tuned, {int(tune_nfe)} evaluations)", tuned, int(best["steps"])))
            tuned = {"tuned_" + k: v for k, v in {**tuned, "steps": int(best["steps"]),
                                                   "seconds": time.perf_counter() - t0}.items()}
        runs = [(lab[:-1] + ", recentred)" if rc else lab, se, st, rc) for lab, se, st in runs
                for rc in ((False, True) if recentre and int(st) > 1 else (False,))]
        for label, settings, st, rc in runs:
            model.set_sampler(**(settings or default))
            t0 = time.perf_counter()
            post = model.posterior(genes=test, n_samples=n_samples, steps=int(st), seed=seed, recentre=rc, return_draws=True)
            order = [list(post["genes"]).index(g) for g in test]
            score(label, post["draws"][:, :, order], fit_s=fit_s, seconds=time.perf_counter() - t0,
                  nfe=model.network_evaluations(steps=int(st)), epochs=len(model.history),
                  **(tuned if label.startswith("SpaDiT (tuned") else {}))
        if save is not None:
            pd.DataFrame(rows).to_csv(save, index=False)
    return pd.DataFrame(rows)


_RUN_SETTINGS = ("folds", "steps", "samplers", "sampler_steps", "tune_nfe", "recentre", "n_samples", "max_epochs", "spadit")
#: Settings added after runs were saved without them: what those runs used.
_NEWER_SETTINGS = {"samplers": [], "sampler_steps": [5], "tune_nfe": None, "recentre": False}


def _resumable(out: Path, args: argparse.Namespace) -> pd.DataFrame | None:
    """The per-fold rows an earlier ``--distribution`` run saved in ``out``, if its settings match."""
    csv, meta = out / "distribution_per_fold.csv", out / "distribution.json"
    if not csv.exists() or not meta.exists():
        return None
    before = json.loads(meta.read_text())["settings"]
    changed = [k for k in _RUN_SETTINGS if before.get(k, _NEWER_SETTINGS.get(k)) != getattr(args, k, _NEWER_SETTINGS.get(k))]
    if changed:
        raise ValueError(f"--resume: the run saved in {out} used other settings ({', '.join(changed)}); use a new --out.")
    return pd.read_csv(csv)


def summarize_distribution(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Per method: CRPS, r_p and coverage averaged over genes (folds weighted by their genes),
    the energy score averaged over folds, the folds, and the summed fit and sampling seconds."""
    rows = {}
    for method, g in per_fold.groupby("method", sort=False):
        w = (g["n_genes"] / g["n_genes"].sum()).to_numpy()
        row = {c: float(g[c].to_numpy() @ w) for c in g.columns if c in ("crps", "crps_fair", "r_p") or c.startswith("coverage")}
        row["energy_score"] = float(g["energy_score"].mean())
        if "energy_score_fair" in g:
            row["energy_score_fair"] = float(g["energy_score_fair"].mean())
        row["folds"] = len(g)
        row["fit_s"] = float(g["fit_s"].sum()) if "fit_s" in g and g["fit_s"].notna().all() else np.nan
        row["sample_s"] = float(g["seconds"].sum())
        rows[method] = row
    return pd.DataFrame(rows).T


def held_out_truth(sp_full: AnnData, known: Sequence[str], test: Sequence[str]) -> pd.DataFrame:
    """log1p(counts / library x 1e4) of the held-out genes, library over the known genes."""
    lib = np.asarray(sp_full[:, list(known)].X.sum(axis=1)).ravel()
    vals = log_normalize(sp_full[:, list(test)].X, lib)
    return pd.DataFrame(vals, index=sp_full.obs_names, columns=list(test))


def _gene_folds(sp: AnnData, sc: AnnData, n_folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """(known, held-out) genes of each fold: K-fold over the sorted genes shared by ``sp`` and ``sc``."""
    genes = sorted(set(map(str, sp.var_names)) & set(map(str, sc.var_names)))
    if len(genes) < n_folds:
        raise ValueError(f"{len(genes)} shared genes cannot make {n_folds} folds.")
    return [([genes[i] for i in tr], [genes[i] for i in te])
            for tr, te in KFold(n_folds, shuffle=True, random_state=seed).split(genes)]


def kfold_over_genes(
    method: Method,
    sp: AnnData,
    sc: AnnData,
    n_folds: int = 5,
    seed: int = 0,
    **kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Predict every shared gene once with ``method``, K-fold over the sorted shared genes.

    Returns the predictions and the truth (cells x genes) and the total fit + predict seconds.
    """
    preds, truths, seconds = [], [], 0.0
    for known, test in _gene_folds(sp, sc, n_folds, seed):
        sp_known = sp[:, known].copy()
        t0 = time.perf_counter()
        pred = method(sp_known, sc, test, seed=seed, **kwargs)
        seconds += time.perf_counter() - t0
        preds.append(pred.loc[sp.obs_names, test])
        truths.append(held_out_truth(sp, known, test))
    return pd.concat(preds, axis=1), pd.concat(truths, axis=1), seconds


def summarize(per_gene: dict[str, pd.DataFrame], seconds: dict[str, float]) -> pd.DataFrame:
    """Mean / median of each metric per method, the Accuracy Score and the time."""
    rows = {}
    for name, frame in per_gene.items():
        row = {f"mean {k}": frame[k].mean() for k in ("PCC", "SSIM", "RMSE", "JS")}
        row.update({f"median {k}": frame[k].median() for k in ("PCC", "SSIM", "RMSE", "JS")})
        row["seconds"] = seconds.get(name, np.nan)
        rows[name] = row
    table = pd.DataFrame(rows).T
    means = table[[f"mean {k}" for k in ("PCC", "SSIM", "RMSE", "JS")]]
    means.columns = ["PCC", "SSIM", "RMSE", "JS"]
    table["AS"] = accuracy_score(means) if len(table) > 1 else np.nan
    return table


def within_panel(adata: AnnData, held_out: Sequence[str], test_cells: np.ndarray, seed: int = 0, max_epochs: int | None = None) -> dict[str, pd.DataFrame]:
    """Within-panel prediction of ``held_out`` genes for ``test_cells`` (no reference).

    Returns per-gene metric tables for SpaDiT, kNN regression and MCD (channels mode).
    Truth: log1p(counts / library x 1e4), library over the genes the test cells keep.
    """
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.preprocessing import StandardScaler

    from biodiffuse.models import MCD, SpaDiT

    held_out = list(map(str, held_out))
    known = [g for g in map(str, adata.var_names) if g not in set(held_out)]
    train = adata[~np.isin(np.arange(adata.n_obs), test_cells)].copy()
    query = adata[test_cells][:, known].copy()
    lib_q = np.asarray(query.X.sum(axis=1)).ravel()
    truth = pd.DataFrame(log_normalize(adata[test_cells][:, held_out].X, lib_q), index=query.obs_names, columns=held_out)
    out = {}
    # kNN regression on the training cells (library over the same known genes)
    lib_t = np.asarray(train[:, known].X.sum(axis=1)).ravel()
    xk, yk = log_normalize(train[:, known].X, lib_t), log_normalize(train[:, held_out].X, lib_t)
    scaler = StandardScaler().fit(xk)
    knn = KNeighborsRegressor(n_neighbors=15).fit(scaler.transform(xk), yk)
    out["kNN"] = spatial_gene_metrics(truth, pd.DataFrame(knn.predict(scaler.transform(log_normalize(query.X, lib_q))), index=truth.index, columns=held_out))
    # SpaDiT, within-panel
    SpaDiT.setup_anndata(train)
    model = SpaDiT(train, seed=seed)
    model.train(max_epochs=max_epochs, seed=seed, enable_progress_bar=False)
    out["SpaDiT"] = spatial_gene_metrics(truth, model.predict(query, genes=held_out, n_samples=1, steps=1))
    # MCD any-subset on log-normalised channels (library over the known genes)
    ch_train = AnnData(log_normalize(train.X, lib_t), obs=pd.DataFrame(index=train.obs_names))
    ch_train.var_names = list(map(str, train.var_names))
    ch_query = AnnData(log_normalize(query.X, lib_q), obs=pd.DataFrame(index=query.obs_names))
    ch_query.var_names = known
    MCD.setup_anndata(ch_train)
    mcd = MCD(ch_train, seed=seed)
    mcd.train(max_epochs=max_epochs, seed=seed, enable_progress_bar=False)
    imp = mcd.impute(ch_query, n_samples=1, steps=1)
    out["MCD"] = spatial_gene_metrics(truth, imp[held_out])
    return out


def _save_method(out: Path, name: str, frame: pd.DataFrame, seconds: float, config: dict) -> None:
    """Per-gene metrics of one method and a sidecar with its time and fold configuration."""
    (out / "methods").mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "methods" / f"{name}.csv")
    (out / "methods" / f"{name}.json").write_text(json.dumps({"seconds": seconds, **config}))


def _load_methods(out: Path, config: dict) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """The saved methods of ``out`` whose folds and seed match ``config``."""
    per_gene, seconds = {}, {}
    for side in sorted((out / "methods").glob("*.json")) if (out / "methods").exists() else []:
        meta = json.loads(side.read_text())
        if any(meta.get(k) != v for k, v in config.items()):
            continue
        per_gene[side.stem] = pd.read_csv(side.with_suffix(".csv"), index_col=0)
        seconds[side.stem] = float(meta["seconds"])
    return per_gene, seconds


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all available)")
    p.add_argument("--max-epochs", type=int, default=None, help="SpaDiT / MCD epochs (default: the models')")
    p.add_argument("--spadit", default="{}", help='SpaDiT arguments as JSON, e.g. \'{"dim": 64, "depth": 2}\'')
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--starmap", action="store_true", help="run the within-panel benchmark instead")
    p.add_argument("--distribution", action="store_true",
                   help="score predictive distributions (SpaDiT draws against kNN draws) instead of point predictions")
    p.add_argument("--max-folds", type=int, default=None, help="--distribution: run only the first folds")
    p.add_argument("--resume", action="store_true",
                   help="--distribution: keep the folds an earlier run with the same settings saved in --out")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 18], help="--distribution: SpaDiT sampler steps")
    p.add_argument("--samplers", nargs="*", default=[], metavar="SOLVER,SIGMA_MAX,SIGMA_MIN,RHO",
                   help="--distribution: also sample SpaDiT with these settings (e.g. euler,10,0.002,7)")
    p.add_argument("--sampler-steps", type=int, nargs="+", default=[5], help="--distribution: steps of --samplers")
    p.add_argument("--tune-nfe", type=int, default=None,
                   help="--distribution: also sample with the schedule SpaDiT.tune_sampler chooses at this many evaluations")
    p.add_argument("--solvers", nargs="+", default=None, choices=["heun", "euler", "dpm2m"],
                   help="--tune-nfe: the solvers of the tuning grid (default: schedule_grid's)")
    p.add_argument("--recentre", action="store_true",
                   help="--distribution: also score each multi-step run with its draws centred on the one-step mean")
    p.add_argument("--n-samples", type=int, default=10, help="--distribution: draws per cell")
    p.add_argument("--out", default="results/spatial_genes")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    from biodiffuse import datasets

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.distribution:
        sp, sc = datasets.osmfish_allen_visp()
        per_fold = kfold_distribution(sp, sc, n_folds=args.folds, max_folds=args.max_folds, steps=args.steps,
                                      samplers=[sampler_arg(t) for t in args.samplers],
                                      sampler_steps=args.sampler_steps, tune_nfe=args.tune_nfe, solvers=args.solvers,
                                      recentre=args.recentre,
                                      n_samples=args.n_samples, max_epochs=args.max_epochs,
                                      save=out / "distribution_per_fold.csv", resume=_resumable(out, args) if args.resume else None,
                                      **json.loads(args.spadit))
        table = summarize_distribution(per_fold)
        (out / "distribution.json").write_text(json.dumps(
            {"settings": vars(args), "summary": json.loads(table.to_json(orient="index"))}, indent=1))
        print(table.round(4).to_string())
        return
    if args.starmap:
        adata = datasets.starmap_915()
        rng = np.random.default_rng(0)
        test_cells = np.sort(rng.choice(adata.n_obs, size=adata.n_obs // 5, replace=False))
        held_out = sorted(rng.choice(np.asarray(adata.var_names), size=50, replace=False).tolist())
        per_gene = within_panel(adata, held_out, test_cells, max_epochs=args.max_epochs)
        table = summarize(per_gene, {})
    else:
        sp, sc = datasets.osmfish_allen_visp()
        methods: dict[str, Method] = {"SpaDiT": fit_predict_spadit, **SPATIAL_BASELINES, **EXTERNAL_SPATIAL_BASELINES}
        if args.methods:
            methods = {k: v for k, v in methods.items() if k in set(args.methods)}
        config = {"folds": args.folds, "seed": 0}
        for name, fn in methods.items():
            kw = {}
            if name == "SpaDiT":
                kw = json.loads(args.spadit)
                if args.max_epochs:
                    kw["max_epochs"] = args.max_epochs
            try:
                pred, truth, secs = kfold_over_genes(fn, sp, sc, n_folds=args.folds, **kw)
            except ImportError as err:
                print(f"{name}: skipped ({err})")
                continue
            frame = spatial_gene_metrics(truth, pred)
            _save_method(out, name, frame, secs, {**config, **kw})
            pred.to_csv(out / "methods" / f"{name}_predicted.csv.gz")
            print(f"{name}: mean PCC {frame['PCC'].mean():.3f} ({secs:.0f} s)", flush=True)
        # every method run so far into ``out`` with the same folds (runs may be separate processes)
        per_gene, seconds = _load_methods(out, config)
        table = summarize(per_gene, seconds)
    pd.concat(per_gene, names=["method", "gene"]).to_csv(out / "per_gene.csv")
    (out / "summary.json").write_text(json.dumps(json.loads(table.to_json(orient="index")), indent=1))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
