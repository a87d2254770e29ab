"""MCD with ``residual="ridge"`` / ``"krr"``: a (kernel) ridge base from the genes, diffusion of
what it leaves."""

from __future__ import annotations

import numpy as np
import pytest

import biodiffuse as bd
from biodiffuse.data import ChannelNormalizer
from biodiffuse.models import MCD
from biodiffuse.module.residual_base import KernelRidgeBase, RidgeBase

from _tiny import channels, citeseq

KEY = "protein_expression"


# --- the ridge base ------------------------------------------------------------------------


def _linear(n: int = 300, g: int = 20, c: int = 3, noise: float = 0.5, seed: int = 0):
    """Genes (n, g) and targets ``genes @ w + 1.5 + noise``; ``w`` is the same for every seed."""
    w = np.random.default_rng(100).normal(size=(g, c))
    rng = np.random.default_rng(seed)
    genes = rng.normal(size=(n, g))
    return genes, genes @ w + 1.5 + noise * rng.normal(size=(n, c)), w


def test_ridge_base_recovers_a_linear_map_and_its_intercept() -> None:
    genes, y, w = _linear()
    base = RidgeBase.fit(genes, y)
    np.testing.assert_allclose(base.coef, w.T, atol=0.1)
    np.testing.assert_allclose(base.intercept, 1.5, atol=0.1)
    new, _, _ = _linear(seed=1)
    error = np.abs(base.predict(new) - (new @ w + 1.5)).mean()
    assert error < 0.15, error  # the noise sd is 0.5
    round_trip = RidgeBase.from_dict(base.to_dict())
    np.testing.assert_array_equal(round_trip.predict(new), base.predict(new))


def test_out_of_fold_residuals_are_as_wide_as_a_new_cells() -> None:
    """Out-of-fold residuals estimate the error on new cells; in-sample ones are narrower
    (with 120 cells and 30 genes, about half as wide: measured ratios 0.50-0.54 in-sample and
    1.03-1.12 out of fold over three seeds)."""
    genes, y, _ = _linear(n=120, g=30, noise=1.0)
    base = RidgeBase.fit(genes, y)
    in_sample = np.var(y - base.predict(genes))
    out_of_fold = np.var(y - base.out_of_fold(genes, y, seed=0))
    new, y_new, _ = _linear(n=2000, g=30, noise=1.0, seed=1)
    new_error = np.var(y_new - base.predict(new))
    assert in_sample < 0.7 * new_error, (in_sample, new_error)
    assert 0.85 * new_error < out_of_fold < 1.3 * new_error, (out_of_fold, new_error)


def test_ridge_base_fits_each_channel_on_its_measured_cells() -> None:
    genes, y, w = _linear()
    y_nan = y.copy()
    y_nan[:100, 1] = np.nan
    base = RidgeBase.fit(genes, y_nan)
    np.testing.assert_allclose(base.coef, w.T, atol=0.15)  # NaN rows did not enter channel 1's fit
    oof = base.out_of_fold(genes, y_nan)
    assert np.isnan(oof[:100, 1]).all() and not np.isnan(oof[100:, 1]).any() and not np.isnan(oof[:, [0, 2]]).any()
    y_nan[5:, 2] = np.nan
    with pytest.raises(ValueError, match="at least 10 training cells"):
        RidgeBase.fit(genes, y_nan)


# --- the kernel ridge base -----------------------------------------------------------------


