"""GeneFlow model: set-up, training on region blocks, generation through the one sampler,
conditioning that matters, query by gene name, gene importance, save / load, baselines on the
same networks, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

import biodiffuse as bd

import _tiny

SMALL = dict(dim=32, rank=4, model_channels=16, channel_mult=(1, 2), encoder_layers=1)


def _setup():
    sdata, types = _tiny.histology()
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16)
    return sdata, types


@pytest.fixture(scope="module")
def trained(accelerator, devices):
    sdata, types = _setup()
    model = bd.models.GeneFlow(sdata, **SMALL)
    model.train(max_epochs=18, batch_size=32, lr=1e-3, block_size=64, enable_progress_bar=False,
                accelerator=accelerator, devices=devices)
    return model, sdata, types


def _centre(tiles) -> np.ndarray:
    """Mean brightness of the central 4 x 4 pixels per row (over samples)."""
    return np.asarray(tiles)[:, :, 0, 6:10, 6:10].mean(axis=(1, 2, 3))


def test_setup_writes_only_the_record():
    sdata, _ = _tiny.histology()
    before = set(sdata.tables["table"].obs.columns), set(sdata.tables["table"].obsm.keys())
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16)
    rec = sdata.attrs["biodiffuse"]["GeneFlow"]
    assert rec["genes"] == list(sdata.tables["table"].var_names) and rec["channels"] == ["DAPI"]
    assert (set(sdata.tables["table"].obs.columns), set(sdata.tables["table"].obsm.keys())) == before


def test_training_splits_by_region_and_learns(trained):
    model, _, _ = trained
    h = model.history
    assert {"train_loss", "val_loss"} <= set(h.columns)
    assert h["val_loss"].iloc[-1] < 0.6 * h["val_loss"].iloc[0]


def test_generation_follows_the_expression(trained):
    """Bright-cell expression gives bright centres; the same cells' tiles from shuffled
    expression lose the link (does the expression matter at all?)."""
    model, sdata, types = trained
    tiles = model.generate(n_samples=2, steps=8, key_added="gen")
    assert tiles.dims == ("cell", "sample", "c", "y", "x") and tiles.shape == (256, 2, 1, 16, 16)
    assert list(tiles.coords["c"].values) == ["DAPI"] and tiles.attrs["nfe"] == 8
    centre = _centre(tiles)
    gap = centre[types == 1].mean() - centre[types == 0].mean()
    assert gap > 0.3
    table = sdata.tables["table"].copy()
    table.X = table.X[np.random.default_rng(0).permutation(table.n_obs)]
    shuffled = _centre(model.generate(table, n_samples=2, steps=8))
    assert abs(shuffled[types == 1].mean() - shuffled[types == 0].mean()) < gap / 2
    t = sdata.tables["table"]
    assert t.obsm["gen"].shape == (256, 2, 1, 16, 16) and t.uns["gen"]["steps"] == 8


def test_rows_do_not_depend_on_the_batch(trained):
    model, sdata, _ = trained
    a = model.generate(indices=np.arange(10), batch_size=3, n_samples=2, seed=5, key_added="a")
    b = model.generate(indices=np.arange(5, 10), batch_size=10, n_samples=2, seed=5, key_added="b")
    np.testing.assert_array_equal(a.values[5:], b.values)
    c = model.generate(indices=np.arange(5, 10), batch_size=10, n_samples=2, seed=6, key_added="c")
    assert not np.allclose(b.values, c.values)
    stored = sdata.tables["table"].obsm["b"]
    assert np.isnan(stored[:5]).all() and np.isfinite(stored[5:10]).all()


def test_query_matched_by_gene_name(trained):
    """An AnnData of cells with the genes in another order and an extra gene gives the same
    tiles (CPM over the model's genes); a missing gene is a clear error."""
    model, sdata, _ = trained
    table = sdata.tables["table"]
    ref = model.generate(indices=np.arange(6), key_added="ref")
    q = table[:6, ::-1].copy()
    q.obsm.clear()
    import anndata as ad

    extra = ad.AnnData(np.full((6, 1), 50.0, np.float32), obs=q.obs[[]])
    extra.var_names = ["extra_gene"]
    q = ad.concat([q, extra], axis=1)
    q.obs_names = table.obs_names[:6]
    np.testing.assert_array_equal(model.generate(q).values, ref.values)
    with pytest.raises(ValueError, match="missing"):
        model.generate(q[:, [g for g in q.var_names if g != "bright"]].copy(), key_added="lacking")


def test_existing_keys_need_overwrite(trained):
    model, sdata, _ = trained
    model.generate(indices=[0], key_added="once")
    with pytest.raises(KeyError, match="overwrite"):
        model.generate(indices=[0], key_added="once")
    model.generate(indices=[0], key_added="once", overwrite=True)


def test_gene_importance_ranks_the_informative_genes(trained):
    model, sdata, _ = trained
    s = model.gene_importance(n_t=4, n_noise=2)
    var = sdata.tables["table"].var
    assert "GeneFlow_importance" in var and np.isfinite(var["GeneFlow_importance"]).all()
    informative = s[["bright", "dim"]].mean()
    noise = s.drop(["bright", "dim"]).mean()
    assert informative > 1.3 * noise
    assert sdata.tables["table"].uns["GeneFlow_importance"]["use_images"] is True


def test_save_load_round_trip(trained, tmp_path):
    model, sdata, _ = trained
    model.save(tmp_path / "gf")
    loaded = bd.models.GeneFlow.load(tmp_path / "gf", sdata)
    a = model.generate(indices=np.arange(4), key_added="s1")
    b = loaded.generate(indices=np.arange(4), key_added="s2")
    np.testing.assert_array_equal(a.values, b.values)
    loaded.train(max_epochs=1, batch_size=64, enable_progress_bar=False)  # a loaded model trains again
    assert len(loaded.history) == len(model.history) + 1


@pytest.mark.parametrize("objective", ["edm", "mse"])
def test_baselines_on_the_same_networks(objective, accelerator, devices):
    sdata, _ = _setup()
    model = bd.models.GeneFlow(sdata, objective=objective, **SMALL)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False, accelerator=accelerator, devices=devices)
    tiles = model.generate(indices=np.arange(4), n_samples=2, steps=2)
    assert tiles.shape == (4, 2, 1, 16, 16) and np.isfinite(tiles.values).all()
    assert tiles.attrs["nfe"] == (2 if objective == "edm" else 1)  # EDM: Euler, one evaluation a step
    with pytest.raises(ValueError, match="flow's solver"):  # the flow's solver is not silently ignored
        model.generate(indices=np.arange(4), steps=2, method="heun", key_added="heun")
    assert "heun" not in sdata.tables["table"].obsm
    if objective == "mse":  # deterministic: both draws the same tile
        np.testing.assert_array_equal(tiles.values[:, 0], tiles.values[:, 1])
        with pytest.raises(ValueError, match="flow"):
            model.gene_importance()


