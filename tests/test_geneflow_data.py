"""GeneFlow data layer: cell-centred tiles, windows of cells, spatial block splits with a tile
buffer, CPM + log1p, gene selection on training cells, and the Xenium / HER2ST loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from biodiffuse.data import (
    cell_tiles,
    cpm_log1p,
    overlapping_tiles,
    region_split,
    select_genes,
    tile_scaling,
    window_cells,
)
from biodiffuse.datasets import her2st, xenium_bone_marrow

from conftest import SHARED_DATA

XENIUM = SHARED_DATA / "spatial" / "xenium_bone_marrow"
HER2ST = SHARED_DATA / "spatial" / "her2st"


def make_sdata(image: np.ndarray, xy: np.ndarray, channels=None, x=None):
    """SpatialData with one (c, y, x) image and a table of cells at (x, y) pixel centroids."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel

    channels = channels or [f"ch{i}" for i in range(image.shape[0])]
    n = len(xy)
    x = np.ones((n, 3), np.float32) if x is None else x
    table = ad.AnnData(X=x, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]))
    table.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    img = Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=channels)
    return SpatialData(images={"img": img}, tables={"table": TableModel.parse(table)})


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [16, 15])
def test_bright_dot_at_centroid_lands_at_tile_centre(tile_size):
    h, w = 200, 300
    # cells well apart (> tile), with fractional centroids including .5 (rounded up)
    xy = np.array([[50.3, 60.7], [120.5, 40.5], [200.49, 150.51], [260.0, 100.0]])
    image = np.zeros((1, h, w), np.uint8)
    for x, y in xy:
        image[0, int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] = 255
    sdata = make_sdata(image, xy)
    tiles, kept = cell_tiles(sdata, image_key="img", table_key="table", tile_size=tile_size, scaling="255")
    assert tiles.shape == (4, 1, tile_size, tile_size) and tiles.dtype == np.float32
    np.testing.assert_array_equal(kept, np.arange(4))
    c = tile_size // 2
    np.testing.assert_array_equal(tiles[:, 0, c, c], 1.0)
    np.testing.assert_array_equal(tiles.sum(axis=(1, 2, 3)), 1.0)  # the only bright pixel in each tile
    # downsampled tiles (scale 1/2): the dot's block is still the centre one
    tiles2, _ = cell_tiles(sdata, image_key="img", tile_size=tile_size, scale=0.5, scaling="255")
    assert tiles2.shape == (4, 1, tile_size, tile_size)
    np.testing.assert_allclose(tiles2[:, 0, c, c], 0.25)
    np.testing.assert_allclose(tiles2.sum(axis=(1, 2, 3)), 0.25)
    # a subset by name and by mask keeps the requested rows
    _, kept = cell_tiles(sdata, image_key="img", tile_size=tile_size, cells=["cell2", "cell0"], scaling="255")
    np.testing.assert_array_equal(kept, [2, 0])
    _, kept = cell_tiles(sdata, image_key="img", tile_size=tile_size, cells=np.array([0, 1, 0, 1], bool))
    np.testing.assert_array_equal(kept, [1, 3])


def test_tile_values_and_scaling():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(3, 120, 130), dtype=np.uint8)
    xy = rng.uniform(20, 100, size=(50, 2))
    sdata = make_sdata(rgb, xy, channels=["R", "G", "B"])
    tiles, kept = cell_tiles(sdata, image_key="img", tile_size=8)  # auto: R, G, B -> /255
    assert tiles.shape == (50, 3, 8, 8) and len(kept) == 50
    for i in (0, 17, 49):
        cy, cx = (np.floor(xy[i, ::-1] + 0.5).astype(int)) - 4
        np.testing.assert_allclose(tiles[i], rgb[:, cy : cy + 8, cx : cx + 8] / 255.0, rtol=1e-6)

    # DAPI-like: skewed, mostly zero; percentile 0.5-99.5 of the whole image, clipped to [0, 1]
    dapi = np.where(rng.random((1, 300, 300)) < 0.8, 0, rng.integers(0, 40, size=(1, 300, 300))).astype(np.uint8)
    dapi[0, 150, 150] = 255
    sdata = make_sdata(dapi, np.array([[150.0, 150.0], [100.2, 80.9]]), channels=["DAPI"])
    lo, hi = tile_scaling(sdata, image_key="img")
    assert lo[0] == np.percentile(dapi, 0.5, method="inverted_cdf")
    assert hi[0] == np.percentile(dapi, 99.5, method="inverted_cdf")
    tiles, _ = cell_tiles(sdata, image_key="img", tile_size=32)
    assert tiles.min() >= 0.0 and tiles.max() <= 1.0 and tiles.max() == 1.0
    expected = np.clip((dapi[:, 134:166, 134:166].astype(np.float32) - lo[0]) / (hi[0] - lo[0]), 0, 1)
    np.testing.assert_allclose(tiles[0], expected, rtol=1e-6)
    # explicit scaling (e.g. the full slide's, when cutting from a crop)
    tiles_e, _ = cell_tiles(sdata, image_key="img", tile_size=32, scaling=(0.0, 255.0))
    np.testing.assert_allclose(tiles_e[0], dapi[:, 134:166, 134:166] / 255.0, rtol=1e-6)


