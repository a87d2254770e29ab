"""Channel -> channel baselines: impute missing channels from the observed channels of the same cells.

The inputs are tables of cells x channels (DataFrames, columns = channel names), already
normalised (e.g. log1p ADT counts). The observed channels are the features, the target
channels what is predicted. These are the baselines for MCD's any-subset imputation:

``"mean"``
    The per-channel training mean (a constant; its per-channel Pearson r is undefined).
``"most_correlated"``
    For each target, the observed channel with the highest absolute Pearson correlation on
    the training cells, and a least-squares line through it (:func:`most_correlated_channel`,
    the single-channel baseline of the MCD paper).
``"ridge"``, ``"knn"``, ``"krr"``
    Ridge regression, k-nearest-neighbour regression and RBF kernel ridge regression on all
    observed channels.

Features are standardised with the training cells' mean and sd. For ``ridge`` / ``knn`` /
``krr`` the targets are standardised the same way while fitting (so that the shared
hyper-parameters are chosen with every target weighted equally) and predictions are
returned in the original units. Every hyper-parameter is chosen by
:class:`~sklearn.model_selection.GridSearchCV` on the training cells only, with shuffled
:class:`~sklearn.model_selection.KFold` (5 folds, 3 below 50 training cells) seeded by
``seed`` and the mean squared error as score.

:class:`ChannelRegressor` is the scikit-learn estimator (``fit(X_observed, Y_targets)`` /
``predict(X_observed)``); :func:`fit_predict_channels` the one-call form used by the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from .tables import KNN_NEIGHBORS, KRR_ALPHAS, KRR_GAMMA_FACTORS, RIDGE_ALPHAS, _blas_threads

__all__ = ["CHANNEL_METHODS", "ChannelRegressor", "MostCorrelatedChannel", "most_correlated_channel", "fit_predict_channels"]

CHANNEL_METHODS = ("mean", "most_correlated", "ridge", "knn", "krr")


def _check_names(names: Sequence[str], what: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, (Sequence, pd.Index, np.ndarray)):
        raise TypeError(f"{what} must be a list of channel names, got {type(names).__name__}.")
    out = list(names)
    if not out:
        raise ValueError(f"{what} is empty; give at least one channel name.")
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise ValueError(f"{what} repeats channel name(s) {dup}.")
    return out


def _check_channels(observed: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
    obs = _check_names(observed, "observed")
    tgt = _check_names(targets, "targets")
    both = [n for n in tgt if n in set(obs)]
    if both:
        raise ValueError(f"Channel(s) {both} are both observed and targets; a target must be missing, not observed.")
    return obs, tgt


def _values(frame: pd.DataFrame, cols: list[str], what: str) -> np.ndarray:
    """``frame[cols]`` as float64, with clear errors on a wrong type, missing names, or NaN / inf."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame (cells x channels), got {type(frame).__name__}.")
    if frame.columns.has_duplicates:
        raise ValueError(f"{what} has duplicated column names {frame.columns[frame.columns.duplicated()].unique().tolist()}.")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} lacks channel(s) {missing[:10]} (it has {frame.shape[1]} columns, e.g. {list(frame.columns[:5])}).")
    if frame.shape[0] == 0:
        raise ValueError(f"{what} has no cells.")
    block = frame[cols]
    bad = [c for c, t in block.dtypes.items() if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)]
    if bad:
        raise ValueError(f"{what} channel(s) {bad[:10]} are not numeric.")
    arr = block.to_numpy(dtype=np.float64)
    if not np.isfinite(arr).all():
        bad_cols = [c for c, ok in zip(cols, np.isfinite(arr).all(axis=0)) if not ok]
        raise ValueError(
            f"{what} has NaN or inf values in channel(s) {bad_cols[:10]}; the channels used must be fully measured "
            "(drop those cells, or leave the channel out)."
        )
    return arr


