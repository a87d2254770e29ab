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


def test_window_rows_hold_out_whole_windows_and_shuffle_only_the_held_out_cells(accelerator, devices):
    """Window mode of the driver: held-out windows hold only held-out cells, their real tiles are
    the image under the window, and the shuffled control changes the expression the model reads
    (not the user's table)."""
    from argparse import Namespace

    import _tiny

    import biodiffuse as bd

    sdata, _ = _tiny.histology()  # 16 x 16 cells, 16 px apart; windows of 32 px hold 2 x 2 cells
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16, scale=0.5, mode="window")
    model = bd.models.GeneFlow(sdata, dim=32, rank=4, model_channels=16, channel_mult=(1, 2), encoder_layers=1)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False, accelerator=accelerator, devices=devices)
    table = sdata.tables["table"]
    x_before = np.array(table.X)
    xy = np.asarray(table.obsm["spatial"])
    task = {"sdata": sdata, "train": xy[:, 0] < 128, "test": xy[:, 0] >= 160}
    data = geneflow.window_rows(bd, task, model, Namespace(n_test=10, seed=0), np.random.default_rng(0))
    win = model.windows()
    rows = data["rows"]
    assert len(rows) == 10 and data["real_test"].shape == (10, 1, 16, 16) and data["real_train"].shape[0] == 32
    assert data["y_train"].shape == (32, 5) and data["y_test"].shape == (10, 5)
    cells = win.index[rows][win.mask[rows]]
    assert len(cells) == 40 and task["test"][cells].all()
    # the real tile is the image under the window, averaged 2 x 2 (up to the intensity scaling)
    y0, x0 = win.origins[rows[0]]
    raw = np.asarray(sdata.images["dapi"].data[0, y0 : y0 + 32, x0 : x0 + 32], float).reshape(16, 2, 16, 2).mean((1, 3))
    assert np.corrcoef(raw.ravel(), data["real_test"][0, 0].ravel())[0, 1] > 0.999
    right = data["generate"](model, False, "right", steps=2)
    shuffled = data["generate"](model, True, "shuffled", steps=2)
    np.testing.assert_array_equal(right.coords["x0"].values, win.origins[rows, 1])
    assert right.shape == shuffled.shape == (10, 1, 1, 16, 16)
    # the control reads the same windows with the held-out cells' expression permuted among them; the rest as is
    moved = model.windows(data["shuffled"])
    np.testing.assert_array_equal(moved.index, win.index)
    held = np.isin(win.index, cells) & win.mask
    assert not np.allclose(moved.values[held], win.values[held])
    np.testing.assert_allclose(np.sort(moved.values[held], axis=0), np.sort(win.values[held], axis=0))
    np.testing.assert_array_equal(moved.values[~held], win.values[~held])
    np.testing.assert_array_equal(np.array(table.X), x_before)
    assert data["nearest"]().shape == (10, 1, 16, 16)
    # an epoch runs over the training windows (32), not over the training cells (128)
    assert geneflow._training_rows(model, {**task, "mode": "window"}) == 32
    assert geneflow._training_rows(model, task) == task["train"].sum() == 128