def test_edge_rule_drop_and_pad():
    image = np.full((1, 50, 60), 200, np.uint8)
    xy = np.array([[2.0, 3.0], [30.0, 25.0], [59.0, 49.0], [53.0, 25.0]])  # corner, inside, far corner, 1 px past the right edge
    sdata = make_sdata(image, xy)
    tiles, kept = cell_tiles(sdata, image_key="img", tile_size=16, scaling="255")
    np.testing.assert_array_equal(kept, [1])  # cells whose tile leaves the image are dropped
    assert tiles.shape == (1, 1, 16, 16)
    # a tile touching the border exactly is kept: x = 52 -> columns 44..59
    image2 = np.full((1, 50, 60), 200, np.uint8)
    _, kept = cell_tiles(make_sdata(image2, np.array([[52.0, 25.0], [8.0, 8.0], [7.0, 8.0]])), image_key="img", tile_size=16)
    np.testing.assert_array_equal(kept, [0, 1])
    tiles, kept = cell_tiles(sdata, image_key="img", tile_size=16, edge="pad", pad_value=0.5, scaling="255")
    np.testing.assert_array_equal(kept, [0, 1, 2, 3])
    v = 200 / 255
    # cell 0 at pixel (y=3, x=2): tile rows -5..10, columns -6..9
    np.testing.assert_allclose(tiles[0, 0, :5, :], 0.5)
    np.testing.assert_allclose(tiles[0, 0, :, :6], 0.5)
    np.testing.assert_allclose(tiles[0, 0, 5:, 6:], v, rtol=1e-6)
    # cell 2 at pixel (49, 59): rows 41..56 (rows 50.. outside), columns 51..66 (60.. outside)
    np.testing.assert_allclose(tiles[2, 0, :9, :9], v, rtol=1e-6)
    np.testing.assert_allclose(tiles[2, 0, 9:, :], 0.5)
    np.testing.assert_allclose(tiles[2, 0, :, 9:], 0.5)
    np.testing.assert_allclose(tiles[1], v, rtol=1e-6)
    np.testing.assert_allclose(tiles[3, 0, :, 15], 0.5)  # column 60 is outside
    np.testing.assert_allclose(tiles[3, 0, :, :15], v, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# windows
# ---------------------------------------------------------------------------------------------


def test_window_cells_padding_mask():
    import anndata as ad

    # 2 x 2 grid of 10-px windows over a 20 x 20 image
    xy = np.array([[1.0, 1.0], [8.0, 2.0], [9.4, 9.4], [12.0, 3.0], [15.0, 15.0], [9.6, 0.0]])
    # cell 2 -> pixel (9, 9): window (0, 0); cell 5 -> pixel x 10: window (0, 10)
    x = sparse.csr_matrix(np.arange(18, dtype=np.float32).reshape(6, 3) + 1)
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=["a", "b", "c"]))
    adata.obsm["spatial"] = xy
    win = window_cells(adata, window_size=10, image_shape=(20, 20), min_cells=0)
    np.testing.assert_array_equal(win.origins, [[0, 0], [0, 10], [10, 0], [10, 10]])
    assert win.values.shape == (4, 3, 3) and win.mask.shape == (4, 3)
    np.testing.assert_array_equal(win.mask.sum(axis=1), [3, 2, 0, 1])
    assert sorted(win.index[0][win.mask[0]]) == [0, 1, 2]
    assert sorted(win.index[1][win.mask[1]]) == [3, 5]
    np.testing.assert_array_equal(win.index[~win.mask], -1)
    np.testing.assert_array_equal(win.values[~win.mask], 0)
    np.testing.assert_array_equal(win.values[win.mask], x.toarray()[win.index[win.mask]])
    np.testing.assert_array_equal(win.centres, [[5, 5], [15, 5], [5, 15], [15, 15]])
    # default min_cells=1 drops the empty window; genes by name
    win = window_cells(adata, window_size=10, image_shape=(20, 20), genes=["c", "a"])
    assert len(win.origins) == 3 and win.values.shape == (3, 3, 2)
    np.testing.assert_array_equal(win.values[0][win.mask[0]], x.toarray()[win.index[0][win.mask[0]]][:, [2, 0]])
    # max_cells truncates (nearest the window centre kept) with a warning
    with pytest.warns(UserWarning, match="left out"):
        win = window_cells(adata, window_size=10, image_shape=(20, 20), max_cells=1)
    assert win.values.shape == (3, 1, 3) and win.index[0, 0] == 1  # (8, 2) is nearest the centre (4.5, 4.5)
    # spots: one window per spot centre
    origins = (np.floor(xy[:, ::-1] + 0.5) - 2).astype(int)
    win = window_cells(adata, window_size=5, origins=origins)
    np.testing.assert_array_equal(win.index[:, 0], np.arange(6))


