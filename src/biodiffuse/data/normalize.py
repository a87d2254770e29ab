"""Invertible per-channel normaliser: Yeo-Johnson, then 1st/99th percentile scaling (MCD C.2)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.preprocessing import PowerTransformer

__all__ = ["ChannelNormalizer"]


class ChannelNormalizer:
    """Yeo-Johnson transform per channel, then map the 1st / 99th percentiles to 0 / 1.

    Fitted on training rows only; NaN entries (unmeasured channels) are ignored when fitting
    and kept as NaN when transforming. :meth:`inverse_transform` maps model outputs back to
    the original scale; values beyond the range the Yeo-Johnson transform can reach are
    clipped to its edge instead of becoming NaN.

    Parameters
    ----------
    lower, upper
        Percentiles mapped to 0 and 1.

    Examples
    --------
    >>> norm = bd.data.ChannelNormalizer(lower=1.0, upper=99.0).fit(x_train)   # cells x channels
    >>> z = norm.transform(x_test)                     # about [0, 1]; NaN stays NaN
    >>> x_back = norm.inverse_transform(z)             # original scale
    >>> norm = bd.data.ChannelNormalizer.from_dict(norm.to_dict())   # JSON round trip
    """

    def __init__(self, lower: float = 1.0, upper: float = 99.0) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"Need 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower = float(lower)
        self.upper = float(upper)
        self.lambdas_: np.ndarray | None = None
        self.low_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.min_: np.ndarray | None = None
        self.max_: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        return self.lambdas_ is not None

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"Expected a 2-D array (rows x channels), got shape {x.shape}.")
        if np.isinf(x).any():
            raise ValueError("Input contains inf.")
        if self.is_fitted and x.shape[1] != len(self.lambdas_):
            raise ValueError(f"Expected {len(self.lambdas_)} channels, got {x.shape[1]}.")
        return x

    def _power(self) -> PowerTransformer:
        pt = PowerTransformer(method="yeo-johnson", standardize=False)
        pt.lambdas_ = self.lambdas_
        pt.n_features_in_ = len(self.lambdas_)
        return pt

    def fit(self, x: np.ndarray) -> "ChannelNormalizer":
        """Fit on rows x channels (NaN = not measured)."""
        x = self._check(x)
        if x.shape[0] < 2:
            raise ValueError("Need at least two rows to fit the normaliser.")
        if np.isnan(x).all(axis=0).any():
            bad = np.flatnonzero(np.isnan(x).all(axis=0)).tolist()
            raise ValueError(f"Channels {bad} have no measured value in the training rows.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(x)
            self.lambdas_ = pt.lambdas_.astype(np.float64)
            y = pt.transform(x)
        low = np.nanpercentile(y, self.lower, axis=0)
        high = np.nanpercentile(y, self.upper, axis=0)
        scale = high - low
        flat = scale <= 1e-12
        if flat.any():
            warnings.warn(f"{int(flat.sum())} channel(s) are constant between the percentiles; scale set to 1.")
            scale = np.where(flat, 1.0, scale)
        self.low_, self.scale_ = low, scale
        self.min_, self.max_ = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Original scale -> normalised scale (about [0, 1])."""
        self._require_fitted()
        x = self._check(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            y = self._power().transform(x)
        return (y - self.low_) / self.scale_

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def inverse_transform(self, z: np.ndarray, clip: tuple[float, float] | None = (-1.0, 2.0)) -> np.ndarray:
        """Normalised scale -> original scale.

        Parameters
        ----------
        z
            Values in the normalised scale.
        clip
            Clip ``z`` to this range first (default: one 1st-99th percentile width beyond
            either end), so that a wild generated value cannot overflow the exponential
            branch of the inverse Yeo-Johnson. None: no clipping. The result is also
            clipped to the range of the fitted data (original scale).
        """
        self._require_fitted()
        z = self._check(z)
        if clip is not None:
            z = np.clip(z, *clip)
        y = z * self.scale_ + self.low_
        lam = self.lambdas_
        eps = 1e-9
        # Yeo-Johnson is bounded above for lambda < 0 (x >= 0 branch) and below for
        # lambda > 2 (x < 0 branch): clip to the reachable range before inverting.
        with np.errstate(divide="ignore"):
            upper = np.where(lam < 0, -1.0 / np.where(lam < 0, lam, -1.0) - eps, np.inf)
            lower = np.where(lam > 2, 1.0 / np.where(lam > 2, 2.0 - lam, -1.0) + eps, -np.inf)
        y = np.clip(y, lower, upper)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x = self._power().inverse_transform(y)
        if clip is not None and self.min_ is not None:
            x = np.clip(x, self.min_, self.max_)
        return x

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("ChannelNormalizer is not fitted; call fit first.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        self._require_fitted()
        return {
            "lower": self.lower,
            "upper": self.upper,
            "lambdas": self.lambdas_.tolist(),
            "low": self.low_.tolist(),
            "scale": self.scale_.tolist(),
            "min": None if self.min_ is None else self.min_.tolist(),
            "max": None if self.max_ is None else self.max_.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ChannelNormalizer":
        """Rebuild a fitted normaliser from :meth:`to_dict` output."""
        obj = cls(state["lower"], state["upper"])
        obj.lambdas_ = np.asarray(state["lambdas"], dtype=np.float64)
        obj.low_ = np.asarray(state["low"], dtype=np.float64)
        obj.scale_ = np.asarray(state["scale"], dtype=np.float64)
        if state.get("min") is not None:  # absent in early saved models
            obj.min_ = np.asarray(state["min"], dtype=np.float64)
            obj.max_ = np.asarray(state["max"], dtype=np.float64)
        return obj
