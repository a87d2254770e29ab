"""Virtual-staining metrics (StainDiffuser on HEMIT-style multiplex tiles: DAPI + markers).

Tiles are ``(N, C, H, W)`` (one channel per stain), ``uint8`` in 0..255 or float in ``[0, 1]``.

* :func:`per_stain_scores`: HEMIT's per-stain PSNR, SSIM and pixel Pearson r.
* :func:`stain_masks`, :func:`dice`, :func:`iou`: segmentation labels made automatically by
  thresholding each stain with ONE global threshold per stain, pooled over all tiles of a
  set: Otsu (default) or ``mean + k sd``. Compute them on the real (training) set and pass
  the returned ``thresholds`` for the test and generated tiles, so both sides use one cut.
* :func:`nuclei_labels`, :func:`nuclei_positivity`, :func:`positivity_agreement`: what a
  pathologist reads, the fraction of nuclei positive for each marker per tile, real vs
  virtual. Segment the nuclei ONCE from the REAL DAPI (:func:`nuclei_labels`) and pass the
  labels for both sides, so real and virtual fractions count the same nuclei.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu
from skimage.segmentation import expand_labels

from .images import _as_batch, psnr, ssim
from .imputation import _pearson_along
from .morphometry import _segment

__all__ = ["cell_means", "dice", "iou", "nuclei_labels", "nuclei_positivity", "per_stain_scores", "positivity_agreement",
           "stain_masks"]

RING_PX = 2  #: pixels by which each nucleus is grown (never into a neighbour) to read a marker


def _tiles(x: object, name: str) -> np.ndarray:
    """Validated (N, C, H, W) uint8 or float-in-[0, 1] array (4-D, non-empty, finite)."""
    arr = _as_batch(x, name)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 (0..255) or float in [0, 1], got dtype {arr.dtype}.")
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"float {name} must lie in [0, 1], got [{arr.min():g}, {arr.max():g}].")
    return arr


def _thresholds(thresholds: object, arr: np.ndarray) -> np.ndarray:
    """(C,) finite thresholds in the units of ``arr`` (0..255 for uint8, [0, 1] for float)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (arr.shape[1],):
        raise ValueError(f"thresholds must have one value per channel, shape ({arr.shape[1]},), got {t.shape}.")
    hi = 255.0 if arr.dtype == np.uint8 else 1.0
    if not np.isfinite(t).all() or t.min() < 0 or t.max() > hi:
        raise ValueError(f"thresholds must be finite and in [0, {hi:g}] (the images' units), got {t.tolist()}; "
                         "thresholds from uint8 tiles apply to float tiles divided by 255.")
    return t


def _names(stains: Sequence[str] | None, n: int) -> list[str]:
    if stains is None:
        return [f"ch{i}" for i in range(n)]
    names = [str(s) for s in stains]
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"stains must be {n} distinct names (one per channel), got {names}.")
    return names


