"""Residual bases of MCD: a regression from the condition genes to the target channels that
the diffusion model diffuses around (``MCD(adata, residual=...)``, gene -> protein).

The network learns the distribution of the targets minus the base's prediction: the
regression + residual-diffusion split of CorrDiff (Mardani et al. 2023). The training
residuals are **out of fold** (each training cell's base prediction comes from a fit without
it), so they are as wide as a new cell's.

Every base is one of the baselines of :mod:`biodiffuse.baselines`, fitted by it and cross-fitted
on its split (:func:`~biodiffuse.baselines.out_of_fold`):

* :class:`RidgeBase` (``"ridge"``): ridge on the condition genes, one penalty per channel.
  Small; kept in the model's JSON registry.
* :class:`KernelRidgeBase` (``"krr"``): RBF kernel ridge on the top principal components of
  the condition genes, ``alpha`` and ``gamma`` chosen by 5-fold CV (the KRR baseline on its
  own features). Its training points and dual coefficients are arrays too large for JSON: they
  are saved beside the weights (:attr:`~biodiffuse.models.base.BaseModel.fitted_arrays`).

Channels with unmeasured (NaN) entries are fitted on their measured cells: channels measured
on the same cells are fitted together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RidgeBase", "KernelRidgeBase", "RESIDUAL_BASES", "fit_residual_base", "residual_base_from_state"]

#: ``residual=`` values MCD accepts.
RESIDUAL_BASES = ("ridge", "krr")

_MIN_ROWS = 10
_PREDICT_CHUNK = 2048  # query rows per kernel block (memory: chunk x n_fit floats)


def _groups(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(channels, rows) pairs: the channels measured on the same cells, and those cells."""
    measured = ~np.isnan(y)
    patterns, inverse = np.unique(measured.T, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    return [(np.flatnonzero(inverse == g), np.flatnonzero(patterns[g])) for g in range(len(patterns))]


def _check_rows(kind: str, cols: np.ndarray, rows: np.ndarray) -> None:
    if len(rows) < _MIN_ROWS:
        raise ValueError(
            f"residual={kind!r} needs at least {_MIN_ROWS} training cells with a measured value in every channel; "
            f"channel {int(cols[0])} has {len(rows)}."
        )


class RidgeBase:
    """Ridge regression from condition genes to target channels: the base a residual MCD
    diffuses around (``residual="ridge"``).

    The ridge baseline itself (one penalty per channel, chosen by efficient leave-one-out over
    its grid); a channel with unmeasured (NaN) entries is fitted on its measured cells alone.

    Parameters
    ----------
    coef
        ``(C, G)`` coefficients.
    intercept
        ``(C,)`` intercepts.
    alpha
        ``(C,)`` penalties.
    """

    kind = "ridge"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, alpha: np.ndarray) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.alpha = np.asarray(alpha, dtype=np.float64)

    @classmethod
    def fit(cls, genes: np.ndarray, y: np.ndarray) -> "RidgeBase":
        """Fit on ``genes`` (n, G) and targets ``y`` (n, C; NaN where unmeasured), with the ridge
        baseline (:class:`~biodiffuse.baselines.BaselineRegressor`)."""
        from ..baselines import BaselineRegressor

        genes, y = np.asarray(genes, dtype=np.float64), np.asarray(y, dtype=np.float64)
        n_ch = y.shape[1]
        coef, intercept, alpha = np.zeros((n_ch, genes.shape[1])), np.zeros(n_ch), np.ones(n_ch)
        for cols, rows in _groups(y):
            _check_rows(cls.kind, cols, rows)
            ridge = BaselineRegressor("ridge").fit(genes[rows], y[np.ix_(rows, cols)]).model_
            coef[cols], intercept[cols], alpha[cols] = ridge.coef_, ridge.intercept_, ridge.alpha_
        return cls(coef, intercept, alpha)

    def out_of_fold(self, genes: np.ndarray, y: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Out-of-fold predictions ``(n, C)`` with this base's penalties, on the baselines' split
        (:func:`~biodiffuse.baselines.out_of_fold`; NaN where ``y`` is unmeasured).

        The residuals a model trains on must be those of cells the base did not see: in-sample
        residuals are narrower than a new cell's, and so would be the model's draws.
        """
        from sklearn.linear_model import Ridge

        from ..baselines import out_of_fold

        genes, y = np.asarray(genes, dtype=np.float64), np.asarray(y, dtype=np.float64)
        out = np.full(y.shape, np.nan)
        for cols, rows in _groups(y):
            out[np.ix_(rows, cols)] = out_of_fold(Ridge(alpha=self.alpha[cols]), genes[rows], y[np.ix_(rows, cols)], seed)
        return out

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """``(n, C)`` predictions (float32) for ``genes`` (n, G)."""
        return (np.asarray(genes, dtype=np.float64) @ self.coef.T + self.intercept).astype(np.float32)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists (the form kept in a model's registry)."""
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "alpha": self.alpha.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RidgeBase":
        """The base :meth:`to_dict` wrote."""
        return cls(d["coef"], d["intercept"], d["alpha"])

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(registry entry, arrays)``: all of a ridge fits in the registry."""
        return {"kind": self.kind, **self.to_dict()}, {}


class KernelRidgeBase:
    """RBF kernel ridge from the top principal components of the condition genes to the target
    channels: the base of ``residual="krr"``.

    The features are the baselines' (:func:`~biodiffuse.baselines.gene_features`: PCA of the
    standardised genes, scores not whitened), and the fit is the KRR baseline
    (:class:`~biodiffuse.baselines.BaselineRegressor` ``"krr"``: ``alpha`` and ``gamma`` by 5-fold
    CV over its grid). Channels measured on different cells are fitted apart, each group with its
    own ``alpha`` and ``gamma``.

    Parameters
    ----------
    pca_mean, pca_components
        ``(G,)`` mean and ``(k, G)`` components: features are ``(genes - mean) @ components.T``.
    x_fit
        ``(n, k)`` training features.
    dual_coef
        ``(n, C)`` dual coefficients; 0 where a training cell did not enter a channel's fit.
    gamma, alpha
        ``(C,)`` kernel width and penalty of each channel's fit.

    Notes
    -----
    Fitting costs the KRR baseline's CV: 90 kernel solves on 80 % of the training cells (about
    2-3 CPU minutes at 6,000 cells); prediction one ``(query, n)`` kernel block per 2,048 cells.
    """

    kind = "krr"

    def __init__(
        self,
        pca_mean: np.ndarray,
        pca_components: np.ndarray,
        x_fit: np.ndarray,
        dual_coef: np.ndarray,
        gamma: np.ndarray,
        alpha: np.ndarray,
    ) -> None:
        self.pca_mean = np.asarray(pca_mean, dtype=np.float64)
        self.pca_components = np.asarray(pca_components, dtype=np.float64)
        self.x_fit = np.asarray(x_fit, dtype=np.float64)
        self.dual_coef = np.asarray(dual_coef, dtype=np.float64)
        self.gamma = np.asarray(gamma, dtype=np.float64)
        self.alpha = np.asarray(alpha, dtype=np.float64)

    def features(self, genes: np.ndarray) -> np.ndarray:
        """``(n, k)`` principal-component scores of ``genes`` (n, G)."""
        return (np.asarray(genes, dtype=np.float64) - self.pca_mean) @ self.pca_components.T

    @classmethod
    def fit(cls, genes: np.ndarray, y: np.ndarray, *, n_pcs: int = 50, seed: int = 0) -> "KernelRidgeBase":
        """Fit on ``genes`` (n, G) and targets ``y`` (n, C; NaN where unmeasured).

        ``n_pcs`` principal components (capped at ``min(n - 1, G)``) of the training genes are the
        features; ``seed`` is the KRR baseline's CV split.
        """
        from sklearn.decomposition import PCA

        from ..baselines import BaselineRegressor

        genes, y = np.asarray(genes, dtype=np.float64), np.asarray(y, dtype=np.float64)
        groups = _groups(y)
        for cols, rows in groups:
            _check_rows(cls.kind, cols, rows)
        k = int(min(n_pcs, genes.shape[0] - 1, genes.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(genes)
        x_fit = pca.transform(genes)
        n_ch = y.shape[1]
        dual, gamma, alpha = np.zeros((len(genes), n_ch)), np.ones(n_ch), np.ones(n_ch)
        for cols, rows in groups:
            krr = BaselineRegressor("krr", seed=seed).fit(x_fit[rows], y[np.ix_(rows, cols)]).model_.best_estimator_
            dual[np.ix_(rows, cols)] = np.asarray(krr.dual_coef_).reshape(len(rows), len(cols))
            gamma[cols], alpha[cols] = krr.gamma, krr.alpha
        return cls(pca.mean_, pca.components_, x_fit, dual, gamma, alpha)

    def out_of_fold(self, genes: np.ndarray, y: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Out-of-fold predictions ``(n, C)`` with this base's ``alpha`` / ``gamma`` and features,
        on the baselines' split (:func:`~biodiffuse.baselines.out_of_fold`; NaN where ``y`` is
        unmeasured)."""
        from sklearn.kernel_ridge import KernelRidge

        from ..baselines import out_of_fold

        f, y = self.features(genes), np.asarray(y, dtype=np.float64)
        out = np.full(y.shape, np.nan)
        for cols, rows in _groups(y):
            for (g, a), sub in self._settings(cols):
                est = KernelRidge(kernel="rbf", gamma=g, alpha=a)
                out[np.ix_(rows, sub)] = out_of_fold(est, f[rows], y[np.ix_(rows, sub)], seed)
        return out

    def _settings(self, cols: np.ndarray) -> list[tuple[tuple[float, float], np.ndarray]]:
        """``cols`` grouped by their ``(gamma, alpha)``."""
        keys = sorted({(float(self.gamma[c]), float(self.alpha[c])) for c in cols})
        return [(key, np.array([c for c in cols if (self.gamma[c], self.alpha[c]) == key])) for key in keys]

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """``(n, C)`` predictions (float32) for ``genes`` (n, G)."""
        from sklearn.metrics.pairwise import rbf_kernel

        f = self.features(genes)
        out = np.empty((len(f), self.dual_coef.shape[1]), dtype=np.float32)
        widths = [(g, np.flatnonzero(self.gamma == g)) for g in np.unique(self.gamma)]
        for start in range(0, len(f), _PREDICT_CHUNK):
            block = f[start : start + _PREDICT_CHUNK]
            for g, cols in widths:
                out[start : start + len(block), cols] = rbf_kernel(block, self.x_fit, gamma=g) @ self.dual_coef[:, cols]
        return out

    _ARRAYS = ("pca_mean", "pca_components", "x_fit", "dual_coef", "gamma", "alpha")

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(registry entry, arrays)``: the kind and sizes in the registry, the arrays apart."""
        meta = {"kind": self.kind, "n_fit": int(self.x_fit.shape[0]), "n_pcs": int(self.x_fit.shape[1])}
        return meta, {name: getattr(self, name) for name in self._ARRAYS}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> "KernelRidgeBase":
        """The base whose :meth:`to_state` wrote ``arrays``."""
        missing = [n for n in cls._ARRAYS if n not in arrays]
        if missing:
            raise ValueError(f"the kernel residual base lacks its arrays {missing}; the saved model is damaged.")
        return cls(*(arrays[n] for n in cls._ARRAYS))


def fit_residual_base(kind: str, genes: np.ndarray, y: np.ndarray, *, seed: int = 0) -> RidgeBase | KernelRidgeBase:
    """Fit the residual base ``kind`` (one of :data:`RESIDUAL_BASES`) on ``genes`` and ``y``."""
    if kind == "ridge":
        return RidgeBase.fit(genes, y)
    if kind == "krr":
        return KernelRidgeBase.fit(genes, y, seed=seed)
    raise ValueError(f"residual must be None or one of {list(RESIDUAL_BASES)}, got {kind!r}.")


def residual_base_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> RidgeBase | KernelRidgeBase:
    """The base of a registry entry (and, for a kernel base, its arrays). Entries without a
    ``kind`` are ridge bases (models saved before kernel bases existed)."""
    kind = meta.get("kind", "ridge")
    if kind == "ridge":
        return RidgeBase.from_dict(meta)
    if kind == "krr":
        return KernelRidgeBase.from_state(arrays)
    raise ValueError(f"unknown residual base kind {kind!r} in the registry.")
