"""The few-step sampler driver (benchmarks/sampler_schedule.py) runs end to end on the bundled data:
the schedule is chosen on validation cells and compared on test cells."""

from __future__ import annotations

import json

import pytest

import biodiffuse as bd

sampler_schedule = pytest.importorskip("sampler_schedule")


def test_driver_tunes_on_validation_and_scores_on_test(tmp_path):
    res = sampler_schedule.main(["--max-epochs", "2", "--nfe", "3", "--n-samples", "3", "--reference-steps", "4",
                                 "--euler-steps", "1", "3", "--dpm2m-steps", "2", "--out", str(tmp_path / "s")])
    val, test = res["validation"], res["test"]
    assert list(val["crps_fair"]) == sorted(val["crps_fair"]) and (val["nfe"] <= 3).all()
    chosen = test.iloc[0]
    assert chosen["sampler"] == "chosen on validation" and chosen["nfe"] <= 3
    assert chosen["solver"] == val.iloc[0]["solver"] and chosen["sigma_max"] == val.iloc[0]["sigma_max"]
    assert {"EDM Heun, 3 steps", "EDM Heun, 4 steps", "default schedule, 3 Euler steps"} <= set(test["sampler"])
    assert (test["crps"] > 0).all() and test["coverage80"].between(0, 1).all() and (test["cells_per_s"] > 0).all()
    assert test.set_index("sampler").loc["EDM Heun, 4 steps", "nfe"] == 7
    dpm = test.set_index("sampler").loc["default schedule, 2 DPM++ 2M steps"]  # the default schedule, the other solver
    assert dpm["solver"] == "dpm2m" and dpm["nfe"] == 2 and dpm["sigma_max"] == test.iloc[1]["sigma_max"]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert len(saved["validation"]) == len(val) and "Test cells" in (tmp_path / "s.md").read_text()


def test_exact_gaussian_spread_shows_few_euler_steps_narrow_the_draws():
    """With the exact denoiser the ODE carries N(0, sigma_max^2) to the target: many Euler steps
    give the target's variance, few give less (the solver, not the network, narrows them)."""
    table = sampler_schedule.exact_gaussian_spread(n=4000, euler_steps=(1, 3, 5, 50, 200), heun_steps=(18,))
    euler = table[table["sampler"] == "MCD table default"].set_index("steps")["variance_ratio"]
    assert list(euler.index) == [1, 3, 5, 50, 200] and euler.is_monotonic_increasing
    assert abs(euler[200] - 1.0) < 0.06 and euler[5] < 0.6 and euler[1] < 0.01
    heun = table[table["sampler"] == "EDM Heun"].iloc[0]
    assert heun["nfe"] == 35 and abs(heun["variance_ratio"] - 1.0) < 0.2
    # the coverage of a central 80 % interval of calibrated Gaussian draws is 0.8
    row = table[(table["sampler"] == "MCD table default") & (table["steps"] == 200)].iloc[0]
    assert abs(row["coverage80"] - 0.8) < 0.01
    assert (table["sampler"] == "grid at 5 NFE").sum() == len(bd.diffusion.schedule_grid(5))


def test_few_draws_coverage_shows_the_span_of_draws_under_covers(tmp_path):
    res = sampler_schedule.main(["--few-draws", "--out", str(tmp_path / "f")])["few_draws"]
    pit = res[res["method"] == "pit"].set_index("draws")
    span = res[res["method"] == "quantile"].set_index("draws")
    assert list(pit.index) == [4, 10, 20, 100]
    assert ((pit["coverage90"] - 0.9).abs() < 0.015).all()  # calibrated by the PIT at any number of draws
    assert abs(span.loc[10, "coverage90"] - 0.76) < 0.02 and span["coverage90"].is_monotonic_increasing
    assert "quantile" in (tmp_path / "f.md").read_text()


def test_exact_gaussian_dpm2m_keeps_the_spread_at_few_steps():
    """DPM-Solver++ 2M on the same schedule reaches the target's variance at 5 steps, where
    Euler gives half of it (the measured case for adding it to the tuning grid)."""
    table = sampler_schedule.exact_gaussian_spread(n=4000, euler_steps=(5,), heun_steps=(), dpm2m_steps=(5,),
                                                   solvers=("euler", "dpm2m"))
    by = table.set_index("sampler")
    assert by.loc["MCD table default", "variance_ratio"] < 0.6
    dpm = by.loc["MCD table schedule, DPM-Solver++ 2M"]
    assert dpm["nfe"] == 5 and abs(dpm["variance_ratio"] - 1.0) < 0.06
    assert set(table.loc[table["sampler"] == "grid at 5 NFE", "solver"]) == {"euler", "dpm2m"}