def stain_masks(images: object, *, method: Literal["otsu", "mean_sd"] = "otsu", k: float = 1.0,
                thresholds: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask of each stain by one global threshold per channel: ``pixel > threshold``.

    Parameters
    ----------
    images
        ``(N, C, H, W)`` tiles, uint8 or float in ``[0, 1]``, typically the real (training) set.
    method
        ``"otsu"``: :func:`skimage.filters.threshold_otsu` of the channel's pixels pooled
        over all ``N`` tiles; ``"mean_sd"``: their mean + ``k`` standard deviations.
        Ignored when ``thresholds`` is given.
    k
        Standard deviations above the mean for ``"mean_sd"`` (>= 0); a threshold above the
        images' range is clipped to its top (the mask is empty either way).
    thresholds
        ``(C,)`` thresholds to use as they are (e.g. the training set's), in the images' units.

    Returns
    -------
    masks : numpy.ndarray
        ``(N, C, H, W)`` bool. A constant channel gives its value as threshold, an empty mask.
    thresholds : numpy.ndarray
        ``(C,)`` float64, in the images' units (0..255 for uint8, ``[0, 1]`` for float).

    Raises
    ------
    ValueError
        On bad images (not 4-D, empty, NaN / inf, out of range), method, k or thresholds.

    Examples
    --------
    >>> masks, thr = bd.metrics.stain_masks(real_train)                  # Otsu per channel
    >>> test_masks, _ = bd.metrics.stain_masks(real_test, thresholds=thr)
    >>> masks, thr = bd.metrics.stain_masks(real_train, method="mean_sd", k=2.0)
    """
    arr = _tiles(images, "images")
    chans = range(arr.shape[1])
    if thresholds is not None:
        t = _thresholds(thresholds, arr)
    elif method == "otsu":
        t = np.array([threshold_otsu(arr[:, c]) for c in chans], dtype=np.float64)
    elif method == "mean_sd":
        if not (np.isfinite(k) and k >= 0):
            raise ValueError(f"k must be finite and >= 0, got {k}.")
        hi = 255.0 if arr.dtype == np.uint8 else 1.0  # above the range the mask is empty either way
        t = np.array([min(hi, arr[:, c].mean(dtype=np.float64) + k * arr[:, c].std(dtype=np.float64))
                      for c in chans])
    else:
        raise ValueError(f"method must be 'otsu' or 'mean_sd', got {method!r}.")
    return arr > t[None, :, None, None], t


def _overlap(pred: object, true: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (tile, channel) intersection and the two mask sizes."""
    p, q = np.asarray(pred), np.asarray(true)
    for name, m in (("pred", p), ("true", q)):
        if m.dtype != bool:
            raise ValueError(f"{name} must be a boolean mask, got dtype {m.dtype} (threshold it first).")
        if m.ndim != 4 or m.size == 0:
            raise ValueError(f"{name} must be a non-empty (N, C, H, W) mask, got shape {m.shape}.")
    if p.shape != q.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {q.shape}.")
    return (p & q).sum(axis=(2, 3)), p.sum(axis=(2, 3)), q.sum(axis=(2, 3))


def _reduce(score: np.ndarray, reduction: str) -> np.ndarray:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
    return score.mean(axis=0) if reduction == "mean" else score


def dice(pred: object, true: object, *, reduction: Literal["mean", "none"] = "mean") -> np.ndarray:
    """Dice ``2 |P & T| / (|P| + |T|)`` of each (tile, channel) mask pair; 1.0 when both are empty.

    Parameters
    ----------
    pred, true
        ``(N, C, H, W)`` boolean masks (e.g. from :func:`stain_masks` with one set of thresholds).
    reduction
        ``"mean"``: ``(C,)`` means over tiles; ``"none"``: the ``(N, C)`` scores.

    Returns
    -------
    numpy.ndarray
        float64 in ``[0, 1]``, higher is better.

    Raises
    ------
    ValueError
        On non-boolean masks, shapes that differ or are not 4-D, or an unknown reduction.

    Examples
    --------
    >>> true_masks, thr = bd.metrics.stain_masks(real)                    # thresholds of the real tiles
    >>> fake_masks, _ = bd.metrics.stain_masks(fake, thresholds=thr)
    >>> bd.metrics.dice(fake_masks, true_masks)                           # (C,) mean over tiles
    >>> bd.metrics.dice(fake_masks, true_masks, reduction="none")         # (N, C)
    """
    inter, a, b = _overlap(pred, true)
    den = a + b
    return _reduce(np.where(den == 0, 1.0, 2.0 * inter / np.maximum(den, 1)), reduction)


def iou(pred: object, true: object, *, reduction: Literal["mean", "none"] = "mean") -> np.ndarray:
    """Intersection over union ``|P & T| / |P | T|`` of each (tile, channel) mask pair; 1.0 when both are empty.

    Parameters, returns and errors as in :func:`dice`.

    Parameters
    ----------
    pred, true
        ``(N, C, H, W)`` boolean masks (e.g. from :func:`stain_masks` with one set of thresholds).
    reduction
        ``"mean"``: ``(C,)`` means over tiles; ``"none"``: the ``(N, C)`` scores.

    Examples
    --------
    >>> true_masks, thr = bd.metrics.stain_masks(real)
    >>> fake_masks, _ = bd.metrics.stain_masks(fake, thresholds=thr)
    >>> bd.metrics.iou(fake_masks, true_masks)                            # (C,) mean over tiles
    """
    inter, a, b = _overlap(pred, true)
    union = a + b - inter
    return _reduce(np.where(union == 0, 1.0, inter / np.maximum(union, 1)), reduction)


def per_stain_scores(real: object, fake: object, *, stains: Sequence[str] | None = None) -> pd.DataFrame:
    """PSNR, SSIM and pixel Pearson r of each stain, averaged over paired tiles (HEMIT's metrics).

    PSNR and SSIM are :func:`biodiffuse.metrics.psnr` / :func:`~biodiffuse.metrics.ssim` of
    each channel alone (skimage defaults, 7x7 window). An identical tile pair has PSNR
    ``inf``, so the mean is ``inf`` when any tile of that stain is reproduced exactly.
    When one side is uint8 and the other float, the uint8 side is divided by 255.

    Parameters
    ----------
    real, fake
        ``(N, C, H, W)`` tiles of the same shape, uint8 or float in ``[0, 1]``.
    stains
        Channel names; default ``ch0, ch1, ...``.

    Returns
    -------
    pandas.DataFrame
        One row per stain (index ``stain``): ``psnr`` (dB), ``ssim``, ``pearson`` (mean over
        tiles of the pixels' Pearson r; tiles constant on either side have none and are
        skipped, NaN when all are) and ``n_constant`` (tiles skipped).

    Raises
    ------
    ValueError
        On shapes that differ, NaN / inf, out-of-range values, or wrong stain names.

    Examples
    --------
    >>> bd.metrics.per_stain_scores(real, fake, stains=["DAPI", "mIHC_1", "mIHC_2", "mIHC_3"])
    >>> # real, fake: (N, 4, H, W) uint8 (or float in [0, 1]) tiles; one row per stain
    """
    a, b = _tiles(real, "real"), _tiles(fake, "fake")
    if a.shape != b.shape:
        raise ValueError(f"real and fake must have the same shape, got {a.shape} and {b.shape}.")
    if a.dtype != b.dtype and np.uint8 in (a.dtype, b.dtype):
        a, b = (x / 255.0 if x.dtype == np.uint8 else x for x in (a, b))
    names = _names(stains, a.shape[1])
    rows = []
    for c in range(a.shape[1]):
        x, y = a[:, c : c + 1], b[:, c : c + 1]
        flat = [x.reshape(len(x), -1), y.reshape(len(y), -1)]  # Pearson in chunks of 64 tiles (memory)
        r = np.concatenate([_pearson_along(*(f[s : s + 64].astype(np.float64) for f in flat), 1)
                            for s in range(0, len(x), 64)])
        ok = ~np.isnan(r)
        rows.append({"psnr": psnr(x, y), "ssim": ssim(x, y), "pearson": float(r[ok].mean()) if ok.any() else np.nan,
                     "n_constant": int((~ok).sum())})
    return pd.DataFrame(rows, index=pd.Index(names, name="stain"))


def nuclei_labels(images: object, *, nuclear_channel: int = 0, min_area: int = 10) -> np.ndarray:
    """Label images of the nuclei segmented in the nuclear (DAPI) channel of each tile.

    Segmentation is :func:`biodiffuse.metrics.nuclei_morphometry`'s with its defaults
    (Gaussian sigma 1, per-tile Otsu, objects and holes under ``min_area`` removed,
    watershed split of touching nuclei).

    Parameters
    ----------
    images
        ``(N, C, H, W)`` tiles, uint8 or float in ``[0, 1]``: the REAL tiles, whose labels
        :func:`nuclei_positivity` then uses for the real and the virtual stains.
    nuclear_channel
        Index of the DAPI channel.
    min_area
        Smallest nucleus, in pixels.

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)`` int32, 0 for background, nuclei ``1..n`` in each tile.

    Examples
    --------
    >>> labels = bd.metrics.nuclei_labels(real, nuclear_channel=0)        # (N, H, W), from the real DAPI
    >>> pos_real = bd.metrics.nuclei_positivity(real, thresholds=thr, labels=labels)
    >>> pos_fake = bd.metrics.nuclei_positivity(fake, thresholds=thr, labels=labels)
    """
    arr = _tiles(images, "images")
    if not 0 <= nuclear_channel < arr.shape[1]:
        raise ValueError(f"nuclear_channel {nuclear_channel} is out of range for {arr.shape[1]} channels.")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area}.")
    sig = arr[:, nuclear_channel].astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0)
    return np.stack([_segment(t, min_area=min_area, sigma=1.0, split=True, split_depth=2.0, clear_border=False)
                     for t in sig]).astype(np.int32)


