"""Conditioning fidelity: a probe fitted on real tiles, scored on generated tiles (right vs shuffled condition)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from biodiffuse.metrics.conditioning import FidelityProbe, conditioning_fidelity, paired_difference, tile_features

H = W = 16
CENTRES = {"B": (4, 4), "T": (4, 11), "M": (11, 8)}  # blob position per cell type


def _tiles(labels, rng, brightness=None):
    """Tiles (N, 2, H, W): a Gaussian blob whose position depends on the label, on a noisy background.

    Channel 1 has the brightness (when given) plus noise; position-free."""
    yy, xx = np.mgrid[:H, :W]
    out = np.empty((len(labels), 2, H, W))
    for i, lab in enumerate(labels):
        cy, cx = CENTRES[lab] if lab in CENTRES else (rng.uniform(2, 13), rng.uniform(2, 13))
        cy, cx = cy + rng.normal(0, 0.7), cx + rng.normal(0, 0.7)
        out[i, 0] = 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0) * rng.uniform(0.6, 1.0)
        b = 0.5 if brightness is None else brightness[i]
        out[i, 1] = b + rng.normal(0, 0.05, (H, W))
    out += rng.normal(0, 0.04, out.shape)
    return np.clip(out, 0.0, 1.0)


@pytest.fixture(scope="module")
def cls_data():
    rng = np.random.default_rng(1)
    types = np.array(sorted(CENTRES))
    y_train = rng.choice(types, 150)
    y_test = rng.choice(types, 90)
    train = _tiles(y_train, rng)
    right = _tiles(y_test, rng)  # generated from the right condition
    shuffled = _tiles(rng.permutation(y_test), rng)  # generated from shuffled conditions
    return train, y_train, right, shuffled, y_test


def test_tile_features_shape_and_values():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 3, 12, 8))
    f = tile_features(x, pool=4, bins=10)
    assert f.shape == (5, 3 * (3 * 2 + 10 + 2)) and f.dtype == np.float64
    # pooled block (0, 0) of channel 0, histogram fractions sum to 1 per channel, mean / std at the end
    assert f[0, 0] == pytest.approx(x[0, 0, :4, :4].mean())
    hist = f[:, 3 * 6 : 3 * 6 + 3 * 10].reshape(5, 3, 10)
    np.testing.assert_allclose(hist.sum(axis=2), 1.0)
    np.testing.assert_allclose(hist[1, 2], np.histogram(x[1, 2], bins=10, range=(0, 1))[0] / 96)
    np.testing.assert_allclose(f[:, -6:-3], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(f[:, -3:], x.std(axis=(2, 3)))
    # 10 x 7 with pool 3: centre crop to 9 x 6 -> 3 x 2 blocks
    x2 = rng.uniform(size=(2, 1, 10, 7))
    f2 = tile_features(x2, pool=3, bins=4)
    assert f2.shape == (2, 6 + 4 + 2)
    assert f2[0, 0] == pytest.approx(x2[0, 0, 0:3, 0:3].mean())
    assert f2[1, 5] == pytest.approx(x2[1, 0, 6:9, 3:6].mean())
    # values exactly 0 and 1 land in the edge bins; input unchanged; deterministic
    edge = np.zeros((1, 1, 4, 4))
    edge[0, 0, :2] = 1.0
    e = tile_features(edge, pool=2, bins=4)
    np.testing.assert_allclose(e[0, 4:8], [0.5, 0, 0, 0.5])
    assert edge[0, 0, 0, 0] == 1.0
    np.testing.assert_array_equal(tile_features(x, pool=4, bins=10), f)


def test_tile_features_accepts_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(size=(3, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(tile_features(torch.from_numpy(x)), tile_features(x))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_right_beats_shuffled(cls_data):
    train, y_train, right, shuffled, y_test = cls_data
    train_copy = train.copy()
    res_r = conditioning_fidelity(train, y_train, right, y_test, n_boot=100)
    res_s = conditioning_fidelity(train, y_train, shuffled, y_test, n_boot=100)
    np.testing.assert_array_equal(train, train_copy)
    assert res_r["task"] == "classification" and res_r["chance"] == pytest.approx(1 / 3)
    assert res_r["n_train"] == 150 and res_r["n_test"] == 90 and res_r["per_row"].shape == (90,)
    assert res_r["score"] > 0.9
    assert abs(res_s["score"] - 1 / 3) < 0.15
    assert 0 <= res_r["score_sd"] < 0.05 and 0.02 < res_s["score_sd"] < 0.1  # all right -> sd 0
    # the score is sklearn's balanced accuracy of the per-row correctness
    pred_ok = res_s["per_row"].astype(bool)
    assert set(np.unique(res_s["per_row"])) <= {0.0, 1.0}
    assert res_s["score"] == pytest.approx(balanced_accuracy_score(y_test, np.where(pred_ok, y_test, "none")))
    diff = paired_difference(res_r["per_row"], res_s["per_row"], n_boot=500)
    assert diff["difference"] > 0.4 and diff["ci_low"] > 0 and diff["p_value"] < 0.01
    assert diff["ci_low"] < diff["difference"] < diff["ci_high"]
    # same seed, same numbers
    again = conditioning_fidelity(train, y_train, right, y_test, n_boot=100)
    assert again["score"] == res_r["score"] and again["score_sd"] == res_r["score_sd"]


def test_classification_unseen_labels_dropped_and_callable_features(cls_data):
    train, y_train, right, _, y_test = cls_data
    rng = np.random.default_rng(5)
    extra_labels = np.array(["X"] * 4)
    tiles = np.concatenate([right, _tiles(extra_labels, rng)])
    labels = np.concatenate([y_test, extra_labels]).astype(object)  # object labels, e.g. from pandas
    with pytest.warns(UserWarning, match="4 test row"):
        res = conditioning_fidelity(train, y_train, tiles, labels, n_boot=0, features=lambda t: t.mean(axis=1).reshape(len(t), -1))
    assert res["n_dropped"] == 4 and res["n_test"] == 90 and np.isnan(res["score_sd"])
    assert res["score"] > 0.8
    res_pca = conditioning_fidelity(train, y_train, right, y_test, n_components=10, n_boot=0)
    assert res_pca["score"] > 0.8
    # chance counts the test classes (2 here), not the 3 training classes
    two = y_test != "M"
    res_two = conditioning_fidelity(train, y_train, right[two], y_test[two], n_boot=0)
    assert res_two["chance"] == 0.5 and res_two["n_test"] == two.sum() and res_two["n_dropped"] == 0


def test_precomputed_and_inception_features(cls_data):
    """'precomputed' reads the arrays as features; 'inception' is the probe on the KID network's features."""
    from biodiffuse.metrics import inception_features

    train, y_train, right, shuffled, y_test = cls_data
    res = conditioning_fidelity(tile_features(train), y_train, tile_features(right), y_test, features="precomputed", n_boot=20)
    ref = conditioning_fidelity(train, y_train, right, y_test, n_boot=20)
    assert res["score"] == ref["score"] and res["C"] == ref["C"]
    np.testing.assert_array_equal(res["per_row"], ref["per_row"])
    pick_tr = np.concatenate([np.flatnonzero(y_train == t)[:8] for t in CENTRES])  # 24 training tiles
    rgb_tr, rgb_te = np.repeat(train[pick_tr, :1], 3, axis=1), np.repeat(right[:12, :1], 3, axis=1)
    inc = conditioning_fidelity(rgb_tr, y_train[pick_tr], rgb_te, y_test[:12], features="inception", n_boot=0)
    pre = conditioning_fidelity(inception_features(rgb_tr), y_train[pick_tr], inception_features(rgb_te), y_test[:12],
                                features="precomputed", n_boot=0)
    assert inc["n_train"] == 24 and inc["n_test"] == 12
    np.testing.assert_array_equal(inc["per_row"], pre["per_row"])
    assert inc["score"] > 0.6  # the blob position is readable from the Inception features too (chance 1/3)


