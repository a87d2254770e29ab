"""The few-step sampler driver (benchmarks/sampler_schedule.py) runs end to end on the bundled data:
the schedule is chosen on validation cells and compared on test cells."""

from __future__ import annotations

import json

import pytest

sampler_schedule = pytest.importorskip("sampler_schedule")


def test_driver_tunes_on_validation_and_scores_on_test(tmp_path):
    res = sampler_schedule.main(["--max-epochs", "2", "--nfe", "3", "--n-samples", "3", "--reference-steps", "4",
                                 "--euler-steps", "1", "3", "--out", str(tmp_path / "s")])
    val, test = res["validation"], res["test"]
    assert list(val["crps"]) == sorted(val["crps"]) and (val["nfe"] <= 3).all()
    chosen = test.iloc[0]
    assert chosen["sampler"] == "chosen on validation" and chosen["nfe"] <= 3
    assert chosen["solver"] == val.iloc[0]["solver"] and chosen["sigma_max"] == val.iloc[0]["sigma_max"]
    assert {"EDM Heun, 3 steps", "EDM Heun, 4 steps", "default schedule, 3 Euler steps"} <= set(test["sampler"])
    assert (test["crps"] > 0).all() and test["coverage80"].between(0, 1).all() and (test["cells_per_s"] > 0).all()
    assert test.set_index("sampler").loc["EDM Heun, 4 steps", "nfe"] == 7
    saved = json.loads((tmp_path / "s.json").read_text())
    assert len(saved["validation"]) == len(val) and "Test cells" in (tmp_path / "s.md").read_text()