def _nonlinear(n: int, seed: int = 0, noise: float = 0.2):
    """Genes (n, 6) and three targets no linear map fits: sin, a product, an absolute value."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, 6))
    y = np.stack([np.sin(2 * g[:, 0]), g[:, 1] * g[:, 2], np.abs(g[:, 3]) + 0.5 * g[:, 4]], axis=1)
    return g, y + noise * rng.normal(size=y.shape)


def test_kernel_base_is_the_krr_baseline_on_gene_pcs_and_beats_ridge() -> None:
    """The base's predictions are those of the KRR baseline fitted on the genes' principal
    components; on nonlinear targets it more than halves ridge's error (measured: 0.14 against
    0.63 mean squared error) and round-trips through its state."""
    from sklearn.decomposition import PCA

    genes, y = _nonlinear(300)
    new, y_new = _nonlinear(1000, seed=1)
    base = KernelRidgeBase.fit(genes, y)
    pca = PCA(n_components=6).fit(genes)
    krr = bd.baselines.BaselineRegressor("krr").fit(pca.transform(genes), y)
    np.testing.assert_allclose(base.predict(new), krr.predict(pca.transform(new)), atol=1e-5)
    err_krr = np.mean((base.predict(new) - y_new) ** 2)
    err_ridge = np.mean((RidgeBase.fit(genes, y).predict(new) - y_new) ** 2)
    assert err_krr < 0.5 * err_ridge, (err_krr, err_ridge)
    meta, arrays = base.to_state()
    assert meta == {"kind": "krr", "n_fit": 300, "n_pcs": 6}
    np.testing.assert_array_equal(KernelRidgeBase.from_state(arrays).predict(new), base.predict(new))
    with pytest.raises(ValueError, match="lacks its arrays"):
        KernelRidgeBase.from_state({k: v for k, v in arrays.items() if k != "dual_coef"})


def test_kernel_base_out_of_fold_residuals_are_as_wide_as_a_new_cells() -> None:
    """Kernel ridge fits its training cells closely: in-sample residual variance is 0.13-0.46 of
    the new-cell error, out of fold 0.86-1.20 (three seeds, 120 cells)."""
    for seed in range(3):
        genes, y = _nonlinear(120, seed=seed)
        base = KernelRidgeBase.fit(genes, y)
        new, y_new = _nonlinear(2000, seed=seed + 10)
        new_error = np.var(y_new - base.predict(new))
        assert np.var(y - base.predict(genes)) < 0.6 * new_error
        assert 0.75 * new_error < np.var(y - base.out_of_fold(genes, y, seed=0)) < 1.35 * new_error


def test_kernel_base_fits_each_channel_on_its_measured_cells() -> None:
    genes, y = _nonlinear(300)
    y_nan = y.copy()
    y_nan[:100, 1] = np.nan
    base = KernelRidgeBase.fit(genes, y_nan)
    assert not base.dual_coef[:100, 1].any() and base.dual_coef[100:, 1].all()  # unmeasured cells carry no weight
    # channels measured on the same cells are fitted together (CV over both), as if alone
    np.testing.assert_array_equal(base.dual_coef[:, [0, 2]], KernelRidgeBase.fit(genes, y[:, [0, 2]]).dual_coef)
    oof = base.out_of_fold(genes, y_nan)
    assert np.isnan(oof[:100, 1]).all() and not np.isnan(oof[100:, 1]).any() and not np.isnan(oof[:, [0, 2]]).any()
    new, y_new = _nonlinear(1000, seed=1)
    assert np.mean((base.predict(new)[:, 1] - y_new[:, 1]) ** 2) < 0.5 * np.var(y_new[:, 1])


# --- the model -----------------------------------------------------------------------------


def test_residual_is_for_gene_to_protein_models_only() -> None:
    a = citeseq()
    MCD.setup_anndata(a, protein_obsm_key="protein")
    with pytest.raises(ValueError, match=r"residual must be None or one of \['ridge', 'krr'\]"):
        MCD(a, residual="lasso")
    c = channels()
    MCD.setup_anndata(c)
    with pytest.raises(ValueError, match="gene -> protein models only"):
        MCD(c, residual="ridge")


@pytest.fixture(scope="module")
def split():
    adata = bd.datasets.eccite_pbmc()
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    return adata[perm[:400]].copy(), adata[perm[400:]].copy()


@pytest.fixture(scope="module", params=["ridge", "krr"])
def residual_model(request, split, accelerator, devices):
    train = split[0].copy()
    MCD.setup_anndata(train, protein_obsm_key=KEY)
    model = MCD(train, n_genes=300, residual=request.param, model_channels=16, heads=2)
    model.train(max_epochs=40, enable_progress_bar=False, accelerator=accelerator, devices=devices, seed=0)
    return model


def _truth(model: MCD, adata) -> np.ndarray:
    norm = ChannelNormalizer.from_dict(model.registry["normalizer"])
    return norm.transform(adata.obsm[KEY][model.target_names].to_numpy(float))


def _stored_base(model: MCD, adata) -> np.ndarray:
    """The stored base's prediction, normalised [0, 1] scale."""
    genes = model._standardised_genes(model._log_genes(adata, np.arange(adata.n_obs)))
    return (model._residual_base().predict(genes) + 1.0) / 2.0


def test_trains_on_out_of_fold_residuals(residual_model, split) -> None:
    """Training targets are the proteins minus out-of-fold base predictions on the training
    cells, and minus the fitted base on the validation cells."""
    m = residual_model
    genes = m._standardised_genes(m._log_genes(m.adata, np.arange(m.adata.n_obs)))
    x = m._to_model_scale(m._target_values(m.adata, np.arange(m.adata.n_obs), require_all=True))
    base = m._training_base(genes, x, m.train_indices, seed=0)
    fitted = m._residual_base().predict(genes)
    np.testing.assert_allclose(base[m.validation_indices], fitted[m.validation_indices], rtol=1e-6)
    gap = np.abs(base[m.train_indices] - fitted[m.train_indices]).mean()
    assert gap > 0.01, gap
    # the out-of-fold residuals are wider than the in-sample ones
    t = m.train_indices
    assert np.var(x[t] - base[t]) > 1.05 * np.var(x[t] - fitted[t])


