"""Table -> table regression baselines (e.g. gene -> protein on shared RNA features).

All baselines see the same features from :func:`gene_features`: library-size normalised,
log1p RNA, highly variable genes chosen on the training cells, standardised with training
statistics and projected on a PCA fitted on the training cells. :func:`fit_predict` then
fits one regressor per method (:class:`BaselineRegressor`, a scikit-learn estimator); every
hyper-parameter is chosen by cross-validation on the training cells only. ``"krr"`` (SVD / PCA of log-normalised RNA, then RBF kernel ridge) is
the "kernel ridge regression (Guanlab-dengkw)" baseline of the NeurIPS 2021 multimodal
single-cell competition.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.base import BaseEstimator, RegressorMixin

__all__ = ["METHODS", "BaselineRegressor", "gene_features", "fit_predict"]

METHODS = ("mean", "ridge", "knn", "krr")
RIDGE_ALPHAS = np.logspace(-2, 4, 13)
KNN_NEIGHBORS = (5, 10, 20, 30)
KRR_ALPHAS = (0.01, 0.1, 1.0)
KRR_GAMMA_FACTORS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# Below this many training cells the BLAS calls are small: threads only add overhead, and on a
# busy machine spinning BLAS threads make them tens of times slower. Run BLAS and OpenMP single-threaded.
SMALL_PROBLEM_CELLS = 4096


def _blas_threads(n_cells: int):
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return threadpool_limits(1) if n_cells < SMALL_PROBLEM_CELLS else nullcontext()


def _counts(adata: AnnData, layer: str | None, what: str) -> np.ndarray | sparse.csr_matrix:
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{what} is empty (shape {adata.shape}).")
    if layer is None:
        x = adata.X
        if x is None:
            raise ValueError(f"{what}.X is empty; pass layer= naming the RNA counts layer.")
    else:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not in {what}.layers (have {list(adata.layers.keys())}).")
        x = adata.layers[layer]
    x = sparse.csr_matrix(x) if sparse.issparse(x) else np.asarray(x)
    data = x.data if sparse.issparse(x) else x
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{what} RNA matrix is not numeric (dtype {data.dtype}).")
    if data.size and (not np.isfinite(data).all() or (data < 0).any()):
        raise ValueError(f"{what} RNA matrix must hold finite, non-negative counts (found NaN, inf or negatives).")
    return x


def _log_normalize(x: np.ndarray | sparse.csr_matrix, target_sum: float = 1e4) -> np.ndarray | sparse.csr_matrix:
    """log1p(counts / library size * target_sum) per cell, as a new matrix (input untouched)."""
    lib = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    if sparse.issparse(x):
        out = sparse.csr_matrix(sparse.diags(scale) @ x, dtype=np.float64)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float64) * scale[:, None])


def _dense_columns(x: np.ndarray | sparse.csr_matrix, cols: np.ndarray) -> np.ndarray:
    sub = x[:, cols]
    return sub.toarray() if sparse.issparse(sub) else np.asarray(sub)


def _select_hvg(log_train: np.ndarray | sparse.csr_matrix, n_top_genes: int) -> np.ndarray:
    """Indices (sorted) of the highly variable genes of the training cells (scanpy "seurat")."""
    import scanpy as sc

    if sparse.issparse(log_train):
        mean = np.asarray(log_train.mean(axis=0)).ravel()
        var = np.asarray(log_train.multiply(log_train).mean(axis=0)).ravel() - mean**2
    else:
        mean, var = log_train.mean(axis=0), log_train.var(axis=0)
    candidates = np.flatnonzero(var > 1e-12)
    if candidates.size == 0:
        raise ValueError("No gene varies across the training cells; cannot build features.")
    if candidates.size <= n_top_genes:
        return candidates
    tmp = AnnData(log_train[:, candidates])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hvg = sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes, inplace=False)
    chosen = np.flatnonzero(np.asarray(hvg["highly_variable"]))
    return candidates[chosen]


def gene_features(
    adata_train: AnnData,
    adata_test: AnnData,
    n_top_genes: int = 2000,
    n_pcs: int = 50,
    layer: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA features of log-normalised RNA, fitted on the training cells only.

    Steps: per-cell library-size normalisation to 1e4 and log1p (each cell on its own
    counts); highly variable genes by scanpy's ``"seurat"`` flavour on the training cells;
    standardisation with the training mean / sd; PCA (scikit-learn) fitted on the training
    cells. Only the selected genes are ever densified. The inputs are not modified.

    Parameters
    ----------
    adata_train, adata_test
        Raw RNA counts (``X`` or ``layer``; dense or scipy sparse). The test genes are
        matched to the training genes by name.
    n_top_genes
        Number of highly variable genes (all varying genes if fewer).
    n_pcs
        Number of principal components (capped at ``min(n_train_cells - 1, n_genes)``).
    layer
        Layer holding the counts; ``None`` uses ``X``.

    Returns
    -------
    F_train, F_test
        PC scores, shapes ``(n_train, k)`` and ``(n_test, k)``.
    gene_names
        Names of the selected genes (array of str).

    Examples
    --------
    >>> adata = bd.datasets.eccite_pbmc()
    >>> train, test = adata[:400].copy(), adata[400:].copy()
    >>> F_train, F_test, genes = bd.baselines.gene_features(train, test, n_top_genes=2000, n_pcs=50)
    >>> F_train.shape, F_test.shape                # (400, 50), (100, 50)
    """
    from sklearn.decomposition import PCA

    if int(n_top_genes) < 1 or int(n_pcs) < 1:
        raise ValueError(f"n_top_genes and n_pcs must be >= 1, got {n_top_genes} and {n_pcs}.")
    if adata_train.n_obs < 2:
        raise ValueError(f"adata_train needs at least 2 cells, got {adata_train.n_obs}.")
    x_train = _counts(adata_train, layer, "adata_train")
    x_test = _counts(adata_test, layer, "adata_test")
    train_genes, test_genes = pd.Index(adata_train.var_names), pd.Index(adata_test.var_names)
    if train_genes.has_duplicates:
        raise ValueError("adata_train.var_names has duplicates; call var_names_make_unique() on a copy.")
    if not train_genes.equals(test_genes):
        missing = train_genes.difference(test_genes)
        if len(missing) or test_genes.has_duplicates:
            raise ValueError(
                f"adata_test lacks {len(missing)} training gene(s) (e.g. {missing[:5].tolist()}) "
                "or has duplicated gene names; both objects must measure the same genes."
            )

    log_train = _log_normalize(x_train)
    hvg = _select_hvg(log_train, int(n_top_genes))
    gene_names = np.asarray(train_genes[hvg], dtype=str)
    test_cols = test_genes.get_indexer(gene_names)

    # Test cells: library size from all their genes, then only the selected genes densified.
    lib_test = np.asarray(x_test.sum(axis=1), dtype=np.float64).ravel()
    scale_test = np.divide(1e4, lib_test, out=np.zeros_like(lib_test), where=lib_test > 0)
    g_test = np.log1p(_dense_columns(x_test, test_cols).astype(np.float64) * scale_test[:, None])
    g_train = _dense_columns(log_train, hvg).astype(np.float64)

    mu = g_train.mean(axis=0)
    sd = g_train.std(axis=0)
    sd[sd == 0] = 1.0
    z_train, z_test = (g_train - mu) / sd, (g_test - mu) / sd
    k = min(int(n_pcs), z_train.shape[0] - 1, z_train.shape[1])
    with _blas_threads(z_train.shape[0]):
        pca = PCA(n_components=k, random_state=0).fit(z_train)
        return pca.transform(z_train), pca.transform(z_test), gene_names