def cell_means(image: np.ndarray, labels: np.ndarray, *, ring: int = RING_PX) -> tuple[np.ndarray, np.ndarray]:
    """Mean of every channel over each labelled cell, grown by ``ring`` pixels.

    The one definition of "a cell's marker intensity" (:func:`nuclei_positivity`, and the
    per-cell table of :meth:`biodiffuse.models.StainDiffuser.predict`): each nucleus is grown
    by ``ring`` pixels with :func:`skimage.segmentation.expand_labels` (never into a neighbour),
    because membrane and cytoplasmic markers sit around the nucleus.

    Parameters
    ----------
    image
        ``(C, H, W)`` intensities (any numeric dtype).
    labels
        ``(H, W)`` non-negative integer labels, 0 = background.
    ring
        Pixels to grow each label by (0: the labels as they are).

    Returns
    -------
    ids : numpy.ndarray
        ``(n,)`` the labels present, ascending.
    means : numpy.ndarray
        ``(n, C)`` float64 mean of each channel over each grown label.

    Examples
    --------
    >>> sdata = bd.datasets.mibi_granuloma()
    >>> image, labels = sdata.images["mibi"].values, sdata.labels["mibi_labels"].values
    >>> ids, means = bd.metrics.cell_means(image, labels, ring=2)          # means: (n_cells, 39)
    """
    img, lab = np.asarray(image), np.asarray(labels)
    if img.ndim != 3 or lab.shape != img.shape[1:] or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"image must be (C, H, W) and labels integer (H, W) of the same size, "
                         f"got {img.shape} and {lab.dtype} {lab.shape}.")
    grown = (expand_labels(lab, distance=int(ring)) if ring > 0 else lab).ravel().astype(np.int64)
    ids = np.unique(grown[grown > 0])
    if ids.size == 0:
        return ids, np.zeros((0, img.shape[0]))
    size = int(ids.max()) + 1
    area = np.bincount(grown, minlength=size)[ids]
    means = np.stack([np.bincount(grown, weights=img[c].ravel().astype(np.float64), minlength=size)[ids] / area
                      for c in range(img.shape[0])], axis=1)
    return ids, means