# ---------------------------------------------------------------------------------------------
# region split
# ---------------------------------------------------------------------------------------------


def _pixel_overlap(a: np.ndarray, b: np.ndarray, size: int, shape: tuple[int, int]) -> int:
    """Pixels covered both by a tile centred on some cell of a and one of b (brute force)."""
    pad = size
    cover = []
    for xy in (a, b):
        m = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad), bool)
        for x, y in np.floor(xy + 0.5).astype(int):
            m[y - size // 2 + pad : y - size // 2 + size + pad, x - size // 2 + pad : x - size // 2 + size + pad] = True
        cover.append(m)
    return int((cover[0] & cover[1]).sum())


def test_region_split_never_overlaps_with_buffer():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 600, size=(3000, 2))
    xy[:40] = np.round(xy[:40]) + 0.5  # exact .5: the rounding edge case
    labels = region_split(xy, block_size=100, seed=0, tile_size=24)
    assert set(labels) == {"train", "val", "test", "buffer"}
    split = {s: xy[labels == s] for s in ("train", "val", "test")}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert overlapping_tiles(split[a], split[b], tile_size=24) == 0
        assert _pixel_overlap(split[a], split[b], 24, (600, 600)) == 0
    # without the buffer they do overlap (so the check above can fail)
    plain = region_split(xy, block_size=100, seed=0)
    assert "buffer" not in set(plain)
    tr, te = xy[plain == "train"], xy[plain == "test"]
    assert overlapping_tiles(tr, te, tile_size=24) > 0 and _pixel_overlap(tr, te, 24, (600, 600)) > 0
    # the buffer only removes cells; the others keep their block's split
    np.testing.assert_array_equal(labels[labels != "buffer"], plain[labels != "buffer"])
    # downsampled tiles cover tile_size / scale pixels: the buffer widens
    wide = region_split(xy, block_size=100, seed=0, tile_size=12, scale=0.5)
    np.testing.assert_array_equal(wide, labels)
    assert overlapping_tiles(xy[wide == "train"], xy[wide == "test"], tile_size=12, scale=0.5) == 0


