"""The gene -> protein benchmark driver (benchmarks/citeseq.py) runs end to end and scores
distributions: a tiny run on the bundled data, and the donor split on the Abseq data."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from conftest import SHARED_DATA

citeseq = pytest.importorskip("citeseq")


def test_driver_scores_points_and_distributions(tmp_path):
    out = tmp_path / "res"
    res = citeseq.main([
        "--max-folds", "1", "--max-epochs", "2", "--steps", "1", "3", "--n-samples", "3",
        "--skip", "krr", "--point-draws", "1", "3", "--tune-nfe", "3", "--recentre", "--sampler", "heun,10,0.05,7", "--out", str(out),
    ])
    rows = {r["method"]: r for r in res["rows"]}
    # --recentre: the 3-step draws centred on the one-step mean (same per-cell streams), at no extra evaluation
    rc = rows["MCD (3 steps, recentred)"]
    assert rc["r_p_norm"] == pytest.approx(rows["MCD (1 step)"]["r_p_norm"], rel=1e-6)
    assert rc["nfe_per_cell"] == 3 * 5 and "MCD (1 step, recentred)" not in rows  # --sampler: Heun, 3 steps = 5 evaluations
    # the mean of 3 one-step draws is the 3-draw posterior's mean: the same per-cell streams
    assert rows["MCD (mean of 3 x 1 step)"]["r_p_norm"] == pytest.approx(rows["MCD (1 step)"]["r_p_norm"], rel=1e-9)
    assert rows["MCD (mean of 1 x 1 step)"]["r_p_norm"] != pytest.approx(rows["MCD (1 step)"]["r_p_norm"], rel=1e-6)
    assert [rows[f"MCD (mean of {k} x 1 step)"]["nfe_per_cell"] for k in (1, 3)] == [1, 3]
    assert rows["MCD (mean of 1 x 1 step)"]["impute_s_per_10k"] > 0
    # --tune-nfe 3: the sampler chosen on validation cells (plain and recentred), scored again with its point rows
    tuned = [m for m in rows if "tuned at 3 NFE" in m]
    assert len(tuned) == 4 and sum(m.endswith("steps, recentred)") for m in tuned) == 1
    assert all(rows[m]["nfe_per_cell"] in (1, 3) for m in tuned if "mean of" in m)
    assert all(rows[m]["nfe_per_cell"] == 3 * 3 for m in tuned if "mean of" not in m)
    assert {"MCD (1 step)", "MCD (3 steps)", "ridge", "knn", "mean", "ridge + gaussian", "ridge + residuals", "knn + neighbours"} <= set(rows)
    assert "krr" not in rows
    for m in ("MCD (3 steps)", "ridge + gaussian", "knn + neighbours"):
        r = rows[m]
        assert r["crps_norm"] > 0 and r["es_norm"] > 0
        assert 0 < r["crps_fair_norm"] < r["crps_norm"] and 0 < r["es_fair_norm"] < r["es_norm"]  # the ensemble's own scores carry its spread / (2 s)
        assert 0 <= r["cov50"] <= r["cov80"] <= r["cov90"] <= 1
    # a point method has no distribution score; the ridge mean is the same with or without draws
    assert "crps_norm" not in rows["mean"] or rows["mean"]["crps_norm"] is None
    assert np.isclose(rows["ridge + gaussian"]["r_p_norm"], rows["ridge"]["r_p_norm"])
    md = (tmp_path / "res.md").read_text()
    assert "| CRPS | energy score |" in md and "ridge + residuals" in md
    assert json.loads((tmp_path / "res.json").read_text())["dataset"] == "eccite_pbmc500"
    assert res["complete"] is True and "INTERRUPTED" not in res["header"]


@pytest.mark.skipif(not (SHARED_DATA / "citeseq" / "triana_bm_abseq.h5ad").is_file(), reason="needs the shared Abseq data")
def test_donor_split_holds_out_whole_donors(tmp_path, monkeypatch):
    built = {}
    init = citeseq.MCD.__init__

    def spy(self, *args, **kwargs):  # --residual reaches the model
        built.update(kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(citeseq.MCD, "__init__", spy)
    res = citeseq.main([
        "--dataset", "abseq", "--split", "donor", "--max-folds", "1", "--train-cells", "300", "--residual", "ridge",
        "--max-epochs", "1", "--steps", "1", "--n-samples", "1", "--skip", "krr", "knn", "--out", str(tmp_path / "a"),
    ])
    assert built.get("residual") == "ridge" and "MCD residual=ridge" in res["header"]
    rows = res["rows"]
    held = {r["held_out"] for r in rows}
    assert len(held) == 1 and held <= {"BM1", "BM2", "BM3", "Aged1", "Aged2"}
    # the test fold is every cell of that donor; the training cells were subsampled
    from biodiffuse.datasets import triana_bm_abseq

    donors = triana_bm_abseq().obs["donor"].astype(str)
    assert {r["n_test"] for r in rows} == {int((donors == held.pop()).sum())}
    assert {r["n_train"] for r in rows} == {300}
    assert "leave-one-donor-out" in res["header"]


def test_interrupted_run_writes_what_it_has(tmp_path, monkeypatch):
    """Ctrl+C while MCD samples: the baselines of that fold are kept and written, marked partial."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(citeseq.MCD, "posterior", interrupt)
    out = tmp_path / "res"
    res = citeseq.main(["--max-folds", "1", "--max-epochs", "1", "--steps", "1", "--n-samples", "2",
                        "--skip", "krr", "--out", str(out)])
    methods = {r["method"] for r in res["rows"]}
    assert {"ridge", "knn", "mean"} <= methods and not any(m.startswith("MCD") for m in methods)
    assert res["complete"] is False and "INTERRUPTED" in res["header"]
    assert "INTERRUPTED" in (tmp_path / "res.md").read_text()
    assert json.loads((tmp_path / "res.json").read_text())["complete"] is False


def test_quick_is_the_readme_main_job(monkeypatch, tmp_path):
    """``--quick`` (the README's main job): one fold at 1, 5 and 18 steps, the recentred rows of the
    table default beside the plain ones, MCD at most 600 epochs, the model's own sampler."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_run(adata, name, protein_key, folds, steps, n_samples, max_epochs, seed, totalvi, accelerator, max_folds, **kw):
        seen.update(steps=steps, max_epochs=max_epochs, max_folds=max_folds, recentre=kw["recentre"], mcd_kwargs=kw["mcd_kwargs"])
        raise Stop

    monkeypatch.setattr(citeseq, "run_benchmark", fake_run)
    with pytest.raises(Stop):
        citeseq.main(["--quick", "--out", str(tmp_path / "quick")])
    assert seen == dict(steps=(1, 5, 18), max_epochs=600, max_folds=1, recentre=True, mcd_kwargs=None)
