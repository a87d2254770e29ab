"""Per-modality matrices of a MuData and the PCA / autoencoder latent encoders."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from conftest import SHARED_DATA

from biodiffuse.metrics import r2_score_modality
from biodiffuse.data.modality import ModalityEncoder, choose_encoder, modality_matrix

TCGA = SHARED_DATA / "tcga"
needs_tcga = pytest.mark.skipif(not (TCGA / "tcga_acc_mini.h5mu").is_file(), reason="shared TCGA data not found")


def _tiny_mudata():
    import mudata

    a = AnnData(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), obs=pd.DataFrame(index=["p1", "p3"]))
    a.var_names = ["g1", "g2"]
    b = AnnData(np.array([[5.0], [6.0], [7.0]]), obs=pd.DataFrame(index=["p3", "p2", "p1"]))
    b.var_names = ["m1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.MuData({"a": a, "b": b})


@pytest.fixture(scope="module")
def acc():
    from biodiffuse.datasets import tcga_acc

    return tcga_acc(path=TCGA)


def test_modality_matrix_nan_rows_by_name():
    md = _tiny_mudata()
    order = list(md.obs_names)
    xa, pa = modality_matrix(md, "a")
    xb, pb = modality_matrix(md, "b")
    assert xa.shape == (3, 2) and xb.shape == (3, 1)
    assert pa.tolist() == [o != "p2" for o in order] and pb.all()
    np.testing.assert_array_equal(xa[order.index("p3")], [3.0, 4.0])
    assert np.isnan(xa[order.index("p2")]).all()
    assert [xb[order.index(p), 0] for p in ("p1", "p2", "p3")] == [7.0, 6.0, 5.0]
    xa[0, 0] = 99.0  # a copy: the MuData is unchanged
    assert md.mod["a"].X.max() == 4.0


def test_modality_matrix_errors():
    md = _tiny_mudata()
    with pytest.raises(ValueError, match="Unknown modality 'rna'"):
        modality_matrix(md, "rna")
    with pytest.raises(ValueError, match="Unknown layer 'counts'"):
        modality_matrix(md, "a", layer="counts")
    with pytest.raises(TypeError, match="MuData"):
        modality_matrix(AnnData(np.ones((2, 2))), "a")


@needs_tcga
def test_modality_matrix_real_acc(acc):
    x, present = modality_matrix(acc, "RPPAArray")
    assert x.shape == (92, 33) and present.sum() == 46
    assert np.isnan(x[~present]).all() and np.isfinite(x[present]).all()
    row = list(acc.obs_names).index("TCGA-OR-A5J2")
    np.testing.assert_allclose(x[row], np.asarray(acc.mod["RPPAArray"]["TCGA-OR-A5J2"].X).ravel())


def test_pca_round_trip_full_rank(rng):
    x = rng.normal(size=(30, 6)) * [1, 2, 3, 4, 5, 6] + 10
    enc = ModalityEncoder(latent_dim=6).fit(x)
    assert enc.latent_dim_ == 6 and enc.transform_ == "none"
    new = rng.normal(size=(5, 6))
    np.testing.assert_allclose(enc.decode(enc.encode(new)), new, atol=1e-10)  # full rank: any rows
    z = enc.encode(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-10)
    # Fewer patients than features: capped at n - 1 = 7, exact on the training patients.
    wide = rng.poisson(300, size=(8, 20)).astype(float)
    enc = ModalityEncoder(latent_dim=32).fit(wide)
    assert enc.latent_dim_ == 7 and enc.transform_ == "log1p"  # counts with max > 100
    np.testing.assert_allclose(enc.decode(enc.encode(wide)), wide, rtol=1e-9)


def test_pca_truncated_is_the_linear_projection(rng):
    x = rng.normal(size=(40, 5)) @ np.diag([5.0, 3.0, 1.0, 0.1, 0.05])
    enc = ModalityEncoder(latent_dim=2, transform="none").fit(x)
    xs = (x - x.mean(0)) / x.std(0)
    vt = np.linalg.svd(xs, full_matrices=False)[2]
    # decode(encode()) in the standardised space is the projection on the two top axes.
    np.testing.assert_allclose(enc.decode(enc.encode(x), space="standardized"), xs @ vt[:2].T @ vt[:2], atol=1e-10)


def test_auto_transform_choice():
    counts = np.array([[0.0, 150.0], [3.0, 20.0], [1.0, 7.0]])
    assert ModalityEncoder(transform="auto").fit(counts).transform_ == "log1p"
    assert ModalityEncoder(transform="auto").fit(counts / 10).transform_ == "none"  # max 15
    assert ModalityEncoder(transform="auto").fit(counts - 1).transform_ == "none"  # negatives
    with pytest.raises(ValueError, match="log1p"):
        ModalityEncoder(transform="log1p").fit(counts - 1)


def test_encoder_errors(rng):
    x = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="method"):
        ModalityEncoder(method="vae")
    with pytest.raises(ValueError, match="transform"):
        ModalityEncoder(transform="log2")
    with pytest.raises(ValueError, match="latent_dim"):
        ModalityEncoder(latent_dim=0)
    with pytest.raises(ValueError, match="not fitted"):
        ModalityEncoder().encode(x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="contains 1 NaN"):
        ModalityEncoder().fit(bad)
    with pytest.raises(ValueError, match="at least 2"):
        ModalityEncoder().fit(x[:1])
    enc = ModalityEncoder(latent_dim=3).fit(x)
    with pytest.raises(ValueError, match="fitted on 4"):
        enc.encode(x[:, :3])
    with pytest.raises(ValueError, match="latent_dim_ is 3"):
        enc.decode(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="space"):
        enc.decode(np.zeros((2, 3)), space="latent")


@pytest.mark.parametrize("method", ["pca", "autoencoder"])
def test_to_dict_round_trip(rng, method):
    x = rng.gamma(2.0, 100.0, size=(25, 12))
    enc = ModalityEncoder(latent_dim=4, method=method, epochs=30, seed=3).fit(x)
    state = json.loads(json.dumps(enc.to_dict()))
    back = ModalityEncoder.from_dict(state)
    assert back.transform_ == enc.transform_ == "log1p"
    np.testing.assert_array_equal(back.encode(x), enc.encode(x))
    z = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(back.decode(z), enc.decode(z))
    with pytest.raises(ValueError, match="format_version"):
        ModalityEncoder.from_dict({**state, "format_version": 99})
    unfitted = ModalityEncoder.from_dict(ModalityEncoder(latent_dim=5).to_dict())
    assert unfitted.latent_dim == 5
    with pytest.raises(ValueError, match="not fitted"):
        unfitted.encode(x)


def test_autoencoder_seeded(rng):
    x = rng.normal(size=(20, 8))
    a = ModalityEncoder(latent_dim=3, method="autoencoder", epochs=20, seed=1).fit(x).encode(x)
    b = ModalityEncoder(latent_dim=3, method="autoencoder", epochs=20, seed=1).fit(x).encode(x)
    c = ModalityEncoder(latent_dim=3, method="autoencoder", epochs=20, seed=2).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_autoencoder_trains_through_the_shared_trainer(rng, monkeypatch):
    """No hand-written optimiser loop: the autoencoder is a GenerativeModule fitted by
    biodiffuse.train.fit on a reconstruction objective, and the global random state is kept."""
    import torch

    import biodiffuse.train as bt
    from biodiffuse.data.modality import ReconstructionLoss

    calls = []
    real_fit = bt.fit

    def spy(module, train, val, **kwargs):
        calls.append((module, train, val, kwargs))
        return real_fit(module, train, val, **kwargs)

    monkeypatch.setattr(bt, "fit", spy)
    x = rng.normal(size=(20, 8))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    enc = ModalityEncoder(latent_dim=3, method="autoencoder", epochs=5, seed=1).fit(x)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(calls) == 1
    module, train, val, kwargs = calls[0]
    assert isinstance(module, bt.GenerativeModule) and isinstance(module.objective, ReconstructionLoss)
    assert val is None and kwargs["max_epochs"] == 5 and kwargs["seed"] == 1 and kwargs["ema_decay"] is None
    assert train["x"].shape == (20, 8)
    # the objective is the reconstruction error of the standardised features
    xs = torch.as_tensor(enc.preprocess(x), dtype=torch.float32)
    with torch.no_grad():
        loss = module.objective(enc._net, {"x": xs}, None)
    recon = enc.decode(enc.encode(x), space="standardized")
    np.testing.assert_allclose(float(loss), np.mean((recon - enc.preprocess(x)) ** 2), rtol=1e-4)


@needs_tcga
def test_autoencoder_beats_feature_mean_on_real_rppa(acc):
    x, present = modality_matrix(acc, "RPPAArray")
    x = x[present]
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:37], order[37:]
    enc = ModalityEncoder(latent_dim=32, method="autoencoder", seed=0).fit(x[train])
    for rows in (train, test):
        truth = enc.preprocess(x[rows])
        ae = r2_score_modality(truth, enc.decode(enc.encode(x[rows]), space="standardized"))
        mean = r2_score_modality(truth, np.zeros_like(truth))  # training feature means
        # measured: AE 1.00 (train) and 0.39 (9 held-out patients); feature means 0.00 and -0.14
        assert ae > mean + 0.3, (ae, mean)


@needs_tcga
def test_choose_encoder_real_rppa(acc):
    x, present = modality_matrix(acc, "RPPAArray")
    best, table = choose_encoder(x[present], latent_dim=32, cv=3, seed=0, epochs=200)
    assert list(table.index) == ["pca", "autoencoder"]
    assert {"fold0", "fold1", "fold2", "mean", "std", "latent_dim"} <= set(table.columns)
    assert best == table["mean"].idxmax() == "pca"
    assert table.loc["pca", "mean"] > 0.9  # 32 of 33 components (measured 0.99)
    with pytest.raises(ValueError, match="cv"):
        choose_encoder(x[present], cv=1)
