"""Few-step sampling for MCD gene -> protein: which solver and noise schedule, chosen on
validation cells only, and how it compares with many steps on held-out cells.

Run ``python benchmarks/sampler_schedule.py --help``. One split of the bundled ECCITE-seq PBMC
(``KFold(5, shuffle, seed)`` fold 0: 400 training / 100 test cells; the training run holds out
10 % of its cells for early stopping). MCD trains once with its defaults (``--max-epochs``
caps the epochs). Then:

1. :meth:`~biodiffuse.models.MCD.tune_sampler` scores every candidate of
   :func:`~biodiffuse.diffusion.schedule_grid` at ``--nfe`` network evaluations per draw on the
   validation cells (CRPS of the draws, normalised scale) and keeps the best;
2. on the test cells, the chosen sampler is compared with EDM's Heun sampler from
   ``sigma_max = 80`` at 3 steps (5 evaluations) and at ``--reference-steps`` steps, and with
   Euler at more steps (how few-step samples approach the ODE's).

Every row: mean per-protein Pearson of the draws' mean (r_p), CRPS (mean over proteins and
cells), central-80 % coverage, network evaluations per draw and imputation cells / s.

``--exact-gaussian`` instead runs the samplers with the *exact* denoiser of Gaussian data
(``N(0, sigma_data^2)``, no network, no training): the variance of the draws over the target's
shows what the solver and schedule alone do to the spread of few-step draws, and the central
80 % interval of such draws covers ``2 Phi(1.2816 sqrt(ratio)) - 1`` of the target's values.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biodiffuse.data import ChannelNormalizer, get_obsm_frame
from biodiffuse.diffusion import heun_sampler, network_evaluations, schedule_grid
from biodiffuse.diffusion.edm import TUNED_SOLVERS
from biodiffuse.metrics import score_draws
from biodiffuse.models import MCD

__all__ = ["run", "main"]

KEY = "protein_expression"
HEUN_EDM = dict(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)


def _score(model: MCD, query, y: np.ndarray, settings: dict[str, Any], steps: int, n_samples: int, seed: int) -> dict[str, Any]:
    before = model.sampler_settings
    model.set_sampler(**settings)
    try:
        t0 = time.perf_counter()
        post = model.posterior(query, n_samples=n_samples, steps=steps, seed=seed, return_draws=True)
        el = time.perf_counter() - t0
        nfe = model.network_evaluations(steps=steps)
    finally:
        model.set_sampler(**before)
    s = score_draws(y, post["draws_normalized"], levels=(0.8,), energy=False)
    return dict(**settings, steps=steps, nfe=nfe, r_p=s["r_p"], crps=s["crps"], crps_fair=s["crps_fair"], coverage80=s["coverage80"], cells_per_s=len(y) / el)


TABLE_DEFAULT = dict(solver="euler", sigma_max=10.0, sigma_min=0.05, rho=7.0)


def exact_gaussian_spread(
    sigma_data: float = 0.5, n: int = 20000, nfe: int = 5, seed: int = 0,
    euler_steps: tuple[int, ...] = (1, 2, 3, 5, 10, 18, 50, 200), heun_steps: tuple[int, ...] = (2, 3, 5, 18),
    solvers: tuple[str, ...] = TUNED_SOLVERS, dpm2m_steps: tuple[int, ...] = (),
) -> pd.DataFrame:
    """Variance of ``n`` draws over the target's for the exact denoiser of ``N(0, sigma_data^2)``:
    MCD's table sampler at ``euler_steps`` (and, with DPM-Solver++ 2M in place of Euler, at
    ``dpm2m_steps``), EDM's Heun from 80 at ``heun_steps``, and every schedule of
    ``schedule_grid(nfe, solvers=solvers)`` (``sampler`` column says which)."""
    import torch
    from scipy.stats import norm

    s2 = float(sigma_data) ** 2

    def exact(x, sigma, cond=None):
        return x * s2 / (s2 + sigma.reshape(-1)[0].to(x.dtype) ** 2)

    lat = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = []

    def add(name: str, steps: int, settings: dict[str, Any]) -> None:
        ratio = float(heun_sampler(exact, lat, steps=steps, **settings).var()) / s2
        rows.append(dict(sampler=name, **settings, steps=steps, nfe=network_evaluations(steps, settings["solver"]), variance_ratio=ratio,
                         coverage80=float(2 * norm.cdf(1.2816 * np.sqrt(ratio)) - 1)))

    for st in euler_steps:
        add("MCD table default", st, TABLE_DEFAULT)
    for st in dpm2m_steps:
        add("MCD table schedule, DPM-Solver++ 2M", st, {**TABLE_DEFAULT, "solver": "dpm2m"})
    for st in heun_steps:
        add("EDM Heun", st, HEUN_EDM)
    for cand in schedule_grid(nfe, solvers=solvers):
        add(f"grid at {nfe} NFE", cand["steps"], {k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
    return pd.DataFrame(rows)


def run(max_epochs: int | None = 600, nfe: int = 5, n_samples: int = 10, reference_steps: int = 500, seed: int = 0,
        euler_steps: tuple[int, ...] = (1, 3, 5, 10, 18, 50, 200), mcd_kwargs: dict[str, Any] | None = None,
        solvers: tuple[str, ...] = TUNED_SOLVERS, dpm2m_steps: tuple[int, ...] = ()) -> dict[str, Any]:
    """Train once, tune on validation cells (``schedule_grid(nfe, solvers=solvers)``), score on
    test cells (also the default schedule with DPM-Solver++ 2M at ``dpm2m_steps``); returns the tables."""
    from sklearn.model_selection import KFold

    from biodiffuse.datasets import eccite_pbmc

    adata = eccite_pbmc()
    tr, te = next(KFold(5, shuffle=True, random_state=seed).split(np.arange(adata.n_obs)))
    train, test = adata[tr].copy(), adata[te].copy()
    MCD.setup_anndata(train, protein_obsm_key=KEY)
    model = MCD(train, **(mcd_kwargs or {}))
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, seed=seed)
    fit_s = time.perf_counter() - t0
    default = model.sampler_settings

    val_table = model.tune_sampler(nfe=nfe, n_samples=n_samples, seed=seed, candidates=schedule_grid(nfe, solvers=solvers))
    chosen = model.sampler_settings
    query = test.copy()
    del query.obsm[KEY]
    y = ChannelNormalizer.from_dict(model.registry["normalizer"]).transform(get_obsm_frame(test, KEY)[model.target_names].to_numpy(float))
    rows = [dict(sampler="chosen on validation", **_score(model, query, y, chosen, int(val_table.iloc[0]["steps"]), n_samples, seed)),
            dict(sampler="MCD default", **_score(model, query, y, default, nfe if default["solver"] == "euler" else (nfe + 1) // 2, n_samples, seed)),
            dict(sampler="EDM Heun, 3 steps", **_score(model, query, y, HEUN_EDM, 3, n_samples, seed)),
            dict(sampler=f"EDM Heun, {reference_steps} steps", **_score(model, query, y, HEUN_EDM, reference_steps, n_samples, seed))]
    for steps in euler_steps:
        rows.append(dict(sampler=f"default schedule, {steps} Euler steps", **_score(model, query, y, default, steps, n_samples, seed)))
    for steps in dpm2m_steps:
        rows.append(dict(sampler=f"default schedule, {steps} DPM++ 2M steps",
                         **_score(model, query, y, {**default, "solver": "dpm2m"}, steps, n_samples, seed)))
    test_table = pd.DataFrame(rows)
    return dict(n_train=len(tr), n_validation=len(model.validation_indices), n_test=len(te), epochs=len(model.history), fit_s=fit_s,
                validation=val_table, test=test_table)


def few_draws_coverage(n_draws: tuple[int, ...] = (4, 10, 20, 100), n: int = 20000, seed: int = 0) -> pd.DataFrame:
    """Coverage of central 50 / 80 / 90 % intervals when the draws and the truth come from the same
    distribution (a calibrated model), by the PIT (``interval_coverage``'s default) and by the span
    of the draws (``method="quantile"``, how the tables before 2026-12-02 measured it)."""
    from biodiffuse.metrics import interval_coverage

    rng = np.random.default_rng(seed)
    rows = []
    for k in n_draws:
        y, draws = rng.normal(size=(n, 1)), rng.normal(size=(n, int(k), 1))
        for method in ("pit", "quantile"):
            cov = interval_coverage(y, draws, method=method).iloc[0]
            rows.append(dict(draws=int(k), method=method, **{f"coverage{round(100 * q)}": float(v) for q, v in cov.items()}))
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{v:g}" if float(v).is_integer() else f"{v:.1f}" if abs(v) >= 10 else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def format_tables(res: dict[str, Any]) -> str:
    """The validation ranking (best 8) and the test comparison as markdown tables."""
    cols = ["solver", "steps", "nfe", "sigma_max", "sigma_min", "rho", "crps", "crps_fair", "r_p", "coverage80"]
    val = _markdown(res["validation"][cols].head(8))
    test = _markdown(res["test"][["sampler"] + cols + ["cells_per_s"]])
    return f"Validation cells (best 8 of {len(res['validation'])} candidates):\n\n{val}\n\nTest cells:\n\n{test}\n"


def _write_table(out: str, text: str, table: pd.DataFrame) -> None:
    """Print ``text`` and write it to ``{out}.md``, and ``table``'s rows to ``{out}.json``."""
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.md").write_text(text + "\n")
    Path(f"{path}.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-epochs", type=int, default=600)
    p.add_argument("--nfe", type=int, default=5, help="network evaluations per draw to tune for")
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--reference-steps", type=int, default=500)
    p.add_argument("--euler-steps", type=int, nargs="*", default=[1, 3, 5, 10, 18, 50, 200])
    p.add_argument("--solvers", nargs="+", default=list(TUNED_SOLVERS), choices=["heun", "euler", "dpm2m"],
                   help="solvers of the tuning grid (and of the exact-Gaussian grid)")
    p.add_argument("--dpm2m-steps", type=int, nargs="*", default=[],
                   help="also score the default schedule with DPM-Solver++ 2M at these steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--P-mean", type=float, default=None, help="MCD's training noise, ln sigma ~ N(P_mean, P_std^2) (default EDM's)")
    p.add_argument("--P-std", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--exact-gaussian", action="store_true",
                   help="instead: the samplers' spread with the exact denoiser of Gaussian data (no training)")
    p.add_argument("--few-draws", action="store_true",
                   help="instead: the coverage a calibrated model's draws get, by the PIT and by the span of 4 / 10 / 20 / 100 draws")
    p.add_argument("--out", default="results/sampler_schedule")
    args = p.parse_args(argv)
    from _cli import limit_threads  # sibling module of the drivers

    limit_threads(args.threads)
    if args.few_draws:
        table = few_draws_coverage(seed=args.seed)
        text = ("Draws and truth from the same distribution (20,000 cells): coverage of central intervals, by the PIT "
                "and by the span of the draws\n\n" + _markdown(table))
        _write_table(args.out, text, table)
        return {"few_draws": table}
    if args.exact_gaussian:
        table = exact_gaussian_spread(nfe=args.nfe, seed=args.seed, solvers=tuple(args.solvers), dpm2m_steps=tuple(args.dpm2m_steps))
        grid = table[table["sampler"].str.startswith("grid")]
        best = grid.iloc[[int(np.argmin(np.abs(np.log(grid["variance_ratio"]))))]]
        shown = pd.concat([table[~table["sampler"].str.startswith("grid")], best.assign(sampler=f"closest of the grid at {args.nfe} NFE")])
        text = ("Exact denoiser of N(0, 0.5^2), 20,000 draws: variance of the draws / the target's, and the coverage of "
                "their central 80 % interval\n\n" + _markdown(shown.reset_index(drop=True)))
        _write_table(args.out, text, table)
        return {"exact_gaussian": table}
    noise = {k: v for k, v in (("P_mean", args.P_mean), ("P_std", args.P_std)) if v is not None}
    res = run(args.max_epochs, args.nfe, args.n_samples, args.reference_steps, args.seed, tuple(args.euler_steps), noise,
              tuple(args.solvers), tuple(args.dpm2m_steps))
    header = (f"eccite_pbmc500, fold 0 of KFold(5, seed {args.seed}): {res['n_train']} training cells "
              f"({res['n_validation']} of them validation), {res['n_test']} test; MCD trained {res['epochs']} epochs "
              f"in {res['fit_s']:.0f} s; {args.n_samples} draws per cell; tuned at {args.nfe} evaluations per draw"
              + "".join(f"; {k}={v}" for k, v in noise.items()))
    text = header + "\n\n" + format_tables(res)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(text)
    Path(f"{out}.json").write_text(json.dumps({"header": header, "args": vars(args),
                                               "validation": res["validation"].to_dict(orient="records"),
                                               "test": res["test"].to_dict(orient="records")}, indent=1))
    return res


if __name__ == "__main__":
    main()
