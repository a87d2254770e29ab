"""Paired stain tiles as SpatialData mosaics: HEMIT (H&E -> mIHC) and DeepLIIF (IHC -> mpIF).

Both loaders read plain files only (JPEG / PNG through Pillow, TIFF through tifffile, CSV through
pandas); nothing in the files is executed. The data folders are looked for as the other loaders
do (:mod:`biodiffuse.datasets._locate`): ``$BIODIFFUSE_DATA_DIR/staining/<name>``, then
``../shared/data/staining/<name>``; ``path=`` reads any folder in the same layout.

Mosaic
------
A data set of many small registered tiles becomes ONE SpatialData: each modality is one image
element ``(c, y, x)`` in which tile ``i`` (in the order loaded) sits at row ``i // layout``,
column ``i % layout`` of a grid of ``layout`` columns (default ``ceil(sqrt(n))``), i.e. its
pixels are ``image[:, y0:y0 + T, x0:x0 + T]`` with ``(y0, x0) = (row * T, column * T)``. Grid
cells left over in the last row hold the background value (255, white glass, for brightfield
stains; 0 for fluorescence and masks). Neighbouring tiles of the mosaic are NOT neighbours on the
slide: cut tiles at the origins (``obs["y0"]``, ``obs["x0"]``), never across them.

The table ``tables["tiles"]`` has one row per tile (``X`` is an empty ``(n, 0)`` matrix) with the
origins, ``tile_size`` and ``obsm["spatial"]``: the tile centres ``(x0 + T // 2, y0 + T // 2)``
as ``(x, y)`` in mosaic pixels, the same convention as the tiling functions of
:mod:`biodiffuse.data` (a ``T``-pixel tile "centred" there is exactly the tile).
"""

from __future__ import annotations

import math
import os
from collections import abc
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ._locate import locate_dir

__all__ = ["hemit", "deepliif", "HEMIT_STAINS", "HEMIT_SPLITS", "DEEPLIIF_PANELS"]

HEMIT_STAINS = ("DAPI", "mIHC_1", "mIHC_2", "mIHC_3")
"""Channels of the HEMIT mIHC tiles, in file order. Only DAPI is certain; the release does not
name the other three (by eye: ``mIHC_1`` / ``mIHC_2`` mark sparse single cells, probably CD3 for
``mIHC_1``; ``mIHC_3`` has an epithelial, panCK-like pattern). See ``hemit/provenance.txt``."""
HEMIT_SPLITS = ("train", "test")
DEEPLIIF_PANELS = ("ihc", "hematoxylin", "dapi", "lap2", "ki67_if", "seg")
"""Image elements of :func:`deepliif`, in the order of the six panels of each file (left to right):
IHC Ki67 (brightfield), hematoxylin channel (brightfield), mpIF DAPI, mpIF Lap2, mpIF Ki67 and
the segmentation mask (red: Ki67-positive cell, blue: negative cell, green: cell boundary)."""

_HEMIT = "hemit"
_DEEPLIIF = "deepliif"
_KIND = "staining"
_HEMIT_COLUMNS = ("tile", "split", "region", "subtile")
_RGB = ["R", "G", "B"]
_DEEPLIIF_BACKGROUND = {"ihc": 255, "hematoxylin": 255, "dapi": 0, "lap2": 0, "ki67_if": 0, "seg": 0}
_DEEPLIIF_SPLITS = ("train", "val", "test")


def _folder(name: str, path, expected: str) -> Path:
    try:
        return locate_dir(_KIND, name, path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} Expected a folder {name!r} holding {expected}.") from None


def _columns(layout: int | None, n: int) -> int:
    if layout is None:
        return max(1, math.ceil(math.sqrt(n)))
    if isinstance(layout, bool) or not isinstance(layout, (int, np.integer)) or layout < 1:
        raise ValueError(f"layout must be a positive int (tiles per mosaic row) or None, got {layout!r}.")
    return int(layout)


