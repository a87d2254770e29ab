"""Gene -> protein benchmark on real CITE-seq: MCD at several sampler step counts against
kernel ridge, ridge, kNN, the per-protein mean and (optionally) totalVI.

Run ``python benchmarks/citeseq.py --help``. Every method sees the same folds;
proteins are normalised with a Yeo-Johnson + percentile normaliser fitted on the training
cells of each fold; metrics are computed on the held-out cells in that normalised space and
in the original count space. Nothing is tuned on the test folds: the baselines choose their
hyper-parameters by inner cross-validation on the training cells, MCD uses its defaults and
early-stops on a validation split of the training cells.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from biodiffuse.baselines import fit_predict, fit_predict_draws, gene_features
from biodiffuse.data import ChannelNormalizer, get_obsm_frame
from biodiffuse.metrics import imputation_metrics, score_draws
from biodiffuse.models import MCD

__all__ = ["run_fold", "run_benchmark", "main"]

BASELINES = ("krr", "ridge", "knn", "mean")
# How each baseline gives a predictive distribution (baselines/distributions.py), scored like MCD's draws.
BASELINE_DRAWS = {"ridge": ("gaussian", "residuals"), "knn": ("neighbours",), "krr": ("residuals",)}
LEVELS = (0.5, 0.8, 0.9)


def _score_draws(y_true_norm: np.ndarray, draws_norm: np.ndarray) -> dict[str, float]:
    """CRPS (mean over proteins), energy score (mean over cells), both of the draws and fair (of the
    distribution they come from), and interval coverage, normalised scale."""
    s = score_draws(y_true_norm, draws_norm, levels=LEVELS)
    out = {"crps_norm": s["crps"], "es_norm": s["energy_score"], "crps_fair_norm": s["crps_fair"], "es_fair_norm": s["energy_score_fair"]}
    out.update({f"cov{round(100 * q)}": s[f"coverage{round(100 * q)}"] for q in LEVELS})
    return out


def _score(y_true_norm: np.ndarray, pred_norm: np.ndarray, y_true_orig: np.ndarray, pred_orig: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for space, (yt, yp) in {"norm": (y_true_norm, pred_norm), "orig": (y_true_orig, pred_orig)}.items():
        m = imputation_metrics(yt, yp)
        out.update({f"r_p_{space}": m["r_p"], f"r_c_{space}": m["r_c"], f"rmse_{space}": m["rmse"]})
    return out


def run_fold(
    adata: AnnData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    protein_key: str,
    steps_list: list[int],
    n_samples: int,
    max_epochs: int | None,
    seed: int,
    with_totalvi: bool = False,
    accelerator: str = "auto",
    mcd_kwargs: dict[str, Any] | None = None,
    baselines: tuple[str, ...] = BASELINES,
    rows: list[dict[str, Any]] | None = None,
    per_protein: dict[str, np.ndarray] | None = None,
    point_draws: Sequence[int] = (),
    tune_nfe: int | None = None,
    recentre: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train every method on ``train_idx`` and score it on ``test_idx``.

    ``point_draws``: also score MCD's point estimate as the mean of that many one-step draws per
    cell (imputation time: median of three calls), the speed / accuracy trade-off against totalVI.
    ``tune_nfe``: then choose MCD's sampler on its validation cells at that many network
    evaluations per draw (``MCD.tune_sampler``) and score the tuned sampler again (rows "tuned").
    ``recentre``: also score every multi-step sampler with its draws recentred on the one-step
    mean (``MCD.posterior(recentre=True)``; rows "recentred").

    Returns one result row per method and the per-protein r_p (normalised space) per method.
    ``rows`` / ``per_protein``, when given, are filled as each method finishes (the fast
    baselines first, then MCD), so an interrupted run still has what was done.
    """
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    proteins = get_obsm_frame(adata, protein_key)
    y_train = proteins.iloc[train_idx].to_numpy(float)
    y_test = proteins.iloc[test_idx].to_numpy(float)
    norm = ChannelNormalizer().fit(y_train)
    yt_norm = norm.transform(y_test)
    rows = [] if rows is None else rows
    per_protein = {} if per_protein is None else per_protein
    n_test = len(test_idx)

    f_train, f_test, _ = gene_features(train, test)
    for method in baselines:
        t0 = time.perf_counter()
        pred = fit_predict(method, f_train, norm.transform(y_train), f_test, seed=seed)
        el = time.perf_counter() - t0
        scores = _score(yt_norm, pred, y_test, norm.inverse_transform(pred))
        rows.append(dict(method=method, fit_s=el, impute_s_per_10k=np.nan, nfe_per_cell=np.nan, **scores))
        per_protein[method] = _per_protein(yt_norm, pred)
        for kind in BASELINE_DRAWS.get(method, ()) if n_samples >= 2 else ():
            t0 = time.perf_counter()
            out = fit_predict_draws(method, f_train, norm.transform(y_train), f_test, kind=kind, n_samples=n_samples, seed=seed)
            scores = _score(yt_norm, out["mean"], y_test, norm.inverse_transform(out["mean"]))
            scores.update(_score_draws(yt_norm, out["draws"]))
            rows.append(dict(method=f"{method} + {kind}", fit_s=time.perf_counter() - t0, impute_s_per_10k=np.nan, nfe_per_cell=np.nan, **scores))

    # MCD: RNA-only query (the protein table is removed from the query object).
    query = test.copy()
    del query.obsm[protein_key]
    MCD.setup_anndata(train, protein_obsm_key=protein_key)
    t0 = time.perf_counter()
    model = MCD(train, **(mcd_kwargs or {}))
    model.train(max_epochs=max_epochs, seed=seed, enable_progress_bar=False, accelerator=accelerator)
    fit_s = time.perf_counter() - t0
    for steps, rc in [(st, rc) for st in steps_list for rc in ((False, True) if recentre and st > 1 else (False,))]:
        t0 = time.perf_counter()
        post = model.posterior(query, n_samples=n_samples, steps=steps, seed=seed, recentre=rc, return_draws=n_samples >= 2)
        pred_s = time.perf_counter() - t0
        name = f"MCD ({steps} step{'s' if steps > 1 else ''}{', recentred' if rc else ''})"
        scores = _score(yt_norm, post["mean_normalized"], y_test, post["mean"])
        if n_samples >= 2:
            scores.update(_score_draws(yt_norm, post["draws_normalized"]))
        rows.append(dict(method=name, fit_s=fit_s, impute_s_per_10k=pred_s / n_test * 1e4,
                         nfe_per_cell=n_samples * model.network_evaluations(steps=steps), epochs=len(model.history), **scores))
        per_protein[name] = _per_protein(yt_norm, post["mean_normalized"])

    def point_rows(tag: str) -> None:
        for k in point_draws:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                post = model.posterior(query, n_samples=int(k), steps=1, seed=seed)
                times.append(time.perf_counter() - t0)
            name = f"MCD{tag} (mean of {k} x 1 step)"
            rows.append(dict(method=name, fit_s=fit_s, impute_s_per_10k=float(np.median(times)) / n_test * 1e4,
                             nfe_per_cell=int(k) * model.network_evaluations(steps=1), epochs=len(model.history),
                             **_score(yt_norm, post["mean_normalized"], y_test, post["mean"])))
            per_protein[name] = _per_protein(yt_norm, post["mean_normalized"])

    point_rows("")
    if tune_nfe is not None:
        best = model.tune_sampler(nfe=int(tune_nfe), n_samples=max(2, n_samples), seed=seed).iloc[0]
        tag = f" tuned at {tune_nfe} NFE: {best['solver']} from {best['sigma_max']:g}"
        st = int(best["steps"])
        for rc in (False, True) if recentre and st > 1 else (False,):
            post = model.posterior(query, n_samples=n_samples, steps=st, seed=seed, recentre=rc, return_draws=n_samples >= 2)
            scores = _score(yt_norm, post["mean_normalized"], y_test, post["mean"])
            if n_samples >= 2:
                scores.update(_score_draws(yt_norm, post["draws_normalized"]))
            name = f"MCD{tag} ({st} step{'s' if st > 1 else ''}{', recentred' if rc else ''})"
            rows.append(dict(method=name, fit_s=fit_s, impute_s_per_10k=np.nan, nfe_per_cell=n_samples * int(best["nfe"]),
                             epochs=len(model.history), **scores))
            per_protein[name] = _per_protein(yt_norm, post["mean_normalized"])
        point_rows(tag)

    if with_totalvi:
        try:
            from biodiffuse.baselines import totalvi_impute

            pred_orig, fit_tv, pred_tv = totalvi_impute(train, test, protein_obsm_key=protein_key, seed=seed)
            scores = _score(yt_norm, norm.transform(pred_orig), y_test, pred_orig)
            rows.append(dict(method="totalVI", fit_s=fit_tv, impute_s_per_10k=pred_tv / n_test * 1e4, nfe_per_cell=np.nan, **scores))
            per_protein["totalVI"] = _per_protein(yt_norm, norm.transform(pred_orig))
        except ImportError as err:
            print(f"totalVI skipped: {err}")
    return rows, per_protein


