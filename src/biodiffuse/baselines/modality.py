"""Baselines for imputing a missing omics modality from the modalities a patient has.

One interface, :func:`fit_predict_modality`: conditions are the concatenated latents of the
condition modalities (built by the caller, e.g. with
:class:`biodiffuse.data.modality.ModalityEncoder`), the target is the target modality's
latents (or features); :class:`ModalityRegressor` is the same as a scikit-learn estimator.
Methods: ``"mean"`` (training mean), ``"knn"`` (k nearest training patients on standardised
conditions) and ``"ridge"`` (ridge regression, alpha by efficient leave-one-out over a
log-spaced grid). The reconstruction metrics (:func:`biodiffuse.metrics.r2_score_modality`,
:func:`biodiffuse.metrics.output_variance_fraction`) live in :mod:`biodiffuse.metrics`.
:func:`cross_validate_modality` runs the baselines over patient folds of a MuData;
``python benchmarks/modality_baselines.py`` (repository root) prints the tables for the TCGA
data sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sklearn.base import BaseEstimator, RegressorMixin

from ..data.modality import as_matrix
from ..metrics.modality import CONSTANT_TOL, r2_score_modality

if TYPE_CHECKING:
    from mudata import MuData

__all__ = [
    "MODALITY_METHODS",
    "RIDGE_ALPHAS",
    "ModalityRegressor",
    "cross_validate_modality",
    "fit_predict_modality",
    "summarize_folds",
]

MODALITY_METHODS = ("mean", "knn", "ridge")
RIDGE_ALPHAS = np.logspace(-3, 5, 17)


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

    Examples
    --------
    >>> cond_train = np.hstack([z_rna[tr], z_cnv[tr]])        # condition latents of the training patients
    >>> cond_test = np.hstack([z_rna[te], z_cnv[te]])
    >>> y_pred = bd.baselines.fit_predict_modality("ridge", cond_train, z_protein[tr], cond_test)
    """
    if method not in MODALITY_METHODS:
        raise ValueError(f"method must be one of {MODALITY_METHODS}, got {method!r}.")
    c_tr = as_matrix(cond_train, "cond_train")
    y_tr = as_matrix(y_train, "y_train")
    c_te = as_matrix(cond_test, "cond_test")
    if c_tr.shape[0] != y_tr.shape[0]:
        raise ValueError(f"cond_train has {c_tr.shape[0]} rows but y_train has {y_tr.shape[0]}.")
    if c_tr.shape[1] != c_te.shape[1]:
        raise ValueError(f"cond_train has {c_tr.shape[1]} columns but cond_test has {c_te.shape[1]}.")
    return ModalityRegressor(method=method, n_neighbors=n_neighbors).fit(c_tr, y_tr).predict(c_te)


class ModalityRegressor(RegressorMixin, BaseEstimator):
    """A missing-modality baseline as a scikit-learn estimator: ``fit(cond, y)`` / ``predict(cond)``.

    Parameters
    ----------
    method
        ``"mean"``, ``"knn"`` or ``"ridge"`` (see :func:`fit_predict_modality`).
    n_neighbors
        k of ``"knn"`` (capped at the number of training patients).

    Attributes
    ----------
    model_
        The fitted scikit-learn pipeline (standardisation + regressor; ``None`` for ``"mean"``).
    mean_
        Training mean of ``y`` (``"mean"``).
    n_features_in_
        Number of condition columns seen by :meth:`fit`.

    Examples
    --------
    >>> reg = bd.baselines.ModalityRegressor("knn", n_neighbors=5).fit(cond_train, y_train)
    >>> y_pred = reg.predict(cond_test)            # (n_test, d)
    """

    def __init__(self, method: str = "ridge", n_neighbors: int = 5) -> None:
        self.method = method
        self.n_neighbors = n_neighbors

    def fit(self, X: np.ndarray, y: np.ndarray) -> ModalityRegressor:
        """Fit on the training patients' conditions ``X`` (n, c) and targets ``y`` (n, d)."""
        if self.method not in MODALITY_METHODS:
            raise ValueError(f"method must be one of {MODALITY_METHODS}, got {self.method!r}.")
        c_tr = as_matrix(X, "cond_train")
        y_tr = as_matrix(y, "y_train")
        if c_tr.shape[0] != y_tr.shape[0]:
            raise ValueError(f"cond_train has {c_tr.shape[0]} rows but y_train has {y_tr.shape[0]}.")
        self.n_features_in_, self.n_targets_ = c_tr.shape[1], y_tr.shape[1]
        self.model_, self.mean_ = None, y_tr.mean(axis=0, keepdims=True)
        if self.method == "mean":
            return self

        from sklearn.linear_model import RidgeCV
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        if self.method == "knn":
            k = self.n_neighbors
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"n_neighbors must be a positive integer, got {k!r}.")
            model = make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=int(min(k, c_tr.shape[0]))))
        else:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        # Patients number in the hundreds: BLAS threads only add overhead on these tiny problems.
        with threadpool_limits(1):
            self.model_ = model.fit(c_tr, y_tr)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n_test, d)`` float64 predictions for the conditions ``X`` (n_test, c)."""
        if not hasattr(self, "n_features_in_"):
            raise RuntimeError("ModalityRegressor is not fitted; call fit(X, y) first.")
        c_te = as_matrix(X, "cond_test")
        if c_te.shape[1] != self.n_features_in_:
            raise ValueError(f"cond_train has {self.n_features_in_} columns but cond_test has {c_te.shape[1]}.")
        if self.model_ is None:
            return np.repeat(self.mean_, c_te.shape[0], axis=0)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return np.asarray(self.model_.predict(c_te), dtype=np.float64).reshape(c_te.shape[0], self.n_targets_)


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

    Examples
    --------
    >>> mdata = bd.datasets.tcga_acc()
    >>> conditions = ["RNASeq2GeneNorm", "gistict"]
    >>> folds = bd.baselines.cross_validate_modality(mdata, "RPPAArray", conditions, latent_dim=16, cv=5)
    >>> bd.baselines.summarize_folds(folds)        # latent / feature R^2 per method
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
    if float(np.sum((t - t.mean(axis=0)) ** 2)) <= CONSTANT_TOL * float(np.sum(t**2)):
        return float("nan")
    return r2_score_modality(t, y_pred)


def summarize_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over folds of :func:`cross_validate_modality` scores, per method.

    A method with an undefined (NaN) fold gets NaN: no mean over a subset of folds.

    Parameters
    ----------
    folds
        The per-fold table of :func:`cross_validate_modality` (columns ``method``,
        ``latent_r2``, ``feature_r2``).

    Examples
    --------
    >>> folds = bd.baselines.cross_validate_modality(mdata, "RPPAArray", ["RNASeq2GeneNorm", "gistict"])
    >>> bd.baselines.summarize_folds(folds)        # latent_r2_mean, latent_r2_sd, feature_r2_mean, feature_r2_sd
    """
    g = folds.groupby("method", sort=False)[["latent_r2", "feature_r2"]]
    mean = g.agg(lambda s: s.mean(skipna=False))
    sd = g.agg(lambda s: s.std(ddof=0, skipna=False))
    out = mean.add_suffix("_mean").join(sd.add_suffix("_sd"))
    return out[["latent_r2_mean", "latent_r2_sd", "feature_r2_mean", "feature_r2_sd"]]