def test_a_probe_fitted_once_scores_every_set_as_a_fresh_fit(cls_data):
    """FidelityProbe: fit on the real training tiles once, score the right and the shuffled sets."""
    train, y_train, right, shuffled, y_test = cls_data
    probe = FidelityProbe(n_components=10, n_boot=50).fit(train, y_train)
    fitted = probe.fitted_
    for tiles in (right, shuffled):
        a = probe.score(tiles, y_test)
        b = conditioning_fidelity(train, y_train, tiles, y_test, n_components=10, n_boot=50)
        assert a["score"] == b["score"] and a["score_sd"] == b["score_sd"] and a["n_train"] == b["n_train"] == 150
        np.testing.assert_array_equal(a["per_row"], b["per_row"])
    assert probe.fitted_ is fitted  # scoring never refits
    assert probe.score(right, y_test)["score"] > 0.8 > probe.score(shuffled, y_test)["score"] + 0.3
    rng = np.random.default_rng(3)
    pcs = rng.normal(size=(150, 3))
    reg = FidelityProbe().fit(train, pcs)
    with pytest.raises(ValueError, match="3 columns"):
        reg.score(right, rng.normal(size=(90, 2)))
    with pytest.raises(ValueError, match="2-D"):
        reg.score(right, y_test)
    with pytest.raises(RuntimeError, match="not fitted"):
        FidelityProbe().score(right, y_test)