@pytest.fixture(scope="module")
def edm_trained(accelerator, devices):
    sdata, types = _setup()
    model = bd.models.GeneFlow(sdata, objective="edm", **SMALL)
    model.train(max_epochs=18, batch_size=32, lr=1e-3, block_size=64, enable_progress_bar=False,
                accelerator=accelerator, devices=devices)
    return model, sdata


_GOOD = dict(solver="euler", steps=4, nfe=4, sigma_max=80.0, sigma_min=0.002, rho=3.0)
_BAD = dict(solver="heun", steps=3, nfe=5, sigma_max=80.0, sigma_min=0.002, rho=7.0)  # EDM's Heun, few steps


def _settings(cand: dict) -> dict:
    return {k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}


def test_edm_baseline_tunes_its_sampler_on_validation_tiles(edm_trained, tmp_path, device):
    """The EDM baseline samples with its own schedule: the tuner scores the validation blocks'
    tiles and keeps the schedule whose draws are also closer to the real tiles of an image it
    never saw; generate records it; save keeps it."""
    import copy

    from biodiffuse.models._edm_sampling import pixel_draws

    model, sdata = copy.deepcopy(edm_trained[0]), edm_trained[1]
    assert model.sampler_settings == dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=7.0)
    model.set_sampler(**_settings(_BAD))
    table = model.tune_sampler(candidates=[_BAD, _GOOD], n_samples=3, max_tiles=16, device=device)
    assert len(table) == 2 and list(table["crps_fair"]) == sorted(table["crps_fair"]) and np.isfinite(table["crps"]).all()
    best = table.iloc[0]
    assert model.sampler_settings == _settings(best)
    assert model.registry["sampler_tuning"]["crps"] == best["crps"]

    query, _ = _tiny.histology(seed=3)
    real, rows = model._tiles(query, np.arange(query.tables["table"].n_obs))
    crps = {}
    for name, cand in (("good", _GOOD), ("bad", _BAD)):
        model.set_sampler(**_settings(cand))
        tiles = model.generate(query, indices=rows, n_samples=3, steps=cand["steps"], key_added=name, device=device)
        crps[name] = bd.metrics.score_draws(pixel_draws(real[:, None].astype(np.float64))[:, 0],
                                            pixel_draws(tiles.values.astype(np.float64)))["crps"]
        rec = query.tables["table"].uns[name]
        assert rec["solver"] == cand["solver"] and rec["nfe_per_tile"] == cand["nfe"] == tiles.attrs["nfe"]
    chosen = "good" if best["solver"] == "euler" else "bad"
    assert crps[chosen] == min(crps.values()), (chosen, crps)

    model.set_sampler(**_settings(best))
    model.save(tmp_path / "tuned")
    loaded = bd.models.GeneFlow.load(tmp_path / "tuned", sdata)
    assert loaded.sampler_settings == model.sampler_settings
    with pytest.raises(ValueError, match="No validation tiles"):
        loaded.tune_sampler(candidates=[_GOOD])
    with pytest.raises(ValueError, match="max_tiles"):
        model.tune_sampler(candidates=[_GOOD], max_tiles=0)
    with pytest.raises(ValueError, match="at least 2 draws"):
        model.tune_sampler(candidates=[_GOOD], n_samples=1)


