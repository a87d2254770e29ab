"""Expression -> histology baseline: retrieve the training tile whose expression is closest.

GeneFlow's "nearest-neighbour retrieval" baseline. Fitted on the training rows only:
optional per-gene standardisation (:class:`~sklearn.preprocessing.StandardScaler`; genes
with zero training variance are set to 0 for every row), :class:`~sklearn.decomposition.PCA`
(``n_components`` capped at ``min(N_train - 1, G)``) and a
:class:`~sklearn.neighbors.NearestNeighbors` index on the PCA scores. A query row gets the
tile of its nearest training row (or a uniform draw among its ``k`` nearest). Sparse
expression is densified (it is far smaller than the tiles it indexes).

Expression may also come as windows of cells, ``(N, M, G)``, with an optional boolean
``mask`` ``(N, M)`` (True = real cell, False = padding): each window is pooled to the mean
over its real cells before anything else, so padded cells (even NaN ones) never matter.
A window without a real cell is an error.

:class:`NearestTile` is the scikit-learn estimator; :func:`fit_predict_nearest_tile` the
one-call form used by the benchmarks.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from .tables import _blas_threads

__all__ = ["NearestTile", "fit_predict_nearest_tile"]


def _pooled(expression, mask, what: str) -> np.ndarray:
    """(N, G) float64 expression: 2-D as is (sparse densified), 3-D windows pooled by masked mean."""
    x = expression.toarray() if sparse.issparse(expression) else np.asarray(expression)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}.")
    x = x.astype(np.float64, copy=False)
    if x.ndim not in (2, 3):
        raise ValueError(f"{what} must be (N, G) or (N, M, G) windows of cells, got shape {x.shape}.")
    if min(x.shape) == 0:
        raise ValueError(f"{what} is empty (shape {x.shape}).")
    if x.ndim == 2 and mask is not None:
        raise ValueError(f"mask is only for (N, M, G) windows of cells; {what} is 2-D.")
    if x.ndim == 3:
        m = np.ones(x.shape[:2], dtype=bool) if mask is None else np.asarray(mask)
        if m.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {x.shape[:2]} (windows, cells) for {what}, got {m.shape}.")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be boolean (True = real cell) or 0 / 1.")
        m = m.astype(bool)
        n_real = m.sum(axis=1)
        if (n_real == 0).any():
            raise ValueError(f"{what}: window(s) {np.flatnonzero(n_real == 0)[:10].tolist()} have no real cell in mask.")
        x = np.where(m[:, :, None], x, 0.0).sum(axis=1) / n_real[:, None]
    if not np.isfinite(x).all():
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{what} contains NaN or inf values (row(s) {rows[:10].tolist()}).")
    return x


def _check_int(value, name: str, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or (most is not None and value > most):
        bound = f" at most {most} (the number of training rows)" if most is not None else ""
        raise ValueError(f"{name} must be a positive integer{bound}, got {value!r}.")


class NearestTile(BaseEstimator):
    """Nearest-neighbour tile retrieval in the PCA space of training expression.

    Parameters
    ----------
    n_components
        Number of principal components; capped at ``min(N_train - 1, G)``.
    k
        Number of nearest training rows a draw picks from (``k=1``: always the nearest).
    metric
        Distance of the :class:`~sklearn.neighbors.NearestNeighbors` index in PCA space.
    scale
        Standardise each gene with the training mean and sd before PCA.
    seed
        ``random_state`` of the PCA.

    Attributes
    ----------
    scaler_, pca_, nn_, tiles_, n_features_in_
        Fitted StandardScaler (``None`` if ``scale=False``), PCA and NearestNeighbors; a
        read-only view (not a copy) of the training tiles; the number of genes G.

    Examples
    --------
    >>> nt = bd.baselines.NearestTile(n_components=50, k=5).fit(train_expression, train_tiles)
    >>> tiles = nt.predict(test_expression, n_samples=4, seed=0)   # (N_test, 4, C, H, W)
    >>> # train_expression: (N, G) log-normalised; train_tiles: (N, C, H, W)
    """

    def __init__(self, n_components: int = 50, *, k: int = 1, metric: str = "euclidean", scale: bool = True, seed: int = 0):
        self.n_components = n_components
        self.k = k
        self.metric = metric
        self.scale = scale
        self.seed = seed

    def fit(self, expression, tiles, *, mask=None) -> NearestTile:
        """Fit scaler, PCA and neighbour index on the training expression; keep the tiles.

        Parameters
        ----------
        expression
            ``(N, G)`` log-normalised expression (dense or scipy sparse), or ``(N, M, G)``
            windows of cells, pooled by the mean over real cells.
        tiles
            ``(N, C, H, W)`` training tiles, row i matching expression row i; kept by
            reference, never copied or modified.
        mask
            ``(N, M)`` boolean, True for real cells; only with 3-D ``expression``.

        Returns
        -------
        ``self``.

        Raises
        ------
        ValueError
            Bad shapes or dtypes, NaN / inf, fewer than 2 rows, tiles and expression of
            different lengths, ``k`` above the number of rows, bad ``n_components``.
        """
        x = _pooled(expression, mask, "expression")
        t = np.asarray(tiles)
        if t.ndim != 4 or not np.issubdtype(t.dtype, np.number):
            raise ValueError(f"tiles must be a numeric (N, C, H, W) array, got shape {t.shape}, dtype {t.dtype}.")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"tiles has {t.shape[0]} rows but expression has {x.shape[0]}; they must match row for row.")
        if x.shape[0] < 2:
            raise ValueError(f"Need at least 2 training rows for PCA, got {x.shape[0]}.")
        _check_int(self.k, "k", x.shape[0])
        _check_int(self.n_components, "n_components")
        with _blas_threads(x.shape[0]):
            self.scaler_ = StandardScaler().fit(x) if self.scale else None
            self._varying = np.ptp(x, axis=0) > 0  # exactly constant genes stay 0 after scaling
            self.n_features_in_ = x.shape[1]
            z = self._scaled(x)
            n = int(min(self.n_components, x.shape[0] - 1, x.shape[1]))
            self.pca_ = PCA(n_components=n, random_state=self.seed).fit(z)
            self.nn_ = NearestNeighbors(n_neighbors=self.k, metric=self.metric).fit(self.pca_.transform(z))
        self.tiles_ = t.view()
        self.tiles_.flags.writeable = False
        return self

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        if self.scaler_ is None:
            return x
        return self.scaler_.transform(x) * self._varying

    def kneighbors(self, expression, *, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest training rows of each query row in PCA space.

        Parameters
        ----------
        expression
            ``(N, G)`` or ``(N, M, G)`` query expression, as in :meth:`fit`.
        mask
            ``(N, M)`` real-cell mask for 3-D ``expression``.

        Returns
        -------
        ``(distances, indices)``, each ``(N, k)``, nearest first; indices are training rows.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Called before :meth:`fit` (also a ValueError).
        ValueError
            Another gene count than in :meth:`fit`, NaN / inf, bad shapes.
        """
        if not hasattr(self, "nn_"):
            raise NotFittedError("This NearestTile is not fitted yet; call fit(expression, tiles) first.")
        x = _pooled(expression, mask, "expression")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"expression has {x.shape[1]} genes but the model was fitted on {self.n_features_in_}.")
        with _blas_threads(x.shape[0]):
            return self.nn_.kneighbors(self.pca_.transform(self._scaled(x)))

    def predict(self, expression, *, mask=None, n_samples: int = 1, seed: int = 0) -> np.ndarray:
        """Training tiles retrieved for each query row.

        Each draw picks uniformly among the ``k`` nearest training rows (``k=1``: always the
        nearest, no randomness), from ``np.random.default_rng(seed)`` made anew each call.

        Parameters
        ----------
        expression
            ``(N, G)`` or ``(N, M, G)`` query expression, as in :meth:`fit`.
        mask
            ``(N, M)`` real-cell mask for 3-D ``expression``.
        n_samples
            Draws per query row.
        seed
            Seed of the draws among the ``k`` nearest.

        Returns
        -------
        ``(N, C, H, W)`` if ``n_samples == 1`` (whatever ``k``), else
        ``(N, n_samples, C, H, W)``; a new array of the training tiles' dtype.

        Raises
        ------
        sklearn.exceptions.NotFittedError, ValueError
            As :meth:`kneighbors`; also ``n_samples < 1``.
        """
        _check_int(n_samples, "n_samples")
        _, idx = self.kneighbors(expression, mask=mask)
        draws = np.random.default_rng(seed).integers(0, self.k, size=(idx.shape[0], n_samples))
        pick = np.take_along_axis(idx, draws, axis=1)  # (N, n_samples) training rows
        out = self.tiles_[pick]  # fancy indexing: a new, writable array
        return out[:, 0] if n_samples == 1 else out