def nuclei_positivity(images: object, *, nuclear_channel: int = 0, marker_channels: Sequence[int] | None = None,
                      thresholds: object, min_area: int = 10, labels: object = None,
                      stains: Sequence[str] | None = None) -> pd.DataFrame:
    """Fraction of nuclei positive for each marker, per tile.

    Each nucleus is grown by 2 pixels (:func:`skimage.segmentation.expand_labels`, which
    never grows into a neighbour), because membrane and cytoplasmic markers sit around
    the nucleus; the nucleus is positive for a marker when the mean marker intensity over
    that grown region exceeds the marker's threshold.

    Parameters
    ----------
    images
        ``(N, C, H, W)`` tiles (real or virtual), uint8 or float in ``[0, 1]``.
    nuclear_channel
        Index of the DAPI channel, segmented unless ``labels`` is given.
    marker_channels
        Channel indices of the markers; default all but ``nuclear_channel``.
    thresholds
        ``(C,)`` per-channel thresholds in the images' units, as :func:`stain_masks` returns
        (the nuclear channel's entry is not used).
    min_area
        Smallest nucleus in pixels, when segmenting.
    labels
        ``(N, H, W)`` non-negative integer nuclei labels (0 = background), e.g.
        :func:`nuclei_labels` of the REAL tiles; pass the same labels for the virtual tiles.
    stains
        Channel names; default ``ch0, ch1, ...``.

    Returns
    -------
    pandas.DataFrame
        One row per tile (index ``tile``): ``n_nuclei`` and ``frac_<marker>`` (NaN for a tile without nuclei).

    Raises
    ------
    ValueError
        On bad images, thresholds, channel indices, stain names or labels.

    Examples
    --------
    >>> _, thr = bd.metrics.stain_masks(real)
    >>> labels = bd.metrics.nuclei_labels(real)
    >>> stains = ["DAPI", "mIHC_1", "mIHC_2", "mIHC_3"]
    >>> pos = bd.metrics.nuclei_positivity(fake, thresholds=thr, labels=labels, stains=stains)   # frac_mIHC_1, ...
    """
    arr = _tiles(images, "images")
    n, n_ch = arr.shape[:2]
    t = _thresholds(thresholds, arr)
    names = _names(stains, n_ch)
    if not 0 <= nuclear_channel < n_ch:
        raise ValueError(f"nuclear_channel {nuclear_channel} is out of range for {n_ch} channels.")
    markers = [c for c in range(n_ch) if c != nuclear_channel] if marker_channels is None else list(marker_channels)
    if not markers or any(not 0 <= c < n_ch for c in markers) or len(set(markers)) != len(markers):
        raise ValueError(f"marker_channels must be distinct indices in 0..{n_ch - 1}, got {markers}.")
    if labels is None:
        lab = nuclei_labels(arr, nuclear_channel=nuclear_channel, min_area=min_area)
    else:
        lab = np.asarray(labels)
        if lab.shape != (n, *arr.shape[2:]) or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
            raise ValueError(f"labels must be non-negative integers of shape {(n, *arr.shape[2:])}, "
                             f"got dtype {lab.dtype} and shape {lab.shape}.")
    rows = np.full((n, len(markers)), np.nan)
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        ids, means = cell_means(arr[i, markers], lab[i])
        counts[i] = ids.size
        if ids.size:
            rows[i] = (means > t[markers][None, :]).mean(axis=0)
    out = pd.DataFrame(rows, columns=[f"frac_{names[c]}" for c in markers], index=pd.RangeIndex(n, name="tile"))
    out.insert(0, "n_nuclei", counts)
    return out