def test_sampler_settings_belong_to_the_edm_objective(edm_trained):
    """Bad settings fail in the constructor; a model saved before the settings existed samples
    with EDM's Heun; a flow model has no EDM sampler (its solver is generate's method)."""
    model, sdata = edm_trained
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        bd.models.GeneFlow(sdata, objective="edm", **SMALL, sigma_min=2.0, sigma_max=1.0)
    old = bd.models.GeneFlow(sdata, objective="edm", **SMALL)
    for k in ("solver", "sigma_max", "sigma_min", "rho"):
        del old.init_args[k]
    assert old.sampler_settings == dict(solver="heun", sigma_max=80.0, sigma_min=0.002, rho=7.0)
    assert old.network_evaluations(steps=5) == 9
    flow = bd.models.GeneFlow(sdata, **SMALL)
    assert flow.network_evaluations(steps=4) == 4 and flow.network_evaluations(steps=4, method="heun") == 8
    assert bd.models.GeneFlow(sdata, objective="mse", **SMALL).network_evaluations(steps=1) == 1
    for call in (lambda: flow.set_sampler(solver="heun"), lambda: flow.tune_sampler()):
        with pytest.raises(ValueError, match="Only objective='edm'"):
            call()
    with pytest.raises(ValueError, match="own solver"):
        model.network_evaluations(steps=4, method="heun")
    with pytest.raises(ValueError, match="steps"):
        flow.generate(indices=[0], steps=0)


def test_bad_inputs():
    sdata, _ = _tiny.histology()
    with pytest.raises(TypeError, match="SpatialData"):
        bd.models.GeneFlow.setup_spatialdata(sdata.tables["table"], image_key="dapi")
    with pytest.raises(KeyError):
        bd.models.GeneFlow.setup_spatialdata(sdata, image_key="he")
    with pytest.raises(KeyError, match="not in table"):
        bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", genes=["bright", "nope"])
    with pytest.raises(ValueError, match="mode"):
        bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", mode="grid")
    assert "biodiffuse" not in sdata.attrs
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=18)
    with pytest.raises(ValueError, match="divisible"):
        bd.models.GeneFlow(sdata, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="objective"):
        bd.models.GeneFlow(sdata, objective="gan")
    bad, _ = _tiny.histology()
    bad.tables["table"].X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        bd.models.GeneFlow.setup_spatialdata(bad, image_key="dapi")
    with pytest.raises(RuntimeError, match="not trained"):
        bd.models.GeneFlow(sdata, channel_mult=(1, 2)).generate()
    with pytest.raises(ValueError, match="window-mode"):
        bd.models.GeneFlow(sdata, channel_mult=(1, 2)).windows()