def fit_predict_nearest_tile(
    train_expression, train_tiles, test_expression, *, n_components: int = 50, k: int = 1, metric: str = "euclidean",
    scale: bool = True, n_samples: int = 1, seed: int = 0, train_mask=None, test_mask=None,
) -> np.ndarray:
    """Fit :class:`NearestTile` on training expression + tiles and retrieve tiles for test rows.

    Parameters
    ----------
    train_expression, train_tiles, test_expression
        As in :meth:`NearestTile.fit` and :meth:`NearestTile.predict`.
    n_components, k, metric, scale
        Passed to :class:`NearestTile`.
    n_samples
        Draws per test row.
    seed
        PCA ``random_state`` and seed of the draws.
    train_mask, test_mask
        Real-cell masks for 3-D (window) expression.

    Returns
    -------
    ``(N_test, C, H, W)`` if ``n_samples == 1``, else ``(N_test, n_samples, C, H, W)``.

    Raises
    ------
    ValueError
        As :meth:`NearestTile.fit` and :meth:`NearestTile.predict`.

    Examples
    --------
    >>> tiles = bd.baselines.fit_predict_nearest_tile(train_expression, train_tiles, test_expression)
    >>> draws = bd.baselines.fit_predict_nearest_tile(
    ...     train_expression, train_tiles, test_expression, k=5, n_samples=4)
    >>> tiles.shape, draws.shape                   # (N_test, C, H, W), (N_test, 4, C, H, W)
    """
    model = NearestTile(n_components, k=k, metric=metric, scale=scale, seed=seed)
    model.fit(train_expression, train_tiles, mask=train_mask)
    return model.predict(test_expression, mask=test_mask, n_samples=n_samples, seed=seed)
