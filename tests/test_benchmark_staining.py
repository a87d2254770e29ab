"""The staining driver's summary (benchmarks/staining.py): one line per method, the mean over the
stains of every score, positivity over the markers only. The driver's end-to-end run trains image
models and is a benchmark (``--quick`` is its smoke run), not a test."""

from __future__ import annotations

import numpy as np
import pytest

staining = pytest.importorskip("staining")


def _res(method: str, psnr: list[float], kid: list[float], pos: list[float], seg: list[float] | None = None) -> dict:
    stains = ["DAPI", "m1", "m2"]
    rows = []
    for i, s in enumerate(stains):
        row = {"method": method, "stain": s, "psnr": psnr[i], "ssim": 0.5, "pearson": 0.1 * i, "kid_x1e3": kid[i],
               "dice": 0.2, "positivity_mae": np.nan if s == "DAPI" else pos[i - 1]}
        if seg is not None:
            row["dice_seg_head"] = seg[i]
        rows.append(row)
    return {"method": method, "per_stain": rows}


def test_mean_table_averages_stains_and_markers():
    results = [_res("multi", [20.0, 22.0, 30.0], [300.0, 100.0, 200.0], [0.1, 0.3], seg=[0.5, 0.6, 0.7]),
               _res("point", [28.0, 28.0, 28.0], [90.0, 150.0, 210.0], [0.2, 0.2])]
    lines = staining.mean_table(results).splitlines()
    assert lines[0].startswith("| method | PSNR | SSIM | pixel r | KID x1e3 |") and len(lines) == 4
    multi, point = (line.split(" | ") for line in lines[2:])
    assert multi[0] == "| multi" and multi[1] == "24.0" and multi[3] == "0.100" and multi[4] == "200"
    assert multi[6] == "0.600" and multi[7] == "0.200 |"  # segmentation Dice; positivity over the two markers
    assert point[0] == "| point" and point[4] == "150" and point[6] == "-"  # no segmentation task


def test_deepliif_trains_on_one_field_and_scores_the_other():
    import argparse

    from conftest import SHARED_DATA

    if not (SHARED_DATA / "staining" / "deepliif").exists():
        pytest.skip("needs ../shared/data/staining/deepliif")
    import biodiffuse as bd

    args = argparse.Namespace(deepliif_train="train_Lung1", window=128)
    data = staining.load_deepliif(args)
    assert data["name"] == "DeepLIIF train_Lung1 -> train_Bladder1" and data["stains"] == ["DAPI", "Lap2", "Ki67"]
    train, test = data["train"], data["test"]
    # the targets are the grey panels of the other field, registered with its IHC
    other = bd.datasets.deepliif(sets=["train_Bladder1"])
    np.testing.assert_array_equal(np.asarray(test.images["mpif"].data)[1], np.asarray(other.images["lap2"].data)[0])
    np.testing.assert_array_equal(np.asarray(test.images["ihc"].data), np.asarray(other.images["ihc"].data))
    lung = bd.datasets.deepliif(sets=["train_Lung1"])
    np.testing.assert_array_equal(np.asarray(train.images["mpif"].data)[2], np.asarray(lung.images["ki67_if"].data)[0])
    assert data["real"].shape == (16, 3, 128, 128) and data["he"].shape == (16, 3, 128, 128)
    np.testing.assert_array_equal(data["real"][5], np.asarray(test.images["mpif"].data)[:, 128:256, 128:256])
    # four regions of four tiles each (whole quadrants for validation), the thresholds from the training field
    obs = train.tables["tiles"].obs
    assert data["n_train"] == 16 and obs.groupby("region").size().tolist() == [4, 4, 4, 4]
    _, thr = bd.metrics.stain_masks(np.asarray(train.images["mpif"].data)[None], method="otsu")
    np.testing.assert_allclose(data["thresholds"], thr)
    # --seg-weight reaches the multi-task diffusion models only (the single-task and point models have no L_seg)
    tiny = argparse.Namespace(crop=16, model_channels=4, train_steps=1, batch_size=2, lr=1e-3, accelerator="cpu", seg_weight=3.0)
    multi, _ = staining.train_model(data, tiny)
    assert multi.init_args["seg_weight"] == 3.0 and multi.segmentation
    single, _ = staining.train_model(data, tiny, segmentation=False)
    assert single.init_args["seg_weight"] == 1.0 and not single.segmentation


def test_solvers_set_the_tuning_grid_and_tune_nfe_zero_skips_tuning():
    """--solvers reaches tune_sampler as the grid of those solvers at --tune-nfe evaluations; the
    chosen row's steps come back and the table is kept; --tune-nfe 0 samples --steps untuned."""
    import argparse

    import pandas as pd

    from biodiffuse.diffusion import schedule_grid

    class Model:
        def __init__(self):
            self.calls = []

        def tune_sampler(self, *, nfe, max_tiles, seed, candidates):
            self.calls.append(dict(nfe=nfe, max_tiles=max_tiles, candidates=candidates))
            rows = candidates or schedule_grid(nfe)
            return pd.DataFrame([{**c, "crps": float(i)} for i, c in enumerate(rows)])

    args = argparse.Namespace(tune_nfe=5, tune_tiles=3, seed=0, steps=7, solvers=["dpm2m"])
    model, tunings = Model(), {}
    steps = staining.choose_sampler_steps(model, "multi", args, tunings)
    grid = model.calls[0]["candidates"]
    assert grid == schedule_grid(5, solvers=("dpm2m",)) and {c["solver"] for c in grid} == {"dpm2m"}
    assert steps == grid[0]["steps"] == 5 and tunings["multi"]["chosen"]["solver"] == "dpm2m"
    assert model.calls[0]["nfe"] == 5 and model.calls[0]["max_tiles"] == 3
    args.solvers = None  # the default grid
    staining.choose_sampler_steps(model, "multi", args, tunings)
    assert model.calls[1]["candidates"] is None
    args.tune_nfe = 0
    assert staining.choose_sampler_steps(model, "x", args, tunings) == 7 and len(model.calls) == 2


def test_skip_names_the_point_baselines_to_leave_out():
    assert staining.point_models([]) == ["l1", "pix2pix"]
    assert staining.point_models(["pix2pix", "seeds"]) == ["l1"]
    assert staining.point_models(["l1"]) == ["pix2pix"]
    assert staining.point_models(["baselines"]) == []
