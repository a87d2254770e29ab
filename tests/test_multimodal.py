"""Multi-condition diffusion and Coherent Denoising on MuData: consensus, set-up errors,
training, synthesis written back, the target never read, save / load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biodiffuse.diffusion import CoherentConsensus, coherent_sample
from biodiffuse.models import CoherentDenoising, MultiConditionDiffusion
from biodiffuse.nn import MLPDenoiser
from biodiffuse.tl import counterfactual_variance, fit_predictor

from conftest import SHARED_DATA

BRCA = SHARED_DATA / "tcga" / "tcga_brca_mixomics_train.h5mu"


def _const(value: float):
    return lambda x, sigma, cond: torch.full_like(x, value)


def test_consensus_weighted_average_and_coherence() -> None:
    x = torch.randn(4, 3)
    sigma = torch.full((4,), 2.0)
    avail = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    c = CoherentConsensus([_const(1.0), _const(3.0)], [None, None], torch.tensor([0.25, 0.75]), avail, threshold=0.5)
    out = c(x, sigma)
    np.testing.assert_allclose(out[:, 0].numpy(), [2.5, 1.0, 3.0, 2.5], rtol=1e-6)
    # identical denoisers are coherent; opposite noise predictions are not
    same = CoherentConsensus([_const(0.5), _const(0.5)], [None, None], torch.ones(2), torch.ones(2, 2, dtype=torch.bool))
    same(torch.zeros(2, 3), torch.ones(2))
    assert same.incoherent_fraction().tolist() == [0.0, 0.0]
    opp = CoherentConsensus([_const(1.0), _const(-1.0)], [None, None], torch.ones(2), torch.ones(2, 2, dtype=torch.bool))
    opp(torch.zeros(2, 3), torch.ones(2))
    assert opp.incoherent_fraction().tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        CoherentConsensus([_const(1.0)], [None], torch.ones(1), torch.zeros(2, 1, dtype=torch.bool))


def test_coherent_sample_retries_only_incoherent_rows() -> None:
    calls = []

    def make(rows):
        calls.append(rows.clone())
        d = [_const(1.0), _const(-1.0) if len(calls) == 1 else _const(1.0)]
        avail = torch.zeros(len(rows), 2, dtype=torch.bool)
        avail[:, 0] = True
        avail[:, 1] = rows < 2  # rows 0 and 1 see both (incoherent on the first try)
        return CoherentConsensus(d, [None, None], torch.ones(2), avail)

    out, retries, rejected = coherent_sample(make, torch.randn(4, 3), lambda rows: torch.randn(len(rows), 3), steps=3, max_retries=2)
    assert out.shape == (4, 3)
    assert retries.tolist() == [1, 1, 0, 0] and not rejected.any()
    assert calls[1].tolist() == [0, 1]


def test_mlp_denoiser_ignores_absent_conditions() -> None:
    net = MLPDenoiser(4, [3, 5], hidden=16, layers=2, emb_dim=8)
    torch.nn.init.normal_(net.out.weight)
    x, t = torch.randn(2, 4), torch.zeros(2)
    m = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    c1 = [torch.randn(2, 3), torch.randn(2, 5)]
    c2 = [c1[0], torch.randn(2, 5) * 100]
    assert torch.allclose(net(x, t, (c1, m)), net(x, t, (c2, m)))


@pytest.fixture(scope="module")
def brca():
    if not BRCA.exists():
        pytest.skip(f"{BRCA} not found (set BIODIFFUSE_DATA_DIR)")
    import mudata as md

    m = md.read_h5mu(BRCA)
    rng = np.random.default_rng(0)
    perm = rng.permutation(m.n_obs)
    return m[m.obs_names[perm[30:]]].copy(), m[m.obs_names[perm[:30]]].copy()


def test_setup_errors(brca) -> None:
    train, _ = brca
    with pytest.raises(ValueError, match="at least two"):
        MultiConditionDiffusion.setup_mudata(train, modalities=["mrna"])
    with pytest.raises(ValueError, match="Unknown modality"):
        MultiConditionDiffusion.setup_mudata(train, modalities=["mrna", "nope"])
    fresh = train.copy()
    fresh.uns.pop("biodiffuse", None)
    with pytest.raises(ValueError, match="setup_mudata"):
        CoherentDenoising(fresh)


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_train_synthesize_never_reads_target(brca, cls, tmp_path) -> None:
    train, test = brca
    train, test = train.copy(), test.copy()
    cls.setup_mudata(train, modalities=["mrna", "mirna", "protein"])
    model = cls(train, latent_dim=8, hidden=32, layers=2, seed=0)
    model.train(max_epochs=5, accelerator="cpu", enable_progress_bar=False)
    a = model.sample("protein", test, n_samples=3, steps=4, seed=1)
    assert a["latent"].shape == (3, 30, 8) and a["features"].shape == (3, 30, 142)
    assert np.all(a["variance"] >= 0)
    shuffled = test.copy()
    shuffled.mod["protein"].X = np.random.default_rng(0).permutation(np.asarray(shuffled.mod["protein"].X))
    b = model.sample("protein", shuffled, n_samples=3, steps=4, seed=1)
    np.testing.assert_array_equal(a["latent"], b["latent"])
    # synthesis for patients that lack the modality goes into a new modality
    test.mod["protein"] = test.mod["protein"][:10].copy()
    test.update()
    new = model.synthesize(test, target="protein", n_samples=2, steps=2)
    key = f"protein_{cls.__name__}"
    assert key in test.mod and new.n_obs == 20 and list(new.var_names) == list(test.mod["protein"].var_names)
    assert "variance" in new.layers and new.obsm["latent"].shape == (20, 8)
    with pytest.raises(KeyError, match="exists"):
        model.synthesize(test, target="protein")
    with pytest.raises(ValueError, match="not one of"):
        model.sample("rna", test)
    # counterfactual variance of a classifier over the draws, for the 20 patients lacking protein
    mods = ["mrna", "mirna", "protein"]
    clf = fit_predictor({m: np.asarray(train.mod[m].X, dtype=float) for m in mods}, train.obs["subtype"].astype(str).to_numpy(), n_estimators=50, seed=0)
    before = {m: np.asarray(test.mod[m].X).copy() for m in mods}
    score = counterfactual_variance(model, test, "protein", clf, n_samples=4, steps=2)
    col = test.obs["counterfactual_variance_protein"].to_numpy()
    has = np.isin(test.obs_names, test.mod["protein"].obs_names)
    assert np.isnan(col[has]).all() and np.isfinite(col[~has]).all()
    assert ((col[~has] >= 0) & (col[~has] <= 0.75)).all()
    np.testing.assert_array_equal(score.to_numpy(), col)
    assert all(np.array_equal(before[m], np.asarray(test.mod[m].X)) for m in mods)
    with pytest.raises(ValueError, match="not a block"):
        counterfactual_variance(model, test, "mirna_x", clf)
    with pytest.raises(ValueError, match="at least 2"):
        counterfactual_variance(model, test, "protein", clf, n_samples=1)
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m")
    c = loaded.sample("protein", shuffled, n_samples=3, steps=4, seed=1)
    np.testing.assert_allclose(a["latent"], c["latent"], rtol=1e-5, atol=1e-6)
    if cls is CoherentDenoising:  # the calibrated threshold rejects the asked share of first draws
        thr = model.calibrate_threshold(train, rejection=0.3, n_samples=4, steps=4, seed=3)
        assert thr > 0 and model.init_args["threshold"] == thr
        model.init_args["max_retries"] = 0
        _, present = model.latents(train)
        rejected = []
        for t, mod in enumerate(["mrna", "mirna", "protein"]):
            rows = np.flatnonzero(present[:, [c for c in range(3) if c != t]].sum(axis=1) >= 2)
            rejected.append(model.sample(mod, train, n_samples=4, steps=4, indices=rows, seed=3)["rejected"].ravel())
        assert abs(np.concatenate(rejected).mean() - 0.3) < 0.02
        model.init_args["max_retries"] = 10
        with pytest.raises(ValueError, match="rejection"):
            model.calibrate_threshold(rejection=1.0)
