"""StainDiffuser: set-up record, multi-task training on region splits (joint and token
multiplexing), thresholds fitted on training tiles only, prediction that follows the H&E,
batch-size independence, whole-image tiling, save / load, bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from biodiffuse.models.staindiffuser import StainDiffuser

from _tiny import STAIN_TILE as T  # tile side of the synthetic mosaic
from _tiny import staining as _sdata
SMALL = dict(crop_size=16, model_channels=8, channel_mult=(1, 2))


def _replace(sdata, key: str, array: np.ndarray) -> None:
    from spatialdata.models import Image2DModel

    c = list(sdata.images[key].coords["c"].values)
    sdata.images[key] = Image2DModel.parse(array, dims=("c", "y", "x"), c_coords=c)


def _fit(sdata, epochs: int, accelerator, devices, **kwargs):
    model = StainDiffuser(sdata, **{**SMALL, **kwargs})
    model.train(max_epochs=epochs, batch_size=8, lr=2e-3, enable_progress_bar=False,
                accelerator=accelerator, devices=devices)
    return model


@pytest.fixture(scope="module")
def trained(accelerator, devices):
    sdata, inside = _sdata()
    StainDiffuser.setup_spatialdata(sdata)
    return _fit(sdata, 30, accelerator, devices), sdata, inside


def _val_mask(sdata) -> tuple[np.ndarray, np.ndarray]:
    """Rows of region r1 and the pixels of their tiles."""
    obs = sdata.tables["tiles"].obs
    val = (obs["region"] == "r1").to_numpy()
    pix = np.zeros(sdata.images["he"].shape[1:], bool)
    for y0, x0 in obs.loc[val, ["y0", "x0"]].to_numpy():
        pix[y0 : y0 + T, x0 : x0 + T] = True
    return val, pix


def test_setup_writes_only_the_record():
    sdata, _ = _sdata()
    images, tables = set(sdata.images), set(sdata.tables)
    StainDiffuser.setup_spatialdata(sdata, stains=["A"], threshold="mean_sd", k=0.5)
    rec = sdata.attrs["biodiffuse"]["StainDiffuser"]
    assert rec["stains"] == ["A"] and rec["source_channels"] == ["R", "G", "B"] and rec["tile_size"] == T
    assert rec["tiles_key"] == "tiles" and rec["threshold"] == "mean_sd" and rec["k"] == 0.5
    assert (set(sdata.images), set(sdata.tables)) == (images, tables)


def test_training_splits_by_region_and_learns(trained, device):
    """Validation is region r1; the prediction of stain A on r1 is bright inside the cells and
    dark outside (the training mean would be flat), and so is the segmentation."""
    model, sdata, inside = trained
    h = model.history
    assert {"train_loss", "val_loss"} <= set(h.columns) and h["val_loss"].iloc[-1] < 0.8 * h["val_loss"].iloc[0]
    val, pix = _val_mask(sdata)
    out = model.predict(indices=val, steps=8, device=device)
    key = "mihc_StainDiffuser"
    assert set(out) == {key, f"{key}_seg"} and set(out) <= set(sdata.images)
    stain, seg = out[key], out[f"{key}_seg"]
    assert stain.dims == ("c", "y", "x") and stain.shape == (2, 128, 256) and seg.shape == (2, 128, 256)
    assert list(stain.coords["c"].values) == ["A", "B"] and list(seg.coords["c"].values) == ["A", "B"]
    a, s = stain.sel(c="A").values, seg.sel(c="A").values
    assert 0 <= a.min() and a.max() <= 1 and 0 <= s.min() and s.max() <= 1
    assert a[pix & inside].mean() - a[pix & ~inside].mean() > 0.3
    assert s[pix & inside].mean() - s[pix & ~inside].mean() > 0.3
    assert (a[~pix] == 0).all()  # tiles not asked for stay empty
    rec = sdata.attrs[key]
    assert rec["steps"] == 8 and rec["tiles"] == list(sdata.tables["tiles"].obs_names[val])


def test_thresholds_are_fitted_on_training_tiles_only(accelerator, devices):
    """Changing a validation tile (region r1) leaves the thresholds as they are; changing a
    training tile moves them."""
    fitted = []
    for change in (None, 31, 0):  # tile 31 is in r1 (validation), tile 0 in r0 (training)
        sdata, _ = _sdata()
        if change is not None:
            arr = np.asarray(sdata.images["mihc"].values).copy()
            y0, x0 = (change // 8) * T, (change % 8) * T
            arr[:, y0 : y0 + T, x0 : x0 + T] = 255
            _replace(sdata, "mihc", arr)
        StainDiffuser.setup_spatialdata(sdata, threshold="mean_sd")
        model = _fit(sdata, 1, accelerator, devices)
        fitted.append(model.registry["thresholds"])
    assert fitted[1] == fitted[0]
    assert fitted[2] != fitted[0]
    assert set(model.thresholds) == {"A", "B"}


def test_results_do_not_depend_on_the_batch(trained, device):
    model, sdata, _ = trained
    a = model.predict(indices=[30, 31], batch_size=1, n_samples=2, steps=2, seed=4, key_added="a", device=device)["a"]
    b = model.predict(indices=[31, 30], batch_size=4, n_samples=2, steps=2, seed=4, key_added="b", device=device)["b"]
    np.testing.assert_array_equal(a.values, b.values)
    c = model.predict(indices=[30, 31], batch_size=4, n_samples=2, steps=2, seed=5, key_added="c", device=device)["c"]
    assert not np.allclose(a.values, c.values)


def test_whole_image_without_table(trained, device):
    """Without a tiles table the whole image is cut into overlapping crops and stitched."""
    model, _, _ = trained
    query, inside = _sdata(n_tiles=4, columns=2, seed=3, table=False)
    out = model.predict(query, steps=4, overlap=0.5, device=device)["mihc_StainDiffuser"]
    assert out.shape == (2, 64, 64) and np.isfinite(out.values).all()
    a = out.sel(c="A").values
    blocks = out.sel(c="B").values.reshape(4, 16, 4, 16).mean(axis=(1, 3))
    assert blocks.min() > 0.05  # every part of the image was generated (stain B is ~0.24 everywhere)
    assert a[inside].mean() > a[~inside].mean() + 0.2
    assert query.attrs["mihc_StainDiffuser"]["stride"] == 8


def test_token_multiplexing_predicts_every_stain(accelerator, devices, device):
    sdata, _ = _sdata()
    StainDiffuser.setup_spatialdata(sdata)
    model = _fit(sdata, 1, accelerator, devices, multiplex="token")
    assert model.network.cond_dim == 2 and model.network.in_channels == 2
    out = model.predict(indices=[31], steps=2, device=device)
    stain = out["mihc_StainDiffuser"]
    assert list(stain.coords["c"].values) == ["A", "B"]
    tile = stain.values[:, 96:128, 224:256]
    assert np.isfinite(tile).all() and (tile.reshape(2, -1).mean(axis=1) > 0.02).all()  # both stains generated
    assert stain.values[:, :96].max() == 0


def test_save_load_round_trip(trained, tmp_path, device):
    model, sdata, _ = trained
    ref = model.predict(indices=[30], steps=3, key_added="ref", device=device)["ref"]
    model.save(tmp_path / "m")
    loaded = StainDiffuser.load(tmp_path / "m", sdata)
    assert loaded.registry == model.registry and loaded.thresholds == model.thresholds
    again = loaded.predict(indices=[30], steps=3, key_added="again", device=device)["again"]
    np.testing.assert_array_equal(ref.values, again.values)


def test_bad_inputs_leave_objects_unchanged(trained):
    model, sdata, _ = trained
    fresh, _ = _sdata()
    with pytest.raises(TypeError, match="SpatialData"):
        StainDiffuser.setup_spatialdata({"he": None})
    with pytest.raises(KeyError, match="'C'"):
        StainDiffuser.setup_spatialdata(fresh, stains=["A", "C"])
    with pytest.raises(KeyError, match="nope"):
        StainDiffuser.setup_spatialdata(fresh, source_key="nope")
    _replace(fresh, "mihc", np.asarray(fresh.images["mihc"].values)[:, :64, :])
    with pytest.raises(ValueError, match="registered pixel to pixel"):
        StainDiffuser.setup_spatialdata(fresh)
    assert "biodiffuse" not in fresh.attrs
    with pytest.raises(ValueError, match="not set up"):
        StainDiffuser(fresh)
    with pytest.raises(ValueError, match="multiple"):
        StainDiffuser(sdata, crop_size=15, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="multiplex"):
        StainDiffuser(sdata, multiplex="pairs")
    with pytest.raises(TypeError, match="SpatialData"):
        model.predict(np.zeros((3, 8, 8)))
    model.predict(indices=[0], steps=1, key_added="once")
    before = sdata.images["once"].values.copy()
    images = set(sdata.images)
    with pytest.raises(KeyError, match="overwrite"):
        model.predict(indices=[1], steps=1, key_added="once")
    with pytest.raises(ValueError, match="overlap"):
        model.predict(indices=[1], steps=1, overlap=1.0, key_added="x")
    with pytest.raises(ValueError, match="source channel"):
        model.predict(indices=[1], steps=1, image_key="mihc", key_added="x")
    assert set(sdata.images) == images and "x" not in sdata.attrs
    np.testing.assert_array_equal(sdata.images["once"].values, before)
    model.predict(indices=[1], steps=1, key_added="once", overwrite=True)
    assert not np.array_equal(sdata.images["once"].values, before)


def test_objective_is_gen_plus_lambda_seg():
    """One forward, two terms: the loss is linear in lambda, and at lambda = 0 the masks do not count."""
    import torch

    from biodiffuse.module.staindiffuser import StainDiffuserObjective, build_network

    rng = np.random.default_rng(0)
    batch = {"source": torch.from_numpy(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)),
             "target": torch.from_numpy(rng.integers(0, 256, (4, 2, 32, 32), dtype=np.uint8)),
             "mask": torch.from_numpy(rng.integers(0, 2, (4, 2, 32, 32), dtype=np.uint8))}
    flipped = {**batch, "mask": 1 - batch["mask"]}

    def loss(lam: float, b=batch, multiplex: str = "joint") -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            net = build_network(2, 3, multiplex=multiplex, model_channels=8, channel_mult=(1, 2))
        objective = StainDiffuserObjective(multiplex, 2, seg_weight=lam, crop_size=16)
        return float(objective(net, b, torch.Generator().manual_seed(0)))

    l0, l1, l2 = loss(0.0), loss(1.0), loss(2.0)
    assert l1 > l0 and abs((l2 - l0) - 2 * (l1 - l0)) < 1e-5 * l2
    assert loss(0.0, flipped) == pytest.approx(l0, rel=1e-6)
    assert loss(1.0, flipped) != pytest.approx(l1, rel=1e-3)
    assert np.isfinite(loss(1.0, multiplex="token"))


@pytest.mark.parametrize("objective", ["l1", "pix2pix"])
def test_point_baselines_learn_the_stain_in_one_evaluation(objective, accelerator, devices, device):
    """The L1 U-Net and Pix2Pix (single-task) on the same data path: stain A on the held-out
    region is bright inside the cells; one network evaluation per crop, no segmentation element;
    Pix2Pix's critic trained but is not part of the saved network."""
    sdata, inside = _sdata()
    StainDiffuser.setup_spatialdata(sdata)
    model = _fit(sdata, 30, accelerator, devices, objective=objective, segmentation=False)
    assert model.network.in_channels == 2 and model.kind == objective
    val, pix = _val_mask(sdata)
    out = model.predict(indices=val, steps=8, device=device)
    assert set(out) == {"mihc_StainDiffuser"} and "mihc_StainDiffuser_seg" not in sdata.images
    a = out["mihc_StainDiffuser"].sel(c="A").values
    assert a[pix & inside].mean() - a[pix & ~inside].mean() > 0.3
    real = np.asarray(sdata.images["mihc"].sel(c="A").values, dtype=np.float32) / 255.0
    assert np.abs(a - real)[pix].mean() < 0.075  # the point estimate itself (noise sd 8 / 255 ~ 0.03)
    rec = sdata.attrs["mihc_StainDiffuser"]
    assert rec["nfe_per_crop"] == 1 and rec["objective"] == objective and "seg_key" not in rec
    if objective == "pix2pix":
        from biodiffuse.module.staindiffuser import build_adversary

        critic = model._adversary_net
        assert critic.net[0].in_channels == 3 + 2
        with torch.random.fork_rng(devices=[]):  # the critic as the model built it, before training
            torch.manual_seed(model.init_args["seed"] + 1)
            initial = build_adversary(2, 3, crop_size=16, segmentation=False)
        weights = [k for k in initial.state_dict() if k.endswith("weight")]
        moved = [k for k in weights if not torch.equal(critic.state_dict()[k].cpu(), initial.state_dict()[k])]
        assert len(moved) == len(weights)  # every layer of the critic was trained
        assert not any("adversary" in k for k in model.network.state_dict())