def positivity_agreement(real: pd.DataFrame, fake: pd.DataFrame) -> pd.DataFrame:
    """Agreement of the per-tile positive fractions of real and virtual stains, per marker.

    Tiles where either fraction is NaN (no nuclei) are left out. For a fair comparison both
    tables come from :func:`nuclei_positivity` with the same ``labels`` (the real DAPI's);
    a warning says when their nuclei counts differ.

    Parameters
    ----------
    real, fake
        Tables from :func:`nuclei_positivity`, same tiles and markers.

    Returns
    -------
    pandas.DataFrame
        One row per marker (index ``marker``): ``pearson`` (r over tiles; NaN when fewer
        than 2 tiles or the fractions are constant on a side), ``mae`` (mean absolute
        difference), ``mean_real``, ``mean_fake`` and ``n_tiles``.

    Raises
    ------
    ValueError
        When the tables' tiles or ``frac_`` columns differ, or there are none.

    Examples
    --------
    >>> labels = bd.metrics.nuclei_labels(real)
    >>> pos_real = bd.metrics.nuclei_positivity(real, thresholds=thr, labels=labels)
    >>> pos_fake = bd.metrics.nuclei_positivity(fake, thresholds=thr, labels=labels)
    >>> bd.metrics.positivity_agreement(pos_real, pos_fake)           # pearson, mae per marker
    """
    cols = [c for c in real.columns if str(c).startswith("frac_")]
    if not cols or sorted(cols) != sorted(c for c in fake.columns if str(c).startswith("frac_")):
        raise ValueError(f"real and fake must have the same frac_<marker> columns, got {list(real.columns)} "
                         f"and {list(fake.columns)}.")
    if not real.index.equals(fake.index):
        raise ValueError(f"real and fake must cover the same tiles ({len(real)} and {len(fake)} rows).")
    if "n_nuclei" in real and "n_nuclei" in fake and not np.array_equal(real["n_nuclei"], fake["n_nuclei"]):
        warnings.warn("real and fake count different nuclei; pass the real DAPI's labels to both "
                      "nuclei_positivity calls.", RuntimeWarning, stacklevel=2)
    rows = []
    for col in cols:
        r, f = real[col].to_numpy(np.float64), fake[col].to_numpy(np.float64)
        ok = np.isfinite(r) & np.isfinite(f)
        r, f = r[ok], f[ok]
        pear = _pearson_along(r[:, None], f[:, None], 0)[0] if r.size >= 2 else np.nan
        rows.append({"pearson": float(pear), "mae": float(np.abs(r - f).mean()) if r.size else np.nan,
                     "mean_real": float(r.mean()) if r.size else np.nan,
                     "mean_fake": float(f.mean()) if f.size else np.nan, "n_tiles": int(r.size)})
    return pd.DataFrame(rows, index=pd.Index([c[len("frac_"):] for c in cols], name="marker"))