class MostCorrelatedChannel:
    """Per target channel: the most correlated observed channel and a least-squares line.

    Made by :func:`most_correlated_channel`. Attributes are set at fit time.

    Parameters
    ----------
    observed, targets
        Names of the observed and of the target channels.
    choice
        Target -> chosen observed channel.
    correlation
        Signed Pearson r of each target with its chosen channel (Series over targets).
    slope, intercept
        Coefficients of the fitted lines (Series over targets).

    Attributes
    ----------
    observed, targets
        Channel names (lists).
    choice
        Target -> chosen observed channel (dict).
    correlation
        Signed Pearson r of each target with its chosen channel on the training cells
        (Series over targets; 0 where undefined, e.g. a constant target).
    slope, intercept
        Line coefficients: ``target ~ intercept + slope * chosen`` (Series over targets).

    Examples
    --------
    >>> mc = bd.baselines.most_correlated_channel(train_cells, observed=observed, targets=["CD3", "CD8"])
    >>> mc.choice, mc.correlation                  # target -> chosen channel, signed r
    >>> pred = mc.predict(test_cells[observed])    # DataFrame, columns CD3, CD8
    """

    def __init__(self, observed: list[str], targets: list[str], choice: dict[str, str],
                 correlation: pd.Series, slope: pd.Series, intercept: pd.Series) -> None:
        self.observed = observed
        self.targets = targets
        self.choice = choice
        self.correlation = correlation
        self.slope = slope
        self.intercept = intercept

    def __repr__(self) -> str:
        shown = ", ".join(f"{t}<-{c}" for t, c in list(self.choice.items())[:5])
        more = ", ..." if len(self.choice) > 5 else ""
        return f"MostCorrelatedChannel({len(self.targets)} targets from {len(self.observed)} observed: {shown}{more})"

    def predict(self, X_observed: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Predict the target channels.

        Parameters
        ----------
        X_observed
            DataFrame holding (at least) the chosen observed channels, matched by name; or
            an array whose columns are ``observed`` in order. Values in the same units as
            the training table.

        Returns
        -------
        pandas.DataFrame
            Cells x targets (index from ``X_observed`` if it is a DataFrame).
        """
        chosen = [self.choice[t] for t in self.targets]
        if isinstance(X_observed, pd.DataFrame):
            needed = list(dict.fromkeys(chosen))
            x = _values(X_observed, needed, "X_observed")
            cols = [needed.index(c) for c in chosen]
            index = X_observed.index
        else:
            arr = np.asarray(X_observed, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != len(self.observed):
                raise ValueError(f"X_observed array must be 2-D with {len(self.observed)} columns (observed), got shape {arr.shape}.")
            if not np.isfinite(arr).all():
                raise ValueError("X_observed contains NaN or inf values.")
            x = arr
            cols = [self.observed.index(c) for c in chosen]
            index = pd.RangeIndex(arr.shape[0])
        pred = self.intercept.to_numpy()[None, :] + x[:, cols] * self.slope.to_numpy()[None, :]
        return pd.DataFrame(pred, index=index, columns=list(self.targets))


def most_correlated_channel(train: pd.DataFrame, observed: Sequence[str], targets: Sequence[str]) -> MostCorrelatedChannel:
    """Fit the most-correlated-channel baseline on the training cells.

    For each target channel the observed channel with the highest absolute Pearson
    correlation across the training cells is chosen (ties: the first in ``observed``;
    constant channels have correlation 0), then ``target ~ a + b * chosen`` is fitted by
    least squares on the training cells.

    Parameters
    ----------
    train
        Training cells x channels (normalised values). Must hold ``observed`` and
        ``targets`` without NaN / inf; other columns are ignored. Not modified.
    observed
        Names of the channels available at prediction time.
    targets
        Names of the channels to predict (disjoint from ``observed``).

    Returns
    -------
    MostCorrelatedChannel
        With ``.predict(X_observed)`` and ``.choice`` (target -> chosen channel).

    Raises
    ------
    KeyError
        If a name is not a column of ``train``.
    ValueError
        On empty or overlapping name lists, fewer than 2 training cells, or NaN / inf in
        the used training entries.

    Examples
    --------
    >>> cells = np.log1p(sdata.tables["table"].to_df())
    >>> observed = [c for c in cells.columns if c not in ("CD3", "CD8")]
    >>> mc = bd.baselines.most_correlated_channel(cells.loc[train_ids], observed, ["CD3", "CD8"])
    >>> mc.choice                                  # target -> chosen observed channel
    >>> pred = mc.predict(cells.loc[test_ids, observed])
    """
    obs, tgt = _check_channels(observed, targets)
    x = _values(train, obs, "train")
    y = _values(train, tgt, "train")
    if x.shape[0] < 2:
        raise ValueError(f"train needs at least 2 cells, got {x.shape[0]}.")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    sx, sy = np.sqrt((xc**2).sum(axis=0)), np.sqrt((yc**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (yc.T @ xc) / np.outer(sy, sx)  # targets x observed
    r[~np.isfinite(r)] = 0.0
    best = np.argmax(np.abs(r), axis=1)
    slopes, intercepts, corrs = [], [], []
    for j, k in enumerate(best):
        var = float((xc[:, k] ** 2).sum())
        b = float(xc[:, k] @ yc[:, j]) / var if var > 0 else 0.0
        slopes.append(b)
        intercepts.append(float(y[:, j].mean() - b * x[:, k].mean()))
        corrs.append(float(r[j, k]))
    choice = {t: obs[k] for t, k in zip(tgt, best)}
    return MostCorrelatedChannel(
        obs, tgt, choice,
        correlation=pd.Series(corrs, index=tgt, name="r"),
        slope=pd.Series(slopes, index=tgt, name="slope"),
        intercept=pd.Series(intercepts, index=tgt, name="intercept"),
    )


def _kfold(n: int, seed: int):
    from sklearn.model_selection import KFold

    return KFold(n_splits=5 if n >= 50 else 3, shuffle=True, random_state=seed)


def fit_predict_channels(
    method: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    observed: Sequence[str],
    targets: Sequence[str],
    seed: int = 0,
) -> pd.DataFrame:
    """Fit a channel-imputation baseline on the training cells and predict the test cells.

    Parameters
    ----------
    method
        One of :data:`CHANNEL_METHODS`: ``"mean"``; ``"most_correlated"``
        (:func:`most_correlated_channel`); ``"ridge"`` (:class:`~sklearn.linear_model.Ridge`,
        ``alpha`` in ``logspace(-2, 4, 13)``); ``"knn"``
        (:class:`~sklearn.neighbors.KNeighborsRegressor`, distance weights, ``n_neighbors``
        in (5, 10, 20, 30) up to the smallest CV training fold); ``"krr"``
        (:class:`~sklearn.kernel_ridge.KernelRidge`, RBF kernel, ``alpha`` in
        (0.01, 0.1, 1), ``gamma`` in (0.01, 0.03, 0.1, 0.3, 1, 3) / n_observed: with
        standardised features, the scale of scikit-learn's ``gamma="scale"``). One
        hyper-parameter setting for all targets, chosen by shuffled K-fold CV (5 folds;
        3 below 50 training cells) on the training cells, scored by MSE over the
        standardised targets.
    train
        Training cells x channels, normalised; must hold ``observed`` and ``targets`` with
        finite values (other columns and their NaN are ignored). Not modified.
    test
        Test cells x channels; must hold ``observed`` with finite values. Its target
        columns, if any, are not read.
    observed
        Names of the channels used as features.
    targets
        Names of the channels to predict (disjoint from ``observed``).
    seed
        Seed of the CV fold split.

    Returns
    -------
    pandas.DataFrame
        Predictions, index ``test.index``, columns ``targets``. ``.attrs["method"]`` and
        ``.attrs["params"]`` record the method and its chosen hyper-parameters (for
        ``"most_correlated"``: the chosen channel per target).

    Raises
    ------
    ValueError
        Unknown method, empty / repeated / overlapping name lists, NaN / inf or non-numeric
        values in the used entries, too few training cells (2; 3 for the CV methods).
    KeyError
        A name missing from ``train`` (observed or target) or ``test`` (observed).

    Examples
    --------
    >>> cells = np.log1p(sdata.tables["table"].to_df())          # cells x channels, normalised
    >>> observed = [c for c in cells.columns if c not in ("CD3", "CD8")]
    >>> train, test = cells.loc[train_ids], cells.loc[test_ids]
    >>> pred = bd.baselines.fit_predict_channels("ridge", train, test, observed, ["CD3", "CD8"])
    >>> pred.attrs["params"]                                     # the chosen hyper-parameters
    """
    if method not in CHANNEL_METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods are {list(CHANNEL_METHODS)}.")
    obs, tgt = _check_channels(observed, targets)
    x_train = _values(train, obs, "train")
    _values(train, tgt, "train")
    _values(test, obs, "test")
    n = x_train.shape[0]
    min_cells = 2 if method in ("mean", "most_correlated") else 3
    if n < min_cells:
        raise ValueError(f"method {method!r} needs at least {min_cells} training cells, got {n}.")

    model = ChannelRegressor(method=method, seed=seed).fit(train[obs], train[tgt])
    out = model.predict(test[obs])
    out.index = test.index.copy()
    out.attrs["method"] = method
    out.attrs["params"] = model.params_
    return out


class ChannelRegressor(RegressorMixin, BaseEstimator):
    """A channel-imputation baseline as a scikit-learn estimator.

    ``fit(X, y)`` with ``X`` the observed channels and ``y`` the target channels of the
    training cells (DataFrames, matched by column name at prediction time; or arrays);
    ``predict(X)`` returns the targets for new cells (a DataFrame over the target names).

    Parameters
    ----------
    method
        One of :data:`CHANNEL_METHODS` (see :func:`fit_predict_channels`).
    seed
        Seed of the CV fold split.

    Attributes
    ----------
    observed_, targets_
        Channel names (``"x0"``... / ``"y0"``... for arrays).
    params_
        The chosen hyper-parameters (for ``"most_correlated"``: the chosen channel per target).

    Examples
    --------
    >>> cells = np.log1p(sdata.tables["table"].to_df())          # cells x channels
    >>> observed = [c for c in cells.columns if c not in ("CD3", "CD8")]
    >>> train, test = cells.loc[train_ids], cells.loc[test_ids]
    >>> reg = bd.baselines.ChannelRegressor("knn").fit(train[observed], train[["CD3", "CD8"]])
    >>> pred = reg.predict(test[observed])                       # DataFrame, columns CD3, CD8
    """

    def __init__(self, method: str = "ridge", seed: int = 0) -> None:
        self.method = method
        self.seed = seed

    def fit(self, X: pd.DataFrame | np.ndarray, y: pd.DataFrame | np.ndarray) -> ChannelRegressor:
        """Fit on the training cells' observed channels ``X`` and target channels ``y``."""
        if self.method not in CHANNEL_METHODS:
            raise ValueError(f"Unknown method {self.method!r}; valid methods are {list(CHANNEL_METHODS)}.")
        x_frame, y_frame = _as_frame(X, "x", "X"), _as_frame(y, "y", "y")
        if len(x_frame) != len(y_frame):
            raise ValueError(f"X has {len(x_frame)} cells but y has {len(y_frame)}.")
        obs, tgt = _check_channels(list(x_frame.columns), list(y_frame.columns))
        x_train = _values(x_frame, obs, "X")
        y_train = _values(y_frame, tgt, "y")
        n = x_train.shape[0]
        min_cells = 2 if self.method in ("mean", "most_correlated") else 3
        if n < min_cells:
            raise ValueError(f"method {self.method!r} needs at least {min_cells} training cells, got {n}.")
        self.observed_, self.targets_ = obs, tgt
        self.params_: dict = {}
        self._n_train = n
        if self.method == "mean":
            self._mean = y_train.mean(axis=0, keepdims=True)
        elif self.method == "most_correlated":
            train = pd.DataFrame(np.hstack([x_train, y_train]), columns=obs + tgt)
            self._line = most_correlated_channel(train, obs, tgt)
            self.params_ = {"choice": dict(self._line.choice)}
        else:
            self._mu_x, sd_x = x_train.mean(axis=0), x_train.std(axis=0)
            sd_x[sd_x == 0] = 1.0
            self._sd_x = sd_x
            self._mu_y, sd_y = y_train.mean(axis=0), y_train.std(axis=0)
            sd_y[sd_y == 0] = 1.0
            self._sd_y = sd_y
            with _blas_threads(n):
                self._search, self.params_ = _fit_cv(
                    self.method, (x_train - self._mu_x) / sd_x, (y_train - self._mu_y) / sd_y, self.seed
                )
        return self

    def predict(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Targets of the cells ``X`` (observed channels, by name for a DataFrame)."""
        if not hasattr(self, "observed_"):
            raise RuntimeError("ChannelRegressor is not fitted; call fit(X, y) first.")
        if isinstance(X, pd.DataFrame):
            x_test, index = _values(X, self.observed_, "X"), X.index
        else:
            frame = _as_frame(X, "x", "X")
            x_test = _values(frame, list(frame.columns), "X")
            if x_test.shape[1] != len(self.observed_):
                raise ValueError(f"X has {x_test.shape[1]} columns, the regressor was fitted on {len(self.observed_)}.")
            index = pd.RangeIndex(x_test.shape[0])
        if self.method == "mean":
            pred = np.repeat(self._mean, x_test.shape[0], axis=0)
        elif self.method == "most_correlated":
            pred = self._line.predict(x_test).to_numpy()
        else:
            f_test = (x_test - self._mu_x) / self._sd_x
            with _blas_threads(self._n_train):
                z = np.asarray(self._search.predict(f_test), dtype=np.float64).reshape(f_test.shape[0], len(self.targets_))
            pred = z * self._sd_y + self._mu_y
        return pd.DataFrame(pred, index=index, columns=list(self.targets_))


def _as_frame(x: pd.DataFrame | np.ndarray, prefix: str, what: str) -> pd.DataFrame:
    if isinstance(x, pd.DataFrame):
        return x
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (cells x channels), got shape {arr.shape}.")
    return pd.DataFrame(arr, columns=[f"{prefix}{i}" for i in range(arr.shape[1])])


def _fit_cv(method: str, f_train: np.ndarray, z_train: np.ndarray, seed: int):
    """The fitted grid search of ``method`` on standardised features / targets, and its best parameters."""
    from sklearn.model_selection import GridSearchCV

    n = f_train.shape[0]
    cv = _kfold(n, seed)
    if method == "ridge":
        from sklearn.linear_model import Ridge

        estimator, grid = Ridge(), {"alpha": list(RIDGE_ALPHAS)}
    elif method == "knn":
        from sklearn.neighbors import KNeighborsRegressor

        smallest_fold_train = n - int(np.ceil(n / cv.get_n_splits()))
        ks = [k for k in KNN_NEIGHBORS if k <= smallest_fold_train] or [max(1, smallest_fold_train)]
        estimator, grid = KNeighborsRegressor(weights="distance"), {"n_neighbors": ks}
    else:
        from sklearn.kernel_ridge import KernelRidge

        d = f_train.shape[1]
        estimator = KernelRidge(kernel="rbf")
        grid = {"alpha": list(KRR_ALPHAS), "gamma": [g / d for g in KRR_GAMMA_FACTORS]}
    search = GridSearchCV(estimator, grid, cv=cv, scoring="neg_mean_squared_error").fit(f_train, z_train)
    params = {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in search.best_params_.items()}
    return search, params
