"""Any target from any subset of conditions on TCGA ACC (92 patients, partly overlapping assays).

Per repeat, a patient K-fold; in each fold both diffusion models and the modality encoders
are fitted on the training patients only (each with whatever assays it has). Then:

* **R^2 per (target, condition subset).** Test patients that have the target and every
  modality of the subset; the diffusion models use the mean of ``n_samples`` draws of
  ``steps`` Heun steps, and, as "<model> 1-step", the mean of ``n_samples`` one-step outputs
  (the denoiser at the highest noise level: the model's estimate of the conditional mean);
  baselines (mean / kNN / ridge on the condition latents) are fitted on the training
  patients that have the target and the subset. R^2 is global
  (:func:`~biodiffuse.metrics.r2_score_modality`) in **latent** space
  (the standardised PCA latents) and in **feature** space, where features are the encoder's
  standardised inputs (log1p for counts, then z-scored per feature), so every feature
  counts alike; the latent decode there is PCA's exact inverse.
* **Survival utility.** A penalised Cox model (:func:`~biodiffuse.tl.fit_predictor`) on the
  latents of the four assays of the training patients that have all of them; on the test
  patients that have all of them, the risk with every assay real, with the target ablated
  (training mean) and with it synthesised from the other three by each method. Risks are
  pooled over the folds of a repeat and scored by Harrell's C-index, one value per repeat.
* **Privacy.** Unconditional draws (``conditions=[]``), as many as the training patients
  with the target, against those training latents: energy distance, manifold precision /
  recall (k = 5) and the distance-to-closest-record ratio; the held-out real patients give
  the reference values a generator that does not copy should match.

``python benchmarks/multimodal_acc.py --threads 1 --out results/multimodal_acc``
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from _cli import limit_threads

from biodiffuse.baselines import fit_predict_modality
from biodiffuse.metrics import output_variance_fraction, r2_score_modality

__all__ = ["ACC_MODALITIES", "run_acc", "condition_subsets"]

ACC_MODALITIES = ["RNASeq2GeneNorm", "gistict", "RPPAArray", "miRNASeqGene"]
BASELINES = ("mean", "knn", "ridge")


def condition_subsets(modalities: Sequence[str], target: str) -> list[tuple[str, ...]]:
    """Every non-empty subset of the modalities other than ``target``, smallest first."""
    others = [m for m in modalities if m != target]
    return [s for r in range(1, len(others) + 1) for s in itertools.combinations(others, r)]


def _privacy_row(z_fake: np.ndarray, z_train: np.ndarray, z_hold: np.ndarray) -> dict[str, float]:
    from biodiffuse.metrics.privacy import distance_to_closest_record, energy_distance, precision_recall_manifold

    pr = precision_recall_manifold(z_train, z_fake, k=5)
    ref = precision_recall_manifold(z_train, z_hold, k=min(5, len(z_hold) - 1)) if len(z_hold) > 2 else {}
    dcr = distance_to_closest_record(z_fake, z_train, z_hold)
    return dict(
        energy=energy_distance(z_fake, z_train), energy_holdout=energy_distance(z_hold, z_train),
        precision=pr["precision"], recall=pr["recall"], precision_holdout=ref.get("precision", np.nan),
        dcr_ratio=dcr["median_ratio"],
    )


def run_acc(
    folds: int = 5,
    repeats: int = 3,
    latent_dim: int = 8,
    max_epochs: int | None = None,
    n_samples: int = 10,
    steps: int = 8,
    seed: int = 0,
    modalities: Sequence[str] = ACC_MODALITIES,
) -> dict[str, pd.DataFrame]:
    """Run the benchmark; returns ``r2`` (one row per repeat, fold, target, subset, method),
    ``survival`` (one row per repeat, target, method) and ``privacy`` (per fold, target, model)."""
    from biodiffuse import datasets
    from biodiffuse.data.modality import modality_matrix
    from biodiffuse.models import CoherentDenoising, MultiConditionDiffusion
    from biodiffuse.tl import fit_predictor, predict_output

    mdata = datasets.tcga_acc()
    mods = list(modalities)
    time = mdata.obs["survival_time"].to_numpy(dtype=float)
    event = mdata.obs["survival_event"].to_numpy().astype(bool)
    r2_rows, surv_rows, priv_rows = [], [], []
    for rep in range(repeats):
        risks: dict[tuple[str, str], np.ndarray] = {}
        complete_all = np.zeros(mdata.n_obs, bool)
        for k, (tr, te) in enumerate(KFold(folds, shuffle=True, random_state=seed + rep).split(np.zeros(mdata.n_obs))):
            train, test = mdata[mdata.obs_names[tr]].copy(), mdata[mdata.obs_names[te]].copy()
            models = {}
            for cls in (MultiConditionDiffusion, CoherentDenoising):
                cls.setup_mudata(train, modalities=mods)
                model = cls(train, latent_dim=latent_dim, seed=seed + rep)
                model.train(**({} if max_epochs is None else {"max_epochs": max_epochs}), seed=seed + rep, enable_progress_bar=False)
                models[cls.__name__] = model
            ref = models["MultiConditionDiffusion"]
            zs_tr, p_tr = ref.latents(train)
            zs_te, p_te = ref.latents(test)
            std_te = {}
            for i, t in enumerate(mods):
                x, present = modality_matrix(test, t)
                std_te[t] = np.full((test.n_obs, x.shape[1]), np.nan)
                if present.any():
                    std_te[t][present] = ref._encoder(t).preprocess(x[present])
            # --- R^2 per (target, condition subset)
            for i, t in enumerate(mods):
                enc = ref._encoder(t)
                for subset in condition_subsets(mods, t):
                    s_idx = [mods.index(s) for s in subset]
                    rows_te = np.flatnonzero(p_te[:, i] & p_te[:, s_idx].all(axis=1))
                    rows_tr = np.flatnonzero(p_tr[:, i] & p_tr[:, s_idx].all(axis=1))
                    if len(rows_te) < 2 or len(rows_tr) < 5:
                        continue
                    z_true, f_true = zs_te[i][rows_te], std_te[t][rows_te]
                    preds = {}
                    for name, model in models.items():
                        res = model.sample(test, target=t, conditions=list(subset), n_samples=n_samples, steps=steps, indices=rows_te, seed=seed)
                        preds[name] = (res["latent"].mean(axis=0), output_variance_fraction(res["latent"], z_true))
                        one = model.sample(test, target=t, conditions=list(subset), n_samples=n_samples, steps=1, indices=rows_te, seed=seed)
                        preds[f"{name} 1-step"] = (one["latent"].mean(axis=0), np.nan)
                    cond_tr = np.hstack([zs_tr[j][rows_tr] for j in s_idx])
                    cond_te = np.hstack([zs_te[j][rows_te] for j in s_idx])
                    for name in BASELINES:
                        preds[name] = (fit_predict_modality(name, cond_tr, zs_tr[i][rows_tr], cond_te, seed=seed), 0.0)
                    for name, (zp, vf) in preds.items():
                        r2_rows.append(dict(
                            repeat=rep, fold=k, target=t, conditions="+".join(subset), n_conditions=len(subset),
                            method=name, n_test=len(rows_te), r2_latent=r2_score_modality(z_true, zp),
                            r2_feature=r2_score_modality(f_true, enc.decode(zp, space="standardized")), variance_fraction=vf,
                        ))
            # --- privacy: unconditional draws vs the training patients
            for i, t in enumerate(mods):
                rows_tr, rows_te = np.flatnonzero(p_tr[:, i]), np.flatnonzero(p_te[:, i])
                if len(rows_tr) <= 5 or len(rows_te) < 3:
                    continue
                for name, model in models.items():
                    fake = model.sample(train, target=t, conditions=[], n_samples=1, steps=steps, indices=rows_tr, seed=seed)["latent"][0]
                    priv_rows.append(dict(repeat=rep, fold=k, target=t, method=name, **_privacy_row(fake, zs_tr[i][rows_tr], zs_te[i][rows_te])))
            # --- survival utility on the complete patients
            comp_tr, comp_te = np.flatnonzero(p_tr.all(axis=1)), np.flatnonzero(p_te.all(axis=1))
            complete_all[te[comp_te]] = True
            if len(comp_te) == 0 or len(comp_tr) < 10:
                continue
            cox = fit_predictor({m: zs_tr[j][comp_tr] for j, m in enumerate(mods)}, (time[tr][comp_tr], event[tr][comp_tr]), task="survival")
            real = {m: zs_te[j][comp_te] for j, m in enumerate(mods)}

            def keep(t: str, method: str, risk: np.ndarray) -> None:
                risks.setdefault((t, method), np.full(mdata.n_obs, np.nan))[te[comp_te]] = risk

            for i, t in enumerate(mods):
                keep(t, "real", predict_output(cox, real))
                keep(t, "ablated", predict_output(cox, {**real, t: np.repeat(cox.block_means[t][None], len(comp_te), axis=0)}))
                others = [m for m in mods if m != t]
                for name, model in models.items():
                    lat = model.sample(test, target=t, conditions=others, n_samples=n_samples, steps=steps, indices=comp_te, seed=seed)["latent"]
                    keep(t, name, np.mean([predict_output(cox, {**real, t: d}) for d in lat], axis=0))
                rows_tr = np.flatnonzero(p_tr[:, i] & p_tr[:, [mods.index(o) for o in others]].all(axis=1))
                cond_tr = np.hstack([zs_tr[mods.index(o)][rows_tr] for o in others])
                cond_te = np.hstack([real[o] for o in others])
                for name in BASELINES[1:]:
                    zp = fit_predict_modality(name, cond_tr, zs_tr[i][rows_tr], cond_te, seed=seed)
                    keep(t, name, predict_output(cox, {**real, t: zp}))
            print(f"repeat {rep} fold {k} done", flush=True)
        from lifelines.utils import concordance_index as cindex

        for (t, method), risk in risks.items():
            ok = ~np.isnan(risk)
            surv_rows.append(dict(repeat=rep, target=t, method=method, n=int(ok.sum()),
                                  c_index=cindex(time[ok], -risk[ok], event[ok])))
    return dict(r2=pd.DataFrame(r2_rows), survival=pd.DataFrame(surv_rows), privacy=pd.DataFrame(priv_rows))


def summarize_r2(r2: pd.DataFrame, space: str = "r2_latent") -> pd.DataFrame:
    """Mean R^2 over folds and repeats, (target, conditions) x method."""
    return r2.groupby(["target", "conditions", "method"])[space].mean().unstack("method")


def best_per_target(r2: pd.DataFrame, space: str = "r2_latent") -> pd.DataFrame:
    """Per target: the best subset's R^2 of diffusion (best of the two models and their
    estimators), ridge and kNN, and on how many subsets a diffusion estimate beats both kNN
    and ridge (same subset)."""
    table = summarize_r2(r2, space)
    diff = table[[c for c in table.columns if c.startswith(("MultiConditionDiffusion", "CoherentDenoising"))]].max(axis=1)
    table = table.assign(diffusion_best=diff, diffusion_wins=diff > table[["knn", "ridge"]].max(axis=1))
    return table.groupby(level="target").agg(
        best_subset_diffusion=("diffusion_best", "max"), best_subset_ridge=("ridge", "max"),
        best_subset_knn=("knn", "max"), subsets_won=("diffusion_wins", "sum"), subsets=("diffusion_wins", "size"),
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=None, help="default: the models' (early stopping)")
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/multimodal_acc")
    args = p.parse_args(argv)
    limit_threads(args.threads)
    res = run_acc(args.folds, args.repeats, args.latent_dim, args.max_epochs, args.n_samples, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in res.items():
        frame.to_csv(out / f"acc_{name}.csv", index=False)
    summary = {
        "config": vars(args),
        "best_per_target_latent": json.loads(best_per_target(res["r2"]).to_json(orient="index")),
        "best_per_target_feature": json.loads(best_per_target(res["r2"], "r2_feature").to_json(orient="index")),
        "survival": json.loads(res["survival"].groupby(["target", "method"])["c_index"].agg(["mean", "std"]).reset_index().to_json(orient="records")),
        "privacy": json.loads(res["privacy"].drop(columns=["repeat", "fold"]).groupby(["target", "method"]).mean().reset_index().to_json(orient="records")),
    }
    (out / "acc_summary.json").write_text(json.dumps(summary, indent=1))
    pd.set_option("display.width", 200)
    print("R^2 latent, mean over folds x repeats\n", summarize_r2(res["r2"]).round(3).to_string())
    print("\nbest subset per target (latent)\n", best_per_target(res["r2"]).round(3).to_string())
    print("\nbest subset per target (feature)\n", best_per_target(res["r2"], "r2_feature").round(3).to_string())
    surv = res["survival"].groupby(["target", "method"])["c_index"]
    print("\nC-index (pooled per repeat), mean ± sd over repeats\n",
          (surv.mean().round(3).astype(str) + " ± " + surv.std().round(3).astype(str)).unstack("method").to_string())
    print("\nprivacy (latent space), mean over folds\n",
          res["privacy"].drop(columns=["repeat", "fold"]).groupby(["target", "method"]).mean().round(3).to_string())


if __name__ == "__main__":
    main()
