"""Expression <-> histology pairs for GeneFlow: tiles cut once around cells, cells gathered per
window, spatial block splits with a buffer, CPM + log1p and gene selection on training cells.

Pixel convention (shared by every function here): coordinates are ``(x, y)`` in pixels of the
image element (``x`` = column, ``y`` = row), as the loaders of
:mod:`biodiffuse.datasets.histology` write ``obsm["spatial"]``. A point ``(x, y)`` lies on pixel
``(floor(y + 0.5), floor(x + 0.5))``; a tile of side ``T`` "centred" on it covers rows
``cy - T // 2 .. cy - T // 2 + T - 1`` (same for columns), so the cell's pixel is tile pixel
``(T // 2, T // 2)`` (the exact centre for odd ``T``, the lower-right of the four central pixels
for even ``T``).

Tiles are cut once into one array (vectorised, in chunks), not per epoch and not through
``spatialdata.dataloader.ImageTilesDataset`` (which cuts one tile per item on every access).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from .spatialdata import image_channels, image_element

__all__ = [
    "tile_footprint",
    "row_positions",
    "tile_scaling",
    "cell_tiles",
    "WindowCells",
    "window_cells",
    "region_split",
    "overlapping_tiles",
    "cpm_log1p",
    "select_genes",
]

SPLIT_NAMES = ("train", "val", "test")
BUFFER_LABEL = "buffer"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _pixel(v: np.ndarray) -> np.ndarray:
    """Pixel index of continuous pixel coordinates (round half up)."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def tile_footprint(tile_size: int, scale: float) -> tuple[int, int]:
    """Image pixels a tile covers per side, and the downsampling factor ``k = 1 / scale``.

    Parameters
    ----------
    tile_size
        Side of the output tile.
    scale
        Output pixels per image pixel (``1 / k`` for a positive integer ``k``).

    Returns
    -------
    (tile_size * k, k)

    Examples
    --------
    >>> bd.data.tile_footprint(64, 0.25)       # 256 image pixels per side, averaged 4 x 4
    (256, 4)
    >>> bd.data.tile_footprint(32, 1.0)
    (32, 1)
    """
    if int(tile_size) != tile_size or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}.")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}.")
    k = 1.0 / float(scale)
    if abs(k - round(k)) > 1e-9 or round(k) < 1:
        raise ValueError(
            f"scale={scale!r}: 1 / scale must be a positive integer (a tile of tile_size / scale image pixels "
            "is averaged down by that factor); upsampling (scale > 1) is not supported."
        )
    k = int(round(k))
    return int(tile_size) * k, k


def _table(obj: Any, table_key: str):
    from .spatialdata import is_spatialdata

    if is_spatialdata(obj):
        if table_key not in obj.tables:
            raise KeyError(f"{table_key!r} is not a table of this SpatialData (have {list(obj.tables.keys())}).")
        return obj.tables[table_key]
    return obj


def _coords(adata, spatial_key: str, pixels_per_unit: float = 1.0) -> np.ndarray:
    if spatial_key not in adata.obsm:
        raise KeyError(f"obsm[{spatial_key!r}] (cell centroids (x, y)) not found; have {list(adata.obsm.keys())}.")
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"obsm[{spatial_key!r}] must be (n, 2) (x, y), got shape {xy.shape}.")
    if not np.isfinite(xy).all():
        raise ValueError(f"obsm[{spatial_key!r}] holds NaN or inf.")
    return xy * float(pixels_per_unit)


def row_positions(adata: Any, cells: Any, *, unique: bool = False) -> np.ndarray:
    """Row positions (int64) of ``adata`` from None (all rows), a boolean mask, integer positions
    or obs names.

    Parameters
    ----------
    adata
        AnnData (``n_obs``, ``obs_names``).
    cells
        The selection.
    unique
        Raise if the selection names a row more than once (a training selection: a repeated
        row could land in both the training and the validation split).

    Returns
    -------
    numpy.ndarray
        Positions, in the order given.

    Examples
    --------
    >>> adata.obs_names.tolist()
    ['a', 'b', 'c', 'd']
    >>> bd.data.row_positions(adata, ["c", "a"])
    array([2, 0])
    >>> bd.data.row_positions(adata, np.array([True, False, True, False]))
    array([0, 2])
    """
    rows = _row_positions(adata, cells)
    if unique and len(np.unique(rows)) < len(rows):
        values, counts = np.unique(rows, return_counts=True)
        names = list(np.asarray(adata.obs_names)[values[counts > 1]][:5])
        raise ValueError(f"The selection names {int((counts > 1).sum())} row(s) more than once (e.g. {names}); pass each once.")
    return rows