def test_region_split_fractions_and_seed():
    rng = np.random.default_rng(4)
    # uneven density (dense blobs on a sparse background, many empty blocks): fractions of cells
    blobs = rng.uniform(0, 4000, size=(6, 2))
    xy = np.concatenate([rng.normal(b, 250, size=(3000, 2)) for b in blobs] + [rng.uniform(0, 4000, size=(2000, 2))])
    labels = region_split(xy, block_size=150, fractions=(0.7, 0.15, 0.15), seed=7)
    # blocks are dealt by their cell counts, so the shares of cells are close to the fractions
    for seed in (7, 2, 3):
        share = pd.Series(region_split(xy, block_size=150, seed=seed)).value_counts(normalize=True)
        assert abs(share["train"] - 0.7) < 0.01 and abs(share["val"] - 0.15) < 0.01 and abs(share["test"] - 0.15) < 0.01
    np.testing.assert_array_equal(labels, region_split(xy, block_size=150, seed=7))
    other = region_split(xy, block_size=150, seed=8)
    assert (other != labels).mean() > 0.2
    # whole blocks: every block holds one split
    block = (np.floor(np.floor(xy + 0.5) / 150)).astype(int)
    per_block = pd.DataFrame({"b": block[:, 0] * 10000 + block[:, 1], "s": labels}).groupby("b")["s"].nunique()
    assert (per_block == 1).all()
    with pytest.raises(ValueError, match="smaller blocks"):
        region_split(xy, block_size=50000)


# ---------------------------------------------------------------------------------------------
# expression
# ---------------------------------------------------------------------------------------------


def test_cpm_log1p_values_sparse_and_dense():
    rng = np.random.default_rng(5)
    dense = rng.poisson(0.7, size=(40, 30)).astype(np.float32)
    dense[3] = 0
    csr = sparse.csr_matrix(dense)
    out = cpm_log1p(csr)
    assert sparse.issparse(out) and out.nnz == csr.nnz and out.dtype == np.float32
    sums = np.asarray(np.expm1(out.astype(np.float64)).sum(axis=1)).ravel()
    nonzero = dense.sum(axis=1) > 0
    np.testing.assert_allclose(sums[nonzero], 1e6, rtol=1e-5)
    assert sums[3] == 0
    d = cpm_log1p(dense)
    assert isinstance(d, np.ndarray)
    np.testing.assert_allclose(d, out.toarray(), rtol=1e-6)
    np.testing.assert_allclose(d[0], np.log1p(dense[0] / dense[0].sum() * 1e6), rtol=1e-6)
    np.testing.assert_allclose(cpm_log1p(csr.tocsc()).toarray(), d, rtol=1e-6)
    assert csr.toarray().max() == dense.max()  # input untouched
    with pytest.raises(ValueError, match="negative"):
        cpm_log1p(-csr)