def _origins(n: int, columns: int, size: int) -> np.ndarray:
    """``(n, 2)`` int64 ``(y0, x0)`` of tiles ``0..n-1`` on a grid of ``columns`` columns."""
    i = np.arange(n, dtype=np.int64)
    return np.column_stack([(i // columns) * size, (i % columns) * size])


def _mosaic_shape(n: int, columns: int, size: int) -> tuple[int, int]:
    rows = math.ceil(n / columns)
    return rows * size, min(columns, n) * size


def _read_rgb(file: Path) -> np.ndarray:
    """``(y, x, 3)`` uint8 pixels of a JPEG / PNG."""
    from PIL import Image

    with Image.open(file) as im:
        if im.mode != "RGB":
            raise ValueError(f"{file}: expected an 8-bit RGB image, got mode {im.mode!r}.")
        arr = np.asarray(im)
    return arr


def _read_chw_tiff(file: Path, n_channels: int) -> np.ndarray:
    """``(c, y, x)`` uint8 pixels of a multi-channel TIFF (axes CYX, or channels last)."""
    import tifffile

    with tifffile.TiffFile(file) as tf:
        series = tf.series[0]
        axes = series.axes
        arr = series.asarray()
    if arr.dtype != np.uint8:
        raise ValueError(f"{file}: expected 8-bit pixels, got {arr.dtype}.")
    if arr.ndim == 3 and axes[-1] in "SC" and axes[0] == "Y":
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3 or arr.shape[0] != n_channels:
        raise ValueError(
            f"{file}: expected {n_channels} channels as (c, y, x), got shape {arr.shape} (axes {axes!r})."
        )
    return arr


def _parse(image: np.ndarray, channels: list[str]):
    from spatialdata.models import Image2DModel

    size = 2048
    return Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=channels, chunks=(len(channels), size, size))


def _table(obs: pd.DataFrame, origins: np.ndarray, size: int, uns: dict):
    import anndata as ad
    from spatialdata.models import TableModel

    obs = obs.copy()
    obs["y0"] = origins[:, 0]
    obs["x0"] = origins[:, 1]
    obs["tile_size"] = np.full(len(obs), size, dtype=np.int64)
    table = ad.AnnData(X=np.zeros((len(obs), 0), dtype=np.float32), obs=obs)
    # (x, y) centres, as biodiffuse.data's tiling: a T-tile "centred" here is the tile itself
    table.obsm["spatial"] = (origins[:, ::-1] + size // 2).astype(np.float64)
    table.uns.update(uns)
    return TableModel.parse(table)


def _select_hemit(rows: pd.DataFrame, tiles, split: str) -> pd.DataFrame:
    if tiles is None:
        out = rows
    elif isinstance(tiles, (int, np.integer)) and not isinstance(tiles, bool):
        if not 1 <= tiles <= len(rows):
            raise ValueError(f"tiles={tiles}: the {split!r} split has {len(rows)} tiles; ask for 1 to {len(rows)}.")
        out = rows.iloc[: int(tiles)]
    elif isinstance(tiles, (str, bytes)) or not isinstance(tiles, (abc.Sequence, np.ndarray, pd.Index)):
        raise ValueError(f"tiles must be None, an int or a list of tile names, got {tiles!r}.")
    else:
        names = [str(t) for t in tiles]
        if not names:
            raise ValueError("tiles is empty; pass None for the whole split.")
        dup = sorted({t for t in names if names.count(t) > 1})
        if dup:
            raise ValueError(f"tiles lists {dup[:5]} more than once.")
        by_name = rows.set_index("tile", drop=False)
        missing = [t for t in names if t not in by_name.index]
        if missing:
            raise KeyError(
                f"tiles {missing[:5]}{' ...' if len(missing) > 5 else ''} are not in the {split!r} split of "
                f"tiles.csv ({len(rows)} tiles, e.g. {list(rows['tile'][:3])})."
            )
        out = by_name.loc[names].reset_index(drop=True)
    return out.reset_index(drop=True)


def hemit(
    split: str = "train",
    path: str | os.PathLike | None = None,
    *,
    tiles: int | Sequence[str] | None = None,
    layout: int | None = None,
):
    """HEMIT: registered H&E and multiplex IHC (DAPI + 3 markers) tiles of colon cancer, as a mosaic.

    Bian et al. (HEMIT), from BianChang/Pix2pix_DualBranch @ed374b03 (MIT): pairs of an H&E RGB
    tile and a 4-channel mIHC tile of the same tissue, here reduced 2x to 256 x 256 pixels;
    28 training regions (692 tiles) and 10 test regions (250 tiles), split by region (sub-tiles
    of one region are neighbours on the slide and correlated). Layout of the folder::

        hemit/tiles.csv                     tile, split, region, subtile, source_file
        hemit/<split>/he/<tile>.jpg         RGB, T x T
        hemit/<split>/mihc/<tile>.tif       uint8 (4, T, T), axes CYX: HEMIT_STAINS

    The tiles are laid out as a mosaic, described in :mod:`biodiffuse.datasets.staining`.

    Parameters
    ----------
    split
        ``"train"`` or ``"test"``.
    path
        The ``hemit`` folder (or any folder in the same layout); default search as described in
        :mod:`biodiffuse.datasets.staining`.
    tiles
        Which tiles of the split: ``None`` (all, in ``tiles.csv`` order), an int ``n`` (the first
        ``n`` in ``tiles.csv`` order) or a list of tile names (in the order given).
    layout
        Tiles per mosaic row; default ``ceil(sqrt(n))``.

    Returns
    -------
    spatialdata.SpatialData
        ``images["he"]``: ``(3, H, W)`` uint8, ``c = ["R", "G", "B"]``, background 255;
        ``images["mihc"]``: ``(4, H, W)`` uint8, ``c =`` :data:`HEMIT_STAINS`, background 0 (same
        ``H``, ``W``); ``tables["tiles"]``: one row per tile (index: tile name; ``X`` empty
        ``(n, 0)``), ``obs``: ``tile``, ``split``, ``region`` (``"[x,y]"`` of the source
        region), ``subtile`` (1-25), ``y0`` / ``x0`` (origin in the mosaic, pixels),
        ``tile_size``; ``obsm["spatial"]`` the tile centres ``(x, y)`` in mosaic pixels;
        ``uns["source"]``, ``uns["layout"]`` (``{"columns", "rows"}``).

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` / ``"test"``, ``tiles`` / ``layout`` are invalid, or a
        file has the wrong shape / dtype / channel count.
    KeyError
        If a requested tile name is not in the split.
    FileNotFoundError
        If the folder, ``tiles.csv``, ``<split>/he/``, ``<split>/mihc/`` or a tile's file is
        missing (the message names what is expected).

    Examples
    --------
    >>> train = bd.datasets.hemit("train", tiles=200)      # the first 200 training tiles
    >>> test = bd.datasets.hemit("test")
    >>> train.images["mihc"].coords["c"].values.tolist()
    ['DAPI', 'mIHC_1', 'mIHC_2', 'mIHC_3']
    """
    from spatialdata import SpatialData

    if split not in HEMIT_SPLITS:
        raise ValueError(f"split must be one of {HEMIT_SPLITS}, got {split!r}.")
    expected = "tiles.csv, <split>/he/<tile>.jpg and <split>/mihc/<tile>.tif"
    folder = _folder(_HEMIT, path, expected)
    csv = folder / "tiles.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{folder} lacks tiles.csv (expected {expected}).")
    for sub in ("he", "mihc"):
        if not (folder / split / sub).is_dir():
            raise FileNotFoundError(
                f"{folder} lacks the folder {split}/{sub}/ (expected {expected}; he/ holds RGB JPEGs, "
                f"mihc/ 4-channel TIFFs {HEMIT_STAINS})."
            )
    table = pd.read_csv(csv, dtype={"tile": str, "split": str, "region": str})
    lacking = [c for c in _HEMIT_COLUMNS if c not in table.columns]
    if lacking:
        raise ValueError(f"{csv} lacks columns {lacking} (expected {list(_HEMIT_COLUMNS)}).")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{csv} lists no tiles of split {split!r}.")
    rows = _select_hemit(rows, tiles, split)
    names = rows["tile"].tolist()
    he_files = [folder / split / "he" / f"{t}.jpg" for t in names]
    mihc_files = [folder / split / "mihc" / f"{t}.tif" for t in names]
    missing = [str(f.relative_to(folder)) for f in he_files + mihc_files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {len(missing)} tile file(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
        )

    n = len(names)
    columns = _columns(layout, n)
    he_mosaic = mihc_mosaic = None
    size = 0
    for i, (hf, mf) in enumerate(zip(he_files, mihc_files)):
        he = _read_rgb(hf)
        mihc = _read_chw_tiff(mf, len(HEMIT_STAINS))
        if i == 0:
            size = he.shape[0]
            if he.shape[:2] != (size, size):
                raise ValueError(f"{hf}: expected a square tile, got {he.shape[1]} x {he.shape[0]} (width x height).")
            origins = _origins(n, columns, size)
            shape = _mosaic_shape(n, columns, size)
            he_mosaic = np.full((3, *shape), 255, dtype=np.uint8)
            mihc_mosaic = np.zeros((len(HEMIT_STAINS), *shape), dtype=np.uint8)
        if he.shape[:2] != (size, size) or mihc.shape[1:] != (size, size):
            raise ValueError(
                f"tile {names[i]!r}: H&E {he.shape[:2]} and mIHC {mihc.shape[1:]} must both be {size} x {size} "
                f"(the size of the first tile)."
            )
        y0, x0 = origins[i]
        he_mosaic[:, y0 : y0 + size, x0 : x0 + size] = np.moveaxis(he, 2, 0)
        mihc_mosaic[:, y0 : y0 + size, x0 : x0 + size] = mihc

    obs = pd.DataFrame(
        {
            "tile": names,
            "split": pd.Categorical([split] * n, categories=list(HEMIT_SPLITS)),
            "region": pd.Categorical(rows["region"].to_numpy()),
            "subtile": rows["subtile"].to_numpy(dtype=np.int64),
        },
        index=pd.Index(names),
    )
    uns = {
        "source": "HEMIT (Bian et al.), BianChang/Pix2pix_DualBranch @ed374b03 (MIT); tiles reduced 2x",
        "layout": {"columns": columns, "rows": math.ceil(n / columns)},
    }
    return SpatialData(
        images={"he": _parse(he_mosaic, _RGB), "mihc": _parse(mihc_mosaic, list(HEMIT_STAINS))},
        tables={"tiles": _table(obs, origins, size, uns)},
    )


def _deepliif_split(stem: str, file: Path) -> str:
    prefix = stem.split("_", 1)[0]
    if prefix not in _DEEPLIIF_SPLITS or "_" not in stem:
        raise ValueError(
            f"{file}: expected a name '<split>_<set>.png' with split one of {_DEEPLIIF_SPLITS}."
        )
    return prefix


def deepliif(
    path: str | os.PathLike | None = None,
    *,
    sets: str | Sequence[str] | None = None,
    layout: int | None = None,
):
    """DeepLIIF sample data: co-registered IHC Ki67, hematoxylin, mpIF (DAPI, Lap2, Ki67) and masks.

    Ghahremani et al. 2022, ``Datasets/Sample_Dataset`` of nadeemlab/DeepLIIF @eab8bddd
    (non-commercial licence): each file ``<split>_<set>.png`` is a 3072 x 512 strip of six
    aligned 512 x 512 RGB panels, left to right :data:`DEEPLIIF_PANELS`. In the two training
    sets all six panels are real; in the four test sets every panel is a copy of the IHC image
    (DeepLIIF's convention for inference inputs: they carry no targets), which
    ``obs["has_targets"]`` records. Panels are kept as stored (3 channels ``R, G, B`` each;
    DAPI and mpIF Ki67 are grey, R = G = B, in the training sets).

    The sets are laid out as a mosaic, described in :mod:`biodiffuse.datasets.staining`.

    Parameters
    ----------
    path
        The ``deepliif`` folder (or any folder of such strips); default search as described in
        :mod:`biodiffuse.datasets.staining`.
    sets
        File stems to load (e.g. ``"train_Lung1"``), in the order given; default all, sorted.
    layout
        Sets per mosaic row; default ``ceil(sqrt(n))``.

    Returns
    -------
    spatialdata.SpatialData
        One image element per panel, ``images[p]`` for ``p`` in :data:`DEEPLIIF_PANELS`,
        ``(3, H, W)`` uint8 with ``c = ["R", "G", "B"]`` (background 255 for ``ihc`` /
        ``hematoxylin``, 0 otherwise); ``tables["tiles"]``: one row per set (index: file stem;
        ``X`` empty ``(n, 0)``), ``obs``: ``set``, ``split`` (file-name prefix), ``has_targets``,
        ``y0`` / ``x0``, ``tile_size``; ``obsm["spatial"]`` the tile centres ``(x, y)``;
        ``uns["source"]``, ``uns["layout"]``.

    Raises
    ------
    FileNotFoundError
        If the folder holds no ``*.png`` or a requested set is missing.
    ValueError
        If a file is not a strip of six square RGB panels, sizes differ between files, a name
        lacks the ``<split>_`` prefix, or ``sets`` / ``layout`` are invalid.

    Examples
    --------
    >>> sdata = bd.datasets.deepliif(sets=["train_Bladder1", "train_Lung1"])
    >>> sdata.images["ihc"].shape, sdata.images["ki67_if"].shape       # (3, H, W) each
    >>> sdata.tables["tiles"].obs[["set", "split", "has_targets"]]
    """
    from spatialdata import SpatialData

    expected = "'<split>_<set>.png' strips of six square panels (IHC, hematoxylin, DAPI, Lap2, Ki67, mask)"
    folder = _folder(_DEEPLIIF, path, expected)
    if sets is None:
        files = sorted(folder.glob("*.png"))
        if not files:
            raise FileNotFoundError(f"{folder} holds no *.png (expected {expected}).")
    else:
        stems = [sets] if isinstance(sets, str) else [str(s) for s in sets]
        if not stems:
            raise ValueError("sets is empty; pass None for all sets.")
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ValueError(f"sets lists {dup} more than once.")
        files = [folder / f"{s}.png" for s in stems]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            have = sorted(f.stem for f in folder.glob("*.png"))
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} (sets there: {have}).")
    stems = [f.stem for f in files]
    splits = [_deepliif_split(s, f) for s, f in zip(stems, files)]

    n = len(files)
    columns = _columns(layout, n)
    mosaics: dict[str, np.ndarray] = {}
    has_targets = np.zeros(n, dtype=bool)
    size = 0
    for i, file in enumerate(files):
        strip = _read_rgb(file)
        height, width = strip.shape[:2]
        if width != len(DEEPLIIF_PANELS) * height:
            raise ValueError(
                f"{file}: expected {len(DEEPLIIF_PANELS)} square panels side by side (width = "
                f"{len(DEEPLIIF_PANELS)} x height), got {width} x {height} (width x height)."
            )
        if i == 0:
            size = height
            origins = _origins(n, columns, size)
            shape = _mosaic_shape(n, columns, size)
            mosaics = {p: np.full((3, *shape), _DEEPLIIF_BACKGROUND[p], dtype=np.uint8) for p in DEEPLIIF_PANELS}
        elif height != size:
            raise ValueError(f"{file}: panels are {height} pixels, those of {files[0].name} {size}.")
        y0, x0 = origins[i]
        panels = [strip[:, k * size : (k + 1) * size] for k in range(len(DEEPLIIF_PANELS))]
        has_targets[i] = any(not np.array_equal(p, panels[0]) for p in panels[1:])
        for name, panel in zip(DEEPLIIF_PANELS, panels):
            mosaics[name][:, y0 : y0 + size, x0 : x0 + size] = np.moveaxis(panel, 2, 0)

    obs = pd.DataFrame(
        {
            "set": stems,
            "split": pd.Categorical(splits, categories=[s for s in _DEEPLIIF_SPLITS if s in splits]),
            "has_targets": has_targets,
        },
        index=pd.Index(stems),
    )
    uns = {
        "source": "DeepLIIF sample data (Ghahremani et al. 2022), nadeemlab/DeepLIIF @eab8bddd (non-commercial)",
        "layout": {"columns": columns, "rows": math.ceil(n / columns)},
    }
    return SpatialData(
        images={p: _parse(m, _RGB) for p, m in mosaics.items()},
        tables={"tiles": _table(obs, origins, size, uns)},
    )
