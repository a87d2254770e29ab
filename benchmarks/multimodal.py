"""Missing-modality synthesis on TCGA BRCA (mixOmics train split, 150 patients).

Per fold of a patient K-fold (models and encoders fitted on the training patients only):

* R^2 of protein synthesised from mRNA + miRNA, in latent space (the model's standardised PCA
  latents) and in feature space (protein values), global definition of
  :func:`~biodiffuse.metrics.r2_score_modality`; the diffusion models
  use the mean of ``n_samples`` draws and, as "<model> 1-step", the mean of ``n_samples``
  one-step outputs (the model's conditional-mean estimate); baselines mean / kNN / ridge on the same latents.
* Output variance of the draws as a fraction of the data variance.
* The predictive distribution of the protein values (issue 15): CRPS, energy score across the
  142 proteins and 50 / 80 / 90 % coverage (``bd.metrics.score_draws``, proteins divided by
  their training sd) of the diffusion models' draws, against baselines that give draws too
  (``bd.baselines.fit_predict_draws`` on the same latents, decoded: ridge + Gaussian residual,
  ridge + out-of-fold residual vectors, kNN neighbours as samples).
* Downstream utility: a random forest (subtype) trained on the real training patients with
  all three blocks, scored (balanced accuracy) on test patients with protein real, ablated
  (training mean) or synthesised; counterfactual variance of its output across draws and the
  acquisition curve (informed by that score vs random order).

``python benchmarks/multimodal.py --threads 1 --out results/multimodal``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold

from _cli import limit_threads

from biodiffuse.baselines import fit_predict_draws, fit_predict_modality
from biodiffuse.diffusion import schedule_grid
from biodiffuse.metrics import output_variance_fraction, r2_score_modality, score_draws

__all__ = ["run_brca", "run_brca_test_split", "distribution_scores", "BASELINE_DRAWS"]

#: Baselines with a predictive distribution: (regressor, kind of draws) of ``fit_predict_draws``.
BASELINE_DRAWS = (("ridge", "gaussian"), ("ridge", "residuals"), ("knn", "neighbours"))


def distribution_scores(truth: np.ndarray, draws: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """``score_draws`` of ``draws`` (K, n, d) against ``truth`` (n, d), both divided by
    ``scale`` (d,) (the training sd per feature, so every protein counts alike), with keys
    prefixed by ``dist_``."""
    scale = np.where(np.asarray(scale, dtype=float) > 0, scale, 1.0)
    s = score_draws(np.asarray(truth, dtype=float) / scale, np.transpose(np.asarray(draws, dtype=float), (1, 0, 2)) / scale)
    return {f"dist_{k}": v for k, v in s.items()}


def run_brca(
    folds: int = 5, max_epochs: int | None = None, n_samples: int = 10, steps: int = 18, seed: int = 0,
    tune_nfe: Sequence[int] = (), solvers: Sequence[str] | None = None, recentre: bool = False,
) -> pd.DataFrame:
    """Run the benchmark; returns one row per (fold, method) with the network evaluations per
    draw (``nfe``; a Coherent Denoising consensus counts each available denoiser and redraw).

    ``tune_nfe``: for each budget, also the draws with the schedule each model chooses on its
    validation patients (``tune_sampler(nfe=...)``; ``solvers``: those of its grid, default
    :func:`~biodiffuse.diffusion.schedule_grid`'s), as ``"<model> tuned <nfe>"``. ``recentre``:
    also every multi-step sampler with each patient's draws centred on their one-step mean
    (``sample(recentre=True)``; rows ``"... recentred"``, no extra evaluation)."""
    from biodiffuse import datasets
    from biodiffuse.models import CoherentDenoising, MultiConditionDiffusion
    from biodiffuse.tl import acquisition_curve, area_under_curve, counterfactual_spread, fit_predictor, predict_output

    mdata = datasets.tcga_brca("train")
    y = np.asarray(mdata.obs["subtype"].astype(str))
    mods = ["mrna", "mirna", "protein"]
    rows = []
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        train = mdata[mdata.obs_names[tr]].copy()
        test = mdata[mdata.obs_names[te]].copy()
        real = {m: np.asarray(test.mod[m].X, dtype=float) for m in mods}
        clf = fit_predictor({m: np.asarray(train.mod[m].X, dtype=float) for m in mods}, y[tr], seed=seed)
        synth: dict[str, np.ndarray] = {}  # method -> (K, n, features)
        latent_pred: dict[str, np.ndarray] = {}
        z_true = None
        for cls in (MultiConditionDiffusion, CoherentDenoising):
            cls.setup_mudata(train, modalities=mods)
            model = cls(train, seed=seed)
            model.train(**({} if max_epochs is None else {"max_epochs": max_epochs}), seed=seed, enable_progress_bar=False)
            def draw(n_steps: int, rc: bool = False) -> dict[str, Any]:
                return model.sample(test, target="protein", conditions=["mrna", "mirna"], n_samples=n_samples, steps=n_steps, seed=seed,
                                    recentre=rc)

            def recentred(name: str, n_steps: int, **extra: Any) -> None:
                """The ``n_steps`` draws again, centred on their one-step mean, as ``name + " recentred"``."""
                if recentre and n_steps > 1:
                    rc = draw(n_steps, True)
                    synth[f"{name} recentred"], latent_pred[f"{name} recentred"] = rc["features"], rc["latent"].mean(axis=0)
                    rows.append(dict(fold=k, method=f"{name} recentred", variance_fraction=output_variance_fraction(rc["latent"], z_true),
                                     rejected=float(np.mean(rc["rejected"])) if "rejected" in rc else np.nan, nfe=float(np.mean(rc["nfe"])), **extra))

            res = draw(steps)
            synth[cls.__name__] = res["features"]
            latent_pred[cls.__name__] = res["latent"].mean(axis=0)
            one = draw(1)
            synth[f"{cls.__name__} 1-step"], latent_pred[f"{cls.__name__} 1-step"] = one["features"], one["latent"].mean(axis=0)
            zs_tr, _ = model.latents(train)
            zs_te, _ = model.latents(test)
            z_true = zs_te[2]
            rej = float(np.mean(res["rejected"])) if "rejected" in res else np.nan
            rows.append(dict(fold=k, method=cls.__name__, variance_fraction=output_variance_fraction(res["latent"], z_true), rejected=rej,
                             nfe=float(np.mean(res["nfe"]))))
            rows.append(dict(fold=k, method=f"{cls.__name__} 1-step", variance_fraction=np.nan, rejected=np.nan, nfe=float(np.mean(one["nfe"]))))
            recentred(cls.__name__, steps)
            default = model.sampler_settings
            for budget in tune_nfe:
                model.set_sampler(**default)
                grid = None if solvers is None else schedule_grid(int(budget), solvers=tuple(solvers))
                chosen = model.tune_sampler(nfe=int(budget), seed=seed, candidates=grid).iloc[0]
                tuned = draw(int(chosen["steps"]))
                name = f"{cls.__name__} tuned {budget}"
                synth[name], latent_pred[name] = tuned["features"], tuned["latent"].mean(axis=0)
                schedule = f"{chosen['solver']} {int(chosen['steps'])}, sigma {chosen['sigma_max']:g} -> {chosen['sigma_min']:g}, rho {chosen['rho']:g}"
                rows.append(dict(fold=k, method=name, variance_fraction=output_variance_fraction(tuned["latent"], z_true),
                                 rejected=float(np.mean(tuned["rejected"])) if "rejected" in tuned else np.nan, nfe=float(np.mean(tuned["nfe"])),
                                 schedule=schedule))
                recentred(name, int(chosen["steps"]), schedule=schedule)
        enc = model._encoder("protein")
        cond_tr, cond_te = np.hstack(zs_tr[:2]), np.hstack(zs_te[:2])
        for name in ("mean", "knn", "ridge"):
            zp = fit_predict_modality(name, cond_tr, zs_tr[2], cond_te, seed=seed)
            latent_pred[name] = zp
            synth[name] = enc.decode(zp)[None]
            rows.append(dict(fold=k, method=name, variance_fraction=0.0, rejected=np.nan))
        scale = np.asarray(train.mod["protein"].X, dtype=float).std(axis=0)
        for row in rows:
            if row["fold"] == k and row["method"] in synth and synth[row["method"]].shape[0] > 1:
                row.update(distribution_scores(real["protein"], synth[row["method"]], scale))
        for name, kind in BASELINE_DRAWS:
            out = fit_predict_draws(name, cond_tr, zs_tr[2], cond_te, kind=kind, n_samples=n_samples, seed=seed)
            n, s_, dz = out["draws"].shape
            feats = enc.decode(out["draws"].reshape(n * s_, dz)).reshape(n, s_, -1).transpose(1, 0, 2)
            rows.append(dict(fold=k, method=f"{name} + {kind}", **distribution_scores(real["protein"], feats, scale)))
        ablated = {**real, "protein": np.repeat(clf.block_means["protein"][None], len(te), axis=0)}
        probs_real = predict_output(clf, real)
        base = dict(real=balanced_accuracy_score(y[te], clf.classes[probs_real.argmax(1)]),
                    ablated=balanced_accuracy_score(y[te], clf.classes[predict_output(clf, ablated).argmax(1)]))
        for row in rows:
            if row["fold"] != k or "r2_latent" in row or row["method"] not in synth:
                continue
            m = row["method"]
            row["r2_latent"] = r2_score_modality(z_true, latent_pred[m])
            row["r2_feature"] = r2_score_modality(real["protein"], synth[m].mean(axis=0))
            outs = np.stack([predict_output(clf, {**real, "protein": s}) for s in synth[m]])  # (K, n, C)
            pred_synth = clf.classes[outs.mean(axis=0).argmax(1)]
            row.update(base, synthesised=balanced_accuracy_score(y[te], pred_synth))
            if len(outs) > 1:
                score = counterfactual_spread(outs, "classification")
                curve = acquisition_curve(y[te], clf.classes[probs_real.argmax(1)], pred_synth, score, balanced_accuracy_score, n_random=50, seed=seed)
                auc = area_under_curve(curve)
                row.update(auc_informed=auc["informed"], auc_random=auc["random"])
        print(pd.DataFrame([r for r in rows if r["fold"] == k]).round(3).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def run_brca_test_split(
    n_samples: int = 10, steps: int = 8, repeats: int = 3, seed: int = 0, max_epochs: int | None = None, umap_file: Path | None = None
) -> pd.DataFrame:
    """Protein for the 70 test patients, who have none: models fitted on the 150 training
    patients synthesise it from mRNA + miRNA; a random forest trained on the real training
    patients (all three blocks) classifies the test patients' subtype with protein ablated
    (training mean), imputed by ridge / kNN on the latents, or synthesised (forest output
    averaged over draws, mean of draws or one-step). One row per (repeat, method); repeats
    change the models' and the forest's seeds. ``umap_file``: UMAP of the real training
    protein next to the first repeat's synthesised test protein (mean of draws), by subtype."""
    from biodiffuse import datasets
    from biodiffuse.models import CoherentDenoising, MultiConditionDiffusion
    from biodiffuse.tl import fit_predictor, predict_output

    train, test = datasets.tcga_brca("train"), datasets.tcga_brca("test")
    y_tr, y_te = np.asarray(train.obs["subtype"].astype(str)), np.asarray(test.obs["subtype"].astype(str))
    mods = ["mrna", "mirna", "protein"]
    rows = []
    for rep in range(repeats):
        s = seed + rep
        clf = fit_predictor({m: np.asarray(train.mod[m].X, dtype=float) for m in mods}, y_tr, seed=s)
        known = {m: np.asarray(test.mod[m].X, dtype=float) for m in ("mrna", "mirna")}

        def score(protein_draws: np.ndarray) -> float:
            outs = np.stack([predict_output(clf, {**known, "protein": d}) for d in protein_draws])
            return balanced_accuracy_score(y_te, clf.classes[outs.mean(axis=0).argmax(1)])

        rows.append(dict(repeat=rep, method="ablated", balanced_accuracy=score(clf.block_means["protein"][None, None].repeat(test.n_obs, axis=1))))
        model, synthetic = None, {}
        for cls in (MultiConditionDiffusion, CoherentDenoising):
            cls.setup_mudata(train, modalities=mods)
            model = cls(train, seed=s)
            model.train(**({} if max_epochs is None else {"max_epochs": max_epochs}), seed=s, enable_progress_bar=False)
            for label, k in (("", steps), (" 1-step", 1)):
                res = model.sample(test, target="protein", conditions=["mrna", "mirna"], n_samples=n_samples, steps=k, seed=s)
                rows.append(dict(repeat=rep, method=cls.__name__ + label, balanced_accuracy=score(res["features"])))
                if not label:
                    synthetic[f"{cls.__name__} (test)"] = res["mean"]
        zs_tr, _ = model.latents(train)
        zs_te, _ = model.latents(test)
        enc = model._encoder("protein")
        for name in ("knn", "ridge"):
            zp = fit_predict_modality(name, np.hstack(zs_tr[:2]), zs_tr[2], np.hstack(zs_te[:2]), seed=s)
            rows.append(dict(repeat=rep, method=name, balanced_accuracy=score(enc.decode(zp)[None])))
        print(pd.DataFrame([r for r in rows if r["repeat"] == rep]).round(3).to_string(index=False), flush=True)
        if umap_file is not None and rep == 0:
            from biodiffuse.pl import real_vs_synthetic_umap

            labels = np.concatenate([y_tr] + [y_te] * len(synthetic))
            fig = real_vs_synthetic_umap(np.asarray(train.mod["protein"].X, dtype=float), synthetic, labels, seed=seed)
            fig.savefig(umap_file, dpi=100, bbox_inches="tight")
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=None, help="default: the models' (early stopping)")
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--tune-nfe", type=int, nargs="*", default=[], help="also sample with the schedule tune_sampler chooses at these budgets")
    p.add_argument("--solvers", nargs="+", default=None, choices=["heun", "euler", "dpm2m"],
                   help="--tune-nfe: the solvers of the tuning grid (default: schedule_grid's)")
    p.add_argument("--recentre", action="store_true",
                   help="also score each multi-step sampler with every patient's draws centred on their one-step mean")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--test-split", action="store_true", help="synthesise protein for the 70 test patients instead of cross-validating")
    p.add_argument("--repeats", type=int, default=3, help="--test-split: repeats")
    p.add_argument("--out", default="results/multimodal")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.test_split:
        table = run_brca_test_split(args.n_samples, args.steps, args.repeats, max_epochs=args.max_epochs, umap_file=out / "brca_test_umap.png")
        table.to_csv(out / "brca_test_split.csv", index=False)
        acc = table.groupby("method")["balanced_accuracy"]
        print((acc.mean().round(3).astype(str) + " ± " + acc.std().round(3).astype(str)).to_string())
        return
    table = run_brca(args.folds, args.max_epochs, args.n_samples, args.steps, tune_nfe=args.tune_nfe, solvers=args.solvers, recentre=args.recentre)
    table.to_csv(out / "brca_folds.csv", index=False)
    summary = table.drop(columns=["fold", "schedule"], errors="ignore").groupby("method").agg(["mean", "std"])
    (out / "brca_summary.json").write_text(json.dumps(json.loads(summary.to_json()), indent=1))
    cols = [c for c in ("r2_latent", "r2_feature", "variance_fraction", "real", "ablated", "synthesised", "auc_informed", "auc_random", "rejected",
                        "nfe", "dist_crps", "dist_energy_score", "dist_crps_fair", "dist_energy_score_fair", "dist_r_p", "dist_coverage50", "dist_coverage80", "dist_coverage90") if c in table]
    means = table.groupby("method")[cols].mean()
    sds = table.groupby("method")[cols].std()
    print((means.round(3).astype(str) + " ± " + sds.round(3).astype(str)).to_string())
    if "schedule" in table:
        print(table.dropna(subset=["schedule"])[["fold", "method", "schedule"]].to_string(index=False))


if __name__ == "__main__":
    main()