def _as_features(f: np.ndarray, what: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise ValueError(f"{what} contains NaN or inf values.")
    return f


def _check_train(f_train: np.ndarray, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f_train = np.asarray(f_train, dtype=np.float64)
    y = y_train.to_numpy(dtype=np.float64) if isinstance(y_train, (pd.DataFrame, pd.Series)) else np.asarray(y_train, dtype=np.float64)
    if f_train.ndim != 2:
        raise ValueError(f"F_train must be 2-D, got shape {f_train.shape}.")
    if y.ndim not in (1, 2):
        raise ValueError(f"Y_train must be 1-D or 2-D, got shape {y.shape}.")
    if f_train.shape[0] != y.shape[0]:
        raise ValueError(f"F_train has {f_train.shape[0]} rows but Y_train has {y.shape[0]}.")
    if f_train.shape[0] < 2 or f_train.shape[1] == 0:
        raise ValueError(f"Need at least 2 training cells and 1 feature, got F_train shape {f_train.shape}.")
    for name, a in (("F_train", f_train), ("Y_train", y)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf values.")
    return f_train, y


def _check_xy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f_test = np.asarray(f_test, dtype=np.float64)
    if np.ndim(f_train) != 2 or f_test.ndim != 2:
        raise ValueError(f"F_train and F_test must be 2-D, got shapes {np.shape(f_train)} and {f_test.shape}.")
    f_train, y = _check_train(f_train, y_train)
    if f_train.shape[1] != f_test.shape[1]:
        raise ValueError(f"F_train has {f_train.shape[1]} features but F_test has {f_test.shape[1]}.")
    return f_train, y, _as_features(f_test, "F_test")


def _cv(n: int, seed: int):
    from sklearn.model_selection import KFold

    return KFold(n_splits=min(5, n), shuffle=True, random_state=seed)


class BaselineRegressor(RegressorMixin, BaseEstimator):
    """One regression baseline as a scikit-learn estimator: ``fit(X, y)`` / ``predict(X)``.

    Parameters
    ----------
    method
        ``"mean"``: per-column training mean. ``"ridge"``: :class:`~sklearn.linear_model.RidgeCV`
        over ``alphas = logspace(-2, 4, 13)`` (efficient leave-one-out, one alpha per column).
        ``"knn"``: :class:`~sklearn.neighbors.KNeighborsRegressor` with distance weights,
        ``n_neighbors`` from (5, 10, 20, 30) by 5-fold CV. ``"krr"``:
        :class:`~sklearn.kernel_ridge.KernelRidge` with an RBF kernel, ``alpha`` in
        (0.01, 0.1, 1) and ``gamma`` in (0.01, 0.03, 0.1, 0.3, 1, 3) / (n_features * var(X)) (the
        scale of scikit-learn's ``gamma="scale"``) by 5-fold CV. CV scores are the mean
        squared error over all columns; folds are shuffled with ``seed``.
    seed
        Seed of the CV fold split.

    Attributes
    ----------
    model_
        The fitted scikit-learn model (``None`` for ``"mean"``).
    mean_
        Training mean of ``y`` (``"mean"`` only; ``None`` otherwise).
    n_features_in_, n_train_
        Number of features and of training cells seen by :meth:`fit`.

    Examples
    --------
    >>> F_train, F_test, _ = bd.baselines.gene_features(train, test)
    >>> y_train = np.log1p(train.obsm["protein_expression"].to_numpy())
    >>> reg = bd.baselines.BaselineRegressor("ridge").fit(F_train, y_train)
    >>> pred = reg.predict(F_test)                      # (n_test, n_proteins)
    """

    def __init__(self, method: str = "krr", seed: int = 0) -> None:
        self.method = method
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> BaselineRegressor:
        """Fit on ``X`` (cells x features) and ``y`` (cells x targets, or 1-D)."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; valid methods are {list(METHODS)}.")
        f_train, y_arr = _check_train(X, y)
        self.n_features_in_ = f_train.shape[1]
        self.n_train_ = f_train.shape[0]
        self._y_shape = y_arr.shape[1:]
        self.model_, self.mean_ = None, None
        if self.method == "mean":
            self.mean_ = y_arr.mean(axis=0, keepdims=True)
            return self
        with _blas_threads(f_train.shape[0]):
            self.model_ = _fit_model(self.method, f_train, y_arr, self.seed)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for ``X``, shaped like the training ``y`` with ``len(X)`` rows."""
        if not hasattr(self, "n_features_in_"):
            raise RuntimeError("BaselineRegressor is not fitted; call fit(X, y) first.")
        f = _as_features(X, "X")
        if f.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {f.shape[1]} features but the regressor was fitted on {self.n_features_in_}.")
        if self.model_ is None:
            return np.repeat(self.mean_, f.shape[0], axis=0).reshape((f.shape[0],) + self._y_shape)
        with _blas_threads(self.n_train_):
            return self.model_.predict(f)


def fit_predict(method: str, F_train: np.ndarray, Y_train: np.ndarray, F_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fit one baseline on the training cells and predict the test cells.

    Shorthand for ``BaselineRegressor(method, seed).fit(F_train, Y_train).predict(F_test)``.

    Parameters
    ----------
    method
        One of :data:`METHODS`; see :class:`BaselineRegressor`.
    F_train, F_test
        Features (cells x features), e.g. from :func:`gene_features`.
    Y_train
        Targets of the training cells (cells x channels, or 1-D), in whatever space the
        caller wants predictions in.
    seed
        Seed of the CV fold split.

    Returns
    -------
    numpy.ndarray
        Predictions for the test cells, shaped like ``Y_train`` with ``len(F_test)`` rows.

    Examples
    --------
    >>> F_train, F_test, genes = bd.baselines.gene_features(train, test, n_top_genes=2000, n_pcs=50)
    >>> y_train = np.log1p(train.obsm["protein_expression"].to_numpy())
    >>> pred = {m: bd.baselines.fit_predict(m, F_train, y_train, F_test) for m in bd.baselines.METHODS}
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods are {list(METHODS)}.")
    f_train, y, f_test = _check_xy(F_train, Y_train, F_test)
    return BaselineRegressor(method=method, seed=seed).fit(f_train, y).predict(f_test)


def _fit_model(method: str, f_train: np.ndarray, y: np.ndarray, seed: int):
    """The fitted scikit-learn model of ``method`` (not ``"mean"``)."""
    from sklearn.model_selection import GridSearchCV

    n = f_train.shape[0]
    if method == "ridge":
        from sklearn.linear_model import RidgeCV

        return RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=y.ndim == 2).fit(f_train, y)

    if method == "knn":
        from sklearn.neighbors import KNeighborsRegressor

        cv = _cv(n, seed)
        smallest_fold_train = n - int(np.ceil(n / cv.get_n_splits()))
        grid = [k for k in KNN_NEIGHBORS if k <= smallest_fold_train]
        if not grid:
            return KNeighborsRegressor(n_neighbors=min(KNN_NEIGHBORS[0], n), weights="distance").fit(f_train, y)
        search = GridSearchCV(
            KNeighborsRegressor(weights="distance"), {"n_neighbors": grid}, cv=cv, scoring="neg_mean_squared_error"
        )
        return search.fit(f_train, y)

    from sklearn.kernel_ridge import KernelRidge

    scale = f_train.shape[1] * f_train.var()
    scale = scale if scale > 0 else 1.0
    grid = {"alpha": list(KRR_ALPHAS), "gamma": [g / scale for g in KRR_GAMMA_FACTORS]}
    search = GridSearchCV(KernelRidge(kernel="rbf"), grid, cv=_cv(n, seed), scoring="neg_mean_squared_error")
    return search.fit(f_train, y)