def _row_positions(adata: Any, cells: Any) -> np.ndarray:
    n = adata.n_obs
    if cells is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"Boolean cells mask has shape {arr.shape}; expected ({n},).")
        return np.flatnonzero(arr).astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise IndexError(f"cells positions out of range for {n} rows.")
        return arr.astype(np.int64).ravel()
    idx = adata.obs_names.get_indexer(pd.Index(arr.astype(str).ravel()))
    if (idx < 0).any():
        bad = arr.ravel()[idx < 0][:5].tolist()
        raise KeyError(f"cells not in obs_names: {bad}")
    return idx.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------


def _int_percentiles(plane: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Exact percentiles (inverted CDF: the smallest value with at least q % of pixels at or below)
    of an unsigned-integer plane, via a histogram."""
    hist = np.zeros(int(plane.max()) + 1, dtype=np.int64)
    step = max(1, (1 << 24) // max(1, plane.shape[-1]))  # ~16 M pixels (128 MB of indices) at a time
    for r in range(0, plane.shape[0], step):
        hist += np.bincount(plane[r : r + step].ravel(), minlength=hist.size)
    cdf = np.cumsum(hist) / plane.size
    return np.array([np.searchsorted(cdf, qq / 100.0 - 1e-12) for qq in q], dtype=np.float64)


def tile_scaling(
    sdata: Any,
    *,
    image_key: str,
    method: Literal["auto", "percentile", "255"] = "auto",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(lo, hi)`` mapping pixel values to ``[0, 1]`` as ``clip((v - lo) / (hi - lo), 0, 1)``.

    Parameters
    ----------
    sdata
        SpatialData.
    image_key
        Image element ``(c, y, x)``.
    method
        ``"255"``: ``lo = 0, hi = 255`` for every channel (H&E, 8-bit RGB). ``"percentile"``:
        ``lo`` / ``hi`` are the ``percentiles`` of all pixels of each channel of the whole
        image (exact for unsigned-integer images, from at most ~16 M evenly strided pixels for
        float images); ``hi`` is raised to ``lo + 1`` (integers) or ``lo + 1e-6`` when equal.
        ``"auto"``: ``"255"`` when the channels are named ``R, G, B``, else ``"percentile"``
        (DAPI, fluorescence).
    percentiles
        Lower and upper percentile for ``"percentile"``.

    Returns
    -------
    lo, hi
        float64 arrays of shape ``(C,)``.

    Examples
    --------
    >>> full = bd.datasets.xenium_bone_marrow()
    >>> lo, hi = bd.data.tile_scaling(full, image_key="dapi")          # DAPI: 0.5 / 99.5 percentiles
    >>> crop = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
    >>> tiles, kept = bd.data.cell_tiles(crop, image_key="dapi", tile_size=32, scaling=(lo, hi))   # the slide's scale
    """
    channels = image_channels(sdata, image_key)
    if method == "auto":
        method = "255" if [c.upper() for c in channels] == ["R", "G", "B"] else "percentile"
    if method == "255":
        return np.zeros(len(channels)), np.full(len(channels), 255.0)
    if method != "percentile":
        raise ValueError(f"method must be 'auto', 'percentile' or '255', got {method!r}.")
    elem = image_element(sdata, image_key)
    lo, hi = np.empty(len(channels)), np.empty(len(channels))
    for c in range(len(channels)):
        plane = np.asarray(elem.data[c])
        if np.issubdtype(plane.dtype, np.unsignedinteger) and plane.dtype.itemsize <= 2:
            lo[c], hi[c] = _int_percentiles(plane, percentiles)
            step = 1.0
        else:
            flat = plane.ravel()
            flat = flat[:: max(1, flat.size // 16_000_000)].astype(np.float64)
            lo[c], hi[c] = np.percentile(flat, percentiles)
            step = 1.0 if np.issubdtype(plane.dtype, np.integer) else 1e-6
        if hi[c] <= lo[c]:
            hi[c] = lo[c] + step
    return lo, hi


def cell_tiles(
    sdata: Any,
    *,
    image_key: str,
    table_key: str = "table",
    tile_size: int,
    cells: Any = None,
    scale: float = 1.0,
    spatial_key: str = "spatial",
    pixels_per_unit: float = 1.0,
    edge: Literal["drop", "pad"] = "drop",
    pad_value: float = 0.0,
    scaling: Literal["auto", "percentile", "255"] | tuple[Any, Any] = "auto",
    chunk_size: int = 4096,
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Square image tiles centred on cells (or spots), cut once into one array.

    Parameters
    ----------
    sdata
        SpatialData with the image and the table.
    image_key
        Image element ``(c, y, x)``; read whole into memory once, in its own dtype.
    table_key
        Table whose ``obsm[spatial_key]`` holds the ``(x, y)`` centroids.
    tile_size
        Side ``T`` of the returned tiles.
    cells
        Rows of the table to cut (boolean mask, integer positions or obs names); default all.
    scale
        Output pixels per image pixel: ``1`` cuts ``T x T`` image pixels; ``1 / k`` (integer
        ``k``) cuts ``kT x kT`` pixels around the cell and averages ``k x k`` blocks (e.g. HER2ST
        spots of ~145 px into 64-px tiles with ``scale=0.25``).
    spatial_key
        ``obsm`` key of the centroids.
    pixels_per_unit
        Factor from ``obsm[spatial_key]`` units to image pixels (1 for the biodiffuse loaders;
        ``1 / 0.2125`` for a ``spatialdata_io.xenium`` table in micrometres over the
        full-resolution morphology image).
    edge
        Cells whose tile leaves the image: ``"drop"`` (default; they are not returned) or
        ``"pad"`` (kept, pixels outside the image set to ``pad_value``).
    pad_value
        Value of padded pixels, in the scaled ``[0, 1]`` units (0 = black, for DAPI; use 1.0 for
        white glass around H&E).
    scaling
        ``"auto"`` / ``"percentile"`` / ``"255"`` as in :func:`tile_scaling` (computed on the whole
        image), or explicit per-channel ``(lo, hi)`` (e.g. from :func:`tile_scaling` on the full
        slide when cutting from a crop). Pixels become ``clip((v - lo) / (hi - lo), 0, 1)``
        before any averaging; DAPI defaults to its 0.5-99.5 percentiles, H&E (``c = R, G, B``)
        to ``/ 255``.
    chunk_size
        Cells cut per vectorised step (bounds the temporary memory to about
        ``chunk_size * C * (kT)**2 * 5`` bytes).
    centres
        ``(n, 2)`` points ``(x, y)`` in image pixels to centre the tiles on instead of the
        table's rows (e.g. the ``centres`` of :func:`window_cells`); ``table_key``, ``cells``,
        ``spatial_key`` and ``pixels_per_unit`` are then not used.

    Returns
    -------
    tiles
        ``(N, C, T, T)`` float32 in ``[0, 1]``, channels in the image's order.
    kept
        ``(N,)`` int64 positions (rows of the table, or of ``centres``) of the returned tiles, in
        the order asked.

    Examples
    --------
    >>> sdata = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
    >>> tiles, kept = bd.data.cell_tiles(sdata, image_key="dapi", tile_size=32, scale=0.5)   # (N, 1, 32, 32)
    >>> spots = bd.datasets.her2st("C2")
    >>> tiles, kept = bd.data.cell_tiles(spots, image_key="he", tile_size=64, scale=0.25, edge="pad", pad_value=1.0)
    """
    elem = image_element(sdata, image_key)
    size, k = tile_footprint(tile_size, scale)
    if edge not in ("drop", "pad"):
        raise ValueError(f"edge must be 'drop' or 'pad', got {edge!r}.")
    if centres is None:
        adata = _table(sdata, table_key)
        rows = row_positions(adata, cells)
        xy = _coords(adata, spatial_key, pixels_per_unit)[rows]
    else:
        xy = np.asarray(centres, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
            raise ValueError(f"centres must be a finite (n, 2) array of (x, y), got shape {xy.shape}.")
        rows = np.arange(len(xy), dtype=np.int64)
    if isinstance(scaling, str):
        lo, hi = tile_scaling(sdata, image_key=image_key, method=scaling)  # type: ignore[arg-type]
    else:
        lo, hi = (np.broadcast_to(np.asarray(v, dtype=np.float64), (elem.shape[0],)) for v in scaling)
        if np.any(hi <= lo):
            raise ValueError("scaling: every hi must exceed its lo.")
    image = np.asarray(elem.data)
    n_c, height, width = image.shape
    if size > min(height, width) and edge == "drop":
        return np.empty((0, n_c, tile_size, tile_size), np.float32), np.empty(0, np.int64)
    y0 = _pixel(xy[:, 1]) - size // 2
    x0 = _pixel(xy[:, 0]) - size // 2
    inside = (y0 >= 0) & (x0 >= 0) & (y0 + size <= height) & (x0 + size <= width)
    keep = inside if edge == "drop" else np.ones(len(rows), dtype=bool)
    out = np.empty((int(keep.sum()), n_c, tile_size, tile_size), dtype=np.float32)
    lo32 = lo.astype(np.float32)[:, None, None, None]
    inv32 = (1.0 / (hi - lo)).astype(np.float32)[:, None, None, None]

    def finish(raw: np.ndarray) -> np.ndarray:  # (C, n, S, S) raw -> (n, C, T, T) scaled
        t = raw.astype(np.float32)
        t -= lo32
        t *= inv32
        np.clip(t, 0.0, 1.0, out=t)
        if k > 1:
            t = t.reshape(n_c, t.shape[1], tile_size, k, tile_size, k).mean(axis=(3, 5), dtype=np.float32)
        return np.moveaxis(t, 0, 1)

    order = np.flatnonzero(keep)  # output slot j holds input cell order[j]
    slot_of = np.full(len(rows), -1, dtype=np.int64)
    slot_of[order] = np.arange(len(order))
    interior = np.flatnonzero(inside & keep)
    if interior.size and size <= min(height, width):
        view = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(1, 2))
        for s in range(0, interior.size, chunk_size):
            part = interior[s : s + chunk_size]
            out[slot_of[part]] = finish(view[:, y0[part], x0[part]])
    for i in np.flatnonzero(keep & ~inside):  # edge == "pad": the few cells at the border
        raw = image[:, max(y0[i], 0) : max(y0[i] + size, 0), max(x0[i], 0) : max(x0[i] + size, 0)]
        t = np.full((n_c, 1, size, size), np.nan, dtype=np.float32)
        oy, ox = max(0, -y0[i]), max(0, -x0[i])
        if raw.size:
            t[:, 0, oy : oy + raw.shape[1], ox : ox + raw.shape[2]] = (
                (raw.astype(np.float32) - lo32[:, 0]) * inv32[:, 0]
            ).clip(0.0, 1.0)
        t[np.isnan(t)] = pad_value
        if k > 1:
            t = t.reshape(n_c, 1, tile_size, k, tile_size, k).mean(axis=(3, 5), dtype=np.float32)
        out[slot_of[i]] = t[:, 0]
    return out, rows[keep]


# ---------------------------------------------------------------------------------------------
# windows (multi-cell mode)
# ---------------------------------------------------------------------------------------------


class WindowCells(NamedTuple):
    """Cells (or spots) gathered per square window, padded to ``max_cells``.

    Parameters
    ----------
    values, mask, index, origins, centres
        The fields, as described under Attributes (made by :func:`window_cells`).

    Attributes
    ----------
    values
        ``(N, max_cells, G)`` float32 expression of the cells of each window (0 where padded).
    mask
        ``(N, max_cells)`` bool, True for real cells.
    index
        ``(N, max_cells)`` int64 table rows of the cells, -1 where padded; nearest to the
        window centre first.
    origins
        ``(N, 2)`` int64 top-left corners ``(y0, x0)`` of the windows (the convention of
        :mod:`biodiffuse.data.tiles`).
    centres
        ``(N, 2)`` float64 ``(x0 + W // 2, y0 + W // 2)``: the ``(x, y)`` at which
        :func:`cell_tiles` / :func:`region_split` centre a tile of side ``W`` exactly on the
        window.

    Examples
    --------
    >>> win = bd.data.window_cells(sdata, window_size=64, image_shape=sdata.images["dapi"].shape[1:])
    >>> win.values.shape, win.mask.sum(axis=1)[:5]     # (N, max_cells, G), real cells per window
    >>> tiles, kept = bd.data.cell_tiles(sdata, image_key="dapi", tile_size=64, centres=win.centres)
    """

    values: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    origins: np.ndarray
    centres: np.ndarray

    def within(self, cells: np.ndarray) -> np.ndarray:
        """Which windows hold only selected cells.

        Parameters
        ----------
        cells
            Boolean per table row (e.g. a training or held-out region).

        Returns
        -------
        np.ndarray
            ``(N,)`` bool: True where every real cell of the window is selected.

        Examples
        --------
        >>> test = np.flatnonzero(win.within(held_out))     # windows whose cells are all held out
        """
        cells = np.asarray(cells, dtype=bool)
        return np.where(self.mask, cells[np.maximum(self.index, 0)], True).all(axis=1)


def window_cells(
    adata: Any,
    *,
    window_size: int,
    origins: np.ndarray | None = None,
    image_shape: tuple[int, int] | None = None,
    stride: int | None = None,
    table_key: str = "table",
    spatial_key: str = "spatial",
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    max_cells: int | None = None,
    min_cells: int = 1,
) -> WindowCells:
    """The cells whose pixel falls in each square window, as a padded ``(N, max_cells, G)`` block.

    Parameters
    ----------
    adata
        AnnData with ``obsm[spatial_key]`` in image pixels, or a SpatialData (``table_key``).
    window_size
        Window side ``W`` in image pixels; a cell belongs to the window whose pixel rows
        ``y0 .. y0 + W - 1`` and columns ``x0 .. x0 + W - 1`` hold its pixel
        ``(floor(y + 0.5), floor(x + 0.5))``.
    origins
        ``(N, 2)`` window corners ``(y0, x0)``. Default: the grid of
        :func:`biodiffuse.data.tiles.tile_origins` over ``image_shape`` with ``stride``.
    image_shape
        ``(H, W)`` of the image, for the default grid.
    stride
        Grid step (default ``window_size``: windows side by side).
    table_key, spatial_key, layer
        Where to read: the table (SpatialData), the centroids, the matrix (``X`` by default;
        read as stored, so pass counts or normalised values as wanted, e.g. after
        :func:`cpm_log1p`).
    genes
        Columns to gather, by name (default all; choose them first, e.g. :func:`select_genes`).
    max_cells
        Slots per window (default: the most cells any window holds). Windows holding more keep
        the ``max_cells`` nearest their centre (Euclidean, ties by row), with a warning giving how many were left out.
    min_cells
        Windows with fewer cells are not returned.

    Returns
    -------
    WindowCells
        ``values``, ``mask``, ``index``, ``origins``, ``centres``; only the gathered rows are
        densified.

    Examples
    --------
    >>> sdata = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
    >>> table = sdata.tables["table"]
    >>> table.layers["cpm"] = bd.data.cpm_log1p(table.X)
    >>> win = bd.data.window_cells(sdata, window_size=64, image_shape=sdata.images["dapi"].shape[1:], layer="cpm")
    >>> win.values.shape, win.origins[:2]         # (N, max_cells, G), window corners (y0, x0)
    """
    from scipy.spatial import cKDTree

    from .tiles import tile_origins

    adata = _table(adata, table_key)
    w = int(window_size)
    if w != window_size or w < 1:
        raise ValueError(f"window_size must be a positive integer, got {window_size!r}.")
    if origins is None:
        if image_shape is None:
            raise ValueError("Give origins (n, 2) (y0, x0) or image_shape (H, W) for a grid of windows.")
        origins = tile_origins(int(image_shape[0]), int(image_shape[1]), w, stride)
    origins = np.asarray(origins)
    if origins.ndim != 2 or origins.shape[1] != 2:
        raise ValueError(f"origins must be (n, 2) (y0, x0), got shape {origins.shape}.")
    origins = origins.astype(np.int64)
    xy = _coords(adata, spatial_key)
    px, py = _pixel(xy[:, 0]), _pixel(xy[:, 1])
    centre = origins[:, ::-1].astype(np.float64) + (w - 1) / 2.0  # (x, y) of the window's middle
    tree = cKDTree(np.column_stack([px, py]).astype(np.float64))
    found = tree.query_ball_point(centre, r=(w - 1) / 2.0 + 1e-6, p=np.inf)
    counts = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
    keep = counts >= max(int(min_cells), 0)
    if min_cells <= 0:
        keep[:] = True
    found = [found[i] for i in np.flatnonzero(keep)]
    origins, centre, counts = origins[keep], centre[keep], counts[keep]
    m = int(counts.max()) if max_cells is None and counts.size else int(max_cells or 0)
    m = max(m, 1)
    index = np.full((len(found), m), -1, dtype=np.int64)
    dropped = 0
    for j, f in enumerate(found):
        if not f:
            continue
        f = np.asarray(f, dtype=np.int64)
        d = np.hypot(px[f] - centre[j, 0], py[f] - centre[j, 1])
        f = f[np.lexsort((f, d))]
        dropped += max(0, len(f) - m)
        index[j, : min(m, len(f))] = f[:m]
    if dropped:
        warnings.warn(f"window_cells: {dropped} cells left out of windows holding more than max_cells={m}.", stacklevel=2)
    mask = index >= 0
    x = adata.layers[layer] if layer is not None else adata.X
    if genes is not None:
        cols = adata.var_names.get_indexer(pd.Index(list(genes)))
        if (cols < 0).any():
            raise KeyError(f"genes not in var_names: {[g for g, c in zip(genes, cols) if c < 0][:5]}")
    else:
        cols = np.arange(adata.n_vars)
    values = np.zeros((len(found), m, len(cols)), dtype=np.float32)
    if mask.any():
        sub = x[index[mask]][:, cols]
        values[mask] = sub.toarray() if sparse.issparse(sub) else np.asarray(sub)
    centres = (origins[:, ::-1] + w // 2).astype(np.float64)
    return WindowCells(values, mask, index, origins, centres)


# ---------------------------------------------------------------------------------------------
# spatial split
# ---------------------------------------------------------------------------------------------


def region_split(
    coords: np.ndarray,
    *,
    block_size: float,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    tile_size: int | None = None,
    scale: float = 1.0,
    names: Sequence[str] = SPLIT_NAMES,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Split cells by square blocks of the slide (never by tile), with an optional tile buffer.

    The plane is cut into square blocks of side ``block_size`` (pixels, from ``origin``
    ``(x, y)``); a cell belongs to the block holding its pixel ``floor(coords + 0.5)``. The blocks
    of the cells' bounding grid are shuffled (``seed``) and dealt out in that order to the
    splits so that each split receives about ``fractions`` of the *cells* (a block goes to the
    split in which the middle of its cell count falls). Pixels outside the grid take the label of
    the nearest grid block, so every pixel of the plane has exactly one split.

    Parameters
    ----------
    coords
        ``(n, 2)`` cell centroids ``(x, y)`` in image pixels (``obsm["spatial"]`` of the loaders;
        window ``centres`` of :func:`window_cells` for multi-cell mode).
    block_size
        Block side in pixels; use blocks much larger than the tiles (e.g. 10-20 tiles across).
    fractions
        Share of cells per split (normalised to sum 1); one per name.
    seed
        Seed of the block shuffle; the same seed gives the same labels.
    tile_size, scale
        If given: cells whose tile (as :func:`cell_tiles` cuts it with these arguments: ``tile_size
        / scale`` image pixels centred on the cell) would include a pixel of a block of another
        split are labelled ``"buffer"``. Then no tile of one split shares a pixel with a tile of
        another (see :func:`overlapping_tiles`); the lost cells lie within about half a tile of
        a border between different splits.
    names
        Split names (default train / val / test).
    origin
        ``(x, y)`` corner of the block grid.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` str labels from ``names`` (and ``"buffer"``).

    Raises
    ------
    ValueError
        If a split with a positive fraction receives no cells (blocks too large for the data).

    Examples
    --------
    >>> xy = sdata.tables["table"].obsm["spatial"]
    >>> labels = bd.data.region_split(xy, block_size=640, fractions=(0.7, 0.15, 0.15), tile_size=32, scale=0.5)
    >>> pd.Series(labels).value_counts()               # train, val, test and buffer cells
    >>> model.train(cells=labels == "train")           # GeneFlow on the training region
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise ValueError(f"coords must be a finite (n, 2) array of (x, y), got shape {xy.shape}.")
    frac = np.asarray(fractions, dtype=np.float64)
    if len(frac) != len(names) or (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"fractions {tuple(fractions)} must be non-negative, one per name {tuple(names)}.")
    if BUFFER_LABEL in names:
        raise ValueError(f"{BUFFER_LABEL!r} is reserved for cells in the buffer.")
    if not block_size > 0:
        raise ValueError(f"block_size must be > 0, got {block_size!r}.")
    frac = frac / frac.sum()
    n = len(xy)
    labels = np.empty(n, dtype=f"<U{max(len(BUFFER_LABEL), *(len(s) for s in names))}")
    if n == 0:
        return labels
    pix = _pixel(xy)  # (x, y) pixel of each cell
    ox, oy = origin
    bx = np.floor((pix[:, 0] - ox) / block_size).astype(np.int64)
    by = np.floor((pix[:, 1] - oy) / block_size).astype(np.int64)
    bx0, by0 = bx.min(), by.min()
    nbx, nby = int(bx.max() - bx0 + 1), int(by.max() - by0 + 1)
    block = (by - by0) * nbx + (bx - bx0)
    count = np.bincount(block, minlength=nbx * nby).astype(np.float64)
    perm = np.random.default_rng(seed).permutation(nbx * nby)
    mid = (np.cumsum(count[perm]) - count[perm] / 2.0) / n
    bounds = np.cumsum(frac)[:-1]
    split_of_block = np.empty(nbx * nby, dtype=np.int64)
    split_of_block[perm] = np.searchsorted(bounds, mid, side="right")
    split = split_of_block[block]
    got = np.bincount(split, minlength=len(names))
    empty = [names[i] for i in range(len(names)) if frac[i] > 0 and got[i] == 0]
    if empty:
        raise ValueError(
            f"Split(s) {empty} received no cells with block_size={block_size} ({nbx} x {nby} blocks, {n} cells); "
            "use smaller blocks."
        )
    labels[:] = np.asarray(names)[split]
    if tile_size is not None:
        size, _ = tile_footprint(tile_size, scale)
        lo = pix - size // 2  # first pixel of the tile, (x, y)
        hi = lo + size - 1
        blo_x = np.clip(np.floor((lo[:, 0] - ox) / block_size).astype(np.int64) - bx0, 0, nbx - 1)
        bhi_x = np.clip(np.floor((hi[:, 0] - ox) / block_size).astype(np.int64) - bx0, 0, nbx - 1)
        blo_y = np.clip(np.floor((lo[:, 1] - oy) / block_size).astype(np.int64) - by0, 0, nby - 1)
        bhi_y = np.clip(np.floor((hi[:, 1] - oy) / block_size).astype(np.int64) - by0, 0, nby - 1)
        bad = np.zeros(n, dtype=bool)
        for dy in range(int((bhi_y - blo_y).max()) + 1):
            for dx in range(int((bhi_x - blo_x).max()) + 1):
                jy, jx = blo_y + dy, blo_x + dx
                ok = (jy <= bhi_y) & (jx <= bhi_x)
                other = split_of_block[np.where(ok, jy * nbx + jx, 0)] != split
                bad |= ok & other
        labels[bad] = BUFFER_LABEL
    return labels


def overlapping_tiles(
    coords_a: np.ndarray, coords_b: np.ndarray, *, tile_size: int, scale: float = 1.0
) -> int:
    """How many pairs of tiles (one centred on a cell of ``coords_a``, one on ``coords_b``) share
    a pixel when cut as :func:`cell_tiles` cuts them.

    Parameters
    ----------
    coords_a, coords_b
        ``(n, 2)`` ``(x, y)`` centroids in image pixels (e.g. the train and the test cells).
    tile_size, scale
        As in :func:`cell_tiles`.

    Returns
    -------
    int
        Number of overlapping pairs (0 for a clean split).

    Examples
    --------
    >>> xy = sdata.tables["table"].obsm["spatial"]
    >>> labels = bd.data.region_split(xy, block_size=640, tile_size=32, scale=0.5)
    >>> bd.data.overlapping_tiles(xy[labels == "train"], xy[labels == "test"], tile_size=32, scale=0.5)
    0
    """
    from scipy.spatial import cKDTree

    size, _ = tile_footprint(tile_size, scale)
    a, b = (_pixel(np.asarray(c, dtype=np.float64).reshape(-1, 2)).astype(np.float64) for c in (coords_a, coords_b))
    if not len(a) or not len(b):
        return 0
    # Two tiles of side S at integer pixels share a pixel iff |da|, |db| < S on both axes.
    return int(cKDTree(a).count_neighbors(cKDTree(b), r=size - 0.5, p=np.inf))


# ---------------------------------------------------------------------------------------------
# expression
# ---------------------------------------------------------------------------------------------


def cpm_log1p(counts: Any, *, target_sum: float = 1e6, dtype: Any = np.float32) -> Any:
    """``log1p(counts / row total * target_sum)``: counts per million + log1p, as GeneFlow.

    Parameters
    ----------
    counts
        Cells x genes counts: dense array or scipy sparse matrix / array. Sparse input stays
        sparse (only the stored values are transformed; the matrix is never densified).
    target_sum
        Total each cell is scaled to (1e6: counts per million).
    dtype
        Output dtype (computed in float64).

    Returns
    -------
    Same kind as ``counts`` (sparse: CSR)
        Rows of cells with zero total stay all zero; for the others ``expm1`` of the row sums
        to ``target_sum``.

    Raises
    ------
    ValueError
        On negative, NaN or infinite values.

    Examples
    --------
    >>> bd.data.cpm_log1p(np.array([[1.0, 3.0]]), target_sum=4.0)
    array([[0.6931472, 1.3862944]], dtype=float32)
    >>> x = bd.data.cpm_log1p(sdata.tables["table"].X)      # sparse stays sparse (CSR)
    """
    if sparse.issparse(counts):
        x = counts.tocsr(copy=True)
        x.sum_duplicates()
        data = np.asarray(x.data, dtype=np.float64)
        if data.size and (not np.isfinite(data).all() or data.min() < 0):
            raise ValueError("counts hold negative, NaN or infinite values; cpm_log1p needs counts >= 0.")
        rows_of = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        row = np.bincount(rows_of, weights=data, minlength=x.shape[0])
        factor = np.divide(target_sum, row, out=np.zeros_like(row), where=row > 0)
        data *= factor[rows_of]
        np.log1p(data, out=data)
        x.data = data.astype(dtype)
        return x
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"counts must be 2-D (cells x genes), got shape {x.shape}.")
    if x.size and (not np.isfinite(x).all() or x.min() < 0):
        raise ValueError("counts hold negative, NaN or infinite values; cpm_log1p needs counts >= 0.")
    row = x.sum(axis=1, keepdims=True)
    factor = np.divide(target_sum, row, out=np.zeros_like(row), where=row > 0)
    return np.log1p(x * factor).astype(dtype)


def select_genes(
    adata: Any,
    n_top: int,
    *,
    train: Any = None,
    layer: str | None = None,
    flavor: Literal["seurat", "cell_ranger"] = "seurat",
    min_fraction: float = 0.0,
    table_key: str = "table",
    **kwargs: Any,
) -> list[str]:
    """Highly variable genes chosen on the training cells only.

    The training rows' counts go through :func:`cpm_log1p` and then
    :func:`scanpy.pp.highly_variable_genes` (``flavor`` ``"seurat"`` or ``"cell_ranger"``, which
    expect log-normalised values; ``n_top_genes=n_top``; genes are binned by mean and ranked by
    the normalised dispersion). Genes without any training count (or detected in fewer than
    ``min_fraction`` of the training cells) are never chosen. The other
    cells' values play no part.

    Parameters
    ----------
    adata
        AnnData of raw counts (or a SpatialData, ``table_key``).
    n_top
        Number of genes; all expressed training genes if fewer.
    train
        Training rows: boolean mask, integer positions or obs names (e.g.
        ``labels == "train"`` from :func:`region_split`); default all rows.
    layer
        Counts layer (default ``X``).
    flavor
        scanpy flavour working on log data.
    min_fraction
        Genes detected (count > 0) in fewer than this fraction of the training cells are not
        candidates. With the default 0, on HER2ST C2 (187 spots) half of the 1,000 genes chosen
        are detected in under 10 % of the spots; ``min_fraction=0.1`` keeps to the 9.9k genes
        seen in at least 10 %.
    table_key
        Table of a SpatialData input.
    **kwargs
        Passed to :func:`scanpy.pp.highly_variable_genes` (e.g. ``n_bins``).

    Returns
    -------
    list of str
        Gene names, most variable first (normalised dispersion, descending).

    Examples
    --------
    >>> sdata = bd.datasets.her2st("C2")
    >>> labels = bd.data.region_split(sdata.tables["table"].obsm["spatial"], block_size=1500)
    >>> genes = bd.data.select_genes(sdata, 200, train=labels == "train", min_fraction=0.1)
    >>> bd.models.GeneFlow.setup_spatialdata(sdata, image_key="he", genes=genes, tile_size=64, scale=0.25)
    """
    import anndata as ad
    import scanpy as sc

    adata = _table(adata, table_key)
    rows = row_positions(adata, train, unique=True)
    if not len(rows):
        raise ValueError("select_genes: no training cells.")
    n_top = int(n_top)
    if n_top < 1:
        raise ValueError(f"n_top must be >= 1, got {n_top}.")
    x = adata.layers[layer] if layer is not None else adata.X
    x = x[rows]
    x = sparse.csr_matrix(x) if sparse.issparse(x) else np.asarray(x)
    detected = np.asarray((x != 0).sum(axis=0)).ravel()
    expressed = (detected > 0) & (detected >= min_fraction * len(rows))
    x = x[:, expressed]
    names = adata.var_names[expressed]
    tmp = ad.AnnData(X=cpm_log1p(x), var=pd.DataFrame(index=pd.Index(names.astype(str))))
    n_top = min(n_top, tmp.n_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor=flavor, inplace=False, **kwargs)
    df.index = tmp.var_names
    disp = df["dispersions_norm"].astype(np.float64).fillna(-np.inf)
    chosen = df.index[df["highly_variable"].to_numpy(dtype=bool)]
    ranked = disp.loc[chosen].sort_values(ascending=False, kind="stable")
    out = list(ranked.index)
    if len(out) < n_top:  # ties / NaN dispersions at the cut: fill by dispersion, then mean
        rest = disp.drop(index=chosen).sort_values(ascending=False, kind="stable")
        out += list(rest.index[: n_top - len(out)])
    return out[:n_top]
