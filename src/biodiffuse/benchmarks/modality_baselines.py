"""Baselines for imputing a missing omics modality from the modalities a patient has.

One interface, :func:`fit_predict_modality`: conditions are the concatenated latents of the
condition modalities (built by the caller, e.g. with
:class:`biodiffuse.data.modality.ModalityEncoder`), the target is the target modality's
latents (or features). Methods: ``"mean"`` (training mean), ``"knn"`` (k nearest training
patients on standardised conditions) and ``"ridge"`` (ridge regression, alpha by efficient
leave-one-out over a log-spaced grid). :func:`r2_score_modality` and
:func:`output_variance_fraction` are the reconstruction metrics of the Coherent Denoising
paper, with one stated definition each. :func:`cross_validate_modality` runs the baselines
over patient folds of a MuData; :func:`main` prints the tables for the TCGA data sets
(``python -c "from biodiffuse.benchmarks.modality_baselines import main; main()"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.modality import _as_matrix

if TYPE_CHECKING:
    from mudata import MuData

__all__ = [
    "MODALITY_METHODS",
    "RIDGE_ALPHAS",
    "cross_validate_modality",
    "fit_predict_modality",
    "output_variance_fraction",
    "r2_score_modality",
    "summarize_folds",
]

MODALITY_METHODS = ("mean", "knn", "ridge")
RIDGE_ALPHAS = np.logspace(-3, 5, 17)
R2_KINDS = ("global", "per_feature")
_CONSTANT_TOL = 1e-20


def fit_predict_modality(
    method: str,
    cond_train: np.ndarray,
    y_train: np.ndarray,
    cond_test: np.ndarray,
    seed: int = 0,
    n_neighbors: int = 5,
) -> np.ndarray:
    """Fit a baseline on training patients and predict the target of test patients.

    Parameters
    ----------
    method
        ``"mean"``: every test patient gets the training mean of ``y_train``;
        ``"knn"``: mean of the ``n_neighbors`` nearest training patients (Euclidean, on
        conditions standardised with training statistics; scikit-learn
        ``KNeighborsRegressor``, k capped at the number of training patients);
        ``"ridge"``: conditions standardised, then scikit-learn ``RidgeCV`` with one alpha
        for all targets chosen by efficient leave-one-out error over :data:`RIDGE_ALPHAS`
        (1e-3 to 1e5, 17 values).
    cond_train
        ``(n_train, c)`` conditions of the training patients (concatenated latents of the
        condition modalities).
    y_train
        ``(n_train, d)`` target of the training patients.
    cond_test
        ``(n_test, c)`` conditions of the test patients.
    seed
        Accepted for a uniform interface with stochastic methods; the three methods here are
        deterministic.
    n_neighbors
        k of ``"knn"``.

    Returns
    -------
    numpy.ndarray
        ``(n_test, d)`` float64 predictions.

    Raises
    ------
    ValueError
        Unknown method, empty / non-finite inputs, or mismatched shapes.
    """
    if method not in MODALITY_METHODS:
        raise ValueError(f"method must be one of {MODALITY_METHODS}, got {method!r}.")
    c_tr = _as_matrix(cond_train, "cond_train")
    y_tr = _as_matrix(y_train, "y_train")
    c_te = _as_matrix(cond_test, "cond_test")
    if c_tr.shape[0] != y_tr.shape[0]:
        raise ValueError(f"cond_train has {c_tr.shape[0]} rows but y_train has {y_tr.shape[0]}.")
    if c_tr.shape[1] != c_te.shape[1]:
        raise ValueError(f"cond_train has {c_tr.shape[1]} columns but cond_test has {c_te.shape[1]}.")
    if method == "mean":
        return np.repeat(y_tr.mean(axis=0, keepdims=True), c_te.shape[0], axis=0)

    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if method == "knn":
        if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
        model = make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=int(min(n_neighbors, c_tr.shape[0]))))
    else:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    # Patients number in the hundreds: BLAS threads only add overhead on these tiny problems.
    with threadpool_limits(1):
        model.fit(c_tr, y_tr)
        return np.asarray(model.predict(c_te), dtype=np.float64).reshape(c_te.shape[0], y_tr.shape[1])


def r2_score_modality(y_true: np.ndarray, y_pred: np.ndarray, kind: str = "global") -> float:
    """Coefficient of determination of a reconstructed modality, one definition per kind.

    Parameters
    ----------
    y_true, y_pred
        ``(n, d)`` truth and prediction for the same patients (rows) and features (columns).
    kind
        ``"global"``: ``1 - sum_ij (y_ij - yhat_ij)^2 / sum_ij (y_ij - mean_i y_ij)^2``, the
        mean taken per feature over the evaluated patients (the test set). Equal to
        scikit-learn's ``r2_score(..., multioutput="variance_weighted")`` when no feature of
        ``y_true`` is constant (scikit-learn then drops that feature's errors; here they
        count). ``"per_feature"``: R^2 of each feature, averaged with equal weights
        (scikit-learn ``multioutput="uniform_average"``; a constant feature scores 1 if
        predicted exactly, else 0).

    Returns
    -------
    float
        1 for a perfect prediction, 0 for the test-set feature means, negative for worse.

    Raises
    ------
    ValueError
        Unknown kind, shapes differ, fewer than 2 patients, NaN, or (global) every feature of
        ``y_true`` constant.
    """
    if kind not in R2_KINDS:
        raise ValueError(f"kind must be one of {R2_KINDS}, got {kind!r}.")
    t = _as_matrix(y_true, "y_true")
    p = _as_matrix(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {t.shape} vs {p.shape}.")
    if t.shape[0] < 2:
        raise ValueError(f"R^2 needs at least 2 patients, got {t.shape[0]}.")
    if kind == "per_feature":
        from sklearn.metrics import r2_score

        return float(r2_score(t, p, multioutput="uniform_average"))
    total = float(np.sum((t - t.mean(axis=0)) ** 2))
    # Relative to the values' size: rounding leaves ~1e-32 of sum(t^2) on constant data.
    if total <= _CONSTANT_TOL * float(np.sum(t**2)):
        raise ValueError("y_true is constant in every feature; the global R^2 is undefined.")
    return 1.0 - float(np.sum((t - p) ** 2)) / total


def output_variance_fraction(samples: np.ndarray, y_true: np.ndarray) -> float:
    """Spread of repeated generations as a fraction of the real data's variance.

    ``mean_ij Var_k(samples[k, i, j]) / mean_j Var_i(y_true[i, j])``: the variance across the
    K generated versions of each patient and feature, averaged over patients and features,
    divided by the variance of the real data across patients averaged over features (both
    with ``ddof=0``). This is the paper's "average variance of the generated samples as a
    percentage of the total variance from the real data", as a fraction (x100 for percent).

    Parameters
    ----------
    samples
        ``(K, n, d)`` K >= 2 generations for the n patients.
    y_true
        ``(n, d)`` real values of the same patients.

    Returns
    -------
    float
        0 when all generations agree; about 1 when they vary as much as patients do.

    Raises
    ------
    ValueError
        Wrong dims, K < 2, mismatched shapes, NaN, or constant ``y_true``.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"samples must be 3-D (K generations x n patients x d features), got shape {s.shape}.")
    if s.shape[0] < 2:
        raise ValueError(f"samples needs K >= 2 generations, got {s.shape[0]}.")
    if not np.isfinite(s).all():
        raise ValueError("samples has NaN or inf values.")
    t = _as_matrix(y_true, "y_true")
    if t.shape != s.shape[1:]:
        raise ValueError(f"y_true has shape {t.shape} but samples has (n, d) = {s.shape[1:]}.")
    data_var = float(np.mean(t.var(axis=0)))
    if data_var == 0.0:
        raise ValueError("y_true is constant; its variance is 0.")
    return float(np.mean(s.var(axis=0))) / data_var