def test_select_genes_uses_training_cells_only():
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(6)
    n, g = 400, 60
    lam = rng.gamma(1.0, 1.0, size=g)
    counts = rng.poisson(lam, size=(n, g)).astype(np.float32)
    train = np.zeros(n, bool)
    train[:250] = True
    adata = ad.AnnData(X=sparse.csr_matrix(counts), var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    chosen = select_genes(adata, 10, train=train)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    # same as scanpy on cpm_log1p of the training cells
    ref = ad.AnnData(X=cpm_log1p(adata.X[train]), var=adata.var.copy())
    df = sc.pp.highly_variable_genes(ref, n_top_genes=10, flavor="seurat", inplace=False)
    assert set(chosen) == set(adata.var_names[df["highly_variable"].to_numpy()])
    # making an unchosen gene wildly variable in the test cells only changes nothing ...
    target = next(name for name in adata.var_names if name not in chosen)
    col = adata.var_names.get_loc(target)
    spiked = counts.copy()
    spiked[~train, col] = rng.choice([0, 10], p=[0.75, 0.25], size=(~train).sum())
    spiked[np.ix_(~train, adata.var_names.get_indexer(chosen[:3]))] = 0  # and silence chosen genes there
    adata2 = ad.AnnData(X=sparse.csr_matrix(spiked), var=adata.var.copy())
    assert select_genes(adata2, 10, train=train) == chosen
    assert target in select_genes(adata2, 10, train=None)  # ... but it would with all cells
    # the same spike in training cells is picked up
    spiked_train = counts.copy()
    spiked_train[train, col] = rng.choice([0, 10], p=[0.75, 0.25], size=train.sum())
    assert target in select_genes(ad.AnnData(X=spiked_train, var=adata.var.copy()), 10, train=train)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def test_loaders_bad_paths_name_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cell_feature_matrix.h5") as err:
        xenium_bone_marrow(tmp_path)
    assert "dapi_level15_stitched.png" in str(err.value) and "cell_metadata.parquet" in str(err.value)
    with pytest.raises(FileNotFoundError, match="cell_feature_matrix.h5"):
        xenium_bone_marrow(tmp_path / "nowhere")
    (tmp_path / "C2_selection.tsv").write_text("x\ty\n")
    with pytest.raises(FileNotFoundError, match="C2_counts.tsv.gz") as err:
        her2st("C2", tmp_path)
    assert "C2_HE.jpg" in str(err.value) and "C2_selection.tsv" not in str(err.value).split("lacks")[1].split("(")[0]
    with pytest.raises(FileNotFoundError, match="C9_HE.jpg"):
        her2st("C9", tmp_path / "nowhere")


@pytest.mark.skipif(not XENIUM.is_dir(), reason=f"shared data folder {XENIUM} not present")
def test_xenium_crop_real():
    box = (4000, 2000, 5500, 3200)
    sdata = xenium_bone_marrow(XENIUM, crop=box)
    img = sdata.images["dapi"]
    assert img.dims == ("c", "y", "x") and list(img.coords["c"].values) == ["DAPI"] and img.shape == (1, 1200, 1500)
    table = sdata.tables["table"]
    assert table.n_vars == 477 and table.n_obs > 500 and table.var_names.is_unique
    assert {"cell_id", "cluster", "total_counts"} <= set(table.obs.columns)
    # cells without gene counts have no cluster (missing, not a "<NA>" category)
    np.testing.assert_array_equal(table.obs["cluster"].isna(), table.obs["total_counts"] == 0)
    assert all(c.isdigit() for c in table.obs["cluster"].cat.categories)
    x = table.X
    assert sparse.issparse(x) and x.min() >= 0 and np.array_equal(x.data, np.round(x.data))
    xy = table.obsm["spatial"]
    assert xy.min() >= -0.5 and xy[:, 0].max() < 1499.5 and xy[:, 1].max() < 1199.5
    # the centroids sit on nuclei: DAPI is brighter at the cells' pixels than on average
    arr = np.asarray(img.data[0])
    at = arr[np.floor(xy[:, 1] + 0.5).astype(int), np.floor(xy[:, 0] + 0.5).astype(int)].mean()
    assert at > 3 * arr.mean()
    tiles, kept = cell_tiles(sdata, image_key="dapi", tile_size=64)
    assert tiles.shape[1:] == (1, 64, 64) and 0.8 * table.n_obs < len(kept) <= table.n_obs
    assert tiles.min() >= 0 and tiles.max() <= 1
    assert tiles[:, 0, 28:36, 28:36].mean() > tiles.mean()  # nuclei at the centre
    # a box without cells: a clear error, not one from deep inside spatialdata
    with pytest.raises(ValueError, match="holds no cell centroid"):
        xenium_bone_marrow(XENIUM, crop=(0, 0, 1500, 1500))


@pytest.mark.skipif(not HER2ST.is_dir(), reason=f"shared data folder {HER2ST} not present")
def test_her2st_crop_real():
    sdata = her2st("C3", HER2ST, crop=(2000, 2000, 4000, 4000))
    img = sdata.images["he"]
    assert list(img.coords["c"].values) == ["R", "G", "B"] and img.shape == (3, 2000, 2000)
    table = sdata.tables["table"]
    assert table.n_vars > 15000 and 20 < table.n_obs < 182
    assert table.obs["spot_id"].str.fullmatch(r"\d+x\d+").all()
    assert 0.6 < table.uns["pixel_size_um"] < 0.8
    assert np.asarray(table.X.sum(axis=1)).ravel().min() > 0
    xy = table.obsm["spatial"]
    arr = np.asarray(img.data).astype(float).mean(axis=0)
    at = arr[np.floor(xy[:, 1] + 0.5).astype(int), np.floor(xy[:, 0] + 0.5).astype(int)].mean()
    assert at < arr.mean()  # spots lie on (darker) tissue
    tiles, kept = cell_tiles(sdata, image_key="he", tile_size=32, scale=0.25)  # ~145-px spots in 128 px
    assert tiles.shape[1:] == (3, 32, 32) and len(kept) > 0 and 0 <= tiles.min() and tiles.max() <= 1