def test_objective_and_multiplex_are_checked(trained):
    _, sdata, _ = trained
    with pytest.raises(ValueError, match="objective"):
        StainDiffuser(sdata, **SMALL, objective="gan")
    with pytest.raises(ValueError, match="multiplex='joint'"):
        StainDiffuser(sdata, **SMALL, objective="pix2pix", multiplex="token")


def test_single_task_token_model_has_one_channel(accelerator, devices, device):
    sdata, _ = _sdata()
    StainDiffuser.setup_spatialdata(sdata)
    model = _fit(sdata, 1, accelerator, devices, multiplex="token", segmentation=False)
    assert model.network.in_channels == 1 and model.network.cond_dim == 2
    out = model.predict(indices=[31], steps=2, device=device)
    assert set(out) == {"mihc_StainDiffuser"} and out["mihc_StainDiffuser"].shape == (2, 128, 256)


def test_per_cell_positivity_table_from_labels(trained, device):
    """With a nuclei labels element, predict writes a table of the cells wholly inside the
    predicted tiles: their mean virtual stains and positivity, annotating the labels."""
    from scipy import ndimage
    from spatialdata.models import Labels2DModel

    model, sdata, inside = trained
    lab, n = ndimage.label(inside)
    sdata.labels["nuclei"] = Labels2DModel.parse(lab.astype(np.int32), dims=("y", "x"))
    val, pix = _val_mask(sdata)
    out = model.predict(indices=val, steps=8, labels_key="nuclei", key_added="pos", device=device)
    table = out["pos_cells"]
    assert table is sdata.tables["pos_cells"] and list(table.var_names) == ["A", "B"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "nuclei" and attrs["instance_key"] == "cell_id"
    # cells whose 2-px ring stays in predicted pixels
    expected = {i for i in range(1, n + 1) if ndimage.binary_dilation(lab == i, iterations=2)[~pix].sum() == 0}
    assert set(table.obs["cell_id"]) == expected and len(expected) > 5
    assert table.obs["A_positive"].mean() > 0.9  # stain A is bright inside every cell
    first = int(table.obs["cell_id"].iloc[0])  # X is the cell's mean over its nucleus grown by 2 px
    ring = ndimage.binary_dilation(lab == first, iterations=2) & ~np.isin(lab, [0, first])  # never into a neighbour
    region = ndimage.binary_dilation(lab == first, iterations=2) & ~ring
    np.testing.assert_allclose(table.X[0], out["pos"].values[:, region].mean(axis=1), rtol=1e-4)
    thr = np.array(model.registry["thresholds"]) / 255
    np.testing.assert_array_equal(table.obs[["A_positive", "B_positive"]].to_numpy(), table.X > thr)
    assert sdata.attrs["pos"]["cells_key"] == "pos_cells"
    with pytest.raises(KeyError, match="labels element"):
        model.predict(indices=[30], steps=1, labels_key="cells", key_added="bad")
    sdata.labels["small"] = Labels2DModel.parse(lab[:64].astype(np.int32), dims=("y", "x"))
    with pytest.raises(ValueError, match="grid"):
        model.predict(indices=[30], steps=1, labels_key="small", key_added="bad")
    assert "bad" not in sdata.images and "bad" not in sdata.attrs


def test_tune_sampler_scores_validation_tiles_and_keeps_the_better_schedule(trained, tmp_path, device):
    """The tuner scores the validation region's tiles: of Euler from 80 (rho 3) and EDM's 3 Heun
    steps from 80 (which throws draws off), it keeps the one whose prediction is also closer to
    the real stain on an image it never saw; the choice is the model's schedule, kept by save."""
    import copy

    _, sdata, _ = trained
    model = copy.deepcopy(trained[0])
    good = dict(solver="euler", steps=5, nfe=5, sigma_max=80.0, sigma_min=0.002, rho=3.0)
    bad = dict(solver="heun", steps=3, nfe=5, sigma_max=80.0, sigma_min=0.002, rho=7.0)
    model.set_sampler(**{k: bad[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
    table = model.tune_sampler(candidates=[bad, good], n_samples=3, max_tiles=4)
    assert len(table) == 2 and list(table["crps_fair"]) == sorted(table["crps_fair"]) and np.isfinite(table["crps"]).all()
    best = table.iloc[0]
    assert model.sampler_settings == {k: best[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}
    assert model.registry["sampler_tuning"]["crps"] == best["crps"]

    query, _ = _sdata(n_tiles=4, columns=2, seed=3, table=False)
    real = np.asarray(query.images["mihc"].values, dtype=np.float32) / 255.0
    err = {}
    for name, cand in (("good", good), ("bad", bad)):
        model.set_sampler(**{k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
        out = model.predict(query, steps=cand["steps"], key_added=name, device=device)[name]
        err[name] = float(np.abs(out.values - real).mean())
        assert query.attrs[name]["nfe_per_crop"] == 5 and query.attrs[name]["solver"] == cand["solver"]
    chosen = "good" if best["solver"] == "euler" else "bad"
    assert err[chosen] == min(err.values()), (chosen, err)

    model.set_sampler(**{k: best[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
    model.save(tmp_path / "tuned")
    loaded = StainDiffuser.load(tmp_path / "tuned", sdata)
    assert loaded.sampler_settings == model.sampler_settings
    with pytest.raises(ValueError, match="No validation tiles"):
        loaded.tune_sampler(candidates=[good])
    with pytest.raises(ValueError, match="max_tiles"):
        model.tune_sampler(candidates=[good], max_tiles=0)
    with pytest.raises(ValueError, match="at least 2 draws"):
        model.tune_sampler(candidates=[good], n_samples=1)


def test_sampler_settings_defaults_checks_and_old_models(trained):
    """Euler from 80 with rho 3 by default (one evaluation per step); bad settings fail in the
    constructor and in set_sampler without changing the model; a model saved before the
    settings existed samples with EDM's Heun; point models have no sampler to set."""
    model, sdata, _ = trained
    assert model.sampler_settings == dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=3.0)
    assert model.network_evaluations(steps=5) == 5
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        StainDiffuser(sdata, **SMALL, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="solver"):
        model.set_sampler(solver="rk4")
    with pytest.raises(ValueError, match="does not recentre"):
        model.set_sampler(recentre=True)
    assert model.sampler_settings["solver"] == "euler" and model.recentres is False
    old = StainDiffuser(sdata, **SMALL)
    for k in ("solver", "sigma_max", "sigma_min", "rho"):
        del old.init_args[k]
    assert old.sampler_settings == dict(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)
    assert old.network_evaluations(steps=5) == 9
    point = StainDiffuser(sdata, **SMALL, objective="l1", segmentation=False)
    assert point.network_evaluations(steps=5) == 1
    with pytest.raises(ValueError, match="no sampler"):
        point.set_sampler(solver="heun")
    with pytest.raises(ValueError, match="no sampler"):
        point.tune_sampler()


def test_token_model_tunes_on_every_stain(accelerator, devices):
    """Token models sample one (crop, stain) row per stain: the tuner scores every stain of
    every validation crop (draws regrouped per crop)."""
    sdata, _ = _sdata()
    StainDiffuser.setup_spatialdata(sdata)
    model = _fit(sdata, 1, accelerator, devices, multiplex="token")
    table = model.tune_sampler(candidates=[dict(solver="euler", steps=2, nfe=2, sigma_max=80.0, sigma_min=0.002, rho=3.0)],
                               n_samples=3, max_tiles=2)
    assert len(table) == 1 and np.isfinite(table[["crps", "r_p"]].to_numpy()).all()
