"""MCD any-subset channel imputation on real ADT-only CITE-seq (dsb PBMC, no RNA)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import biodiffuse as bd
from biodiffuse.metrics import pearson_per_channel

PANEL = ["CD3_PROT", "CD4_PROT", "CD8_PROT", "CD14_PROT", "CD16_PROT", "CD19_PROT", "CD20_PROT", "CD56_PROT",
         "CD45RA_PROT", "CD45RO_PROT", "CD64_PROT", "CD11c_PROT", "CD27_PROT", "CD28_PROT", "CD161_PROT", "CD127_PROT"]
HELD_OUT = ["CD4_PROT", "CD19_PROT", "CD14_PROT", "CD45RA_PROT"]


@pytest.fixture(scope="module")
def data():
    try:
        adata = bd.datasets.dsb_adt_pbmc()
    except FileNotFoundError:
        pytest.skip("../shared/data/citeseq/dsb_adt_pbmc_cells.h5ad not available")
    adata = adata[:, PANEL].copy()
    adata.X = np.log1p(np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32))
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    return adata[np.sort(perm[:800])].copy(), adata[np.sort(perm[800:1100])].copy()


@pytest.fixture(scope="module")
def trained(data):
    train, _ = data
    bd.models.MCD.setup_anndata(train)
    model = bd.models.MCD(train, model_channels=16, heads=2)  # cond_dropout 0 in channel mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=120, enable_progress_bar=False, seed=0)
    return model


def test_channel_mode_defaults(trained):
    assert trained.registry["mode"] == "channels"
    assert trained.init_args["observed_fraction"] == 0.9
    assert trained.target_names == PANEL


def test_unseen_subset_beats_mean_and_keeps_observed(trained, data):
    """Four channels held out together: with p = 0.9 over 16 channels this exact mask has
    probability 0.1^4 * 0.9^12 ~ 3e-5 per training draw, i.e. essentially never seen."""
    _, test = data
    query = test.copy()
    # steps=1 is the denoiser's estimate at sigma_max, i.e. the conditional mean E[x | observed]
    post = trained.posterior(query, observed=[c for c in PANEL if c not in HELD_OUT], n_samples=2, steps=1)
    idx = [PANEL.index(c) for c in HELD_OUT]
    truth = np.asarray(test.X)
    r = pearson_per_channel(truth[:, idx], post["mean"][:, idx])
    assert np.nanmean(r) > 0.5, r
    rmse = np.sqrt(np.mean((truth[:, idx] - post["mean"][:, idx]) ** 2))
    rmse_mean = np.sqrt(np.mean((truth[:, idx] - truth[:, idx].mean(0)) ** 2))
    assert rmse < 0.85 * rmse_mean, (rmse, rmse_mean)
    obs_idx = [i for i in range(len(PANEL)) if i not in idx]
    np.testing.assert_array_equal(post["mean"][:, obs_idx], truth[:, obs_idx])
    assert (post["variance"][:, obs_idx] == 0).all()
    sampled = trained.posterior(query, observed=[c for c in PANEL if c not in HELD_OUT], n_samples=4, steps=5)
    # samples clipped to the fitted minimum (zero counts) can coincide, hence "most", not "all"
    assert (sampled["variance"][:, idx] > 0).mean() > 0.8
    assert np.nanmean(pearson_per_channel(truth[:, idx], sampled["mean"][:, idx])) > 0.1


def test_missing_argument_and_absent_channels_are_equivalent(trained, data):
    _, test = data
    a = trained.posterior(test, observed=[c for c in PANEL if c not in HELD_OUT], n_samples=2, steps=2, seed=1)["mean"]
    absent = test[:, [c for c in PANEL if c not in HELD_OUT]].copy()
    b = trained.posterior(absent, n_samples=2, steps=2, seed=1)["mean"]
    np.testing.assert_allclose(a, b)
    q = test.copy()
    df = trained.impute(q, missing=HELD_OUT, n_samples=2, steps=2, seed=1)
    np.testing.assert_allclose(df.to_numpy(), a)
    with pytest.raises(ValueError, match="not both"):
        trained.impute(test.copy(), missing=HELD_OUT, observed=PANEL[:2])
    with pytest.raises(ValueError, match="not among"):
        trained.impute(test.copy(), missing=["nope"])


def test_channel_specific_objective_hides_exactly_the_targets(data):
    train, _ = data
    ad = train.copy()
    bd.models.MCD.setup_anndata(ad)
    model = bd.models.MCD(ad, target_channels=["CD4_PROT"], model_channels=16, heads=2)
    from biodiffuse.models.mcd import MCDObjective

    seen = []
    obj = MCDObjective(0.9, "all", 0.5, target_mask=__import__("torch").tensor(np.isin(PANEL, ["CD4_PROT"])))
    import torch

    x = torch.zeros(5, len(PANEL))
    avail = torch.ones(5, len(PANEL), dtype=torch.bool)
    avail[0, 0] = False

    def denoiser(xn, sigma, cond):
        seen.append(cond[:, len(PANEL):, 0, 0].bool())
        return xn * 0

    obj(denoiser, {"x": x, "available": avail}, torch.Generator().manual_seed(0))
    m = seen[0]
    assert not m[:, PANEL.index("CD4_PROT")].any() and not m[0, 0]
    assert m[:, [i for i in range(len(PANEL)) if PANEL[i] != "CD4_PROT"]][1:].all()
    with pytest.raises(ValueError, match="target_channels"):
        bd.models.MCD(ad, target_channels=["nope"])
    with pytest.raises(ValueError, match="target_channels"):
        bd.models.MCD(ad, target_channels=PANEL)
    assert model.init_args["target_channels"] == ["CD4_PROT"]


def test_query_sharing_no_channel_name_is_a_clear_error(trained, data):
    """Names without the ``_PROT`` suffix used to give unconditional draws silently."""
    _, test = data
    q = test.copy()
    q.var_names = [n.removesuffix("_PROT") for n in q.var_names]
    before = set(q.obsm.keys()), set(q.uns.keys())
    with pytest.raises(ValueError, match=r"adata.X.*shares no name.*'_PROT'"):
        trained.impute(q, n_samples=1, steps=1)
    with pytest.raises(ValueError, match="shares no name"):
        trained.posterior(q, n_samples=1, steps=1)
    assert (set(q.obsm.keys()), set(q.uns.keys())) == before


def test_batch_size_and_subset_invariance_with_observed_channels(trained, data):
    _, test = data
    q = test[:60].copy()
    kw = dict(missing=HELD_OUT, n_samples=2, steps=3, seed=4)
    a = trained.posterior(q, batch_size=256, **kw)
    b = trained.posterior(q, batch_size=9, **kw)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5, atol=1e-6)
    sub = [0, 7, 59]
    c = trained.posterior(q[sub].copy(), batch_size=1, **kw)
    np.testing.assert_allclose(c["mean"], a["mean"][sub], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c["variance"], a["variance"][sub], rtol=1e-5, atol=1e-6)
    out = trained.impute(q, indices=sub, key_added="held", **kw)
    assert set(q.obsm) >= {"held", "held_variance"} and q.uns["held"]["missing"] == HELD_OUT
    np.testing.assert_allclose(out.to_numpy()[sub], a["mean"][sub], rtol=1e-5, atol=1e-6)
    assert np.isnan(out.to_numpy()[1]).all()
