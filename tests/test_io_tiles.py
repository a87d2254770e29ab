"""Channel-TIFF reading into SpatialData, per-cell aggregation, image tiles and the imaging loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("spatialdata")

from biodiffuse.data import (  # noqa: E402
    downsample_mean,
    extract_tiles,
    spatial_split,
    stitch_tiles,
    tile_origins,
    tile_window,
    tiles_inside,
    upsample_nearest,
)
from biodiffuse.io import aggregate_by_labels, read_channel_tiffs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIODIFFUSE_DATA_DIR", ROOT.parent / "shared" / "data"))
MIBI = SHARED_DATA / "imaging" / "mibi_tb_granuloma_point14"
IMC = SHARED_DATA / "imaging" / "imc_cytomapper_pancreas"


# ---------------------------------------------------------------- helpers


def _channel_folder(tmp_path: Path, names, shape=(12, 10), seed=0) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = tmp_path / "channels"
    folder.mkdir()
    planes = {}
    for name in names:
        planes[name] = rng.integers(0, 50, size=shape).astype(np.uint16)
        tifffile.imwrite(folder / f"{name}.tif", planes[name])
    return folder, planes


def _labels(shape=(12, 10)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint16)
    lab[0:4, 0:3] = 1
    lab[5:9, 2:8] = 7  # ids need not be contiguous
    lab[10:12, 8:10] = 3
    lab[0, 9] = 3  # a cell in two pieces
    return lab


def _brute_force_means(image: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for cell in np.unique(labels):
        if cell == 0:
            continue
        out[int(cell)] = np.array([image[c][labels == cell].mean() for c in range(image.shape[0])])
    return out


# ---------------------------------------------------------------- read_channel_tiffs: folders


def test_folder_names_sorted_and_values(tmp_path):
    folder, planes = _channel_folder(tmp_path, ["CD8", "CD3", "HH3", "Au"])
    sdata = read_channel_tiffs(folder, image_key="img")
    img = sdata.images["img"]
    names = list(map(str, img.c.values))
    assert names == ["Au", "CD3", "CD8", "HH3"]
    assert img.dims == ("c", "y", "x") and img.shape == (4, 12, 10)
    assert img.dtype == np.float32
    for i, name in enumerate(names):
        np.testing.assert_array_equal(img.values[i], planes[name].astype(np.float32))
    assert not sdata.tables and not sdata.labels


def test_folder_channels_select_in_given_order_and_exclude(tmp_path):
    folder, planes = _channel_folder(tmp_path, ["A", "B", "C", "D"])
    img = read_channel_tiffs(folder, channels=["D", "B", "C"], exclude=["C"]).images["image"]
    assert list(map(str, img.c.values)) == ["D", "B"]
    np.testing.assert_array_equal(img.values[0], planes["D"])
    img2 = read_channel_tiffs(folder, exclude=["A", "C"]).images["image"]
    assert list(map(str, img2.c.values)) == ["B", "D"]


def test_folder_unknown_names_list_available(tmp_path):
    folder, _ = _channel_folder(tmp_path, ["A", "B"])
    with pytest.raises(ValueError, match=r"unknown channel name.*'Z'.*available.*'A', 'B'"):
        read_channel_tiffs(folder, channels=["A", "Z"])
    with pytest.raises(ValueError, match="exclude: unknown"):
        read_channel_tiffs(folder, exclude=["Q"])
    with pytest.raises(ValueError, match="No channels left"):
        read_channel_tiffs(folder, exclude=["A", "B"])


def test_folder_mismatched_shapes(tmp_path):
    folder, _ = _channel_folder(tmp_path, ["A", "B"])
    tifffile.imwrite(folder / "C.tif", np.zeros((12, 11), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"'C'.*\(12, 11\).*same size"):
        read_channel_tiffs(folder)
    # not reading C avoids the problem
    assert read_channel_tiffs(folder, channels=["A", "B"]).images["image"].shape == (2, 12, 10)


def test_folder_without_tiffs_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No .tif"):
        read_channel_tiffs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_channel_tiffs(tmp_path / "nope")


# ---------------------------------------------------------------- read_channel_tiffs: one file


def test_ome_tiff_channel_names(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.random((3, 8, 9)).astype(np.float32)
    f = tmp_path / "stack.ome.tif"
    tifffile.imwrite(f, stack, metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "CD45", "PanCK"]}})
    img = read_channel_tiffs(f).images["image"]
    assert list(map(str, img.c.values)) == ["DNA", "CD45", "PanCK"]
    np.testing.assert_array_equal(img.values, stack)
    sel = read_channel_tiffs(f, channels=["PanCK", "DNA"]).images["image"]
    np.testing.assert_array_equal(sel.values, stack[[2, 0]])


def test_plain_multipage_tiff_gets_default_or_given_names(tmp_path):
    stack = np.arange(2 * 5 * 6, dtype=np.uint16).reshape(2, 5, 6)
    f = tmp_path / "stack.tiff"
    tifffile.imwrite(f, stack)
    img = read_channel_tiffs(f).images["image"]
    assert list(map(str, img.c.values)) == ["c0", "c1"]
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img.values, stack)
    named = read_channel_tiffs(f, channel_names=["x", "y"], exclude=["x"]).images["image"]
    assert list(map(str, named.c.values)) == ["y"]
    with pytest.raises(ValueError, match="3 channel_names for 2 channels"):
        read_channel_tiffs(f, channel_names=["a", "b", "c"])
    rgb = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)  # interleaved samples: (y, x, s)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    from_rgb = read_channel_tiffs(tmp_path / "rgb.tif").images["image"].values
    np.testing.assert_array_equal(from_rgb, rgb.transpose(2, 0, 1))


# ---------------------------------------------------------------- labels and table


def test_labels_table_matches_brute_force(tmp_path):
    folder, planes = _channel_folder(tmp_path, ["B", "A", "C"])
    lab = _labels()
    tifffile.imwrite(tmp_path / "mask.tif", lab)
    sdata = read_channel_tiffs(folder, image_key="img", labels=tmp_path / "mask.tif")
    assert "img_labels" in sdata.labels
    np.testing.assert_array_equal(sdata.labels["img_labels"].values, lab)
    table = sdata.tables["table"]
    assert list(table.var_names) == ["A", "B", "C"]
    assert list(table.obs["cell_id"]) == [1, 3, 7]
    assert list(table.obs_names) == ["1", "3", "7"]
    assert set(table.obs["region"]) == {"img_labels"}
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "img_labels" and attrs["region_key"] == "region" and attrs["instance_key"] == "cell_id"
    image = np.stack([planes[n] for n in ["A", "B", "C"]]).astype(np.float64)
    expected = _brute_force_means(image, lab)
    for row, cell in enumerate(table.obs["cell_id"]):
        np.testing.assert_allclose(table.X[row], expected[cell], rtol=1e-6)
        ys, xs = np.nonzero(lab == cell)
        np.testing.assert_allclose(table.obsm["spatial"][row], [xs.mean(), ys.mean()])
        assert table.obs["area"].iloc[row] == len(ys)


def test_labels_custom_key_background_and_bad_masks(tmp_path):
    folder, _ = _channel_folder(tmp_path, ["A"])
    lab = _labels()
    tifffile.imwrite(tmp_path / "mask.tif", lab)
    sdata = read_channel_tiffs(
        folder, labels=tmp_path / "mask.tif", labels_key="cells", table_key="t", background=(0, 1)
    )
    assert list(sdata.tables["t"].obs["cell_id"]) == [3, 7]
    assert (sdata.labels["cells"].values == 1).sum() == 0
    tifffile.imwrite(tmp_path / "small.tif", lab[:-1])
    with pytest.raises(ValueError, match="shape"):
        read_channel_tiffs(folder, labels=tmp_path / "small.tif")
    tifffile.imwrite(tmp_path / "float.tif", lab.astype(np.float32) + 0.5)
    with pytest.raises(ValueError, match="integer"):
        read_channel_tiffs(folder, labels=tmp_path / "float.tif")
    with pytest.raises(FileNotFoundError):
        read_channel_tiffs(folder, labels=tmp_path / "missing.tif")


def test_aggregate_by_labels_brute_force_and_errors():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 30, size=(40, 50))
    lab[lab == 13] = 0  # an id absent from the image
    lab[0, 0] = 10_000_000  # huge id: takes the np.unique path
    image = rng.normal(size=(4, 40, 50))
    df = aggregate_by_labels(image, lab, ["a", "b", "c", "d"])
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["a", "b", "c", "d"]
    expected = _brute_force_means(image, lab)
    assert list(df.index) == sorted(expected)
    assert 13 not in df.index and 0 not in df.index
    for cell, means in expected.items():
        np.testing.assert_allclose(df.loc[cell].to_numpy(), means, rtol=1e-12)
    assert aggregate_by_labels(image, np.zeros((40, 50), int), list("abcd")).shape == (0, 4)
    with pytest.raises(ValueError, match="names"):
        aggregate_by_labels(image, lab, ["a"])
    with pytest.raises(ValueError, match="does not match"):
        aggregate_by_labels(image, lab[:, :-1], list("abcd"))
    with pytest.raises(ValueError, match="negative"):
        aggregate_by_labels(image, lab - 5, list("abcd"))


# ---------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    "shape,tile,stride", [((64, 64), 16, None), ((50, 37), 16, 16), ((50, 37), 16, 5), ((16, 20), 16, 1)]
)
def test_tile_origins_cover_image(shape, tile, stride):
    o = tile_origins(*shape, tile, stride)
    assert o.ndim == 2 and o.shape[1] == 2
    cover = np.zeros(shape, dtype=int)
    for y, x in o:
        assert 0 <= y <= shape[0] - tile and 0 <= x <= shape[1] - tile
        cover[y : y + tile, x : x + tile] += 1
    assert (cover > 0).all()
    assert o[:, 0].max() == shape[0] - tile and o[:, 1].max() == shape[1] - tile
    assert len(np.unique(o, axis=0)) == len(o)


def test_tile_origins_no_overlap_when_divisible_and_errors():
    o = tile_origins(64, 48, 16)
    assert len(o) == 4 * 3
    assert tuple(o[0]) == (0, 0) and tuple(o[1]) == (0, 16)  # row-major
    with pytest.raises(ValueError, match="larger than the image"):
        tile_origins(10, 40, 16)
    with pytest.raises(ValueError, match="uncovered"):
        tile_origins(64, 64, 16, stride=20)
    with pytest.raises(ValueError, match="positive"):
        tile_origins(64, 64, 16, stride=0)


def test_spatial_split_disjoint_blocks_and_fraction():
    train, test = spatial_split(100, 120, tile_size=10, test_fraction=0.25, n_blocks=4, seed=0)
    assert train.shape == test.shape == (100, 120) and train.dtype == bool
    assert not (train & test).any() and (train | test).all()
    y_edges = np.round(np.linspace(0, 100, 5)).astype(int)
    x_edges = np.round(np.linspace(0, 120, 5)).astype(int)
    n_test = 0
    for i in range(4):
        for j in range(4):
            block = test[y_edges[i] : y_edges[i + 1], x_edges[j] : x_edges[j + 1]]
            assert block.all() or not block.any()  # whole blocks only
            n_test += int(block.all())
    assert n_test == 4
    assert test.mean() == pytest.approx(0.25, abs=0.01)
    again = spatial_split(100, 120, tile_size=10, seed=0)[1]
    np.testing.assert_array_equal(again, test)
    assert any(not np.array_equal(spatial_split(100, 120, 10, seed=s)[1], test) for s in range(1, 5))
    assert spatial_split(100, 100, 10, test_fraction=0.5, n_blocks=2)[1].mean() == 0.5


def test_spatial_split_errors():
    with pytest.raises(ValueError, match="test blocks"):
        spatial_split(100, 100, 10, test_fraction=0.0)
    with pytest.raises(ValueError, match="test blocks"):
        spatial_split(100, 100, 10, test_fraction=1.0)
    with pytest.raises(ValueError, match="smaller than tile_size"):
        spatial_split(100, 100, 30, n_blocks=4)


def test_tiles_inside_against_brute_force():
    train, test = spatial_split(96, 96, tile_size=8, n_blocks=4, seed=3)
    origins = tile_origins(96, 96, 8, stride=4)
    in_train, in_test = tiles_inside(origins, 8, train), tiles_inside(origins, 8, test)
    for k, (y, x) in enumerate(origins):
        assert in_train[k] == train[y : y + 8, x : x + 8].all()
        assert in_test[k] == test[y : y + 8, x : x + 8].all()
    assert not (in_train & in_test).any()
    assert in_train.any() and in_test.any() and not (in_train | in_test).all()  # straddling tiles are dropped
    with pytest.raises(ValueError, match="outside"):
        tiles_inside(np.array([[90, 0]]), 8, train)


@pytest.mark.parametrize("window", ["hann", "uniform"])
@pytest.mark.parametrize("stride", [None, 16, 7, 1])
def test_extract_stitch_round_trip(window, stride):
    rng = np.random.default_rng(5)
    image = rng.normal(size=(3, 45, 38)).astype(np.float32)
    origins = tile_origins(45, 38, 16, stride)
    tiles = extract_tiles(image, origins, 16)
    assert tiles.shape == (len(origins), 3, 16, 16) and tiles.dtype == np.float32
    y, x = origins[-1]
    np.testing.assert_array_equal(tiles[-1], image[:, y : y + 16, x : x + 16])
    out = stitch_tiles(tiles, origins, 45, 38, window=window)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)
    if stride in (None, 16) or window == "uniform":
        np.testing.assert_array_equal(out, image)


def test_stitch_blends_and_leaves_uncovered_pixels():
    w = tile_window(8, "hann")
    assert w.min() > 0 and w[4, 4] > w[0, 0] and np.allclose(w, w.T)
    tiles = np.stack([np.zeros((1, 8, 8)), np.ones((1, 8, 8))])
    out = stitch_tiles(tiles, np.array([[0, 0], [0, 4]]), 8, 12, window="uniform")
    np.testing.assert_array_equal(out[0, :, 4:8], 0.5)
    partial = stitch_tiles(tiles[:1], np.array([[0, 0]]), 8, 12, window="uniform")
    assert np.isnan(partial[0, :, 8:]).all() and (partial[0, :, :8] == 0).all()
    with pytest.raises(ValueError, match="origins"):
        stitch_tiles(tiles, np.array([[0, 0]]), 8, 12)
    with pytest.raises(ValueError, match="window"):
        stitch_tiles(tiles, np.array([[0, 0], [0, 4]]), 8, 12, window="gauss")


def test_extract_tiles_from_lazy_array_and_errors():
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    image = np.arange(2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20)
    lazy = xr.DataArray(da.from_array(image, chunks=(1, 10, 10)), dims=("c", "y", "x"))
    origins = tile_origins(20, 20, 8, 6)
    np.testing.assert_array_equal(extract_tiles(lazy, origins, 8), extract_tiles(image, origins, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        extract_tiles(image[0], origins, 8)
    with pytest.raises(ValueError, match="outside"):
        extract_tiles(image, np.array([[15, 0]]), 8)


def test_downsample_upsample_round_trip():
    rng = np.random.default_rng(2)
    x = rng.random((2, 6, 9)).astype(np.float32)
    up = upsample_nearest(x, 3)
    assert up.shape == (2, 18, 27) and up[1, 4, 7] == x[1, 1, 2]
    back = downsample_mean(up, 3)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, x)
    big = rng.random((12, 8))
    small = downsample_mean(big, 4)
    assert small.shape == (3, 2)
    assert small[1, 1] == pytest.approx(big[4:8, 4:8].mean())
    np.testing.assert_allclose(downsample_mean(upsample_nearest(small, 4), 4), small)
    assert downsample_mean(np.ones((4, 4), dtype=np.uint16), 2).dtype == np.float64
    with pytest.raises(ValueError, match="not divisible"):
        downsample_mean(big, 5)


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not (MIBI / "channels").is_dir(), reason=f"shared MIBI data not found at {MIBI}")
def test_mibi_granuloma():
    from biodiffuse.datasets import MIBI_NON_PROTEIN, mibi_granuloma

    assert len(list((MIBI / "channels").glob("*.tif"))) == 47
    sdata = mibi_granuloma()
    img = sdata.images["mibi"]
    names = list(map(str, img.c.values))
    assert img.shape == (39, 1024, 1024) and img.dtype == np.float32
    assert not set(MIBI_NON_PROTEIN) & set(names)
    assert {"HH3", "CD45", "CD68", "Keratin-pan", "MastChyTry"} <= set(names)
    assert names == sorted(names)
    table = sdata.tables["table"]
    assert table.n_obs == 1830 and list(table.var_names) == names
    assert table.obs["cell_id"].min() == 2 and table.obs["cell_id"].max() == 1831
    labels = sdata.labels["mibi_labels"].values
    assert labels.shape == (1024, 1024) and (labels == 1).sum() == 0
    # the table is the per-cell mean of the image
    df = aggregate_by_labels(img.values[[names.index("HH3")]], labels, ["HH3"])
    np.testing.assert_allclose(table[:, "HH3"].X.ravel(), df["HH3"].to_numpy(), rtol=1e-5)
    assert float(table[:, "HH3"].X.mean()) > 2.0  # nuclear marker is bright in cells
    full = mibi_granuloma(drop_non_protein=False)
    assert full.images["mibi"].shape[0] == 47


@pytest.mark.skipif(not IMC.is_dir(), reason=f"shared IMC data not found at {IMC}")
def test_imc_pancreas():
    from biodiffuse.datasets import imc_pancreas

    sdata = imc_pancreas()
    assert set(sdata.images) == {"E34", "G01", "J02"}
    for key in sdata.images:
        img = sdata.images[key]
        assert img.shape == (5, 100, 100)
        assert list(map(str, img.c.values)) == ["H3", "CD99", "PIN", "CD8a", "CDH"]
    table = sdata.tables["table"]
    assert table.n_obs == 113 + 122 + 127 and table.obs_names.is_unique
    assert table.obs["region"].value_counts().to_dict() == {"E34_labels": 113, "G01_labels": 122, "J02_labels": 127}
    e34 = table[table.obs["region"] == "E34_labels"]
    df = aggregate_by_labels(sdata.images["E34"].values, sdata.labels["E34_labels"].values, list(table.var_names))
    np.testing.assert_allclose(e34.X, df.to_numpy(), rtol=1e-5)


def test_accumulator_in_batches_equals_stitch_and_upsample_to_restores_size():
    from biodiffuse.data import TileAccumulator, crop_to_factor, downsample_mask, upsample_to

    rng = np.random.default_rng(3)
    image = rng.random((2, 30, 26)).astype(np.float32)
    origins = tile_origins(30, 26, 8, 5)
    tiles = extract_tiles(image, origins, 8)
    acc = TileAccumulator(2, 30, 26, 8)
    for start in range(0, len(origins), 7):  # uneven batches
        acc.add(tiles[start : start + 7].astype(np.float64), origins[start : start + 7])
    np.testing.assert_allclose(acc.result(), stitch_tiles(tiles, origins, 30, 26), rtol=1e-6)
    np.testing.assert_allclose(acc.result(), image, rtol=1e-5)
    # summed straight into a float32 view of a larger output (StainDiffuser's whole-slide path)
    big = np.full((3, 2, 40, 40), 7.0, dtype=np.float32)
    view = big[1, :, 5:35, 10:36]
    inplace = TileAccumulator(2, 30, 26, 8, out=view)
    assert inplace.norm.dtype == np.float32
    for start in range(0, len(origins), 7):
        inplace.add(tiles[start : start + 7], origins[start : start + 7])
    res = inplace.result()
    assert np.shares_memory(res, big)
    np.testing.assert_allclose(big[1, :, 5:35, 10:36], image, rtol=1e-5)
    assert (big[0] == 7).all() and (big[1, :, :5] == 7).all()  # nothing outside the view touched
    with pytest.raises(ValueError, match="out must be"):
        TileAccumulator(2, 30, 26, 8, out=np.zeros((2, 30, 25), np.float32))
    small = downsample_mean(crop_to_factor(image, 4), 4)
    assert small.shape == (2, 7, 6)
    up = upsample_to(small, 4, 30, 26)
    assert up.shape == image.shape and (up[:, 28:, :] == up[:, 27:28, :]).all()
    mask = np.zeros((30, 26), bool)
    mask[5, 5] = True
    assert downsample_mask(mask, 4).sum() == 1 and downsample_mask(mask, 4)[1, 1]
