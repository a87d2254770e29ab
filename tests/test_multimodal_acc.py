"""TCGA ACC benchmark helpers: condition subsets and the per-target summary."""

from __future__ import annotations

import pandas as pd
import pytest

from multimodal_acc import best_per_target, condition_subsets, summarize_r2


def test_condition_subsets_cover_every_nonempty_subset_without_target() -> None:
    subsets = condition_subsets(["a", "b", "c", "d"], "b")
    assert len(subsets) == 7 and len(set(subsets)) == 7
    assert all("b" not in s and len(s) >= 1 for s in subsets)
    assert subsets[0] == ("a",) and subsets[-1] == ("a", "c", "d")
    assert condition_subsets(["a", "b"], "a") == [("b",)]


def test_best_per_target_counts_subsets_won() -> None:
    rows = []
    scores = {  # (target, conditions) -> method -> r2
        ("x", "y"): dict(MultiConditionDiffusion=0.5, CoherentDenoising=0.1, knn=0.2, ridge=0.4, mean=0.0),
        ("x", "z"): dict(MultiConditionDiffusion=0.1, CoherentDenoising=0.2, knn=0.3, ridge=0.25, mean=0.0),
        ("y", "x"): dict(MultiConditionDiffusion=-0.1, CoherentDenoising=0.05, knn=0.0, ridge=0.01, mean=0.0),
    }
    for (t, c), per in scores.items():
        for method, r2 in per.items():
            for fold, shift in ((0, 0.1), (1, -0.1)):  # folds average back to the value above
                rows.append(dict(target=t, conditions=c, method=method, fold=fold, r2_latent=r2 + shift))
    r2 = pd.DataFrame(rows)
    assert summarize_r2(r2).loc[("x", "y"), "ridge"] == pytest.approx(0.4)
    best = best_per_target(r2)
    assert best.loc["x", "subsets_won"] == 1 and best.loc["x", "subsets"] == 2
    assert best.loc["x", "best_subset_diffusion"] == pytest.approx(0.5)
    assert best.loc["y", "subsets_won"] == 1
