"""MCD on SpatialData images: set-up, training on tiles, stitched imputation, no leakage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("spatialdata")
import spatialdata as sd
from spatialdata.models import Image2DModel, Labels2DModel, TableModel

import biodiffuse as bd
from biodiffuse.io import aggregate_by_labels


def _synthetic(seed: int = 0) -> sd.SpatialData:
    """3 smooth channels, the third a function of the first two, a 4 x 4 grid of square 'cells'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    a = np.sin(6 * xx) + 1.5
    b = np.cos(5 * yy) + 1.5
    c = a * b + 0.05 * rng.standard_normal((64, 64))
    image = np.stack([a, b, c]).astype(np.float32)
    labels = (np.arange(64)[:, None] // 16) * 4 + (np.arange(64)[None, :] // 16) + 1
    table = TableModel.parse(
        __import__("anndata").AnnData(
            X=aggregate_by_labels(image, labels, ["A", "B", "C"]).to_numpy(np.float32),
            obs={"cell_id": np.arange(1, 17), "region": ["img_labels"] * 16},
        ),
        region="img_labels", region_key="region", instance_key="cell_id",
    )
    table.obs["region"] = table.obs["region"].astype("category")
    return sd.SpatialData(
        images={"img": Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["A", "B", "C"])},
        labels={"img_labels": Labels2DModel.parse(labels.astype(np.int32), dims=("y", "x"))},
        tables={"table": table},
    )


@pytest.fixture(scope="module")
def trained():
    sdata = _synthetic()
    bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=16, downsample=1)
    model = bd.models.MCD(sdata, model_channels=16, heads=2, channel_mult=(1, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=40, batch_size=32, enable_progress_bar=False, early_stopping=False)
    return sdata, model


def test_setup_records_only_attrs_and_rejects_bad_arguments():
    sdata = _synthetic()
    before = set(sdata.images) | set(sdata.labels) | set(sdata.tables)
    bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=16, downsample=1)
    rec = sdata.attrs["biodiffuse"]["MCD"]
    assert rec["image_key"] == "img" and rec["labels_key"] == "img_labels" and rec["table_key"] == "table"
    assert set(sdata.images) | set(sdata.labels) | set(sdata.tables) == before
    with pytest.raises(KeyError, match="not an image element"):
        bd.models.MCD.setup_spatialdata(sdata, image_key="nope")
    with pytest.raises(ValueError, match="multiple"):
        bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=18, downsample=4)
    with pytest.raises(ValueError, match="smaller than tile_size"):
        bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=128, downsample=4)
    with pytest.raises(TypeError, match="SpatialData"):
        bd.models.MCD.setup_spatialdata(object(), image_key="img")


def test_impute_writes_full_size_elements_and_cell_means(trained):
    sdata, model = trained
    query = _synthetic(seed=1)
    original = np.asarray(query.images["img"].data).copy()
    el = model.impute(query, missing=["C"], n_samples=2, steps=3)
    assert set(query.images) == {"img", "img_MCD_imputed", "img_MCD_variance"}
    assert el.shape == (1, 64, 64) and list(el.coords["c"].values) == ["C"]
    var = np.asarray(query.images["img_MCD_variance"].data)
    assert (var >= 0).all() and var.max() > 0
    np.testing.assert_array_equal(np.asarray(query.images["img"].data), original)
    cells = query.tables["table"].obsm["MCD_imputed"]
    assert list(cells.columns) == ["C"] and len(cells) == 16
    np.testing.assert_allclose(cells["C"].to_numpy(), aggregate_by_labels(np.asarray(el.data), np.asarray(query.labels["img_labels"].data), ["C"])["C"].to_numpy())
    assert query.attrs["img_MCD_imputed"]["missing"] == ["C"] and query.attrs["img_MCD_imputed"]["imputed"] == ["C"]
    before = np.asarray(query.images["img_MCD_imputed"].data).copy()
    with pytest.raises(KeyError, match="overwrite"):
        model.impute(query, missing=["C"], n_samples=1, steps=1)
    np.testing.assert_array_equal(np.asarray(query.images["img_MCD_imputed"].data), before)


def test_key_added_names_the_elements_and_the_table_keys(trained):
    _, model = trained
    query = _synthetic(seed=1)
    model.impute(query, missing=["C"], n_samples=1, steps=2, key_added="virt")
    assert set(query.images) == {"img", "virt", "virt_variance"}
    assert set(query.tables["table"].obsm) == {"virt", "virt_variance"}
    assert query.attrs["virt"]["variance_key_added"] == "virt_variance"
    assert query.attrs["virt"]["table_obsm_keys"] == ["virt", "virt_variance"]
    model.impute(query, missing=["C"], n_samples=1, steps=2, key_added="m", variance_key_added=False)
    assert "m" in query.images and "m_variance" not in query.images
    assert "m" in query.tables["table"].obsm and "m_variance" not in query.tables["table"].obsm
    # a table key in use blocks the call before anything is written
    q2 = _synthetic(seed=1)
    q2.tables["table"].obsm["MCD_imputed"] = np.zeros((16, 1))
    with pytest.raises(KeyError, match=r"obsm\['MCD_imputed'\] exists"):
        model.impute(q2, missing=["C"], n_samples=1, steps=1)
    assert set(q2.images) == {"img"}
    with pytest.raises(ValueError, match="indices"):
        model.impute(q2, indices=[0], missing=["C"])