def test_draws_are_the_base_plus_residual_draws_and_beat_the_mean(residual_model, split) -> None:
    """Held-out cells: the one-step mean is the ridge base plus the network's residual mean, so
    it stays near the base (r_p within 0.05; on these 400 cells the base alone scores 0.41) and
    beats the per-protein mean by a margin. Dropping the base from the draws (a mutation) puts
    the mean near 0.5 for every protein: r_p and RMSE fail both checks."""
    m = residual_model
    train, test = split
    q = test.copy()
    del q.obsm[KEY]
    y = _truth(m, test)
    post = m.posterior(q, n_samples=4, steps=1, seed=0)
    r_model = np.nanmean(bd.metrics.pearson_per_channel(y, post["mean_normalized"]))
    r_base = np.nanmean(bd.metrics.pearson_per_channel(y, _stored_base(m, q)))
    assert abs(r_model - r_base) < 0.05, (r_model, r_base)
    mean_pred = np.nanmean(_truth(m, train), axis=0)
    rmse = np.sqrt(np.nanmean((post["mean_normalized"] - y) ** 2))
    rmse_mean = np.sqrt(np.nanmean((mean_pred[None, :] - y) ** 2))
    assert rmse < 0.96 * rmse_mean, (rmse, rmse_mean)


def test_observed_proteins_are_clamped_to_their_values(residual_model, split) -> None:
    """An observed protein enters the sampler as its residual; the draws give back its value."""
    m = residual_model
    test = split[1][:30].copy()
    name = m.target_names[0]
    with pytest.warns(UserWarning, match="without channel masking"):
        post = m.posterior(test, observed=[name], n_samples=3, steps=3, seed=0, return_draws=True)
    y = _truth(m, test)[:, 0]
    np.testing.assert_allclose(post["draws_normalized"][:, :, 0], np.repeat(y[:, None], 3, axis=1), atol=1e-5)
    assert post["variance_normalized"][:, 0].max() < 1e-10


def test_save_load_keeps_the_base(residual_model, split, tmp_path) -> None:
    q = split[1][:20].copy()
    del q.obsm[KEY]
    residual_model.save(tmp_path / "m")
    loaded = MCD.load(tmp_path / "m", q)
    assert loaded.init_args["residual"] == residual_model.init_args["residual"]
    assert loaded.registry["residual_base"] == residual_model.registry["residual_base"]
    assert loaded.fitted_arrays.keys() == residual_model.fitted_arrays.keys()
    a = residual_model.posterior(q, n_samples=2, steps=2, seed=1)["mean"]
    np.testing.assert_array_equal(a, loaded.posterior(q, n_samples=2, steps=2, seed=1)["mean"])


def test_kernel_base_arrays_are_saved_beside_the_weights(residual_model, tmp_path) -> None:
    """A kernel base keeps its training points out of the JSON registry, in model.pt; a
    model.pt without them loads with an error that names them. A ridge base is all registry."""
    import torch

    if residual_model.init_args["residual"] == "ridge":
        assert residual_model.fitted_arrays == {} and len(residual_model.registry["residual_base"]["coef"]) == len(residual_model.target_names)
        return
    n_train = len(residual_model.train_indices)
    assert residual_model.registry["residual_base"]["n_fit"] == n_train
    assert residual_model.fitted_arrays["residual_base/x_fit"].shape == (n_train, 50)
    residual_model.save(tmp_path / "m")
    assert "x_fit" not in (tmp_path / "m" / "model.json").read_text()
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    del state["__fitted_arrays__.residual_base/x_fit"]
    torch.save(state, tmp_path / "m" / "model.pt")
    loaded = MCD.load(tmp_path / "m")
    with pytest.raises(ValueError, match="lacks its arrays"):
        loaded._residual_base()


def test_recentred_draws_centre_on_the_one_step_mean_with_the_base(residual_model, split) -> None:
    """The one-step mean already holds the base; recentring must not add it twice."""
    q = split[1][:20].copy()
    del q.obsm[KEY]
    one = residual_model.posterior(q, n_samples=3, steps=1, seed=0)
    rc = residual_model.posterior(q, n_samples=3, steps=4, seed=0, recentre=True)
    np.testing.assert_allclose(rc["mean_normalized"], one["mean_normalized"], atol=1e-6)
