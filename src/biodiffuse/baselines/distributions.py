"""Predictive distributions from the table baselines, to score them like a generative model.

A point regressor gives no uncertainty. Three standard ways to give it one, all fitted on the
training cells only, produce draws ``(cells, n_samples, channels)`` that
:mod:`biodiffuse.metrics.calibration` scores (CRPS, energy score, interval coverage):

``"residuals"``
    Split-conformal style: the regressor's out-of-fold residual *vectors* on the training cells
    (5-fold cross-validation with the hyper-parameters the fit chose) are added to a test
    cell's prediction. Whole residual rows are drawn, so the dependence between channels is
    kept; central intervals of the draws are (up to the finite draws) the CV+ conformal
    intervals of the regressor.
``"gaussian"``
    An independent Gaussian per channel with the out-of-fold residual variance (the classical
    "ridge with its residual variance").
``"neighbours"``
    ``"knn"`` only: the targets of the test cell's nearest training cells (the ``k`` the CV
    chose), drawn with the regressor's distance weights: the local conditional distribution.
"""

from __future__ import annotations

import numpy as np

from .tables import METHODS, BaselineRegressor, _check_xy, _cv

__all__ = ["DRAW_KINDS", "fit_predict_draws", "out_of_fold"]

DRAW_KINDS = ("residuals", "gaussian", "neighbours")


def out_of_fold(estimator, X: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a scikit-learn estimator, its hyper-parameters fixed.

    The baselines' split: 5 shuffled folds (fewer with fewer than 5 rows), shuffled with
    ``seed``. Each row is predicted by a clone of ``estimator`` fitted on the other folds: its
    residual is that of a cell the model did not see.

    Parameters
    ----------
    estimator
        An unfitted or fitted scikit-learn regressor (it is cloned, never refitted in place).
    X, y
        Features ``(n, F)`` and targets ``(n,)`` or ``(n, C)``.
    seed
        Seed of the fold split.

    Returns
    -------
    numpy.ndarray
        Predictions shaped like ``y``.

    Examples
    --------
    >>> from sklearn.linear_model import Ridge
    >>> resid = y - bd.baselines.out_of_fold(Ridge(alpha=10.0), F, y)
    """
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    pred = cross_val_predict(clone(estimator), X, y, cv=_cv(len(y), seed))
    return pred.reshape(np.shape(y))


def _out_of_fold(reg: BaselineRegressor, f_train: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold predictions of the fitted regressor's model (hyper-parameters fixed)."""
    if reg.model_ is None:  # "mean": the fold means
        out = np.empty_like(y)
        for tr, te in _cv(len(y), seed).split(f_train):
            out[te] = y[tr].mean(axis=0)
        return out
    return out_of_fold(getattr(reg.model_, "best_estimator_", reg.model_), f_train, y, seed)


def fit_predict_draws(
    method: str,
    F_train: np.ndarray,
    Y_train: np.ndarray,
    F_test: np.ndarray,
    *,
    kind: str = "residuals",
    n_samples: int = 20,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fit a baseline and return its point prediction and draws of a predictive distribution.

    Parameters
    ----------
    method
        One of :data:`~biodiffuse.baselines.METHODS` (``"knn"`` for ``kind="neighbours"``).
    F_train, F_test
        Features, e.g. from :func:`~biodiffuse.baselines.gene_features`.
    Y_train
        ``(cells, channels)`` training targets, in the scale the draws should have.
    kind
        ``"residuals"``, ``"gaussian"`` or ``"neighbours"`` (module docstring).
    n_samples
        Draws per test cell (>= 2).
    seed
        Seed of the CV split and of the draws.

    Returns
    -------
    dict
        ``mean``: ``(n_test, channels)`` point prediction (that of
        :func:`~biodiffuse.baselines.fit_predict`); ``draws``: ``(n_test, n_samples, channels)``.

    Raises
    ------
    ValueError
        Unknown method or kind, ``"neighbours"`` without ``"knn"``, 1-D targets, fewer than
        2 draws, or features / targets that do not match.

    Examples
    --------
    >>> F_train, F_test, _ = bd.baselines.gene_features(train, test)
    >>> out = bd.baselines.fit_predict_draws("ridge", F_train, y_train, F_test, kind="gaussian")
    >>> bd.metrics.crps(y_test, out["draws"])
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods are {list(METHODS)}.")
    if kind not in DRAW_KINDS:
        raise ValueError(f"Unknown kind {kind!r}; valid kinds are {list(DRAW_KINDS)}.")
    if kind == "neighbours" and method != "knn":
        raise ValueError("kind='neighbours' needs method='knn' (the draws are the nearest training cells).")
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}.")
    f_train, y, f_test = _check_xy(F_train, Y_train, F_test)
    if y.ndim != 2:
        raise ValueError(f"Y_train must be 2-D (cells, channels), got shape {y.shape}.")
    n_samples = int(n_samples)
    rng = np.random.default_rng(seed)
    reg = BaselineRegressor(method=method, seed=seed).fit(f_train, y)
    mean = reg.predict(f_test)
    if kind == "neighbours":
        knn = getattr(reg.model_, "best_estimator_", reg.model_)
        dist, idx = knn.kneighbors(f_test)
        # the regressor's weights ("distance": 1 / d; an exact match takes all the weight)
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        exact = ~np.isfinite(w)
        w = np.where(exact.any(axis=1, keepdims=True), exact.astype(float), w)
        w /= w.sum(axis=1, keepdims=True)
        pick = np.stack([rng.choice(idx.shape[1], n_samples, p=wi) for wi in w])
        draws = y[np.take_along_axis(idx, pick, axis=1)]
        return {"mean": mean, "draws": draws}
    resid = y - _out_of_fold(reg, f_train, y, seed)
    if kind == "residuals":
        rows = rng.integers(0, len(resid), size=(len(mean), n_samples))
        return {"mean": mean, "draws": mean[:, None, :] + resid[rows]}
    sd = resid.std(axis=0)
    eps = rng.standard_normal((len(mean), n_samples, y.shape[1]))
    return {"mean": mean, "draws": mean[:, None, :] + sd * eps}