def test_window_mode_pools_the_cells_of_each_window(accelerator, devices):
    """Window mode: a tile per grid window (here 2 x 2 cells each), conditioned on its cells;
    generation writes a new image element on the slide's grid and the importance reads the
    windows with their padding masked."""
    sdata, _ = _tiny.histology()
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16, scale=0.5, mode="window", max_cells=6)
    model = bd.models.GeneFlow(sdata, **SMALL)
    model.train(max_epochs=2, batch_size=16, enable_progress_bar=False, accelerator=accelerator, devices=devices)
    tiles = model.generate(n_samples=2, key_added="virtual")
    assert tiles.dims[0] == "window" and tiles.shape == (64, 2, 1, 16, 16)
    img = sdata.images["virtual"]
    assert img.shape == (1, 128, 128) and list(img.coords["c"].values) == ["DAPI"]
    y0, x0 = int(tiles.coords["y0"][9]) // 2, int(tiles.coords["x0"][9]) // 2
    np.testing.assert_allclose(np.asarray(img.data[0, y0 : y0 + 16, x0 : x0 + 16]), tiles.values[9, 0, 0], atol=1e-6)
    assert sdata.attrs["virtual"]["n_rows"] == 64
    part = model.generate(indices=[3, 9], key_added="two")
    np.testing.assert_array_equal(part.values[1], tiles.values[9, :1])
    # windows(): the windows generate() counts, with the expression the model reads
    win = model.windows()
    np.testing.assert_array_equal(win.origins[:, 0], tiles.coords["y0"].values)
    np.testing.assert_array_equal(win.origins[:, 1], tiles.coords["x0"].values)
    table = sdata.tables["table"]
    cells = win.index[9][win.mask[9]]
    assert len(cells) == 4 and (win.index[9][~win.mask[9]] == -1).all()
    x = np.asarray(table[:, model.genes].X, dtype=np.float64)
    cpm = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e6)
    np.testing.assert_allclose(win.values[9][win.mask[9]], cpm[cells], rtol=1e-5)
    xy = np.asarray(table.obsm["spatial"])[cells]
    assert ((xy >= win.origins[9][::-1] - 0.5) & (xy < win.origins[9][::-1] + 32 - 0.5)).all()
    # within(): a window counts only if all its real cells are selected (padding ignored)
    sel = np.zeros(table.n_obs, dtype=bool)
    sel[cells] = True
    assert win.within(sel).sum() == 1 and win.within(sel)[9]
    sel[cells[0]] = False
    assert not win.within(sel).any()
    with pytest.raises(TypeError, match="SpatialData"):
        model.windows(table)
    s = model.gene_importance(n_t=2, n_noise=1)
    assert len(s) == 8 and np.isfinite(s).all() and (s > 0).all()
    with pytest.raises(TypeError, match="SpatialData"):
        model.generate(sdata.tables["table"])


def test_window_mode_edm_tunes_on_validation_windows(accelerator, devices, monkeypatch):
    """A window-mode EDM model keeps its validation windows with their cells' masks, tunes on them
    and generates at its default 8 Euler steps."""
    sdata, _ = _tiny.histology()
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16, scale=0.5, mode="window", max_cells=6)
    model = bd.models.GeneFlow(sdata, objective="edm", **SMALL)
    model.train(max_epochs=2, batch_size=16, block_size=64, enable_progress_bar=False, accelerator=accelerator,
                devices=devices)
    val = model._validation
    assert val["mask"].shape[:2] == val["genes"].shape[:2] and 0 < len(val["genes"]) < 64
    table = model.tune_sampler(candidates=[_GOOD, _BAD], n_samples=2, max_tiles=8)
    assert len(table) == 2 and np.isfinite(table[["crps", "energy_score"]].to_numpy()).all()
    # the windows' cells go to the network with their masks (padding is not a cell)
    import biodiffuse.models.geneflow as gf

    seen = []

    def spying(net, kind, read, **kw):
        def spy(rows):
            seen.append(read(rows))
            return seen[-1]
        return make_prepare(net, kind, spy, **kw)

    make_prepare = gf.make_prepare
    monkeypatch.setattr(gf, "make_prepare", spying)
    every = len(val["genes"])
    model.tune_sampler(candidates=[_GOOD], n_samples=2, max_tiles=every)
    genes = np.concatenate([g for g, _ in seen])
    masks = np.concatenate([m for _, m in seen])
    np.testing.assert_array_equal(genes, val["genes"].numpy())
    np.testing.assert_array_equal(masks, val["mask"].numpy())
    assert not masks.all()
    monkeypatch.undo()
    tiles = model.generate(indices=[0, 1], key_added="edm_windows")
    assert tiles.shape == (2, 1, 1, 16, 16) and tiles.attrs["nfe"] == model.network_evaluations(steps=8)


def test_validation_is_whole_regions_without_shared_pixels():
    """The model's own split: validation tiles come from blocks of the slide, and no validation
    tile shares a pixel with a training tile (the cells in between are left out)."""
    sdata, _ = _setup()
    model = bd.models.GeneFlow(sdata, **SMALL)
    _, train_t, val_t = model._training_data(0.7, 0, block_size=64)
    table = sdata.tables["table"]
    tiles, kept = bd.data.cell_tiles(sdata, image_key="dapi", tile_size=16, scaling=model._scaling(sdata))
    index = {t.tobytes(): i for t, i in zip(tiles, kept)}
    xy = np.asarray(table.obsm["spatial"])
    tr = xy[[index[t.numpy().tobytes()] for t in train_t["image"]]]
    va = xy[[index[t.numpy().tobytes()] for t in val_t["image"]]]
    assert len(va) > 10 and len(tr) > len(va)
    assert bd.data.overlapping_tiles(tr, va, tile_size=16) == 0
    # whole 64-px blocks: every block is all validation or holds no validation cell
    block = lambda p: set(map(tuple, (p // 64).astype(int)))  # noqa: E731
    assert not block(tr) & block(va)
