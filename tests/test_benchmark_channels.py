"""The any-subset driver (benchmarks/channels.py) on the bundled dsb ADT data: point and
distribution scores of MCD and the baselines on the same held-out protein sets."""

from __future__ import annotations

import numpy as np
import pytest

channels = pytest.importorskip("channels")


def test_held_out_sets_are_scored_as_points_and_distributions():
    res = channels.run(n_random=1, max_epochs=2, steps=(1, 2), n_samples=3, baselines=("ridge", "knn"))
    rows = {(r["held_out"], r["method"]): r for r in res["rows"]}
    methods = {"MCD (1 step)", "MCD (2 steps)", "ridge", "knn", "ridge + gaussian", "ridge + residuals", "knn + neighbours"}
    assert set(rows) == {(s, m) for s in ("fixed", "random_0") for m in methods}
    for s in ("fixed", "random_0"):
        held = res["missing_sets"][s]
        for m in methods - {"ridge", "knn"}:
            r = rows[(s, m)]
            assert set(r["per_channel"]) == set(held)
            assert r["crps"] > 0 and r["energy_score"] > 0 and 0 <= r["coverage50"] <= r["coverage80"] <= r["coverage90"] <= 1
        assert "crps" not in rows[(s, "ridge")] or np.isnan(rows[(s, "ridge")]["crps"])
        # tables sample with DPM-Solver++ 2M: one network evaluation per step and draw
        assert rows[(s, "MCD (2 steps)")]["nfe_per_cell"] == 3 * 2 and rows[(s, "MCD (1 step)")]["nfe_per_cell"] == 3
        # the neighbours' mean is a kNN prediction: close to, not far from, the kNN baseline's accuracy
        assert abs(rows[(s, "knn + neighbours")]["mean_r"] - rows[(s, "knn")]["mean_r"]) < 0.15
    text = channels.format_distribution(res)
    assert "CRPS (3 draws per cell" in text and "| ridge + residuals |" in text and "| ridge |" not in text


def test_recentre_adds_rows_centred_on_the_one_step_mean():
    """--recentre adds recentred rows; --sampler reaches the model (Heun: 3 evaluations for 2 steps)."""
    heun = dict(solver="heun", sigma_max=10.0, sigma_min=0.05, rho=7.0)
    res = channels.run(n_random=0, max_epochs=2, steps=(1, 2), n_samples=3, baselines=(), recentre=True, sampler=heun)
    assert res["sampler"] == heun
    rows = {r["method"]: r for r in res["rows"] if r["held_out"] == "fixed"}
    assert {"MCD (1 step)", "MCD (2 steps)", "MCD (2 steps, recentred)"} <= set(rows) and "MCD (1 step, recentred)" not in rows
    rc = rows["MCD (2 steps, recentred)"]
    assert rc["nfe_per_cell"] == 3 * 3
    assert rc["mean_r"] == pytest.approx(rows["MCD (1 step)"]["mean_r"], rel=1e-6)  # the same one-step mean
    assert rc["crps"] != rows["MCD (2 steps)"]["crps"]