def test_regression_brightness():
    rng = np.random.default_rng(2)
    t_train, t_test = rng.uniform(0.2, 0.8, 120), rng.uniform(0.2, 0.8, 60)
    lab = lambda n: rng.choice(sorted(CENTRES), n)  # noqa: E731
    train = _tiles(lab(120), rng, t_train)
    right = _tiles(lab(60), rng, t_test)
    shuffled = _tiles(lab(60), rng, rng.permutation(t_test))
    # two targets: brightness and 10 * brightness + 3 (different scale)
    y_train = np.stack([t_train, 10 * t_train + 3], axis=1)
    y_test = np.stack([t_test, 10 * t_test + 3], axis=1)
    res_r = conditioning_fidelity(train, y_train, right, y_test, n_boot=100)
    res_s = conditioning_fidelity(train, y_train, shuffled, y_test, n_boot=100)
    assert res_r["task"] == "regression" and res_r["chance"] == 0.0 and res_r["per_row"].shape == (60,)
    assert res_r["score"] > 0.95 and res_r["r2"] > 0.9
    assert abs(res_s["score"]) < 0.35 and res_s["r2"] < 0.0
    assert 0 < res_r["score_sd"] < 0.05
    assert res_r["per_row"].mean() < 0.1 < res_s["per_row"].mean()
    diff = paired_difference(res_r["per_row"], res_s["per_row"], higher_is_better=False)
    assert diff["difference"] < 0 and diff["ci_high"] < 0 and diff["p_value"] < 0.01
    # generated tiles 0.2 too bright: the probe reads them with the TRAINING scaling, so the bias shows
    probe = FidelityProbe(n_boot=0).fit(train, y_train)
    biased = probe.score(np.clip(right + np.array([0.0, 0.2])[None, :, None, None], 0, 1), y_test)
    assert biased["per_row"].mean() > 5 * max(probe.score(right, y_test)["per_row"].mean(), 0.01)