def cross_validate_modality(
    mdata: MuData,
    target: str,
    conditions: list[str] | tuple[str, ...],
    methods: tuple[str, ...] = MODALITY_METHODS,
    latent_dim: int = 32,
    encoder: str | dict[str, str] = "pca",
    cv: int = 5,
    seed: int = 0,
    **encoder_kwargs: Any,
) -> pd.DataFrame:
    """K-fold cross-validation over patients of the baselines for one target modality.

    Patients with the target and every condition modality are split into ``cv`` folds
    (shuffled with ``seed``). In each fold, one :class:`~biodiffuse.data.modality.ModalityEncoder`
    per modality is fitted on every patient who has that modality, except the held-out ones;
    the baselines map the training patients' concatenated condition latents to the target
    latents and predict the held-out patients'. Scores (:func:`r2_score_modality`, global):
    ``latent_r2`` between true and predicted target latents, and ``feature_r2`` between the
    held-out patients' transformed, standardised target features and the decoded prediction
    (``decode(Z, "standardized")``). Method ``"encoder"`` is the ceiling that
    ``feature_r2`` can reach: the true latents decoded.

    Parameters
    ----------
    mdata
        MuData with the modalities.
    target
        Modality to impute.
    conditions
        Modalities given as conditions (not containing ``target``).
    methods
        Baselines (see :func:`fit_predict_modality`).
    latent_dim
        Requested latent size of every encoder.
    encoder
        ``"pca"`` / ``"autoencoder"``, or a dict modality -> method.
    cv
        Number of folds.
    seed
        Fold split and encoder seed.
    **encoder_kwargs
        Further :class:`~biodiffuse.data.modality.ModalityEncoder` arguments.

    Returns
    -------
    pandas.DataFrame
        One row per (method, fold): ``method``, ``fold``, ``n_train``, ``n_test``,
        ``latent_r2``, ``feature_r2`` (NaN where the held-out truth is constant, so R^2 is
        undefined). :func:`summarize_folds` averages it.
    """
    from sklearn.model_selection import KFold

    from ..data.modality import ModalityEncoder, modality_matrix

    conditions = list(conditions)
    if not conditions:
        raise ValueError("conditions is empty; give at least one condition modality.")
    if target in conditions:
        raise ValueError(f"target {target!r} is also in conditions.")
    for m in methods:
        if m not in MODALITY_METHODS:
            raise ValueError(f"methods must be among {MODALITY_METHODS}, got {m!r}.")
    mods = [*conditions, target]
    kinds = {m: encoder for m in mods} if isinstance(encoder, str) else dict(encoder)
    missing = [m for m in mods if m not in kinds]
    if missing:
        raise ValueError(f"encoder dict has no method for modalities {missing}.")
    mats = {m: modality_matrix(mdata, m) for m in mods}
    complete = np.flatnonzero(np.all([mats[m][1] for m in mods], axis=0))
    if complete.size < max(cv, 2) * 2:
        raise ValueError(f"Only {complete.size} patients have {mods}; too few for {cv}-fold cross-validation.")
    rows = []
    for fold, (tr, te) in enumerate(KFold(n_splits=cv, shuffle=True, random_state=seed).split(complete)):
        train_ids, test_ids = complete[tr], complete[te]
        held_out = np.zeros(mdata.n_obs, dtype=bool)
        held_out[test_ids] = True
        latents, encoders = {}, {}
        for m in mods:
            x, present = mats[m]
            enc = ModalityEncoder(latent_dim=latent_dim, method=kinds[m], seed=seed, **encoder_kwargs)
            encoders[m] = enc.fit(x[present & ~held_out])
            latents[m] = (enc.encode(x[train_ids]), enc.encode(x[test_ids]))
        c_tr = np.hstack([latents[m][0] for m in conditions])
        c_te = np.hstack([latents[m][1] for m in conditions])
        z_tr, z_te = latents[target]
        enc = encoders[target]
        truth = enc.preprocess(mats[target][0][test_ids])
        preds = {m: fit_predict_modality(m, c_tr, z_tr, c_te, seed=seed) for m in methods}
        preds["encoder"] = z_te
        for m, z_hat in preds.items():
            rows.append(
                {
                    "method": m,
                    "fold": fold,
                    "n_train": len(train_ids),
                    "n_test": len(test_ids),
                    "latent_r2": _r2_or_nan(z_te, z_hat),
                    "feature_r2": _r2_or_nan(truth, enc.decode(z_hat, space="standardized")),
                }
            )
    return pd.DataFrame(rows)


