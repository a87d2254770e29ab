"""The default-training driver (benchmarks/default_training.py) trains each model with its defaults on
its real data set and reports the schedule the defaults chose for those data."""

from __future__ import annotations

import json

import pytest

default_training = pytest.importorskip("default_training")


def test_driver_reports_the_default_schedule_and_projects_capped_runs(tmp_path):
    try:
        res = default_training.main(["--models", "mcd", "spadit", "--cells", "150", "--genes", "24", "--crop", "0", "0", "4000", "4000",
                                     "--max-epochs", "2", "--threads", "1", "--out", str(tmp_path / "d")])
    except FileNotFoundError as err:  # the shared data sets are not beside this checkout
        pytest.skip(str(err))
    rows = {r["model"]: r for r in res["rows"]}
    mcd, spadit = rows["mcd"], rows["spadit"]
    # 135 training cells = 1 batch per epoch: MCD's ~1,500 steps and SpaDiT's ~1,200 are that many epochs
    assert mcd["n_train"] == 135 and mcd["default_epochs"] == 1500 == mcd["default_steps"]
    assert spadit["n_train"] == 135 and spadit["default_epochs"] == 1200
    assert "24 genes" in spadit["data"] and "150 cells" in mcd["data"]
    for r in rows.values():
        assert r["max_epochs"] == r["epochs"] == 2 and not r["early_stopped"]
        assert r["projected_default_s"] == pytest.approx(r["s_per_epoch"] * r["default_epochs"])
        assert r["seconds"] > 0 and r["parameters"] > 0
    saved = json.loads((tmp_path / "d.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["mcd", "spadit"]
    assert "| mcd |" in (tmp_path / "d.md").read_text()


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="Unknown model"):
        default_training.run_model("vae")
