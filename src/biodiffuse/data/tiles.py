"""Square tiles of (C, H, W) images: grids, spatially disjoint splits, extraction and stitching.

Tiles are addressed by their top-left corner ``(y0, x0)`` in pixels. Stitching averages
overlapping tiles with a window so that tile borders do not show; stitching the tiles cut
from an image gives the image back.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..diffusion import check_count

__all__ = [
    "tile_origins",
    "spatial_split",
    "tiles_inside",
    "extract_tiles",
    "stitch_tiles",
    "TileAccumulator",
    "tile_window",
    "downsample_mean",
    "downsample_mask",
    "upsample_nearest",
    "upsample_to",
    "crop_to_factor",
]

_WINDOW_FLOOR = 1e-3


def _axis_starts(length: int, tile_size: int, stride: int) -> np.ndarray:
    starts = list(range(0, length - tile_size + 1, stride))
    if starts[-1] != length - tile_size:  # last tile flush with the border
        starts.append(length - tile_size)
    return np.asarray(starts, dtype=np.int64)


def tile_origins(height: int, width: int, tile_size: int, stride: int | None = None) -> np.ndarray:
    """Top-left corners of square tiles covering a ``height x width`` image.

    Parameters
    ----------
    height, width
        Image size in pixels.
    tile_size
        Tile side in pixels.
    stride
        Step between tiles (default ``tile_size``: no overlap). At most ``tile_size``, so that
        every pixel is covered. The last row and column of tiles are moved flush with the
        bottom / right border (they overlap their neighbour more when the size is not a
        multiple of the stride).

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` int64 array of ``(y0, x0)``, row-major.

    Examples
    --------
    >>> bd.data.tile_origins(100, 100, 64)            # the last row / column moved flush to the border
    array([[ 0,  0],
           [ 0, 36],
           [36,  0],
           [36, 36]])
    >>> bd.data.tile_origins(1024, 1024, 64, stride=32).shape
    (961, 2)
    """
    height, width = check_count(height, "height"), check_count(width, "width")
    tile_size = check_count(tile_size, "tile_size")
    stride = tile_size if stride is None else check_count(stride, "stride")
    if stride > tile_size:
        raise ValueError(f"stride ({stride}) > tile_size ({tile_size}) would leave pixels uncovered.")
    if tile_size > min(height, width):
        raise ValueError(f"tile_size {tile_size} is larger than the image ({height} x {width}).")
    ys, xs = _axis_starts(height, tile_size, stride), _axis_starts(width, tile_size, stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.column_stack([yy.ravel(), xx.ravel()])


def spatial_split(
    height: int,
    width: int,
    tile_size: int,
    test_fraction: float = 0.25,
    n_blocks: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split an image into disjoint train and test regions made of whole grid blocks.

    The image is cut into an ``n_blocks x n_blocks`` grid of rectangular blocks (edges at
    ``round(i * size / n_blocks)``) and ``round(test_fraction * n_blocks**2)`` blocks chosen at
    random (``seed``) form the test region; the rest is train. Use :func:`tiles_inside` to keep
    only tiles lying entirely in one region, so that no tile sees both.

    Parameters
    ----------
    height, width
        Image size in pixels.
    tile_size
        Tile side; every block must be at least this large so that tiles fit in a block.
    test_fraction
        Fraction of blocks assigned to test; must give between 1 and ``n_blocks**2 - 1`` blocks.
    n_blocks
        Blocks per side.
    seed
        Seed of the block draw.

    Returns
    -------
    train_mask, test_mask
        Boolean ``(height, width)`` masks; disjoint, and together they cover the image.

    Examples
    --------
    >>> train_mask, test_mask = bd.data.spatial_split(1024, 1024, 64, test_fraction=0.25, n_blocks=4)
    >>> origins = bd.data.tile_origins(1024, 1024, 64)
    >>> train_tiles = origins[bd.data.tiles_inside(origins, 64, train_mask)]
    >>> model.train(holdout=test_mask)                           # MCD on an image: never sees the test region
    """
    height, width = check_count(height, "height"), check_count(width, "width")
    tile_size, n_blocks = check_count(tile_size, "tile_size"), check_count(n_blocks, "n_blocks")
    n_test = int(round(test_fraction * n_blocks**2))
    if not 1 <= n_test <= n_blocks**2 - 1:
        raise ValueError(
            f"test_fraction={test_fraction} with n_blocks={n_blocks} gives {n_test} test blocks of "
            f"{n_blocks**2}; need at least 1 and at most {n_blocks**2 - 1}."
        )
    y_edges = np.round(np.linspace(0, height, n_blocks + 1)).astype(int)
    x_edges = np.round(np.linspace(0, width, n_blocks + 1)).astype(int)
    smallest = min(np.diff(y_edges).min(), np.diff(x_edges).min())
    if smallest < tile_size:
        raise ValueError(
            f"Blocks of {smallest} pixels are smaller than tile_size {tile_size}: use fewer blocks "
            f"(n_blocks={n_blocks}) or smaller tiles."
        )
    chosen = np.random.default_rng(seed).choice(n_blocks**2, size=n_test, replace=False)
    test = np.zeros((height, width), dtype=bool)
    for b in chosen:
        i, j = divmod(int(b), n_blocks)
        test[y_edges[i] : y_edges[i + 1], x_edges[j] : x_edges[j + 1]] = True
    return ~test, test


def _check_origins(origins: np.ndarray, tile_size: int, height: int, width: int) -> np.ndarray:
    origins = np.asarray(origins)
    if origins.ndim != 2 or origins.shape[1] != 2:
        raise ValueError(f"origins must be an (n, 2) array of (y0, x0), got shape {origins.shape}.")
    if origins.size and not np.issubdtype(origins.dtype, np.integer):
        if not np.all(origins == np.round(origins)):
            raise ValueError("origins must be integer pixel positions.")
    origins = origins.astype(np.int64)
    if origins.size and (
        origins.min() < 0 or (origins[:, 0] + tile_size).max() > height or (origins[:, 1] + tile_size).max() > width
    ):
        raise ValueError(f"Some tiles of size {tile_size} at origins fall outside the {height} x {width} image.")
    return origins


def tiles_inside(origins: np.ndarray, tile_size: int, mask: np.ndarray) -> np.ndarray:
    """Which tiles lie entirely inside a region.

    Parameters
    ----------
    origins
        ``(n, 2)`` tile corners ``(y0, x0)``.
    tile_size
        Tile side.
    mask
        Boolean ``(H, W)`` region mask (e.g. from :func:`spatial_split`).

    Returns
    -------
    numpy.ndarray
        Boolean ``(n,)``: True where all ``tile_size**2`` pixels of the tile are in ``mask``.

    Examples
    --------
    >>> train_mask, test_mask = bd.data.spatial_split(1024, 1024, 64)
    >>> origins = bd.data.tile_origins(1024, 1024, 64)
    >>> keep = bd.data.tiles_inside(origins, 64, test_mask)      # tiles wholly in the test region
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}.")
    tile_size = check_count(tile_size, "tile_size")
    origins = _check_origins(origins, tile_size, *mask.shape)
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(bool), axis=0, dtype=np.int64), axis=1)
    y0, x0 = origins[:, 0], origins[:, 1]
    y1, x1 = y0 + tile_size, x0 + tile_size
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside == tile_size * tile_size


def extract_tiles(image, origins: np.ndarray, tile_size: int) -> np.ndarray:
    """Cut square tiles out of a ``(C, H, W)`` image.

    Parameters
    ----------
    image
        ``(C, H, W)`` numpy array or array-like that slices lazily (dask, xarray, zarr); only
        the tiles are loaded.
    origins
        ``(n, 2)`` tile corners ``(y0, x0)``.
    tile_size
        Tile side.

    Returns
    -------
    numpy.ndarray
        ``(n, C, tile_size, tile_size)``, the image's dtype.

    Examples
    --------
    >>> image = sdata.images["mibi"]                             # (c, y, x), sliced lazily
    >>> origins = bd.data.tile_origins(*image.shape[1:], tile_size=64)
    >>> tiles = bd.data.extract_tiles(image, origins, 64)        # (n, C, 64, 64)
    """
    shape = tuple(image.shape)
    if len(shape) != 3:
        raise ValueError(f"image must be (C, H, W), got shape {shape}.")
    tile_size = check_count(tile_size, "tile_size")
    origins = _check_origins(origins, tile_size, shape[1], shape[2])
    dtype = getattr(image, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(float)
    out = np.empty((len(origins), shape[0], tile_size, tile_size), dtype=dtype)
    for k, (y, x) in enumerate(origins):
        out[k] = np.asarray(image[:, y : y + tile_size, x : x + tile_size])
    return out


def tile_window(tile_size: int, window: Literal["hann", "uniform"] = "hann") -> np.ndarray:
    """The ``(tile_size, tile_size)`` float64 weights used by :func:`stitch_tiles`.

    ``"hann"``: outer product of ``max(sin(pi * (i + 0.5) / t) ** 2, 1e-3)``, highest in the
    centre and small but positive at the borders (so image borders stay covered);
    ``"uniform"``: ones.

    Parameters
    ----------
    tile_size
        Side of the square tiles.
    window
        ``"hann"`` or ``"uniform"``.

    Examples
    --------
    >>> w = bd.data.tile_window(64)                   # highest in the centre
    >>> w.shape, float(w.max()) < 1.0, float(w.min()) > 0.0
    ((64, 64), True, True)
    """
    tile_size = check_count(tile_size, "tile_size")
    if window == "uniform":
        return np.ones((tile_size, tile_size))
    if window == "hann":
        w = np.maximum(np.sin(np.pi * (np.arange(tile_size) + 0.5) / tile_size) ** 2, _WINDOW_FLOOR)
        return np.outer(w, w)
    raise ValueError(f"window must be 'hann' or 'uniform', got {window!r}.")


def stitch_tiles(
    tiles: np.ndarray,
    origins: np.ndarray,
    height: int,
    width: int,
    window: Literal["hann", "uniform"] = "hann",
    fill_value: float = np.nan,
) -> np.ndarray:
    """Put tiles back into one ``(C, height, width)`` image, averaging where they overlap.

    Each pixel is ``sum_k w_k * tile_k / sum_k w_k`` over the tiles covering it, with ``w`` from
    :func:`tile_window`. Tiles are added one at a time into float64 accumulators, so memory is
    the output image (plus one weight plane) beyond the input, whatever the number of tiles.

    Parameters
    ----------
    tiles
        ``(n, C, t, t)`` array (or array-like indexable by tile).
    origins
        ``(n, 2)`` tile corners ``(y0, x0)``.
    height, width
        Size of the output image.
    window
        ``"hann"`` (smooth blending) or ``"uniform"`` (plain mean).
    fill_value
        Value of pixels no tile covers.

    Returns
    -------
    numpy.ndarray
        ``(C, height, width)``; float32 for float32 (or integer) tiles, float64 for float64.

    Examples
    --------
    >>> origins = bd.data.tile_origins(1024, 1024, 64, stride=48)       # overlapping tiles
    >>> tiles = bd.data.extract_tiles(image, origins, 64)
    >>> stitched = bd.data.stitch_tiles(tiles, origins, 1024, 1024, window="hann")   # (C, 1024, 1024)
    """
    shape = tuple(tiles.shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"tiles must be (n, C, t, t), got shape {shape}.")
    n, n_channels, tile_size = shape[0], shape[1], shape[2]
    height, width = check_count(height, "height"), check_count(width, "width")
    origins = _check_origins(origins, tile_size, height, width)
    if len(origins) != n:
        raise ValueError(f"{n} tiles but {len(origins)} origins.")
    acc = TileAccumulator(n_channels, height, width, tile_size, window)
    for k in range(n):
        acc.add(np.asarray(tiles[k], dtype=np.float64)[None], origins[k : k + 1])
    total = acc.result(fill_value)
    dtype = getattr(tiles, "dtype", np.dtype(np.float32))
    out_dtype = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return total.astype(out_dtype, copy=False)


class TileAccumulator:
    """Running window-weighted sums of tiles: stitching batch by batch (as a sampler produces
    them) keeps one image and one weight plane in memory, never all the tiles.

    Parameters
    ----------
    channels, height, width
        Size of the stitched image.
    tile_size
        Side of the square tiles.
    window
        As in :func:`tile_window`.
    out
        A float ``(channels, height, width)`` array (e.g. a view into a larger output image) to
        sum into and to divide in place by :meth:`result`; it is zeroed first. The weight plane
        then has its dtype, so memory is ``out`` plus one ``(height, width)`` plane. Default: a
        new float64 array.

    Examples
    --------
    >>> acc = bd.data.TileAccumulator(4, 1024, 1024, tile_size=64)
    >>> for tiles, origins in batches:                 # e.g. as a sampler yields them
    ...     acc.add(tiles, origins)                    # tiles: (n, 4, 64, 64), origins: (n, 2)
    >>> image = acc.result()                           # (4, 1024, 1024); NaN where no tile fell
    """

    def __init__(self, channels: int, height: int, width: int, tile_size: int, window: Literal["hann", "uniform"] = "hann",
                 *, out: np.ndarray | None = None) -> None:
        self.tile_size = check_count(tile_size, "tile_size")
        self.weights = tile_window(self.tile_size, window)
        if out is None:
            self.total = np.zeros((channels, height, width), dtype=np.float64)
        else:
            if out.shape != (channels, height, width) or not np.issubdtype(out.dtype, np.floating):
                raise ValueError(f"out must be a float array of shape {(channels, height, width)}, "
                                 f"got {out.dtype} {out.shape}.")
            out[...] = 0
            self.total = out
        self.in_place = out is not None
        self.norm = np.zeros((height, width), dtype=self.total.dtype)

    def add(self, tiles: np.ndarray, origins: np.ndarray) -> None:
        """Add ``(n, C, t, t)`` tiles at ``(n, 2)`` origins ``(y0, x0)``."""
        t = self.tile_size
        for k, (y, x) in enumerate(np.asarray(origins)):
            self.total[:, y : y + t, x : x + t] += self.weights * tiles[k]
            self.norm[y : y + t, x : x + t] += self.weights

    def result(self, fill_value: float = np.nan) -> np.ndarray:
        """The stitched ``(C, H, W)`` image (float64, or ``out`` divided in place);
        ``fill_value`` where no tile landed."""
        covered = self.norm > 0
        if self.in_place:
            np.divide(self.total, self.norm, out=self.total, where=covered)
            self.total[:, ~covered] = fill_value
            return self.total
        out = np.full_like(self.total, fill_value)
        np.divide(self.total, self.norm, out=out, where=covered)
        return out


def crop_to_factor(image: np.ndarray, factor: int) -> np.ndarray:
    """Crop the trailing rows / columns so that H and W are multiples of ``factor``.

    Parameters
    ----------
    image
        ``(..., H, W)`` array.
    factor
        The size that ``H`` and ``W`` are cut down to a multiple of.

    Examples
    --------
    >>> bd.data.crop_to_factor(np.zeros((3, 1026, 1023)), 4).shape
    (3, 1024, 1020)
    """
    h, w = image.shape[-2:]
    return image[..., : h - h % factor, : w - w % factor]


def downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Block-reduce a boolean (H, W) mask (cropped to multiples of ``factor``): a coarse pixel
    is in the mask when any of its fine pixels is.

    Parameters
    ----------
    mask
        Boolean ``(H, W)`` mask (e.g. a test region of :func:`spatial_split`).
    factor
        Block side.

    Examples
    --------
    >>> bd.data.downsample_mask(np.eye(4, dtype=bool), 2)
    array([[ True, False],
           [False,  True]])
    """
    return downsample_mean(crop_to_factor(np.asarray(mask, dtype=np.float32), factor), factor) > 0


def upsample_to(image: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    """:func:`upsample_nearest` back to ``(height, width)``; the rows / columns that
    :func:`crop_to_factor` cut off repeat the last pixel.

    Parameters
    ----------
    image
        ``(..., h, w)`` array at the coarse resolution.
    factor
        Repeat factor (1: only the padding).
    height, width
        Size of the output (at least ``factor * h`` by ``factor * w``).

    Examples
    --------
    >>> small = bd.data.downsample_mean(bd.data.crop_to_factor(image, 4), 4)   # image: (3, 1026, 1023)
    >>> bd.data.upsample_to(small, 4, 1026, 1023).shape
    (3, 1026, 1023)
    """
    up = upsample_nearest(image, factor) if factor > 1 else np.asarray(image)
    ph, pw = height - up.shape[-2], width - up.shape[-1]
    if ph or pw:
        up = np.pad(up, [(0, 0)] * (up.ndim - 2) + [(0, ph), (0, pw)], mode="edge")
    return up


def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor x factor`` pixels of the last two axes.

    Parameters
    ----------
    image
        ``(..., H, W)`` array; ``H`` and ``W`` must be divisible by ``factor``.
    factor
        Block side.

    Returns
    -------
    numpy.ndarray
        ``(..., H / factor, W / factor)``, accumulated in float64; float32 for float32 input,
        else float64.

    Examples
    --------
    >>> bd.data.downsample_mean(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    >>> small = bd.data.downsample_mean(bd.data.crop_to_factor(image, 4), 4)   # (C, H // 4, W // 4)
    """
    image = np.asarray(image)
    factor = check_count(factor, "factor")
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., H, W), got shape {image.shape}.")
    h, w = image.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"Image size {h} x {w} is not divisible by factor {factor}.")
    blocks = image.reshape(*image.shape[:-2], h // factor, factor, w // factor, factor)
    out = blocks.mean(axis=(-3, -1), dtype=np.float64)
    return out.astype(np.float32) if image.dtype == np.float32 else out


def upsample_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every pixel of the last two axes ``factor x factor`` times (inverse of the grid of
    :func:`downsample_mean`: ``downsample_mean(upsample_nearest(x, f), f) == x``).

    Parameters
    ----------
    image
        ``(..., h, w)`` array (at least 2-D).
    factor
        Repeats per pixel along each of the last two axes.

    Examples
    --------
    >>> bd.data.upsample_nearest(np.array([[1, 2]]), 2)
    array([[1, 1, 2, 2],
           [1, 1, 2, 2]])
    """
    image = np.asarray(image)
    factor = check_count(factor, "factor")
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., H, W), got shape {image.shape}.")
    return np.repeat(np.repeat(image, factor, axis=-2), factor, axis=-1)
