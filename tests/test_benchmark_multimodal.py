"""The TCGA BRCA driver (benchmarks/multimodal.py) scores the modality models' draws and the
baselines' draws as distributions of the protein values."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA

multimodal = pytest.importorskip("multimodal")


def test_distribution_scores_use_the_training_scale():
    from biodiffuse.metrics import score_draws

    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.0])
    truth = rng.normal(size=(200, 3)) * np.array([1.0, 10.0, 1.0])
    calibrated = rng.normal(size=(40, 200, 3)) * np.array([1.0, 10.0, 1.0])
    s = multimodal.distribution_scores(truth, calibrated, scale)
    ref = score_draws(truth / [1.0, 10.0, 1.0], calibrated.transpose(1, 0, 2) / [1.0, 10.0, 1.0])
    assert s == {f"dist_{k}": v for k, v in ref.items()}
    assert 0.85 < s["dist_coverage90"] < 0.95
    narrow = multimodal.distribution_scores(truth, calibrated * 0.2, scale)
    assert narrow["dist_coverage90"] < 0.4 and narrow["dist_crps"] > s["dist_crps"]


@pytest.mark.skipif(not (SHARED_DATA / "tcga").exists(), reason="needs ../shared/data/tcga")
def test_brca_folds_carry_distribution_rows():
    table = multimodal.run_brca(folds=2, max_epochs=2, n_samples=3, steps=2, tune_nfe=(3,), solvers=("dpm2m",), recentre=True)
    methods = set(table["method"])
    assert {"ridge + gaussian", "ridge + residuals", "knn + neighbours", "MultiConditionDiffusion", "CoherentDenoising"} <= methods
    for m in ("ridge + gaussian", "knn + neighbours", "MultiConditionDiffusion", "CoherentDenoising"):
        sub = table[table.method == m]
        assert len(sub) == 2 and np.isfinite(sub[["dist_crps", "dist_energy_score", "dist_coverage90"]].to_numpy()).all()
    assert table.loc[table.method == "ridge", "r2_feature"].notna().all()
    assert table.loc[table.method == "ridge + gaussian", "r2_feature"].isna().all()
    # the draws' cost per draw: Heun 2 steps = 3 evaluations; a consensus of two pairs twice that per pass
    nfe = table.groupby("method")["nfe"].mean()
    assert nfe["MultiConditionDiffusion"] == 3 and nfe["MultiConditionDiffusion 1-step"] == 1
    assert nfe["CoherentDenoising"] >= 6 and nfe["CoherentDenoising 1-step"] >= 2
    tuned = table[table.method == "MultiConditionDiffusion tuned 3"]
    assert len(tuned) == 2 and (tuned["nfe"] == 3).all() and tuned["schedule"].str.match(r"dpm2m 3, sigma").all()  # the grid's solvers
    assert np.isfinite(tuned["dist_crps"]).all()
    assert (table.loc[table.method == "CoherentDenoising tuned 3", "nfe"] >= 6).all()
    # --recentre: the multi-step draws again, centred on their one-step mean, at the same cost
    for m in ("MultiConditionDiffusion", "CoherentDenoising", "MultiConditionDiffusion tuned 3"):
        plain, rc = table[table.method == m].reset_index(), table[table.method == f"{m} recentred"].reset_index()
        assert len(rc) == 2 and np.isfinite(rc["dist_crps"]).all() and (rc["dist_crps"] != plain["dist_crps"]).all()
    assert nfe["MultiConditionDiffusion recentred"] == 3 and "MultiConditionDiffusion 1-step recentred" not in set(table["method"])
    assert (table.loc[table.method == "MultiConditionDiffusion tuned 3 recentred", "schedule"].str.match(r"dpm2m 3")).all()
