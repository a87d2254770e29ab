"""Virtual-staining metrics: stain masks, Dice / IoU, per-stain scores, nuclear marker positivity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk
from skimage.filters import threshold_otsu

from biodiffuse.metrics import images as images_mod
from biodiffuse.metrics.staining import (
    dice,
    iou,
    nuclei_labels,
    nuclei_positivity,
    per_stain_scores,
    positivity_agreement,
    stain_masks,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _bimodal(rng) -> tuple[np.ndarray, np.ndarray]:
    """(2, 2, 32, 32) uint8: noisy background (10..30, 50..70), bright blocks (200, 100);
    tile 1 of channel 0 has no blocks."""
    truth = np.zeros((2, 2, 32, 32), dtype=bool)
    truth[0, 0, 4:12, 4:12] = truth[0, 1, 20:28, 2:10] = truth[1, 1, 10:20, 10:20] = True
    img = rng.integers(10, 31, size=truth.shape)
    img[:, 1] += 40
    img[:, 0][truth[:, 0]] = 200
    img[:, 1][truth[:, 1]] = 100
    return img.astype(np.uint8), truth


# ----------------------------------------------------------------------------- stain masks


def test_otsu_pooled_over_tiles_separates_bimodal(rng):
    img, truth = _bimodal(rng)
    before = img.copy()
    masks, thr = stain_masks(img)
    assert masks.dtype == bool and masks.shape == img.shape
    np.testing.assert_array_equal(masks, truth)  # tile 1 of channel 0 (noise only) stays empty
    assert 30 <= thr[0] < 200 and 70 <= thr[1] < 100
    np.testing.assert_allclose(thr, [threshold_otsu(img[:, c]) for c in range(2)])
    assert threshold_otsu(img[1, 0]) < 30  # a per-tile Otsu would have cut the noise
    np.testing.assert_array_equal(img, before)


def test_mean_sd_thresholds_by_hand(rng):
    img = rng.random((3, 2, 16, 16))
    img[:, 1] *= 0.5
    masks, thr = stain_masks(img, method="mean_sd", k=1.5)
    expect = [img[:, c].mean() + 1.5 * img[:, c].std() for c in range(2)]
    np.testing.assert_allclose(thr, expect)
    np.testing.assert_array_equal(masks, img > np.asarray(expect)[None, :, None, None])
    _, thr_big = stain_masks(img, method="mean_sd", k=100.0)
    np.testing.assert_array_equal(thr_big, [1.0, 1.0])  # clipped to the top of the range


def test_given_thresholds_used_as_is(rng):
    img, _ = _bimodal(rng)
    masks, thr = stain_masks(img, thresholds=[15, 150])
    np.testing.assert_array_equal(thr, [15.0, 150.0])
    np.testing.assert_array_equal(masks[:, 0], img[:, 0] > 15)
    assert 0 < masks[:, 0].sum() < masks[:, 0].size and masks[:, 0].sum() > (img[:, 0] == 200).sum()  # not Otsu's cut
    assert not masks[:, 1].any()  # channel 1 peaks at 100
    fmasks, _ = stain_masks(img / 255.0, thresholds=np.array([15, 150]) / 255.0)
    np.testing.assert_array_equal(fmasks, masks)


# ----------------------------------------------------------------------------- Dice / IoU


def test_dice_iou_by_hand():
    p = np.zeros((2, 2, 2, 2), dtype=bool)
    t = np.zeros_like(p)
    p[0, 0, 0, :] = True  # pred 2 px, true 1 px, overlap 1
    t[0, 0, 0, 0] = True
    # (0, 1): both empty -> 1
    p[1, 0, 0, 0] = True  # disjoint -> 0
    t[1, 0, 0, 1] = True
    p[1, 1] = t[1, 1] = True  # identical -> 1
    np.testing.assert_allclose(dice(p, t, reduction="none"), [[2 / 3, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(iou(p, t, reduction="none"), [[1 / 2, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(dice(p, t), [1 / 3, 1.0])
    np.testing.assert_allclose(iou(p, t), [1 / 4, 1.0])
    empty_pred = np.zeros_like(p)
    assert dice(empty_pred, t, reduction="none")[0, 0] == 0.0 and iou(empty_pred, t, reduction="none")[0, 0] == 0.0


# ----------------------------------------------------------------------------- per-stain scores


def test_per_stain_scores_identical_and_noisy(rng):
    real = rng.random((3, 2, 16, 16))
    real[2, 1] = 0.3  # a constant tile in channel 1: no Pearson r
    out = per_stain_scores(real, real.copy(), stains=["DAPI", "CD3"])
    assert list(out.index) == ["DAPI", "CD3"] and out.index.name == "stain"
    np.testing.assert_allclose(out["pearson"], 1.0)
    np.testing.assert_allclose(out["ssim"], 1.0)
    assert np.isinf(out["psnr"]).all()  # metrics.images.psnr: identical pairs give inf
    assert out["n_constant"].tolist() == [0, 1]

    fake = real.copy()
    fake[:, 1] = np.clip(fake[:, 1] + rng.normal(0, 0.1, fake[:, 1].shape), 0, 1)
    out = per_stain_scores(real, fake)
    assert list(out.index) == ["ch0", "ch1"]
    assert np.isinf(out.loc["ch0", "psnr"]) and out.loc["ch0", "pearson"] == pytest.approx(1.0)
    assert out.loc["ch1", "psnr"] == pytest.approx(images_mod.psnr(real[:, 1:], fake[:, 1:]))
    assert out.loc["ch1", "ssim"] == pytest.approx(images_mod.ssim(real[:, 1:], fake[:, 1:]))
    r = [np.corrcoef(real[i, 1].ravel(), fake[i, 1].ravel())[0, 1] for i in range(2)]  # tile 2 is constant
    assert out.loc["ch1", "pearson"] == pytest.approx(np.mean(r)) and out.loc["ch1", "pearson"] < 0.99


def test_per_stain_pearson_over_many_tiles(rng):
    real = rng.random((130, 1, 8, 8))  # more tiles than one Pearson chunk (64)
    fake = np.clip(real + rng.normal(0, 0.2, real.shape), 0, 1)
    r = [np.corrcoef(real[i, 0].ravel(), fake[i, 0].ravel())[0, 1] for i in range(130)]
    assert per_stain_scores(real, fake).loc["ch0", "pearson"] == pytest.approx(np.mean(r))


def test_per_stain_scores_mixed_dtypes(rng):
    real = rng.integers(0, 256, size=(2, 2, 16, 16)).astype(np.uint8)
    out = per_stain_scores(real, real / 255.0)
    assert np.isinf(out["psnr"]).all() and np.allclose(out["ssim"], 1.0)


# ----------------------------------------------------------------------------- positivity

CENTRES = [(12, 12), (12, 40), (40, 12), (40, 40), (12, 68), (40, 68), (68, 12), (68, 40)]


def _nuclei_tiles() -> tuple[np.ndarray, np.ndarray]:
    """(2, 3, 84, 84) uint8: 8 DAPI discs (radius 5); a marker ring (radius 5..9) around some.

    Tile 0: channel 1 rings 4 of 8 (0.5), channel 2 rings 2 of 8 (0.25).
    Tile 1: channel 1 rings 2 of 8 (0.25), channel 2 rings 6 of 8 (0.75).
    """
    img = np.zeros((2, 3, 84, 84), dtype=np.uint8)
    labels = np.zeros((2, 84, 84), dtype=np.int32)
    rings = {(0, 1): 4, (0, 2): 2, (1, 1): 2, (1, 2): 6}
    for t in range(2):
        for i, (r, c) in enumerate(CENTRES):
            img[t, 0][disk((r, c), 5.5)] = 220
            labels[t][disk((r, c), 5.5)] = i + 1
            for ch in (1, 2):
                if i < rings[t, ch]:
                    ring = np.zeros((84, 84), dtype=bool)
                    ring[disk((r, c), 9.5)] = True
                    ring[disk((r, c), 5.5)] = False
                    img[t, ch][ring] = 200
    return img, labels


def test_nuclei_positivity_fractions_exact():
    img, labels = _nuclei_tiles()
    before = img.copy()
    thr = [100, 50, 50]
    out = nuclei_positivity(img, thresholds=thr, stains=["DAPI", "CD3", "CD20"])
    assert list(out.columns) == ["n_nuclei", "frac_CD3", "frac_CD20"] and out.index.name == "tile"
    assert out["n_nuclei"].tolist() == [8, 8]
    np.testing.assert_array_equal(out["frac_CD3"], [0.5, 0.25])
    np.testing.assert_array_equal(out["frac_CD20"], [0.25, 0.75])
    seg = nuclei_labels(img)
    assert seg.dtype == np.int32 and seg.shape == (2, 84, 84) and seg.max() == 8
    pd.testing.assert_frame_equal(nuclei_positivity(img, thresholds=thr, labels=labels, stains=["D", "CD3", "CD20"])
                                  .set_axis(out.columns, axis=1), out)
    one = nuclei_positivity(img, thresholds=thr, marker_channels=[2])
    assert list(one.columns) == ["n_nuclei", "frac_ch2"]
    np.testing.assert_array_equal(one["frac_ch2"], [0.25, 0.75])
    np.testing.assert_array_equal(img, before)


def test_positivity_empty_tile_nan():
    img, _ = _nuclei_tiles()
    img[1] = 0
    out = nuclei_positivity(img / 255.0, thresholds=[0.4, 0.2, 0.2])
    assert out["n_nuclei"].tolist() == [8, 0]
    assert out.loc[0, "frac_ch1"] == 0.5 and np.isnan(out.loc[1, "frac_ch1"])


def test_positivity_agreement():
    img, labels = _nuclei_tiles()
    real = nuclei_positivity(img, thresholds=[100, 50, 50], labels=labels)
    same = positivity_agreement(real, real.copy())
    assert list(same.index) == ["ch1", "ch2"] and same.index.name == "marker"
    np.testing.assert_allclose(same["pearson"], 1.0)
    np.testing.assert_array_equal(same["mae"], 0.0)
    np.testing.assert_array_equal(same["mean_real"], same["mean_fake"])
    np.testing.assert_array_equal(same["mean_real"], [0.375, 0.5])
    fake_img = img.copy()
    fake_img[:, 2] = 0  # virtual CD20 never stains
    fake = nuclei_positivity(fake_img, thresholds=[100, 50, 50], labels=labels)
    agree = positivity_agreement(real, fake)
    assert agree.loc["ch1", "mae"] == 0.0 and agree.loc["ch2", "mae"] == pytest.approx(0.5)
    assert np.isnan(agree.loc["ch2", "pearson"]) and agree.loc["ch2", "mean_fake"] == 0.0
    assert agree["n_tiles"].tolist() == [2, 2]
    tab = pd.DataFrame({"n_nuclei": [5, 5, 5], "frac_m": [0.2, 0.4, 0.8]})
    other = tab.assign(frac_m=[0.4, 0.2, 0.8])  # differences +0.2, -0.2, 0
    row = positivity_agreement(tab, other).loc["m"]
    assert row["mae"] == pytest.approx(0.4 / 3) and row["mean_real"] == row["mean_fake"] == pytest.approx(1.4 / 3)
    assert row["pearson"] == pytest.approx(np.corrcoef([0.2, 0.4, 0.8], [0.4, 0.2, 0.8])[0, 1])
    shifted = fake.copy()
    shifted["n_nuclei"] += 1
    with pytest.warns(RuntimeWarning, match="different nuclei"):
        positivity_agreement(real, shifted)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs(rng):
    img, truth = _bimodal(rng)
    nan = img.astype(float) / 255
    nan[0, 0, 0, 0] = np.nan
    cases = [
        lambda: stain_masks(nan),
        lambda: stain_masks(img[0]),
        lambda: stain_masks(img, thresholds=[10]),
        lambda: stain_masks(img / 255.0, thresholds=[15, 150]),  # uint8 units on float tiles
        lambda: stain_masks(img, method="triangle"),
        lambda: stain_masks(img * 2.0),
        lambda: dice(truth.astype(np.uint8), truth),
        lambda: iou(truth, truth[:1]),
        lambda: dice(truth, truth, reduction="sum"),
        lambda: per_stain_scores(img, img[:, :1]),
        lambda: per_stain_scores(img, img, stains=["a"]),
        lambda: nuclei_positivity(img, thresholds=[1, 2, 3]),
        lambda: nuclei_positivity(img, thresholds=[1, 2], marker_channels=[5]),
        lambda: nuclei_positivity(img, thresholds=[1, 2], labels=np.zeros((2, 31, 32), int)),
        lambda: nuclei_positivity(img, thresholds=[1, 2], labels=np.zeros((2, 32, 32))),
        lambda: nuclei_labels(img, nuclear_channel=2),
        lambda: nuclei_positivity(img, thresholds=[1, 2], nuclear_channel=-1, labels=np.zeros((2, 32, 32), int)),
    ]
    for case in cases:
        with pytest.raises(ValueError):
            case()
    tab = pd.DataFrame({"n_nuclei": [1, 2], "frac_a": [0.1, 0.2]})
    with pytest.raises(ValueError, match="frac_"):
        positivity_agreement(tab, tab.rename(columns={"frac_a": "frac_b"}))
    with pytest.raises(ValueError, match="same tiles"):
        positivity_agreement(tab, tab.iloc[:1])
