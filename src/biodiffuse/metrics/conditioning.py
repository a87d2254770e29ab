"""Conditioning fidelity: do generated tiles carry the signal of the cells they were generated for?

A probe (classifier for cell type / cluster, ridge regressor for expression PCs) is fitted on
REAL training tiles and their conditioning targets, then applied to GENERATED tiles of held-out
cells and scored against those cells' TRUE targets. Run it twice, on tiles generated from the
right expression and on tiles generated from shuffled expression (the control), and compare the
two ``per_row`` arrays with :func:`paired_difference`: a model that uses its condition beats
the control. Features are cheap pixel summaries (:func:`tile_features`), the Inception
features used for FID / KID, precomputed arrays, or any callable.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Union

import numpy as np

from .imputation import _as_float_2d, _pearson_along

__all__ = ["tile_features", "FidelityProbe", "conditioning_fidelity", "paired_difference"]

_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _as_tiles(tiles: Any, name: str) -> np.ndarray:
    if hasattr(tiles, "detach"):  # torch tensor, without importing torch
        tiles = tiles.detach().cpu().numpy()
    arr = np.array(tiles, dtype=np.float64)  # a copy: the caller's array is never changed
    if arr.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got {arr.ndim}-D with shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN / inf value(s).")
    return arr


def tile_features(tiles: Any, *, pool: int = 4, bins: int = 16) -> np.ndarray:
    """Cheap, deterministic image features of tiles.

    Per tile, concatenated in this order: the average-pooled image of every channel (blocks of
    ``pool`` x ``pool`` pixels; when H or W is not a multiple of ``pool`` the tile is centre-cropped
    to the largest multiple for this part only), the per-channel intensity histogram (``bins``
    equal bins on [0, 1], as fractions of pixels; values outside [0, 1] count in the edge bins),
    the per-channel mean and the per-channel standard deviation.

    Parameters
    ----------
    tiles
        Array or torch tensor of shape (N, C, H, W), values in [0, 1].
    pool
        Side of the pooling block in pixels, 1 <= pool <= min(H, W).
    bins
        Number of histogram bins (>= 1).

    Returns
    -------
    np.ndarray
        (N, F) float64 with ``F = C * ((H // pool) * (W // pool) + bins + 2)``.

    Raises
    ------
    ValueError
        If ``tiles`` is not 4-D, empty or not finite, or ``pool`` / ``bins`` are out of range.

    Examples
    --------
    >>> feats = bd.metrics.tile_features(np.random.rand(10, 3, 32, 32), pool=4, bins=16)
    >>> feats.shape                                  # 3 * (8 * 8 + 16 + 2) features per tile
    (10, 246)
    """
    x = _as_tiles(tiles, "tiles")
    n, c, h, w = x.shape
    if int(pool) != pool or not 1 <= pool <= min(h, w):
        raise ValueError(f"pool must be an integer in [1, min(H, W) = {min(h, w)}], got {pool}.")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}.")
    pool, bins = int(pool), int(bins)
    hp, wp = h // pool, w // pool
    top, left = (h - hp * pool) // 2, (w - wp * pool) // 2
    crop = x[:, :, top : top + hp * pool, left : left + wp * pool]
    pooled = crop.reshape(n, c, hp, pool, wp, pool).mean(axis=(3, 5)).reshape(n, -1)
    flat = x.reshape(n * c, h * w)
    idx = np.clip(np.floor(flat * bins), 0, bins - 1).astype(np.int64)  # 1.0 falls in the last bin
    idx += (np.arange(n * c) * bins)[:, None]
    hist = np.bincount(idx.ravel(), minlength=n * c * bins).reshape(n, c * bins) / (h * w)
    mean = flat.mean(axis=1).reshape(n, c)
    std = flat.std(axis=1).reshape(n, c)
    return np.concatenate([pooled, hist, mean, std], axis=1)


_FEATURES = "'pixels', 'inception', 'precomputed' or a callable tiles -> (N, F)"


def _features(tiles: Any, features: Union[str, Callable], name: str) -> np.ndarray:
    if isinstance(features, str):
        if features == "pixels":
            return tile_features(tiles)
        if features == "inception":
            from .images import inception_features

            return inception_features(_as_tiles(tiles, name))
        if features == "precomputed":
            return _as_float_2d(tiles, name)
        raise ValueError(f"features must be {_FEATURES}, got {features!r}.")
    if not callable(features):
        raise ValueError(f"features must be {_FEATURES}, got {type(features).__name__}.")
    return _as_float_2d(features(tiles), f"features({name})")


def _balanced_accuracy(codes: np.ndarray, correct: np.ndarray) -> float:
    """Mean recall over the classes present in ``codes`` (= sklearn's balanced_accuracy_score)."""
    counts = np.bincount(codes)
    hits = np.bincount(codes, weights=correct, minlength=counts.size)
    present = counts > 0
    return float(np.mean(hits[present] / counts[present]))


def _bootstrap_sd(n: int, score: Callable[[np.ndarray], float], n_boot: int, seed: int) -> float:
    if n_boot < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([score(rng.integers(0, n, n)) for _ in range(n_boot)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanstd(vals, ddof=1))


def _fit_classifier(x_tr: np.ndarray, y_tr: np.ndarray, seed: int) -> tuple[Any, float, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    classes, counts = np.unique(y_tr, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"train_targets has {classes.size} class; need at least 2.")
    model = LogisticRegression(max_iter=2000, class_weight="balanced")
    folds = min(3, int(counts.min()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        model = GridSearchCV(model, {"C": list(_C_GRID)}, cv=cv, scoring="balanced_accuracy").fit(x_tr, y_tr)
        return model, float(model.best_params_["C"]), classes
    return model.fit(x_tr, y_tr), 1.0, classes


def _score_classifier(fitted: tuple, x_te: np.ndarray, y_te: np.ndarray, seed: int, n_boot: int) -> dict:
    model, best_c, classes = fitted
    seen = np.isin(y_te, classes)
    n_dropped = int((~seen).sum())
    if n_dropped:
        warnings.warn(f"{n_dropped} test row(s) have labels not seen in training; they are dropped.", stacklevel=4)
    if not seen.any():
        raise ValueError("no test label was seen in training.")
    x_te, y_te = x_te[seen], y_te[seen]
    correct = (model.predict(x_te) == y_te).astype(np.float64)
    codes = np.unique(y_te, return_inverse=True)[1].ravel()
    sd = _bootstrap_sd(codes.size, lambda i: _balanced_accuracy(codes[i], correct[i]), n_boot, seed)
    return {"task": "classification", "score": _balanced_accuracy(codes, correct), "score_sd": sd,
            "chance": 1.0 / np.unique(codes).size, "n_test": codes.size,
            "per_row": correct, "n_dropped": n_dropped, "C": best_c}


def _fit_regressor(x_tr: np.ndarray, y_tr: np.ndarray, seed: int) -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x_tr, y_tr)
    sd_y = y_tr.std(axis=0)
    sd_y[sd_y == 0] = 1.0
    return model, sd_y


def _score_regressor(fitted: tuple, x_te: np.ndarray, y_te: np.ndarray, seed: int, n_boot: int) -> dict:
    from sklearn.metrics import r2_score

    model, sd_y = fitted
    pred = model.predict(x_te).reshape(y_te.shape)
    per_row = (((pred - y_te) / sd_y) ** 2).mean(axis=1)

    def mean_r(i: np.ndarray) -> float:
        r = _pearson_along(y_te[i], pred[i], axis=0)  # NaN for a target constant in truth or prediction
        return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")

    every = np.arange(y_te.shape[0])
    return {"task": "regression", "score": mean_r(every), "score_sd": _bootstrap_sd(every.size, mean_r, n_boot, seed),
            "chance": 0.0, "n_test": every.size, "per_row": per_row,
            "r2": float(r2_score(y_te, pred, multioutput="uniform_average")), "alpha": float(model.alpha_)}


def _targets(y: Any, x: np.ndarray, name: str) -> np.ndarray:
    y = np.array(y)  # a copy
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_targets must be 1-D or 2-D with one row per tile ({x.shape[0]}), got {y.shape}.")
    if y.shape[0] < 2:
        raise ValueError(f"{name}_targets needs at least 2 rows, got {y.shape[0]}.")
    return y


class FidelityProbe:
    """A probe of conditioning fidelity, fitted once on real tiles and scored on any number of generated sets.

    Features (:func:`tile_features` for ``"pixels"``; the 2,048 Inception pool features of
    :func:`~biodiffuse.metrics.inception_features` for ``"inception"``, a stronger probe of
    morphology that needs the ``images`` extra; the arrays themselves for ``"precomputed"``,
    e.g. the Inception features already computed for KID; else ``features(tiles) -> (N, F)``) are
    standardised with a scaler fitted on the training tiles only, optionally reduced to
    ``n_components`` principal components (fitted on training only), and then:

    * 1-D ``train_targets`` (labels: str / object / int) -> ``LogisticRegression(max_iter=2000,
      class_weight="balanced")``, C chosen by stratified 3-fold CV (balanced accuracy) over
      1e-3 ... 10 (fewer folds if a class has < 3 tiles, C=1 if one has 1). ``score``: balanced
      accuracy; ``chance`` = 1 / (test classes also seen in training), the score of a constant
      prediction. Test rows with labels unseen in training are dropped with a warning
      (``n_dropped``). ``per_row``: 0/1 correctness (higher is better).
    * 2-D ``train_targets`` (N, K) floats (e.g. expression PCs) -> ``RidgeCV(alphas=logspace(-2,
      4, 13))``. ``score``: mean over targets of the Pearson r of prediction vs truth (targets
      constant in either are left out); ``r2``: ``r2_score(multioutput="uniform_average")``.
      ``per_row``: mean squared error over targets standardised with the training sd (lower is
      better: pass ``higher_is_better=False`` to :func:`paired_difference`).

    Parameters
    ----------
    features
        ``"pixels"``, ``"inception"``, ``"precomputed"`` or a callable.
    n_components
        PCA components of the standardised features (None: no PCA).
    seed
        Seeds the CV folds, the PCA and the bootstrap (``np.random.default_rng(seed)``).
    n_boot
        Bootstrap resamples of the test rows for ``score_sd`` (< 2 gives NaN).

    Examples
    --------
    >>> probe = bd.metrics.FidelityProbe(features="pixels").fit(train_tiles, train_labels)
    >>> right, shuffled = probe.score(gen, test_labels), probe.score(gen_shuffled, test_labels)
    >>> bd.metrics.paired_difference(right["per_row"], shuffled["per_row"])
    """

    def __init__(self, features: Union[str, Callable] = "pixels", *, n_components: int | None = None, seed: int = 0,
                 n_boot: int = 200) -> None:
        self.features = features
        self.n_components = n_components
        self.seed = seed
        self.n_boot = n_boot

    def fit(self, train_tiles: Any, train_targets: Any) -> "FidelityProbe":
        """Fit scaler, PCA and the classifier / regressor on real training tiles and their targets.

        Parameters
        ----------
        train_tiles
            Real training tiles (N, C, H, W) in [0, 1] (or whatever ``features`` accepts; (N, F)
            feature arrays with ``features="precomputed"``).
        train_targets
            Labels (N,) or continuous targets (N, K), one row per tile (continuous 1-D targets as
            (N, 1)).

        Returns
        -------
        ``self``.

        Raises
        ------
        ValueError
            Bad tiles or features, targets whose length differs from the tiles, fewer than 2
            rows or classes, continuous 1-D targets, bad ``n_components``.
        """
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        x = _features(train_tiles, self.features, "train_tiles")
        y = _targets(train_targets, x, "train")
        if y.ndim == 1 and y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
            raise ValueError("train_targets is 1-D with non-integer floats; pass continuous targets as (N, 1).")
        if y.ndim == 1 and y.dtype.kind not in "biuf":  # str / object / mixed: compare as str
            y = y.astype(str)
        if y.ndim == 2:
            y = _as_float_2d(y, "train_targets")
        self.scaler_ = StandardScaler().fit(x)
        x = self.scaler_.transform(x)
        self.pca_ = None
        if self.n_components is not None:
            k = self.n_components
            if int(k) != k or not 1 <= k <= min(x.shape):
                raise ValueError(f"n_components must be an integer in [1, {min(x.shape)}], got {k}.")
            self.pca_ = PCA(n_components=int(k), random_state=self.seed).fit(x)
            x = self.pca_.transform(x)
        self.n_features_in_, self.target_ndim_, self.n_train_ = self.scaler_.n_features_in_, y.ndim, x.shape[0]
        self.n_targets_ = y.shape[1] if y.ndim == 2 else None
        self.fitted_ = (_fit_classifier if y.ndim == 1 else _fit_regressor)(x, y, self.seed)
        return self

    def score(self, test_tiles: Any, test_targets: Any) -> dict:
        """Apply the probe to (generated) tiles of held-out cells and score it against their true targets.

        Parameters
        ----------
        test_tiles
            Tiles (N, C, H, W) as in :meth:`fit` (feature arrays with ``"precomputed"``).
        test_targets
            TRUE targets of the held-out cells, of the training targets' kind.

        Returns
        -------
        dict
            ``task``, ``score``, ``score_sd``, ``chance`` (0.0 for regression), ``n_train``,
            ``n_test``, ``per_row`` (n_test,), plus ``n_dropped`` and ``C`` (classification) or
            ``r2`` and ``alpha`` (regression).

        Raises
        ------
        RuntimeError
            Before :meth:`fit`.
        ValueError
            Bad tiles or features, another feature width than in :meth:`fit`, targets whose
            length or kind differs, no test row left.
        """
        if not hasattr(self, "fitted_"):
            raise RuntimeError("This FidelityProbe is not fitted yet; call fit(train_tiles, train_targets) first.")
        x = _features(test_tiles, self.features, "test_tiles")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"train and test features differ in width: {self.n_features_in_} vs {x.shape[1]}.")
        y = _targets(test_targets, x, "test")
        if y.ndim != self.target_ndim_:
            raise ValueError(f"train_targets is {self.target_ndim_}-D but test_targets is {y.ndim}-D.")
        x = self.scaler_.transform(x)
        if self.pca_ is not None:
            x = self.pca_.transform(x)
        if y.ndim == 1:
            labels = self.fitted_[2]
            y = y if labels.dtype.kind in "biuf" and y.dtype.kind in "biuf" else y.astype(str)
            out = _score_classifier(self.fitted_, x, y, self.seed, self.n_boot)
        else:
            y = _as_float_2d(y, "test_targets")
            if y.shape[1] != self.n_targets_:
                raise ValueError(f"train_targets has {self.n_targets_} columns and test_targets {y.shape[1]}.")
            out = _score_regressor(self.fitted_, x, y, self.seed, self.n_boot)
        return {**out, "n_train": self.n_train_}


def conditioning_fidelity(
    train_tiles: Any, train_targets: Any, test_tiles: Any, test_targets: Any, *,
    features: Union[str, Callable] = "pixels", n_components: int | None = None, seed: int = 0, n_boot: int = 200,
) -> dict:
    """Score a probe fitted on real tiles -> conditioning targets on generated tiles of held-out cells.

    One call of :class:`FidelityProbe` ``(features, n_components=, seed=, n_boot=).fit(train_tiles,
    train_targets).score(test_tiles, test_targets)``: see there for the features, the probe and the
    scores. To score several generated sets against the same real training tiles, fit the probe
    once and call its ``score`` per set.

    Parameters
    ----------
    train_tiles, test_tiles
        Real training tiles and generated tiles of held-out cells: (N, C, H, W) arrays / tensors
        in [0, 1] (or whatever the ``features`` callable accepts; (N, F) feature arrays with
        ``features="precomputed"``).
    train_targets, test_targets
        Targets of the training cells and TRUE targets of the held-out cells, one row per tile.
        Continuous 1-D targets must be passed as (N, 1).
    features
        ``"pixels"``, ``"inception"``, ``"precomputed"`` or a callable.
    n_components
        PCA components of the standardised features (None: no PCA).
    seed
        Seeds the CV folds, the PCA and the bootstrap (``np.random.default_rng(seed)``).
    n_boot
        Bootstrap resamples of the test rows for ``score_sd`` (< 2 gives NaN).

    Returns
    -------
    dict
        ``task``, ``score``, ``score_sd``, ``chance`` (0.0 for regression), ``n_train``, ``n_test``,
        ``per_row`` (n_test,), plus ``n_dropped`` and ``C`` (classification) or ``r2`` and
        ``alpha`` (regression).

    Raises
    ------
    ValueError
        On bad tiles or features, targets whose length differs from the tiles, fewer than 2 rows
        or classes, continuous 1-D targets, mismatched K, no test row left, bad ``n_components``.

    Examples
    --------
    >>> gen = model.generate(sdata, indices=test_idx)[:, 0].values          # first draw, (N, C, H, W)
    >>> res = bd.metrics.conditioning_fidelity(train_tiles, train_labels, gen, test_labels)
    >>> res["score"], res["chance"]                                       # balanced accuracy vs chance
    >>> bd.metrics.conditioning_fidelity(train_tiles, train_pcs, gen, test_pcs, n_components=50)   # (N, K) targets
    >>> f_train, f_gen = bd.metrics.inception_features(train_tiles), bd.metrics.inception_features(gen)
    >>> bd.metrics.conditioning_fidelity(f_train, train_labels, f_gen, test_labels, features="precomputed")
    """
    probe = FidelityProbe(features, n_components=n_components, seed=seed, n_boot=n_boot)
    return probe.fit(train_tiles, train_targets).score(test_tiles, test_targets)


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per row), got shape {arr.shape}.")
    return _as_float_2d(arr[:, None], name)


def paired_difference(
    per_row_a: Any, per_row_b: Any, *, n_boot: int = 1000, seed: int = 0, higher_is_better: bool = True
) -> dict:
    """Paired bootstrap of ``mean(a) - mean(b)`` over rows (e.g. right vs shuffled conditioning).

    Parameters
    ----------
    per_row_a, per_row_b
        1-D per-row values of the same rows under two conditions (``per_row`` of
        :func:`conditioning_fidelity`).
    n_boot
        Bootstrap resamples (>= 2), drawn with ``np.random.default_rng(seed)``.
    seed
        Random seed.
    higher_is_better
        If True ``p_value`` is the fraction of bootstrap differences <= 0, else >= 0
        (the one-sided chance that ``a`` is not better than ``b``).

    Returns
    -------
    dict
        ``difference``, ``sd``, ``ci_low`` / ``ci_high`` (2.5 / 97.5 % percentiles), ``p_value``.

    Raises
    ------
    ValueError
        If the inputs are not 1-D, finite, non-empty and of equal length, or ``n_boot`` < 2.

    Examples
    --------
    >>> right = bd.metrics.conditioning_fidelity(train_tiles, train_labels, gen, test_labels)
    >>> shuffled = bd.metrics.conditioning_fidelity(train_tiles, train_labels, gen_shuffled, test_labels)
    >>> bd.metrics.paired_difference(right["per_row"], shuffled["per_row"], n_boot=1000)
    """
    a, b = _as_1d(per_row_a, "per_row_a"), _as_1d(per_row_b, "per_row_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"per_row_a has {a.shape[0]} rows and per_row_b {b.shape[0]}; they must be paired.")
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot}.")
    d = (a - b).ravel()
    rng = np.random.default_rng(seed)
    boots = np.concatenate([d[rng.integers(0, d.size, (min(100, n_boot - s), d.size))].mean(axis=1)
                            for s in range(0, int(n_boot), 100)])
    p = np.mean(boots <= 0) if higher_is_better else np.mean(boots >= 0)
    return {"difference": float(d.mean()), "sd": float(boots.std(ddof=1)), "ci_low": float(np.percentile(boots, 2.5)),
            "ci_high": float(np.percentile(boots, 97.5)), "p_value": float(p)}