def test_invariant_to_feature_and_target_scale(cls_data):
    # features are standardised on the training tiles: rescaling feature columns changes nothing
    train, y_train, right, shuffled, y_test = cls_data
    scales = 10.0 ** np.random.default_rng(0).uniform(-4, 4, tile_features(train[:1]).shape[1])
    scaled = lambda t: tile_features(t) * scales  # noqa: E731
    for tiles in (right, shuffled):
        a = conditioning_fidelity(train, y_train, tiles, y_test, n_boot=0)
        b = conditioning_fidelity(train, y_train, tiles, y_test, n_boot=0, features=scaled)
        assert a["C"] == b["C"] and a["score"] == pytest.approx(b["score"], abs=0.02)
    rng = np.random.default_rng(4)
    t_train, t_test = rng.uniform(0.2, 0.8, 80), rng.uniform(0.2, 0.8, 40)
    lab = lambda n: rng.choice(sorted(CENTRES), n)  # noqa: E731
    train_r, test_r = _tiles(lab(80), rng, t_train), _tiles(lab(40), rng, rng.permutation(t_test) * 0.5 + 0.25)
    a = conditioning_fidelity(train_r, t_train[:, None], test_r, t_test[:, None], n_boot=0)
    b = conditioning_fidelity(train_r, t_train[:, None], test_r, t_test[:, None], n_boot=0, features=scaled)
    assert a["score"] == pytest.approx(b["score"], rel=1e-6) and a["r2"] == pytest.approx(b["r2"], rel=1e-6)
    # per-row errors are on targets standardised with the training sd: the target's unit does not matter
    c = conditioning_fidelity(train_r, 1000 * t_train[:, None] + 5, test_r, 1000 * t_test[:, None] + 5, n_boot=0)
    np.testing.assert_allclose(c["per_row"], a["per_row"], rtol=1e-6)
    np.testing.assert_allclose(a["per_row"].mean(), 1 - a["r2"], rtol=0.3)  # MSE / var: about 1 - R2
    assert c["score"] == pytest.approx(a["score"], rel=1e-6) and a["per_row"].mean() > 0.5


def test_paired_difference_hand_values():
    a, b = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0])
    d = paired_difference(a, b, n_boot=2000, seed=3)
    assert d["difference"] == pytest.approx(0.5)
    assert d["ci_low"] >= 0.0 and d["ci_high"] <= 1.0 and d["sd"] > 0
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["sd"] == 0 and same["p_value"] == 1.0
    assert paired_difference(b, a)["p_value"] == pytest.approx(1.0)


def test_bad_inputs(cls_data):
    train, y_train, right, _, y_test = cls_data
    bad = right.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        conditioning_fidelity(train, y_train, bad, y_test)
    with pytest.raises(ValueError, match="4-D"):
        tile_features(right[:, 0])
    with pytest.raises(ValueError, match="4-D"):
        conditioning_fidelity(train[:, 0], y_train, right, y_test)
    with pytest.raises(ValueError, match="one row per tile"):
        conditioning_fidelity(train, y_train[:-1], right, y_test)
    with pytest.raises(ValueError, match="one row per tile"):
        conditioning_fidelity(train, y_train, right, y_test[:5])
    one = np.ones((1, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        conditioning_fidelity(train[:1], one, right[:1], one)
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        conditioning_fidelity(train, np.linspace(0, 1, 150), right, np.linspace(0, 1, 90))
    with pytest.raises(ValueError, match="need at least 2"):
        conditioning_fidelity(train, np.array(["B"] * 150), right, y_test)
    with pytest.raises(ValueError, match="features must be"):
        conditioning_fidelity(train, y_train, right, y_test, features="hog")
    with pytest.raises(ValueError, match="2-D"):  # precomputed features are (N, F), not tiles
        conditioning_fidelity(train, y_train, right, y_test, features="precomputed")
    with pytest.raises(ValueError, match="empty"):
        tile_features(np.zeros((0, 1, 4, 4)))
    with pytest.raises(ValueError, match="pool"):
        tile_features(right, pool=17)
    with pytest.raises(ValueError, match="paired"):
        paired_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="1-D"):
        paired_difference(np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        paired_difference(np.array([1.0, np.nan]), np.ones(2))