def test_image_posterior_does_not_depend_on_batch_size(trained):
    _, model = trained
    query = _synthetic(seed=5)
    a = model.image_posterior(query, missing=["C"], n_samples=2, steps=3, seed=1, batch_size=64)
    b = model.image_posterior(query, missing=["C"], n_samples=2, steps=3, seed=1, batch_size=1)
    c = model.image_posterior(query, missing=["C"], n_samples=2, steps=3, seed=1, batch_size=5)
    # Not bit-identical (tables are), and looser than the house's rtol 1e-5 / atol 1e-6: on the
    # CPU, float32 kernels (mkldnn convolutions) on 16 x 16 tiles round differently with a
    # tile's place in the network batch (~1e-8 per call, up to ~1e-5 after the sampler, at a
    # handful of pixels); the inverse normaliser amplifies that in the original scale.
    for other in (b, c):
        for k in ("mean_normalized", "variance_normalized", "mean", "variance"):
            np.testing.assert_allclose(other[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    d = model.image_posterior(query, missing=["C"], n_samples=2, steps=3, seed=2)
    assert not np.allclose(d["mean"][2], a["mean"][2])
    np.testing.assert_array_equal(d["mean"][:2], a["mean"][:2])  # observed channels: measured values


def test_tile_variance_is_the_sample_variance_of_the_draws():
    # one tile covering the image: the stitched moments are the draws' own, variance with ddof=1
    # (as tables get from Moments), so a Gaussian from 4 draws is not narrowed by their number
    from biodiffuse.models._mcd_image import TileMoments

    draws = np.random.default_rng(0).normal(size=(1, 4, 2, 8, 8))
    reducer = TileMoments(np.array([[0, 0]]), (2, 8, 8), 8, lambda z: 3.0 * z)
    reducer(np.array([0]), draws, {})
    out = reducer.result()
    z = (draws[0] + 1.0) / 2.0
    np.testing.assert_allclose(out["mean_normalized"], z.mean(0), atol=1e-12)
    np.testing.assert_allclose(out["variance_normalized"], z.var(0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(out["variance"], (3.0 * z).var(0, ddof=1), atol=1e-12)


def test_not_set_up_and_duplicate_channel_names_are_clear_errors(trained):
    _, model = trained
    sdata = _synthetic()
    with pytest.raises(ValueError, match=r"not set up for MCD; call MCD.setup_spatialdata"):
        bd.models.MCD(sdata)
    assert "biodiffuse" not in sdata.attrs
    img = np.asarray(sdata.images["img"].data)
    dup = sd.SpatialData(images={"img": Image2DModel.parse(img, dims=("c", "y", "x"), c_coords=["A", "B", "A"])})
    with pytest.raises(ValueError, match=r"images\['img'\] has 1 duplicated channel name"):
        model.impute(dup, missing=["C"], n_samples=1, steps=1)
    with pytest.raises(ValueError, match="duplicated channel name"):
        model.image_posterior(dup, n_samples=1, steps=1)
    assert set(dup.images) == {"img"}
    with pytest.raises(ValueError, match="duplicated channel name"):
        bd.models.MCD.setup_spatialdata(dup, image_key="img")
    other = sd.SpatialData(images={"img": Image2DModel.parse(img, dims=("c", "y", "x"), c_coords=["X", "Y", "Z"])})
    with pytest.raises(ValueError, match="shares no name"):
        model.impute(other, n_samples=1, steps=1)
    assert set(other.images) == {"img"}


def test_imputation_learns_the_relation_and_never_reads_the_missing_channel(trained):
    sdata, model = trained
    query = _synthetic(seed=2)
    truth = np.asarray(query.images["img"].data)[2].copy()
    post = model.image_posterior(query, missing=["C"], n_samples=4, steps=5, seed=3)
    r = np.corrcoef(post["mean"][2].ravel(), truth.ravel())[0, 1]
    assert r > 0.5, r
    # shuffle the missing channel's pixels: the imputation must not change at all
    shuffled = np.asarray(query.images["img"].data).copy()
    shuffled[2] = np.random.default_rng(0).permutation(shuffled[2].ravel()).reshape(64, 64)
    query.images["img"] = Image2DModel.parse(shuffled, dims=("c", "y", "x"), c_coords=["A", "B", "C"])
    post2 = model.image_posterior(query, missing=["C"], n_samples=4, steps=5, seed=3)
    np.testing.assert_array_equal(post["mean"][2], post2["mean"][2])


def test_absent_channel_is_imputed_and_errors(trained):
    sdata, model = trained
    img = np.asarray(sdata.images["img"].data)[:2]
    q = sd.SpatialData(images={"img": Image2DModel.parse(img, dims=("c", "y", "x"), c_coords=["A", "B"])})
    post = model.image_posterior(q, n_samples=1, steps=2)
    assert list(post["observed"]) == [True, True, False]
    with pytest.raises(ValueError, match="Nothing to impute"):
        model.image_posterior(sdata, n_samples=1, steps=1)
    with pytest.raises(ValueError, match="not among the model's channels"):
        model.image_posterior(sdata, missing=["Z"], n_samples=1, steps=1)
    with pytest.raises(TypeError, match="SpatialData"):
        model.impute(__import__("anndata").AnnData(np.ones((3, 3))))
    with pytest.raises(TypeError):
        model.image_posterior(sdata, None)  # keyword-only
    with pytest.raises(TypeError, match="recentre must be True, False or None"):
        model.image_posterior(sdata, missing=["B"], n_samples=2, steps=2, recentre="yes")


def test_recentred_tiles_centre_on_the_one_step_mean(trained):
    """``recentre=True`` on images: every tile's draws are centred on the mean of its one-step
    draws, so the stitched mean is the one-step sampler's; the spread stays; observed channels
    keep their values; the run records it at no extra evaluation."""
    sdata, model = trained
    kw = dict(missing=["C"], n_samples=3, seed=1)
    one = model.image_posterior(sdata, steps=1, **kw)
    plain = model.image_posterior(sdata, steps=3, **kw)
    assert model.recentres is False  # images do not recentre by default (it hurt on MIBI)
    np.testing.assert_array_equal(model.image_posterior(sdata, steps=3, recentre=False, **kw)["mean"], plain["mean"])
    rc = model.image_posterior(sdata, steps=3, recentre=True, **kw)
    np.testing.assert_allclose(rc["mean_normalized"], one["mean_normalized"], atol=1e-5)
    assert np.abs(rc["mean_normalized"][2] - plain["mean_normalized"][2]).max() > 1e-3  # it moved the centre
    np.testing.assert_array_equal(rc["mean"][:2], plain["mean"][:2])  # observed channels: measured values
    assert rc["variance_normalized"][2].mean() > 0.5 * plain["variance_normalized"][2].mean()
    model.impute(sdata, n_samples=2, steps=3, recentre=True, missing=["C"], key_added="rc_img", overwrite=True)
    run = sdata.attrs["rc_img"]
    assert run["recentre"] is True and run["network_evaluations_per_draw"] == model.network_evaluations(steps=3)


def test_save_load_round_trip_on_images(trained, tmp_path):
    sdata, model = trained
    model.save(tmp_path / "m")
    loaded = bd.models.MCD.load(tmp_path / "m", sdata)
    a = model.image_posterior(sdata, missing=["B"], n_samples=2, steps=2, seed=5)["mean"]
    b = loaded.image_posterior(sdata, missing=["B"], n_samples=2, steps=2, seed=5)["mean"]
    np.testing.assert_array_equal(a, b)


def test_holdout_keeps_tiles_out_of_training():
    sdata = _synthetic()
    bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=16, downsample=1)
    model = bd.models.MCD(sdata, model_channels=16, heads=2, channel_mult=(1, 1, 1))
    hold = np.zeros((64, 64), bool)
    hold[:, :32] = True
    train_t, val_t, n = model._image_training_tensors(hold, 1.0, 0)
    from biodiffuse.data.tiles import tile_origins

    origins = tile_origins(64, 64, 16, 8)[model.train_indices]
    assert n == len(origins) > 0 and (origins[:, 1] >= 32).all()
    with pytest.raises(ValueError, match="holdout"):
        model._image_training_tensors(np.zeros((10, 10), bool), 1.0, 0)


def test_image_panels_plot(trained):
    import matplotlib

    matplotlib.use("Agg")
    sdata, model = trained
    q = _synthetic(seed=4)
    model.impute(q, missing=["C"], n_samples=2, steps=2)
    fig = bd.pl.image_imputation_panels(q, "img", ["C"])
    assert len(fig.axes) >= 3
    with pytest.raises(KeyError, match="impute"):
        bd.pl.image_imputation_panels(_synthetic(), "img", ["C"])


def test_image_defaults_are_the_measured_small_network_and_budget():
    """Images default to the 16-channel, 2-head UNet and ~500 steps of 64 tiles (the MIBI
    measurement); tables keep 32 channels, 4 heads, ~1,500 steps of 256 cells."""
    import anndata as ad

    sdata = _synthetic()
    bd.models.MCD.setup_spatialdata(sdata, image_key="img", tile_size=16, downsample=1)
    model = bd.models.MCD(sdata)
    assert (model.init_args["model_channels"], model.init_args["heads"]) == (16, 2)
    # the image sampler chosen on the MIBI validation tiles; tables keep theirs
    assert model.sampler_settings == dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=3.0)
    assert model.network_evaluations(steps=5) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    plan = model.registry["training_plan"]
    assert plan["batch_size"] == 64
    assert plan["default_max_epochs"] == int(np.clip(round(500 / plan["steps_per_epoch"]), 20, 3000))
    table = ad.AnnData(np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    table.var_names = ["a", "b", "c", "d"]
    bd.models.MCD.setup_anndata(table)
    tab = bd.models.MCD(table)
    assert (tab.init_args["model_channels"], tab.init_args["heads"]) == (32, 4)
    assert tab.sampler_settings == dict(solver="dpm2m", sigma_max=10.0, sigma_min=0.05, rho=7.0) and tab.recentres
    assert model.recentres is False  # images: recentring hurt on MIBI
    assert tab._training_defaults()["batch_size"] == 256 and tab._training_defaults()["steps"] == 1500
    assert bd.models.MCD(sdata, model_channels=8, heads=1).init_args["model_channels"] == 8


def test_tune_sampler_scores_validation_tiles_and_keeps_the_better_schedule(trained, tmp_path):
    """Images tune on the validation tiles of their training run: of a good schedule (Euler from
    sigma 10) and EDM's 3 Heun steps from 80 (which throws draws off), the tuner must keep the
    one that also scores better on an image it never saw; the missing channel is never read."""
    import copy

    sdata, trained_model = trained
    model = copy.deepcopy(trained_model)
    assert len(model._validation_origins) > 0
    good = dict(solver="euler", steps=5, nfe=5, sigma_max=10.0, sigma_min=0.05, rho=7.0)
    bad = dict(solver="heun", steps=3, nfe=5, sigma_max=80.0, sigma_min=0.002, rho=7.0)
    table = model.tune_sampler(candidates=[bad, good], n_samples=6)
    assert list(table["crps_fair"]) == sorted(table["crps_fair"]) and len(table) == 2
    best = table.iloc[0]
    assert model.sampler_settings == {k: best[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}
    assert model.registry["sampler_tuning"]["crps"] == best["crps"]

    # the choice holds on a new image: score both schedules' draws of channel C there
    query = _synthetic(seed=2)
    tiles = np.concatenate([model._normalize_image(np.asarray(query.images["img"].data))[None, :, y:y + 16, x:x + 16]
                            for y in (0, 24, 48) for x in (0, 24, 48)])
    observed = np.array([True, True, False])
    y = (tiles[:, 2:3] + 1.0) / 2.0
    crps = {}
    for name, cand in (("good", good), ("bad", bad)):
        sampler = bd.diffusion.edm_sampler(cand["steps"], **{k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
        d = model._tile_draws(tiles, observed, sampler, n_samples=6, seed=1, device="cpu")
        assert d.shape == (9, 6, 1, 16, 16)
        crps[name] = bd.metrics.crps(y.transpose(0, 2, 3, 1).reshape(-1, 1), d.transpose(0, 3, 4, 1, 2).reshape(-1, 6, 1)).mean()
        # the unobserved channel is never read
        noisy = tiles.copy()
        noisy[:, 2] = np.random.default_rng(0).normal(size=noisy[:, 2].shape)
        np.testing.assert_array_equal(d, model._tile_draws(noisy, observed, sampler, n_samples=6, seed=1, device="cpu"))
    chosen = "good" if best["solver"] == "euler" else "bad"
    assert crps[chosen] == min(crps.values()), (chosen, crps)

    with pytest.raises(TypeError, match="validation tiles"):
        model.tune_sampler(sdata, candidates=[good])
    with pytest.raises(ValueError, match="max_tiles"):
        model.tune_sampler(candidates=[good], max_tiles=0)
    model.save(tmp_path / "tuned")
    loaded = bd.models.MCD.load(tmp_path / "tuned", sdata)
    assert loaded.sampler_settings == model.sampler_settings
    with pytest.raises(ValueError, match="No validation tiles"):
        loaded.tune_sampler(candidates=[good])

    # an image model set to recentre is tuned on recentred tiles: centred on the one-step mean
    plain_score = model.tune_sampler(candidates=[good], n_samples=4).iloc[0]
    model.set_sampler(recentre=True)
    rc_score = model.tune_sampler(candidates=[good], n_samples=4).iloc[0]
    assert rc_score["nfe"] == plain_score["nfe"] and abs(rc_score["crps_fair"] - plain_score["crps_fair"]) > 1e-5
