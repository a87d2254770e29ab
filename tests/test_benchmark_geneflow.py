"""The GeneFlow driver's summaries (benchmarks/geneflow.py): right minus shuffled expression per
probe, the spread over training seeds, and the tables that print them. The driver's end-to-end run
trains three image models and is a benchmark (``--quick`` is its smoke run), not a test."""

from __future__ import annotations

import numpy as np
import pytest

geneflow = pytest.importorskip("geneflow")


def _row(per_row_pixels, per_row_inception, **scores):
    return {"fidelity_pixels_per_row": np.asarray(per_row_pixels, float),
            "fidelity_inception_per_row": np.asarray(per_row_inception, float), **scores}


def test_right_minus_shuffled_is_positive_when_the_right_expression_wins():
    rng = np.random.default_rng(0)
    # classification: per-row 0/1 correctness, higher is better
    right = _row(rng.random(200) < 0.6, rng.random(200) < 0.5)
    shuffled = _row(rng.random(200) < 0.2, rng.random(200) < 0.5)
    d = geneflow.fidelity_differences(right, shuffled, "classification")
    assert set(d) == {"pixels", "inception"}
    expect = right["fidelity_pixels_per_row"].mean() - shuffled["fidelity_pixels_per_row"].mean()
    assert d["pixels"]["difference"] == pytest.approx(expect) and d["pixels"]["ci_low"] > 0
    assert d["inception"]["ci_low"] < 0 < d["inception"]["ci_high"]
    # regression: per-row squared error, lower is better -> the sign flips so that > 0 still means "right wins"
    err_right, err_shuffled = rng.gamma(2.0, 0.5, 200), rng.gamma(2.0, 1.0, 200)
    d = geneflow.fidelity_differences(_row(err_right, err_right), _row(err_shuffled, err_right), "regression")
    assert d["pixels"]["difference"] == pytest.approx(err_shuffled.mean() - err_right.mean())
    assert d["pixels"]["difference"] > 0 and d["pixels"]["ci_low"] > 0
    assert d["inception"]["difference"] == 0.0


def test_seed_summary_is_the_mean_and_sample_sd_over_seeds_and_is_printed():
    keys = ["kid", "morphometry", "fidelity_pixels", "shuffled_fidelity_pixels", "fidelity_inception",
            "shuffled_fidelity_inception", "difference_pixels", "difference_inception"]
    per_seed = []
    for seed, base in zip((0, 1, 2), (0.1, 0.2, 0.6)):
        r = {"seed": seed, **{k: base + i for i, k in enumerate(keys)}}
        r.update({f"ci_{p}": {"ci_low": -1.0, "ci_high": 1.0} for p in ("pixels", "inception")})
        per_seed.append(r)
    s = geneflow.seed_summary(per_seed)
    assert s["n_seeds"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["kid"]["mean"] == pytest.approx(0.3) and s["kid"]["sd"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    assert s["difference_inception"]["mean"] == pytest.approx(7.3)
    table = geneflow.format_seeds({"seeds": per_seed, "seed_summary": s})
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("| mean ± sd over 3 seeds | 300.0 ± 264.6 |")
    assert "| 2 | 600.0 | 1.600 | 2.600 / 3.600 | 4.600 / 5.600 | 6.600 (-1.000 .. 1.000) |" in table
    # one seed: no spread, no mean row
    one = geneflow.seed_summary(per_seed[:1])
    assert np.isnan(one["kid"]["sd"])
    assert len(geneflow.format_seeds({"seeds": per_seed[:1], "seed_summary": one}).splitlines()) == 3
