"""Multi-condition diffusion and Coherent Denoising on MuData: consensus, set-up errors,
training, synthesis written back, the target never read, save / load, seeds per patient,
query matching by name, key_added / overwrite, consensus weights, failures with clear errors."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from biodiffuse.diffusion import CoherentConsensus, coherent_sample, coherent_sampler
from biodiffuse.models import CoherentDenoising, MultiConditionDiffusion
from biodiffuse.module import modality as mm
from biodiffuse.train import TrainingDivergedError
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


def test_consensus_evaluates_each_denoiser_on_its_available_rows_only() -> None:
    seen = {}

    def scaled(k: int):
        def d(x, sigma, cond):
            seen.setdefault(k, []).append((cond[0][:, 0].tolist(), len(sigma), cond[1]))
            return cond[0] * (k + 1)

        return d

    z = torch.arange(4.0)[:, None].repeat(1, 3)  # row i of the condition holds i
    avail = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    c = CoherentConsensus([scaled(0), scaled(1)], [(z, "kept"), (z, "kept")], torch.tensor([0.5, 0.5]), avail)
    out = c(torch.randn(4, 3), torch.full((4,), 2.0))
    np.testing.assert_allclose(out[:, 0].numpy(), [0.0, 1.0, 4.0, 4.5], rtol=1e-6)  # (1 z + 2 z) / 2 where both apply
    assert seen[0] == [([0.0, 1.0, 3.0], 3, "kept")] and seen[1] == [([0.0, 2.0, 3.0], 3, "kept")]
    c(torch.randn(4, 3), torch.full((4,), 1.0))
    assert c.evaluations().tolist() == [4, 2, 2, 4]


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
    # the one-step draw of a redrawn draw comes from the solve it was kept from: rows 0 and 1's
    # first consensus (1 + -1) / 2 = 0 was rejected, their second gives 1, as the others' does
    calls.clear()
    x, diag = coherent_sampler(3, max_retries=2, keep_one_step=True)(make, torch.randn(4, 3), None, lambda rows: torch.randn(len(rows), 3))
    np.testing.assert_array_equal(diag["one_step"].numpy(), np.ones((4, 3)))
    assert diag["retries"].tolist() == [1, 1, 0, 0]
    assert "one_step" not in coherent_sampler(3, max_retries=2)(make, torch.randn(4, 3), None, lambda rows: torch.randn(len(rows), 3))[1]
    with pytest.raises(TypeError, match="keep_one_step"):
        coherent_sampler(3, keep_one_step=1)


def test_mlp_denoiser_ignores_absent_conditions() -> None:
    net = MLPDenoiser(4, [3, 5], hidden=16, layers=2, emb_dim=8)
    torch.nn.init.normal_(net.out.weight)
    x, t = torch.randn(2, 4), torch.zeros(2)
    m = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    c1 = [torch.randn(2, 3), torch.randn(2, 5)]
    c2 = [c1[0], torch.randn(2, 5) * 100]
    assert torch.allclose(net(x, t, (c1, m)), net(x, t, (c2, m)))


def test_coherent_prepare_uses_the_weights() -> None:
    """The consensus of the sampler's batch averages the pair denoisers with the weights given."""
    zs = [np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)]
    present = np.ones((3, 3), bool)
    present[2, 1] = False  # row 2 lacks condition 1: only pair 0 applies
    prep = mm.coherent_prepare([_const(1.0), _const(3.0)], [0.8, 0.2], [0, 1], zs, present, n_samples=2, threshold=0.5)
    make = prep(np.array([0, 2]), torch.device("cpu")).denoiser
    out = make(torch.arange(4))(torch.zeros(4, 2), torch.ones(4))
    np.testing.assert_allclose(out[:, 0].numpy(), [1.4, 1.4, 1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        mm.coherent_prepare([_const(1.0)], [1.0], [1], zs, present, n_samples=1, threshold=0.5)


# --- a small synthetic cohort: "good" determines "target", "noise" is unrelated -------------------
def _toy(n: int = 90, seed: int = 0, partial: bool = True):
    import mudata as md

    rng = np.random.default_rng(seed)
    good = rng.normal(size=(n, 6))
    target = good @ rng.normal(size=(6, 5)) + 0.05 * rng.normal(size=(n, 5))
    noise = rng.normal(size=(n, 6))
    names = [f"p{i}" for i in range(n)]
    mods = {}
    for key, x, prefix in (("good", good, "g"), ("noise", noise, "n"), ("target", target, "t")):
        a = AnnData(x.astype(np.float32), obs=pd.DataFrame(index=names))
        a.var_names = [f"{prefix}{j}" for j in range(x.shape[1])]
        mods[key] = a
    if partial:  # some patients lack noise, some lack the target
        mods["noise"] = mods["noise"][10:].copy()
        mods["target"] = mods["target"][: n - 15].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(mods)


MODS = ["good", "noise", "target"]


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def toy_models():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    mdata = _toy()
    out = {}
    for cls in (MultiConditionDiffusion, CoherentDenoising):
        cls.setup_mudata(mdata, modalities=MODS)
        model = cls(mdata, latent_dim=4, hidden=32, layers=2, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train(max_epochs=8, accelerator="cpu", enable_progress_bar=False)
        out[cls] = model
    return mdata, out


def _snapshot(mdata) -> tuple:
    return (sorted(mdata.mod), sorted(mdata.uns), list(mdata.obs.columns), mdata.shape)


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_same_seed_same_numbers_whatever_batch_size_and_other_patients(toy_models, cls) -> None:
    mdata, models = toy_models
    model = models[cls]
    kw = dict(target="target", n_samples=3, steps=4, seed=1)
    full = model.sample(**kw)
    small = model.sample(mdata, batch_size=7, **kw)
    sub = [5, 40, 77]
    alone = model.sample(mdata, indices=sub, batch_size=2, **kw)
    sliced = mdata[[mdata.obs_names[i] for i in sub]].copy()
    alone_copy = model.sample(sliced, **kw)
    # MultiConditionDiffusion: bit-identical; Coherent Denoising: redraws go through the
    # network in batches of other sizes (float rounding), so equal to rounding
    tol = dict(rtol=1e-5, atol=1e-6)
    for key in ("latent", "features"):
        np.testing.assert_allclose(small[key], full[key], **tol)
        np.testing.assert_allclose(alone[key], full[key][:, sub], **tol)
        np.testing.assert_allclose(alone_copy[key], full[key][:, sub], **tol)
    if cls is MultiConditionDiffusion:
        np.testing.assert_array_equal(small["latent"], full["latent"])
    else:
        np.testing.assert_array_equal(small["retries"], full["retries"])
        np.testing.assert_array_equal(alone["retries"], full["retries"][sub])
        assert full["retries"].shape == full["rejected"].shape == (mdata.n_obs, 3)
    assert alone["obs_names"] == [mdata.obs_names[i] for i in sub]
    np.testing.assert_allclose(full["mean"], full["features"].mean(axis=0), rtol=1e-6, atol=1e-9)
    other = model.sample(seed=2, **{k: v for k, v in kw.items() if k != "seed"})
    assert not np.allclose(other["latent"], full["latent"])
    # the target's own values are never read
    shuffled = mdata.copy()
    shuffled.mod["target"].X = np.random.default_rng(0).permutation(np.asarray(shuffled.mod["target"].X))
    np.testing.assert_array_equal(model.sample(shuffled, **kw)["latent"], full["latent"])


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_synthesize_key_added_overwrite_and_params(toy_models, cls) -> None:
    mdata, models = toy_models
    model = models[cls]
    mdata = mdata.copy()
    new = model.synthesize(mdata, target="target", n_samples=2, steps=2, seed=3)
    key = f"target_{cls.__name__}"
    assert key in mdata.mod and new.n_obs == 15 and list(new.var_names) == [f"t{j}" for j in range(5)]
    assert set(new.obs_names) == set(mdata.obs_names[75:])
    assert new.layers["variance"].shape == (15, 5) and new.obsm["latent"].shape == (15, 4)
    rec = mdata.uns[key]
    assert rec["model"] == cls.__name__ and rec["target"] == "target" and rec["n_samples"] == 2 and rec["steps"] == 2
    assert rec["seed"] == 3 and rec["conditions"] == ["good", "noise"] and rec["patients"] == "missing"
    assert new.uns[key] == rec and mdata.mod[key].uns[key] == rec
    # the same numbers as the getter
    res = model.sample(mdata, target="target", n_samples=2, steps=2, seed=3, indices=np.arange(75, 90))
    np.testing.assert_allclose(new.X, res["mean"].astype(np.float32))
    # refused without overwrite, nothing changed (also when only uns holds the key)
    before = _snapshot(mdata)
    x_before = mdata.mod[key].X.copy()
    with pytest.raises(KeyError, match=f"mdata.mod\\['{key}'\\] exists"):
        model.synthesize(mdata, target="target", n_samples=2, steps=2, seed=4)
    assert _snapshot(mdata) == before
    np.testing.assert_array_equal(mdata.mod[key].X, x_before)
    mdata.uns["mine"] = {"user": 1}
    with pytest.raises(KeyError, match="mdata.uns\\['mine'\\] exists"):
        model.synthesize(mdata, target="target", key_added="mine", n_samples=2, steps=2)
    assert "mine" not in mdata.mod and mdata.uns["mine"] == {"user": 1}
    # key_added honoured; overwrite replaces
    model.synthesize(mdata, target="target", patients="all", indices=[0, 1, 2], key_added="t_all", n_samples=2, steps=2)
    assert list(mdata.mod["t_all"].obs_names) == list(mdata.obs_names[:3]) and mdata.uns["t_all"]["patients"] == "all"
    model.synthesize(mdata, target="target", n_samples=2, steps=2, seed=4, overwrite=True)
    assert mdata.uns[key]["seed"] == 4 and not np.array_equal(mdata.mod[key].X, x_before)
    with pytest.raises(ValueError, match="patients"):
        model.synthesize(mdata, target="target", patients="some", key_added="x")
    with pytest.raises(ValueError, match="not one of"):
        model.synthesize(mdata, target="rna", key_added="x")


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_query_matched_by_name(toy_models, cls) -> None:
    mdata, models = toy_models
    model = models[cls]
    kw = dict(target="target", n_samples=2, steps=3, seed=0, indices=np.arange(20))
    ref = model.sample(mdata, **kw)
    # features in another order (and an extra one) are matched by name
    q = mdata.copy()
    good = q.mod["good"]
    extra = AnnData(np.c_[np.asarray(good.X)[:, ::-1], np.ones(good.n_obs)].astype(np.float32), obs=good.obs.copy())
    extra.var_names = list(good.var_names[::-1]) + ["extra"]
    q.mod["good"] = extra
    np.testing.assert_allclose(model.sample(q, **kw)["latent"], ref["latent"], rtol=1e-5, atol=1e-6)
    # an absent modality is a masked condition
    import mudata as md

    no_noise = md.MuData({"good": mdata.mod["good"].copy(), "target": mdata.mod["target"].copy()})
    a = model.sample(no_noise, **kw)
    b = model.sample(mdata, **{**kw, "conditions": ["good"]})
    np.testing.assert_allclose(a["latent"], b["latent"], rtol=1e-5, atol=1e-6)
    # no shared feature name / some missing: clear errors naming the modality
    renamed = mdata.copy()
    renamed.mod["good"].var_names = [f"{v}_X" for v in renamed.mod["good"].var_names]
    with pytest.raises(ValueError, match="mdata.mod\\['good'\\].*shares no name"):
        model.sample(renamed, **kw)
    partial = md.MuData({"good": mdata.mod["good"][:, :4].copy(), "noise": mdata.mod["noise"].copy()})
    with pytest.raises(ValueError, match="mdata.mod\\['good'\\] lacks 2 of the model's 6 features"):
        model.sample(partial, **kw)


def test_encoders_fitted_on_training_patients_only(toy_models) -> None:
    mdata, models = toy_models
    model = models[MultiConditionDiffusion]
    tr, va = model._split(mdata.n_obs, 0.85, np.random.default_rng(0))
    assert len(va) > 0
    for mod in MODS:
        x, present = bd_modality_matrix(mdata, mod)
        state = model.registry["encoders"][mod]["fitted"]
        rows = tr[present[tr]]
        np.testing.assert_allclose(state["feature_mean_"], x[rows].mean(axis=0), rtol=1e-6, atol=1e-8)
        assert not np.allclose(state["feature_mean_"], x[present].mean(axis=0), rtol=1e-6, atol=1e-8)


def bd_modality_matrix(mdata, mod):
    from biodiffuse.data.modality import modality_matrix

    return modality_matrix(mdata, mod)


def test_not_set_up_and_setup_errors() -> None:
    mdata = _toy()
    uns_before = dict(mdata.uns)
    for cls in (MultiConditionDiffusion, CoherentDenoising):
        with pytest.raises(ValueError, match=f"This MuData was not set up for {cls.__name__}; call {cls.__name__}.setup_mudata"):
            cls(mdata)
    with pytest.raises(ValueError, match="at least two"):
        MultiConditionDiffusion.setup_mudata(mdata, modalities=["good"])
    with pytest.raises(KeyError, match="'nope' not in mdata.mod"):
        MultiConditionDiffusion.setup_mudata(mdata, modalities=["good", "nope"])
    bad = mdata.copy()
    bad.mod["good"].X[0, 0] = np.nan
    with pytest.raises(ValueError, match="mdata.mod\\['good'\\].*NaN"):
        MultiConditionDiffusion.setup_mudata(bad, modalities=MODS)
    assert dict(mdata.uns) == uns_before and "biodiffuse" not in bad.uns


def test_coherent_without_paired_patients_fails_at_train() -> None:
    import mudata as md

    full = _toy(partial=False)
    names = list(full.obs_names)
    mods = {m: full.mod[m][names[30 * i : 30 * (i + 1)]].copy() for i, m in enumerate(MODS)}  # nobody has two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
    CoherentDenoising.setup_mudata(mdata, modalities=MODS)
    model = CoherentDenoising(mdata, latent_dim=3, hidden=16, layers=1)
    weights = {k: v.clone() for k, v in model.network.state_dict().items()}
    with pytest.raises(ValueError, match="no training patient for the denoiser\\(s\\) \\['noise->good', 'target->good'"):
        model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    assert not model.is_trained and all(v is None for v in model.registry["encoders"].values())
    assert all(torch.equal(v, model.network.state_dict()[k]) for k, v in weights.items())
    # multi-condition diffusion trains each target on its own patients: fine
    MultiConditionDiffusion.setup_mudata(mdata, modalities=MODS)
    MultiConditionDiffusion(mdata, latent_dim=3, hidden=16, layers=1).train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_diverged_run_raises_training_diverged(cls) -> None:
    mdata = _toy()
    cls.setup_mudata(mdata, modalities=MODS)
    model = cls(mdata, latent_dim=3, hidden=16, layers=1)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        model.train(lr=1e8, max_epochs=20, accelerator="cpu", enable_progress_bar=False)
    assert not model.is_trained
    assert all(torch.isfinite(p).all() for p in model.network.parameters())
    with pytest.raises(RuntimeError, match="not trained"):
        model.sample(target="target")


def test_consensus_weights_favour_the_informative_condition() -> None:
    """softmax(1 / validation loss): the pair good -> target (target is a function of good)
    gets more weight than noise -> target, and sampling uses exactly these weights."""
    mdata = _toy(partial=False)
    CoherentDenoising.setup_mudata(mdata, modalities=MODS)
    model = CoherentDenoising(mdata, latent_dim=4, hidden=32, layers=2, dropout=0.0, seed=0, threshold=2.0)
    model.train(max_epochs=40, batch_size=32, lr=3e-3, accelerator="cpu", enable_progress_bar=False)
    val = model.registry["val_loss"]
    assert val["good->target"] < val["noise->target"]  # measured 0.69 vs 1.04
    w = model.consensus_weights(target="target", conditions=["good", "noise"])
    inv = np.array([1 / val["good->target"], 1 / val["noise->target"]])
    expect = np.exp(inv) / np.exp(inv).sum()
    np.testing.assert_allclose([w["good->target"], w["noise->target"]], expect, rtol=1e-9)
    assert w["good->target"] > 0.55  # measured 0.62
    # one step of the sampler returns the denoisers' estimate at sigma_max: the consensus is
    # the weighted average of the two single-pair estimates (same per-patient noise)
    kw = dict(target="target", n_samples=2, steps=1, seed=5, indices=np.arange(12))
    both = model.sample(conditions=["good", "noise"], **kw)
    good = model.sample(conditions=["good"], **kw)
    noise = model.sample(conditions=["noise"], **kw)
    assert (both["retries"] == 0).all()
    mix = w["good->target"] * good["latent"] + w["noise->target"] * noise["latent"]
    np.testing.assert_allclose(both["latent"], mix, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_sampler_settings_change_the_draws_and_count_evaluations(toy_models, cls, tmp_path) -> None:
    mdata, models = toy_models
    model = models[cls]
    assert model.sampler_settings == {"solver": "heun", "sigma_max": 10.0, "sigma_min": 0.002, "rho": 7.0}
    kw = dict(target="target", n_samples=2, steps=3, seed=1, indices=np.arange(30))
    heun = model.sample(mdata, **kw)
    # MultiCond: one network; Coherent: good->target, and noise->target for the patients with noise
    has_noise = np.isin(np.asarray(mdata.obs_names)[:30], mdata["noise"].obs_names)
    assert has_noise.any() and not has_noise.all()
    members = 1 if cls is MultiConditionDiffusion else (1 + has_noise)[:, None]
    retries = heun.get("retries", np.zeros_like(heun["nfe"]))
    np.testing.assert_array_equal(heun["nfe"], (retries + 1) * 5 * members)
    try:
        model.set_sampler(solver="euler", rho=3.0)
        euler = model.sample(mdata, **kw)
        assert not np.allclose(euler["latent"], heun["latent"])
        np.testing.assert_array_equal(euler["nfe"], (euler.get("retries", 0) + 1) * 3 * members)
        out = mdata.copy()
        model.synthesize(out, target="target", n_samples=2, steps=3, key_added="t_euler")
        assert out.uns["t_euler"]["sampler"] == {"solver": "euler", "sigma_max": 10.0, "sigma_min": 0.002, "rho": 3.0}
        assert out.uns["t_euler"]["nfe_per_draw"] >= 3 * np.mean(members)
        model.save(tmp_path / "m")
        assert cls.load(tmp_path / "m").sampler_settings == model.sampler_settings
        with pytest.raises(ValueError, match="sigma_min < sigma_max"):
            model.set_sampler(sigma_min=20.0)
        with pytest.raises(ValueError, match="solver"):
            model.set_sampler(solver="rk4")
    finally:
        model.set_sampler(solver="heun", rho=7.0)
    np.testing.assert_array_equal(model.sample(mdata, **kw)["latent"], heun["latent"])
    with pytest.raises(ValueError, match="sigma_max"):
        cls(mdata, sigma_max=-1.0)
    with pytest.raises(ValueError, match="solver"):
        cls(mdata, solver="dopri5")


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_recentred_draws_centre_on_the_one_step_mean(toy_models, cls) -> None:
    """``recentre=True``: each patient's latent draws are shifted onto the mean of its one-step
    draws (Coherent Denoising: the consensus's, from the kept solve; without redraws that is
    what one step draws), keep their spread, and cost no extra evaluation."""
    mdata, models = toy_models
    model = models[cls]
    kw = dict(target="target", n_samples=3, seed=4, indices=np.arange(40))
    before = model.init_args.get("max_retries")
    try:
        if cls is CoherentDenoising:
            model.init_args["max_retries"] = 0  # no redraws: the kept solve is the first for every step count
        one = model.sample(mdata, steps=1, **kw)
        plain = model.sample(mdata, steps=3, recentre=False, **kw)
        rc = model.sample(mdata, steps=3, recentre=True, **kw)
        default = model.sample(mdata, steps=3, **kw)  # both models recentre by default
    finally:
        if before is not None:
            model.init_args["max_retries"] = before
    np.testing.assert_allclose(rc["latent_mean"], one["latent_mean"], rtol=1e-5, atol=1e-6)
    dev = lambda d: d - d.mean(axis=0, keepdims=True)  # noqa: E731  (draws first)
    np.testing.assert_allclose(dev(rc["latent"]), dev(plain["latent"]), rtol=1e-5, atol=1e-6)
    assert np.abs(rc["latent_mean"] - plain["latent_mean"]).max() > 1e-3
    np.testing.assert_allclose(rc["mean"], rc["features"].mean(axis=0), rtol=1e-6, atol=1e-9)  # decoded from the recentred draws
    np.testing.assert_array_equal(rc["nfe"], plain["nfe"])
    np.testing.assert_array_equal(default["latent"], rc["latent"])
    out = mdata.copy()
    model.synthesize(out, target="target", n_samples=2, steps=3, recentre=False, key_added="t_plain")
    model.synthesize(out, target="target", n_samples=2, steps=3, key_added="t_rc")
    assert out.uns["t_rc"]["recentre"] is True and out.uns["t_plain"]["recentre"] is False
    with pytest.raises(TypeError, match="recentre must be True, False or None"):
        model.sample(mdata, recentre="no", **{**kw, "steps": 3})
    # one draw per patient (e.g. synthetic records) is a sample, not recentred onto its one-step draw
    single = {**kw, "n_samples": 1, "steps": 3}
    np.testing.assert_array_equal(model.sample(mdata, **single)["latent"], model.sample(mdata, recentre=False, **single)["latent"])


def _first_draw_rejection(model, mdata, mods, *, steps: int, seed: int, rows=None) -> np.ndarray:
    """Per first draw (4 per patient) of ``rows`` (default all) with two or more conditions, every
    target: whether Coherent Denoising rejects it (no redraws)."""
    before = model.init_args["max_retries"]
    rows = np.arange(mdata.n_obs) if rows is None else np.asarray(rows)
    _, present = model.latents(mdata, indices=rows)
    rejected = []
    try:
        model.init_args["max_retries"] = 0
        for t, mod in enumerate(mods):
            sel = rows[present[:, [c for c in range(len(mods)) if c != t]].sum(axis=1) >= 2]
            rejected.append(model.sample(mdata, target=mod, n_samples=4, steps=steps, indices=sel, seed=seed)["rejected"].ravel())
    finally:
        model.init_args["max_retries"] = before
    return np.concatenate(rejected)


def test_training_calibrates_the_threshold_on_validation_patients(toy_models) -> None:
    mdata, models = toy_models
    model = models[CoherentDenoising]
    rec = model.registry["threshold_calibration"]
    assert rec["rejection"] == 0.1 and rec["threshold"] == model.init_args["threshold"] != 0.5
    val = model._validation_rows
    assert rec["n_patients"] == len(val) > 0
    # the first draws of the validation patients (calibration's seed, draws and steps) are rejected at that rate
    rejected = _first_draw_rejection(model, mdata, MODS, steps=18, seed=0, rows=val)
    assert abs(rejected.mean() - 0.1) <= 1.0 / len(rejected) + 1e-9
    fixed = CoherentDenoising(mdata, latent_dim=4, hidden=16, rejection=None)
    fixed.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    assert fixed.init_args["threshold"] == 0.5 and "threshold_calibration" not in fixed.registry
    alone = CoherentDenoising(mdata, latent_dim=4, hidden=16)
    with pytest.warns(UserWarning, match="not calibrated: no validation patients"):
        alone.train(max_epochs=1, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
    assert alone.init_args["threshold"] == 0.5
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="rejection"):
            CoherentDenoising(mdata, rejection=bad)


def test_calibrated_threshold_follows_the_sampler(toy_models) -> None:
    mdata, models = toy_models
    model = models[CoherentDenoising]
    before = dict(model.init_args)
    try:
        model.set_sampler(solver="euler", sigma_max=2.0, rho=3.0)
        model.calibrate_threshold(mdata, rejection=0.3, n_samples=4, steps=3, seed=3)
        assert abs(_first_draw_rejection(model, mdata, MODS, steps=3, seed=3).mean() - 0.3) < 0.01
    finally:
        model.init_args.clear()
        model.init_args.update(before)


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_tune_sampler_scores_the_validation_patients(toy_models, cls) -> None:
    from biodiffuse.metrics import score_draws

    mdata, models = toy_models
    model = models[cls]
    cands = [dict(solver="euler", steps=3, nfe=3, sigma_max=10.0, sigma_min=0.002, rho=7.0),
             dict(solver="heun", steps=2, nfe=3, sigma_max=2.0, sigma_min=0.05, rho=3.0)]
    before, init, registry = model.sampler_settings, dict(model.init_args), dict(model.registry)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = model.tune_sampler(nfe=3, n_samples=3, candidates=cands, seed=1)
        assert not [w for w in caught if "calibrated for" in str(w.message)]  # each schedule has its own threshold
        assert len(table) == 2 and table["crps_fair"].is_monotonic_increasing and table["crps_fair"].nunique() == 2
        best = table.iloc[0]
        assert model.sampler_settings == {k: best[k] for k in ("solver", "sigma_max", "sigma_min", "rho")}
        assert model.registry["sampler_tuning"]["crps"] == pytest.approx(best["crps"])
        # the score is the CRPS of sample()'s latent draws of every modality of the validation patients
        val = model._validation_rows
        zs, present = model.latents(mdata, indices=val)
        crps, fair, sizes = [], [], []
        for t, mod in enumerate(MODS):
            sel = np.flatnonzero(present[:, t] & np.delete(present, t, axis=1).any(axis=1))
            draws = model.sample(mdata, target=mod, indices=val[sel], n_samples=3, steps=int(best["steps"]), seed=1)["latent"]
            scores = score_draws(zs[t][sel], draws.transpose(1, 0, 2))
            crps.append(scores["crps"])
            fair.append(scores["crps_fair"])
            sizes.append(zs[t][sel].size)
        assert best["crps"] == pytest.approx(np.average(crps, weights=sizes), rel=1e-6)
        assert best["crps_fair"] == pytest.approx(np.average(fair, weights=sizes), rel=1e-6)
        if cls is CoherentDenoising:  # every schedule was scored with the threshold calibrated for it; the winner's is kept
            assert table["threshold"].nunique() == 2
            assert model.init_args["threshold"] == best["threshold"]
            rec = model.registry["threshold_calibration"]
            assert rec["steps"] == best["steps"] and rec["sampler"] == model.sampler_settings and rec["threshold"] == best["threshold"]
            with pytest.warns(UserWarning, match=f"calibrated for {int(best['steps'])} steps"):
                model.sample(mdata, target="target", indices=val, n_samples=2, steps=5)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model.sample(mdata, target="target", indices=val, n_samples=2, steps=int(best["steps"]))
            for _, row in table.iterrows():
                model.set_sampler(**{k: row[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
                thr = model.calibrate_threshold(mdata, rejection=0.1, indices=val, n_samples=4, steps=int(row["steps"]), seed=1)
                assert thr == pytest.approx(row["threshold"], rel=1e-6)
    finally:
        model.set_sampler(**before)
        model.init_args.clear(), model.init_args.update(init)
        model.registry.clear(), model.registry.update(registry)
    with pytest.raises(ValueError, match="at least 2 draws"):
        model.tune_sampler(n_samples=1)
    with pytest.raises(ValueError, match="max_patients"):
        model.tune_sampler(max_patients=0)
    with pytest.raises(ValueError, match="No validation patients"):
        cls(mdata, latent_dim=4, hidden=32).tune_sampler()


def test_counterfactual_variance_key_added_and_overwrite(toy_models) -> None:
    mdata, models = toy_models
    model = models[MultiConditionDiffusion]
    mdata = mdata.copy()
    y = np.where(np.asarray(mdata.mod["good"].X)[:, 0] > 0, "a", "b")
    has = np.isin(mdata.obs_names, mdata.mod["noise"].obs_names) & np.isin(mdata.obs_names, mdata.mod["target"].obs_names)
    blocks = {m: np.asarray(mdata.mod[m][mdata.obs_names[has]].X, dtype=float) for m in MODS}
    clf = fit_predictor(blocks, y[has], n_estimators=20, seed=0)
    score = counterfactual_variance(model, mdata, target="target", predictor=clf, n_samples=3, steps=2)
    col = "counterfactual_variance_target"
    np.testing.assert_array_equal(mdata.obs[col].to_numpy(), score.to_numpy())
    assert np.isfinite(score.to_numpy()[75:]).all() and np.isnan(score.to_numpy()[:75]).all()
    before = mdata.obs.copy()
    with pytest.raises(KeyError, match=f"mdata.obs\\['{col}'\\] exists"):
        counterfactual_variance(model, mdata, target="target", predictor=clf, n_samples=3, steps=2, seed=1)
    pd.testing.assert_frame_equal(mdata.obs, before)
    other = counterfactual_variance(model, mdata, target="target", predictor=clf, n_samples=3, steps=2, key_added="cv")
    np.testing.assert_array_equal(other.to_numpy(), score.to_numpy())  # same seed, same draws
    counterfactual_variance(model, mdata, target="target", predictor=clf, n_samples=3, steps=2, seed=1, overwrite=True)
    assert list(mdata.obs.columns).count(col) == 1
    # patients of a MuData without the target modality at all (a test split never measured for
    # it): every patient is scored, with the same draws as when the modality is there but empty
    import mudata as md

    without = md.MuData({m: mdata.mod[m] for m in MODS if m != "target"})
    lacking = np.flatnonzero(~np.isnan(score.to_numpy()))  # the patients lacking target
    none = counterfactual_variance(model, without, target="target", predictor=clf, n_samples=3, steps=2)
    assert np.isfinite(none.to_numpy()).all()
    np.testing.assert_allclose(none.loc[score.index[lacking]].to_numpy(), score.to_numpy()[lacking])


# --- real data: TCGA BRCA -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brca():
    if not BRCA.exists():
        pytest.skip(f"{BRCA} not found (set BIODIFFUSE_DATA_DIR)")
    import mudata as md

    m = md.read_h5mu(BRCA)
    rng = np.random.default_rng(0)
    perm = rng.permutation(m.n_obs)
    return m[m.obs_names[perm[30:]]].copy(), m[m.obs_names[perm[:30]]].copy()


@pytest.mark.parametrize("cls", [MultiConditionDiffusion, CoherentDenoising])
def test_train_synthesize_never_reads_target(brca, cls, tmp_path) -> None:
    train, test = brca
    train, test = train.copy(), test.copy()
    cls.setup_mudata(train, modalities=["mrna", "mirna", "protein"])
    model = cls(train, latent_dim=8, hidden=32, layers=2, seed=0)
    model.train(max_epochs=5, accelerator="cpu", enable_progress_bar=False)
    a = model.sample(test, target="protein", n_samples=3, steps=4, seed=1)
    assert a["latent"].shape == (3, 30, 8) and a["features"].shape == (3, 30, 142)
    assert np.all(a["variance"] >= 0)
    shuffled = test.copy()
    shuffled.mod["protein"].X = np.random.default_rng(0).permutation(np.asarray(shuffled.mod["protein"].X))
    b = model.sample(shuffled, target="protein", n_samples=3, steps=4, seed=1)
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
        model.sample(test, target="rna")
    # counterfactual variance of a classifier over the draws, for the 20 patients lacking protein
    mods = ["mrna", "mirna", "protein"]
    clf = fit_predictor({m: np.asarray(train.mod[m].X, dtype=float) for m in mods}, train.obs["subtype"].astype(str).to_numpy(), n_estimators=50, seed=0)
    before = {m: np.asarray(test.mod[m].X).copy() for m in mods}
    score = counterfactual_variance(model, test, target="protein", predictor=clf, n_samples=4, steps=2)
    col = test.obs["counterfactual_variance_protein"].to_numpy()
    has = np.isin(test.obs_names, test.mod["protein"].obs_names)
    assert np.isnan(col[has]).all() and np.isfinite(col[~has]).all()
    assert ((col[~has] >= 0) & (col[~has] <= 0.75)).all()
    np.testing.assert_array_equal(score.to_numpy(), col)
    assert all(np.array_equal(before[m], np.asarray(test.mod[m].X)) for m in mods)
    with pytest.raises(ValueError, match="not a block"):
        counterfactual_variance(model, test, target="mirna_x", predictor=clf)
    with pytest.raises(ValueError, match="at least 2"):
        counterfactual_variance(model, test, target="protein", predictor=clf, n_samples=1, key_added="other")
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m")
    c = loaded.sample(shuffled, target="protein", n_samples=3, steps=4, seed=1)
    np.testing.assert_allclose(a["latent"], c["latent"], rtol=1e-5, atol=1e-6)
    if cls is CoherentDenoising:  # the calibrated threshold rejects the asked share of first draws
        thr = model.calibrate_threshold(train, rejection=0.3, n_samples=4, steps=4, seed=3)
        assert thr > 0 and model.init_args["threshold"] == thr
        assert abs(_first_draw_rejection(model, train, mods, steps=4, seed=3).mean() - 0.3) < 0.02
        with pytest.raises(ValueError, match="rejection"):
            model.calibrate_threshold(rejection=1.0)
        for steps in (2.5, True, 0):  # not rounded or taken as 1 (the record would name a sampler never used)
            with pytest.raises(ValueError, match="steps must be a positive integer"):
                model.calibrate_threshold(train, steps=steps)
