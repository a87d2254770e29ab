"""HEMIT and DeepLIIF loaders: mosaics of paired stain tiles, checked against the files read directly."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from biodiffuse.datasets.staining import DEEPLIIF_PANELS, HEMIT_STAINS, deepliif, hemit

from conftest import SHARED_DATA

HEMIT = SHARED_DATA / "staining" / "hemit"
DEEPLIIF = SHARED_DATA / "staining" / "deepliif"
PANELS = ("ihc", "hematoxylin", "dapi", "lap2", "ki67_if", "seg")  # left to right in each strip


def _need(folder):
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")


def _jpeg(file) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as im:
        return np.moveaxis(np.asarray(im), 2, 0)


def _tiff(file) -> np.ndarray:
    import tifffile

    return tifffile.imread(file)


def _csv() -> pd.DataFrame:
    return pd.read_csv(HEMIT / "tiles.csv", dtype={"tile": str, "region": str})


@pytest.fixture(scope="module")
def train4():
    _need(HEMIT)
    return hemit("train", tiles=4)


@pytest.fixture(scope="module")
def liif():
    _need(DEEPLIIF)
    return deepliif()


# ---------------------------------------------------------------------------------------------
# HEMIT
# ---------------------------------------------------------------------------------------------


def test_hemit_elements_channels_dtypes(train4):
    assert HEMIT_STAINS == ("DAPI", "mIHC_1", "mIHC_2", "mIHC_3")
    he, mihc = train4.images["he"], train4.images["mihc"]
    assert he.dims == ("c", "y", "x") and he.shape == (3, 512, 512) and he.dtype == np.uint8
    assert mihc.shape == (4, 512, 512) and mihc.dtype == np.uint8
    assert list(he.coords["c"].values) == ["R", "G", "B"]
    assert list(mihc.coords["c"].values) == ["DAPI", "mIHC_1", "mIHC_2", "mIHC_3"]
    t = train4.tables["tiles"]
    assert t.n_obs == 4 and t.X.shape == (4, 0)
    first = _csv().query("split == 'train'")["tile"].tolist()[:4]
    assert t.obs["tile"].tolist() == first and t.obs_names.tolist() == first
    assert {"tile", "region", "subtile", "y0", "x0", "tile_size"} <= set(t.obs.columns)
    # ceil(sqrt(4)) = 2 columns: row-major origins
    np.testing.assert_array_equal(t.obs[["y0", "x0"]].to_numpy(), [[0, 0], [0, 256], [256, 0], [256, 256]])
    assert (t.obs["tile_size"] == 256).all()
    np.testing.assert_array_equal(t.obsm["spatial"], [[128, 128], [384, 128], [128, 384], [384, 384]])
    assert t.uns["layout"] == {"columns": 2, "rows": 2}


def test_hemit_mosaic_tiles_equal_the_files(train4):
    t = train4.tables["tiles"]
    he = np.asarray(train4.images["he"].data)
    mihc = np.asarray(train4.images["mihc"].data)
    dapi = np.asarray(train4.images["mihc"].sel(c="DAPI").data)
    for name, y0, x0 in zip(t.obs["tile"], t.obs["y0"], t.obs["x0"]):
        want_he = _jpeg(HEMIT / "train" / "he" / f"{name}.jpg")
        want_mihc = _tiff(HEMIT / "train" / "mihc" / f"{name}.tif")
        assert want_mihc.shape == (4, 256, 256)
        np.testing.assert_array_equal(he[:, y0 : y0 + 256, x0 : x0 + 256], want_he)
        np.testing.assert_array_equal(mihc[:, y0 : y0 + 256, x0 : x0 + 256], want_mihc)
        np.testing.assert_array_equal(dapi[y0 : y0 + 256, x0 : x0 + 256], want_mihc[0])
        # the channels differ, so a channel swap cannot pass unseen
        assert not np.array_equal(want_mihc[0], want_mihc[3])


def test_hemit_centres_cut_the_tiles_with_the_tiling_functions(train4):
    from biodiffuse.data import cell_tiles

    tiles, kept = cell_tiles(
        train4, image_key="mihc", table_key="tiles", tile_size=256, scaling=((0.0,) * 4, (255.0,) * 4)
    )
    np.testing.assert_array_equal(kept, np.arange(4))
    names = train4.tables["tiles"].obs["tile"]
    want = np.stack([_tiff(HEMIT / "train" / "mihc" / f"{n}.tif") for n in names])
    np.testing.assert_array_equal(np.rint(tiles * 255).astype(np.uint8), want)


def test_hemit_layout_background_and_named_tiles():
    _need(HEMIT)
    names = _csv().query("split == 'test'")["tile"].tolist()
    pick = [names[4], names[1], names[2]]  # order as given
    s = hemit("test", tiles=pick, layout=2)
    t = s.tables["tiles"]
    assert t.obs["tile"].tolist() == pick
    assert s.images["he"].shape == (3, 512, 512) and s.images["mihc"].shape == (4, 512, 512)
    np.testing.assert_array_equal(t.obs[["y0", "x0"]].to_numpy(), [[0, 0], [0, 256], [256, 0]])
    he, mihc = np.asarray(s.images["he"].data), np.asarray(s.images["mihc"].data)
    assert (he[:, 256:, 256:] == 255).all() and (mihc[:, 256:, 256:] == 0).all()
    np.testing.assert_array_equal(mihc[:, 0:256, 256:512], _tiff(HEMIT / "test" / "mihc" / f"{names[1]}.tif"))
    one_col = hemit("test", tiles=2, layout=1)
    assert one_col.images["he"].shape == (3, 512, 256)


def test_hemit_train_and_test_regions_are_disjoint():
    _need(HEMIT)
    csv = _csv()
    train = set(csv.loc[csv["split"] == "train", "region"])
    test = set(csv.loc[csv["split"] == "test", "region"])
    assert len(train) == 28 and len(test) == 10 and not train & test
    assert (csv["split"] == "train").sum() == 692 and (csv["split"] == "test").sum() == 250
    s = hemit("test", tiles=2)
    assert set(s.tables["tiles"].obs["region"]) <= test


def test_hemit_bad_arguments():
    _need(HEMIT)
    with pytest.raises(ValueError, match="split must be one of"):
        hemit("val")
    with pytest.raises(KeyError, match="not in the 'test' split"):
        hemit("test", tiles=[_csv().query("split == 'train'")["tile"].iloc[0]])
    with pytest.raises(ValueError, match="tiles=0"):
        hemit("train", tiles=0)
    with pytest.raises(ValueError, match="more than once"):
        hemit("train", tiles=["10868_48536_10", "10868_48536_10"])
    with pytest.raises(ValueError, match="layout"):
        hemit("train", tiles=2, layout=0)


def _copy_two(tmp_path, with_mihc=True):
    csv = _csv()
    two = csv[csv["split"] == "train"].iloc[[5, 9]]
    root = tmp_path / "hemit_copy"
    for sub in ("he", "mihc") if with_mihc else ("he",):
        (root / "train" / sub).mkdir(parents=True)
        ext = "jpg" if sub == "he" else "tif"
        for name in two["tile"]:
            shutil.copy(HEMIT / "train" / sub / f"{name}.{ext}", root / "train" / sub / f"{name}.{ext}")
    return root, two


def test_hemit_path_reads_a_copy(tmp_path):
    _need(HEMIT)
    root, two = _copy_two(tmp_path)
    two.to_csv(root / "tiles.csv", index=False)
    s = hemit("train", path=root)
    t = s.tables["tiles"]
    assert t.obs["tile"].tolist() == two["tile"].tolist()
    assert s.images["mihc"].shape == (4, 256, 512)
    second = two["tile"].iloc[1]
    np.testing.assert_array_equal(
        np.asarray(s.images["mihc"].data)[:, :, 256:], _tiff(HEMIT / "train" / "mihc" / f"{second}.tif")
    )
    # the full tiles.csv with only two tiles copied: asking for those works, the rest is named as missing
    _csv().to_csv(root / "tiles.csv", index=False)
    assert hemit("train", path=root, tiles=two["tile"].tolist()).tables["tiles"].n_obs == 2
    with pytest.raises(FileNotFoundError, match="lacks 10 tile file"):
        hemit("train", path=root, tiles=6)


def test_hemit_folder_without_mihc_names_it(tmp_path):
    _need(HEMIT)
    root, two = _copy_two(tmp_path, with_mihc=False)
    two.to_csv(root / "tiles.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"train/mihc/"):
        hemit("train", path=root)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        hemit("train", path=tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# DeepLIIF
# ---------------------------------------------------------------------------------------------


def test_deepliif_all_sets(liif):
    assert DEEPLIIF_PANELS == PANELS
    t = liif.tables["tiles"]
    stems = sorted(p.stem for p in DEEPLIIF.glob("*.png"))
    assert len(stems) == 6 and t.obs["set"].tolist() == stems and t.X.shape == (6, 0)
    assert t.obs["split"].tolist() == [s.split("_")[0] for s in stems]
    assert {"set", "split", "y0", "x0", "tile_size"} <= set(t.obs.columns)
    assert (t.obs["tile_size"] == 512).all()
    # only the two training sets carry real target panels; the test strips repeat the IHC image
    assert t.obs["has_targets"].tolist() == [s.startswith("train_") for s in stems]
    shape = liif.images["ihc"].shape
    assert shape == (3, 1024, 1536)
    for p in DEEPLIIF_PANELS:
        img = liif.images[p]
        assert img.shape == shape and img.dtype == np.uint8 and list(img.coords["c"].values) == ["R", "G", "B"]


def test_deepliif_tiles_equal_the_png_panels(liif):
    from PIL import Image

    t = liif.tables["tiles"]
    images = {p: np.asarray(liif.images[p].data) for p in DEEPLIIF_PANELS}
    for stem, y0, x0 in zip(t.obs["set"], t.obs["y0"], t.obs["x0"]):
        with Image.open(DEEPLIIF / f"{stem}.png") as im:
            strip = np.moveaxis(np.asarray(im), 2, 0)
        assert strip.shape == (3, 512, 3072)
        for k, p in enumerate(PANELS):  # the file order, written out (not the module's constant)
            got = images[p][:, y0 : y0 + 512, x0 : x0 + 512]
            np.testing.assert_array_equal(got, strip[:, :, 512 * k : 512 * (k + 1)])
    # panel content in a training set: the mask holds its four class colours, DAPI is grey
    row = t.obs.index.get_loc("train_Bladder1")
    y0, x0 = int(t.obs["y0"].iloc[row]), int(t.obs["x0"].iloc[row])
    seg = images["seg"][:, y0 : y0 + 512, x0 : x0 + 512].reshape(3, -1).T
    assert {tuple(c) for c in np.unique(seg, axis=0)} == {(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)}
    dapi = images["dapi"][:, y0 : y0 + 512, x0 : x0 + 512]
    assert (dapi[0] == dapi[1]).all() and (dapi[1] == dapi[2]).all() and dapi.mean() < 100


def test_deepliif_sets_selection_and_errors(tmp_path):
    _need(DEEPLIIF)
    s = deepliif(sets=["train_Lung1", "test_6_2"])
    t = s.tables["tiles"]
    assert t.obs["set"].tolist() == ["train_Lung1", "test_6_2"]
    assert s.images["seg"].shape == (3, 512, 1024)
    with pytest.raises(FileNotFoundError, match="train_Colon9.png"):
        deepliif(sets=["train_Colon9"])
    bad = tmp_path / "strips"
    bad.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((64, 320, 3), np.uint8)).save(bad / "train_x.png")
    with pytest.raises(ValueError, match="6 square panels"):
        deepliif(path=bad)
    (bad / "train_x.png").unlink()
    Image.fromarray(np.zeros((64, 384, 3), np.uint8)).save(bad / "x.png")
    with pytest.raises(ValueError, match="<split>_<set>.png"):
        deepliif(path=bad)
