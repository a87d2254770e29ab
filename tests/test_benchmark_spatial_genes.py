"""The spatial-genes driver's distribution mode (benchmarks/spatial_genes.py --distribution):
SpaDiT's and kNN's draws of the held-out genes, K-fold over genes, scored as distributions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold

from test_spadit import GENES, _cells

spatial_genes = pytest.importorskip("spatial_genes")

TINY = dict(dim=16, depth=1, heads=2, ref_heads=1, bank_size=16)


def test_distribution_folds_score_spadit_and_knn_draws(tmp_path):
    from biodiffuse.baselines import fit_predict_knn_draws
    from biodiffuse.metrics import score_draws

    sc, sp = _cells(120, 1, GENES), _cells(60, 2, GENES)
    euler = dict(solver="euler", sigma_max=10.0, sigma_min=0.002, rho=7.0)
    per_fold = spatial_genes.kfold_distribution(sp, sc, n_folds=5, max_folds=3, steps=(1, 2), samplers=[euler],
                                                sampler_steps=(2,), tune_nfe=3, solvers=("dpm2m",), n_samples=4, k=10, max_epochs=2,
                                                save=tmp_path / "folds.csv", **TINY)
    import pandas as pd

    saved = pd.read_csv(tmp_path / "folds.csv")  # rewritten after every fold
    np.testing.assert_allclose(saved["crps"], per_fold["crps"])
    methods = ["kNN + neighbours", "kNN + gaussian", "SpaDiT (1 step)", "SpaDiT (2 steps)", "SpaDiT (euler 2, sigma 10, rho 7)",
               "SpaDiT (tuned, 3 evaluations)"]
    assert list(per_fold["method"]) == methods * 3 and list(per_fold["fold"]) == [0] * 6 + [1] * 6 + [2] * 6
    tuned = per_fold[per_fold.method == methods[-1]]  # the tuned schedule costs the evaluations asked for
    assert list(tuned["nfe"]) == [3, 3, 3] and (tuned["tuned_solver"] == "dpm2m").all()  # the grid's solvers
    assert (tuned["tuned_steps"] == 3).all()
    assert list(per_fold.loc[per_fold.method == "SpaDiT (2 steps)", "nfe"]) == [3, 3, 3]
    by = per_fold.set_index(["fold", "method"])["crps"]  # the extra sampler is used, and the model's kept for the rest
    assert list(per_fold.loc[per_fold.method == methods[4], "nfe"]) == [2, 2, 2]
    assert all(by[(f, methods[4])] != by[(f, "SpaDiT (2 steps)")] for f in range(3))
    for col in ("coverage50", "coverage80", "coverage90"):
        assert per_fold[col].between(0, 1).all()
    assert np.isfinite(per_fold[["crps", "energy_score", "r_p"]].to_numpy()).all()

    # the kNN row of fold 2 (2 genes; folds 0 and 1 hold 3), scored independently: the same genes, truth and draws
    genes = sorted(GENES)
    tr, te = list(KFold(5, shuffle=True, random_state=0).split(genes))[2]
    known, test = [genes[i] for i in tr], [genes[i] for i in te]
    truth = spatial_genes.held_out_truth(sp, known, test).to_numpy()
    draws = fit_predict_knn_draws(sp[:, known].copy(), sc, test, n_samples=4, k=10, seed=0)["draws"]
    row = per_fold[(per_fold.fold == 2) & (per_fold.method == "kNN + neighbours")].iloc[0]
    expected = score_draws(truth, draws)
    assert row["n_genes"] == len(test)
    np.testing.assert_allclose([row["crps"], row["energy_score"], row["r_p"]],
                               [expected["crps"], expected["energy_score"], expected["r_p"]], rtol=1e-10)

    # --resume: the saved folds are kept and not run again; the rest gives the same rows
    fits = []
    real_fit = spatial_genes._fit_spadit
    spatial_genes._fit_spadit = lambda *a, **k: fits.append(1) or real_fit(*a, **k)
    try:
        resumed = spatial_genes.kfold_distribution(sp, sc, n_folds=5, max_folds=3, steps=(1, 2), samplers=[euler],
                                                   sampler_steps=(2,), tune_nfe=3, solvers=("dpm2m",), n_samples=4, k=10, max_epochs=2,
                                                   resume=saved[saved.fold < 2], **TINY)
    finally:
        spatial_genes._fit_spadit = real_fit
    assert len(fits) == 1 and list(resumed["fold"]) == list(per_fold["fold"])
    np.testing.assert_allclose(resumed["crps"], per_fold["crps"], rtol=1e-6)
    import argparse
    import json

    (tmp_path / "distribution_per_fold.csv").write_text((tmp_path / "folds.csv").read_text())
    settings = dict(folds=5, steps=[1, 2], n_samples=4, max_epochs=2, spadit="{}")
    (tmp_path / "distribution.json").write_text(json.dumps({"settings": settings}))
    assert len(spatial_genes._resumable(tmp_path, argparse.Namespace(**settings))) == 18  # saved before --samplers
    with pytest.raises(ValueError, match="samplers"):
        spatial_genes._resumable(tmp_path, argparse.Namespace(**settings, samplers=["euler,10,0.002,7"], sampler_steps=[5]))
    with pytest.raises(ValueError, match="n_samples"):
        spatial_genes._resumable(tmp_path, argparse.Namespace(**{**settings, "n_samples": 10}))

    table = spatial_genes.summarize_distribution(per_fold)
    g = per_fold[per_fold.method == "SpaDiT (1 step)"]
    np.testing.assert_allclose(table.loc["SpaDiT (1 step)", "crps"], (g.crps * g.n_genes).sum() / g.n_genes.sum())
    np.testing.assert_allclose(table.loc["SpaDiT (1 step)", "energy_score"], g.energy_score.mean())
    assert list(g.n_genes) == [3, 3, 2]
    assert table.loc["kNN + gaussian", "folds"] == 3 and np.isnan(table.loc["kNN + gaussian", "fit_s"])


def test_distribution_recentre_adds_recentred_rows():
    sc, sp = _cells(120, 1, GENES), _cells(60, 2, GENES)
    per_fold = spatial_genes.kfold_distribution(sp, sc, n_folds=5, max_folds=1, steps=(1, 2), recentre=True, n_samples=4, k=10,
                                                max_epochs=2, **TINY)
    by = per_fold.set_index("method")
    assert list(by.index[2:]) == ["SpaDiT (1 step)", "SpaDiT (2 steps)", "SpaDiT (2 steps, recentred)"]
    assert by.loc["SpaDiT (2 steps, recentred)", "nfe"] == by.loc["SpaDiT (2 steps)", "nfe"]  # recentring is free
    assert by.loc["SpaDiT (2 steps, recentred)", "crps"] != by.loc["SpaDiT (2 steps)", "crps"]