def _r2_or_nan(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Global R^2, NaN where it is undefined (held-out truth constant)."""
    t = np.asarray(y_true, dtype=np.float64)
    if float(np.sum((t - t.mean(axis=0)) ** 2)) <= _CONSTANT_TOL * float(np.sum(t**2)):
        return float("nan")
    return r2_score_modality(t, y_pred)


def summarize_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over folds of :func:`cross_validate_modality` scores, per method.

    A method with an undefined (NaN) fold gets NaN: no mean over a subset of folds.
    """
    g = folds.groupby("method", sort=False)[["latent_r2", "feature_r2"]]
    mean = g.agg(lambda s: s.mean(skipna=False))
    sd = g.agg(lambda s: s.std(ddof=0, skipna=False))
    out = mean.add_suffix("_mean").join(sd.add_suffix("_sd"))
    return out[["latent_r2_mean", "latent_r2_sd", "feature_r2_mean", "feature_r2_sd"]]


def main(encoder: str = "pca", latent_dim: int = 32, cv: int = 5, seed: int = 0) -> None:
    """Print the baseline tables for TCGA BRCA (train split) and ACC.

    BRCA: protein from mrna + mirna (150 patients). ACC: each modality from the other four
    (the 43 patients with all five). Scores as in :func:`cross_validate_modality`, averaged
    by :func:`summarize_folds`.

    Parameters
    ----------
    encoder
        Encoder of every modality (``"pca"`` or ``"autoencoder"``).
    latent_dim
        Requested latent size.
    cv
        Number of folds.
    seed
        Fold split and encoder seed.
    """
    from ..datasets import tcga_acc, tcga_brca

    pd.set_option("display.width", 140)
    print(f"encoder={encoder} latent_dim={latent_dim} cv={cv} seed={seed}; R^2 global (r2_score_modality)")
    brca = tcga_brca("train")
    folds = cross_validate_modality(
        brca, "protein", ["mrna", "mirna"], latent_dim=latent_dim, encoder=encoder, cv=cv, seed=seed
    )
    print("\nTCGA BRCA (mixOmics train, 150 patients): protein from mrna + mirna")
    print(summarize_folds(folds).round(3).to_string())
    acc = tcga_acc()
    for target in acc.mod:
        conds = [m for m in acc.mod if m != target]
        folds = cross_validate_modality(acc, target, conds, latent_dim=latent_dim, encoder=encoder, cv=cv, seed=seed)
        print(f"\nTCGA ACC (43 patients with all five modalities): {target} from the other four")
        print(summarize_folds(folds).round(3).to_string())