def _per_protein(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    from biodiffuse.metrics import pearson_per_channel

    return pearson_per_channel(y, p)


def run_benchmark(
    adata: AnnData,
    dataset: str,
    protein_key: str = "protein_expression",
    folds: int = 5,
    steps_list: tuple[int, ...] = (1, 5, 18, 500),
    n_samples: int = 10,
    max_epochs: int | None = None,
    seed: int = 0,
    with_totalvi: bool = False,
    accelerator: str = "auto",
    max_folds: int | None = None,
    mcd_kwargs: dict[str, Any] | None = None,
    groups_key: str | None = None,
    train_cells: int | None = None,
    baselines: tuple[str, ...] = BASELINES,
    on_fold: Any = None,
    point_draws: Sequence[int] = (),
    tune_nfe: int | None = None,
    recentre: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Cross-validation; returns (per-fold rows, summary, mean per-protein r_p).

    Folds are K-fold over cells, or with ``groups_key`` (e.g. ``"donor"``) leave one group out.
    ``train_cells`` draws that many training cells of each fold (a learning curve; the test
    cells stay the same). ``on_fold(df, summary, per_protein)`` is called after every fold
    with the results so far (the driver writes them). Ctrl+C stops the run and returns the
    methods finished so far (``df.attrs["interrupted"]``), or re-raises if none is."""
    from sklearn.model_selection import KFold, LeaveOneGroupOut

    names = list(map(str, get_obsm_frame(adata, protein_key).columns))
    if groups_key is None:
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(adata.n_obs))
        fold_names = None
    else:
        groups = adata.obs[groups_key].astype(str).to_numpy()
        splits = LeaveOneGroupOut().split(np.arange(adata.n_obs), groups=groups)
        fold_names = groups
    all_rows: list[dict[str, Any]] = []
    per_protein: dict[str, list[np.ndarray]] = {}
    interrupted = False
    try:
        for k, (tr, te) in enumerate(splits):
            if max_folds is not None and k >= max_folds:
                break
            if train_cells is not None and train_cells < len(tr):
                tr = np.sort(np.random.default_rng(seed).choice(tr, train_cells, replace=False))
            info = dict(dataset=dataset, fold=k, n_train=len(tr), n_test=len(te), held_out=None if fold_names is None else fold_names[te[0]])
            rows: list[dict[str, Any]] = []
            pp: dict[str, np.ndarray] = {}
            try:
                run_fold(adata, tr, te, protein_key, list(steps_list), n_samples, max_epochs, seed, with_totalvi, accelerator,
                         mcd_kwargs, baselines, rows=rows, per_protein=pp, point_draws=point_draws, tune_nfe=tune_nfe,
                         recentre=recentre)
            finally:  # an interrupted fold keeps the methods it finished
                for r in rows:
                    r.update(info)
                    dist = (f"  crps={r['crps_norm']:.4f}  es={r['es_norm']:.3f}  crps_fair={r['crps_fair_norm']:.4f}  cov90={r['cov90']:.2f}"
                            if np.isfinite(r.get("crps_norm", np.nan)) else "")
                    print(f"[{dataset} fold {k}] {r['method']:>20s}  r_p={r['r_p_norm']:.3f}  r_c={r['r_c_norm']:.3f}  rmse={r['rmse_norm']:.3f}{dist}", flush=True)
                all_rows.extend(rows)
                for m, v in pp.items():
                    per_protein.setdefault(m, []).append(v)
            if on_fold is not None:
                on_fold(*_summarise(all_rows, per_protein, names))
    except KeyboardInterrupt:
        if not all_rows:
            raise
        interrupted = True
        print(f"interrupted: keeping the {len(all_rows)} result row(s) finished so far", flush=True)
    df, summary, pp_frame = _summarise(all_rows, per_protein, names)
    df.attrs["interrupted"] = interrupted
    return df, summary, pp_frame


def _summarise(all_rows: list[dict[str, Any]], per_protein: dict[str, list[np.ndarray]], names: list[str]):
    """(rows, summary mean / sd across folds with MCD first, mean per-protein r_p)."""
    df = pd.DataFrame(all_rows)
    metric_cols = [c for c in df.columns if c.startswith(("r_p", "r_c", "rmse", "crps", "es_", "cov"))]
    summary = df.groupby("method", sort=False)[metric_cols + ["fit_s", "impute_s_per_10k", "nfe_per_cell"]].agg(["mean", "std"])
    summary = summary.loc[sorted(summary.index, key=lambda m: (not str(m).startswith("MCD"), list(summary.index).index(m)))]
    with warnings.catch_warnings():  # a protein with no finite r_p (e.g. the constant "mean" predictor) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        pp_mean = {m: np.nanmean(np.vstack(v), axis=0) for m, v in per_protein.items()}
    pp_frame = pd.DataFrame(pp_mean, index=names)
    return df, summary, pp_frame


def format_table(summary: pd.DataFrame) -> str:
    """Markdown table: mean ± sd across folds (CRPS / energy score / coverage in the normalised scale;
    "fair": of the distribution the draws come from, :func:`biodiffuse.metrics.crps`)."""
    lines = [
        "| method | r_p (norm) | r_c (norm) | RMSE (norm) | r_p (counts) | CRPS | energy score | CRPS (fair) | energy score (fair) "
        "| 50 / 80 / 90 % coverage | fit s | impute s / 10k cells | NFE / cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(method: str, col: str, fmt: str = "{:.3f}") -> str:
        if (col, "mean") not in summary.columns:
            return "-"
        m, s = summary.loc[method, (col, "mean")], summary.loc[method, (col, "std")]
        if not np.isfinite(m):
            return "-"
        return (fmt.format(m) + " ± " + fmt.format(s)) if np.isfinite(s) else fmt.format(m)

    def cov(method: str) -> str:
        if ("cov90", "mean") not in summary.columns or not np.isfinite(summary.loc[method, ("cov90", "mean")]):
            return "-"
        return " / ".join(f"{summary.loc[method, (f'cov{q}', 'mean')]:.2f}" for q in (50, 80, 90))

    for method in summary.index:
        nfe = summary.loc[method, ("nfe_per_cell", "mean")]
        lines.append(
            f"| {method} | {ms(method, 'r_p_norm')} | {ms(method, 'r_c_norm')} | {ms(method, 'rmse_norm')} | "
            f"{ms(method, 'r_p_orig')} | {ms(method, 'crps_norm', '{:.4f}')} | {ms(method, 'es_norm')} | "
            f"{ms(method, 'crps_fair_norm', '{:.4f}')} | {ms(method, 'es_fair_norm')} | {cov(method)} | "
            f"{ms(method, 'fit_s', '{:.1f}')} | {ms(method, 'impute_s_per_10k', '{:.1f}')} | {'-' if not np.isfinite(nfe) else int(nfe)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="h5ad with RNA counts in X and proteins in obsm (default: bundled ECCITE-seq PBMC)")
    p.add_argument("--dataset", choices=["eccite", "abseq"], default="eccite",
                   help="abseq: Triana bone-marrow Abseq (7,514 cells, 5 donors; ../shared/data)")
    p.add_argument("--split", choices=["cells", "donor"], default="cells", help="K-fold over cells, or leave one donor out")
    p.add_argument("--train-cells", type=int, default=None, help="draw this many training cells per fold (learning curve)")
    p.add_argument("--skip", nargs="*", default=[], choices=list(BASELINES), help="baselines to leave out (krr is slow on thousands of cells)")
    p.add_argument("--name", default=None, help="dataset label in the output")
    p.add_argument("--protein-key", default="protein_expression")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-folds", type=int, default=None, help="run only the first folds")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 18, 500])
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--point-draws", type=int, nargs="*", default=[],
                   help="also score MCD's mean of this many one-step draws per cell (e.g. 1 2 3 5), timed")
    p.add_argument("--tune-nfe", type=int, default=None,
                   help="then choose MCD's sampler on its validation cells at this many evaluations per draw and score it again")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--totalvi", action="store_true", help="also run totalVI (needs scvi-tools)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--gene-pcs", type=int, default=None, help="MCD gene_pcs (default: genes as condition channels)")
    p.add_argument("--residual", choices=["ridge", "krr"], default=None,
                   help="MCD residual: diffuse the proteins minus a ridge (or kernel ridge) prediction from the genes")
    p.add_argument("--sampler", default=None, metavar="SOLVER,SIGMA_MAX,SIGMA_MIN,RHO",
                   help="MCD's sampler for the --steps rows, e.g. dpm2m,10,0.05,7 (default: the model's)")
    p.add_argument("--recentre", action="store_true",
                   help="also score each multi-step MCD sampler with its draws recentred on the one-step mean")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest for these small models on a busy machine)")
    p.add_argument("--quick", action="store_true",
                   help="the README's main job: one fold, steps 1 5 18 (also recentred), MCD max_epochs 600 (early stopping ends it near 250)")
    p.add_argument("--out", default="results/citeseq", help="output prefix (.json, .md, _rp.png)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_folds, args.steps, args.recentre = 1, [1, 5, 18], True
        args.max_epochs = args.max_epochs or 600

    from _cli import limit_threads, sampler_arg  # sibling module of the drivers

    limit_threads(args.threads)
    from biodiffuse.datasets import citeseq as ds

    if args.data is None and args.dataset == "abseq":
        adata, name = ds.triana_bm_abseq(), args.name or "triana_bm_abseq"
    elif args.data is None:
        adata, name = ds.eccite_pbmc(), args.name or "eccite_pbmc500"
    else:
        import anndata as ad

        adata, name = ad.read_h5ad(args.data), args.name or Path(args.data).stem
        if args.protein_key in adata.obsm and not isinstance(adata.obsm[args.protein_key], pd.DataFrame):
            adata.obsm[args.protein_key] = get_obsm_frame(adata, args.protein_key)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(df: pd.DataFrame, summary: pd.DataFrame, pp: pd.DataFrame, final: bool = False) -> dict[str, Any]:
        """Write the .json / .md (and, at the end, the plot) for the folds done so far."""
        table = format_table(summary)
        n_folds = df["fold"].nunique()
        split = (f"{n_folds} leave-one-donor-out folds ({', '.join(map(str, df['held_out'].unique()))})" if args.split == "donor"
                 else f"{n_folds} of {args.folds} folds over cells")
        status = "" if final and not df.attrs.get("interrupted") else (
            "; INTERRUPTED: partial results" if final else "; in progress: folds done so far")
        header = (f"{name}: {adata.n_obs} cells x {pp.shape[0]} proteins, {split} "
                  f"(seed {args.seed}), mean ± sd across folds; n_samples={args.n_samples}"
                  + (f"; {args.train_cells} training cells per fold" if args.train_cells else "")
                  + (f"; MCD max_epochs={args.max_epochs}" if args.max_epochs else "")
                  + (f"; MCD gene_pcs={args.gene_pcs}" if args.gene_pcs else "")
                  + (f"; MCD residual={args.residual}" if args.residual else "")
                  + (f"; MCD sampler {args.sampler}" if args.sampler else "") + status)
        result = {"dataset": name, "header": header, "args": vars(args), "complete": bool(final and not df.attrs.get("interrupted")),
                  "rows": json.loads(df.to_json(orient="records")), "per_protein_r_p_norm": json.loads(pp.to_json())}
        Path(f"{out}.json").write_text(json.dumps(result, indent=1))
        Path(f"{out}.md").write_text(header + "\n\n" + table + "\n")
        if final:
            print("\n" + header + "\n" + table)
            from biodiffuse.pl import protein_correlation_bars

            best_mcd = [m for m in pp.columns if m.startswith("MCD")]
            cols = [c for c in [best_mcd[-1] if best_mcd else None, "krr", "ridge", "knn", "totalVI"] if c in pp.columns]
            fig = protein_correlation_bars(pp[cols], title=f"{name}: per-protein r_p on held-out cells")
            fig.savefig(f"{out}_rp.png", dpi=120, bbox_inches="tight")
            print(f"wrote {out}.json, {out}.md, {out}_rp.png")
        return result

    df, summary, pp = run_benchmark(
        adata, name, args.protein_key, args.folds, tuple(args.steps), args.n_samples, args.max_epochs,
        args.seed, args.totalvi, args.accelerator, args.max_folds,
        mcd_kwargs={**{k: v for k, v in (("gene_pcs", args.gene_pcs), ("residual", args.residual)) if v},
                    **(sampler_arg(args.sampler) or {})} or None,
        groups_key="donor" if args.split == "donor" else None, train_cells=args.train_cells,
        baselines=tuple(b for b in BASELINES if b not in args.skip), on_fold=write, point_draws=tuple(args.point_draws),
        tune_nfe=args.tune_nfe, recentre=args.recentre,
    )
    return write(df, summary, pp, final=True)


if __name__ == "__main__":
    main()
