"""Multiplexed tissue images (MIBI, IMC, CODEX) from TIFF files into SpatialData.

Two layouts are read, with :mod:`tifffile` only (no pickle, nothing executed from a file):

- a folder with one single-channel TIFF per channel (channel name = file stem);
- one multi-channel (OME-)TIFF (names from the OME-XML ``Channel Name`` attributes).

A segmentation mask (integer cell ids, 0 = background) adds a labels element and a table of
per-cell mean intensities that annotates it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["read_channel_tiffs", "aggregate_by_labels", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff")


def aggregate_by_labels(image: np.ndarray, labels: np.ndarray, channel_names: Sequence[str]) -> pd.DataFrame:
    """Mean intensity of every channel in every labelled cell.

    Parameters
    ----------
    image
        ``(C, H, W)`` array.
    labels
        ``(H, W)`` integer array of cell ids; 0 is background and is left out.
    channel_names
        ``C`` names, used as columns.

    Returns
    -------
    pandas.DataFrame
        One row per cell id > 0 present in ``labels`` (sorted, index named ``"cell_id"``), one
        float64 column per channel. Empty (0 rows) when there are no cells.

    Examples
    --------
    >>> sdata = bd.io.read_channel_tiffs("mibi_point14/channels", image_key="mibi")
    >>> image = sdata.images["mibi"]
    >>> cells = bd.io.aggregate_by_labels(image.values, mask, image.coords["c"].values)   # mask: (H, W) cell ids
    >>> cells.loc[:, ["CD3", "CD8"]].head()
    """
    image = np.asarray(image)
    labels = _check_labels(labels)
    names = [str(n) for n in channel_names]
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}.")
    if image.shape[1:] != labels.shape:
        raise ValueError(f"labels shape {labels.shape} does not match image (H, W) {image.shape[1:]}.")
    if len(names) != image.shape[0]:
        raise ValueError(f"{len(names)} channel names for {image.shape[0]} channels.")
    ids, inverse = _compact_ids(labels.ravel())
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    means = np.empty((len(ids), len(names)), dtype=np.float64)
    for c in range(image.shape[0]):  # a loop over channels; cells are vectorised
        means[:, c] = np.bincount(inverse, weights=image[c].ravel().astype(np.float64), minlength=len(ids)) / counts
    keep = ids > 0
    index = pd.Index(ids[keep].astype(np.int64), name="cell_id")
    return pd.DataFrame(means[keep], index=index, columns=names)


def _compact_ids(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted ids present in ``flat`` and each pixel's position among them."""
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= 4 * flat.size:  # direct bincount; cheap and no sort
        present = np.bincount(flat, minlength=max_id + 1) > 0
        ids = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        return ids, lookup[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    return ids, inverse.ravel()


def _check_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 3 and 1 in labels.shape:
        labels = labels.squeeze()
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) array, got shape {labels.shape}.")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"{what} must hold integer cell ids; found non-integer values.")
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integer cell ids, got dtype {labels.dtype}.")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} contains negative ids; 0 is background, cells are > 0.")
    return labels


def _ome_channel_names(ome_xml: str | None, n_channels: int) -> list[str] | None:
    """``Channel Name`` attributes of the first OME image, if there is one per channel."""
    if not ome_xml:
        return None
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for image in root.iter():
        if not image.tag.endswith("}Image") and image.tag != "Image":
            continue
        names = [el.get("Name") for el in image.iter() if el.tag.endswith("}Channel") or el.tag == "Channel"]
        if len(names) == n_channels and all(names):
            return [str(n) for n in names]
        return None
    return None


def _read_stack(file: Path) -> tuple[np.ndarray, list[str] | None]:
    """A multi-channel TIFF as ``(C, H, W)`` plus OME channel names (or None)."""
    import tifffile

    with tifffile.TiffFile(file) as tif:
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes
        ome = tif.ome_metadata if tif.is_ome else None
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and axes.endswith("S"):  # interleaved samples (y, x, s)
        arr = np.moveaxis(arr, -1, 0)
    elif arr.ndim > 3:
        squeezed = arr.squeeze()
        if squeezed.ndim != 3:
            raise ValueError(f"{file}: expected a (C, Y, X) image, got axes {axes!r} with shape {arr.shape}.")
        arr = squeezed
    return arr, _ome_channel_names(ome, arr.shape[0])


def _read_plane(file: Path) -> np.ndarray:
    import tifffile

    arr = tifffile.imread(file)
    if arr.ndim > 2:
        arr = arr.squeeze()
    if arr.ndim != 2:
        raise ValueError(f"{file} is not a single-channel 2-D image (shape {arr.shape}); a folder must hold one "
                         "TIFF per channel.")
    return arr


def _select(available: list[str], channels: Sequence[str] | None, exclude: Sequence[str] | None) -> list[str]:
    for what, names in (("channels", channels), ("exclude", exclude)):
        if names is None:
            continue
        if isinstance(names, str):
            raise TypeError(f"{what} must be a list of channel names, not a string.")
        unknown = [str(n) for n in names if str(n) not in available]
        if unknown:
            raise ValueError(f"{what}: unknown channel name(s) {unknown}; available: {available}.")
    chosen = list(available) if channels is None else [str(n) for n in channels]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"channels contains duplicates: {chosen}.")
    drop = set() if exclude is None else {str(n) for n in exclude}
    chosen = [n for n in chosen if n not in drop]
    if not chosen:
        raise ValueError("No channels left after selection.")
    return chosen


def _folder_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in TIFF_SUFFIXES:
            continue
        if f.stem in files:
            raise ValueError(f"Two files for channel {f.stem!r} in {folder}: {files[f.stem].name}, {f.name}.")
        files[f.stem] = f
    if not files:
        raise ValueError(f"No .tif/.tiff files in {folder}.")
    return dict(sorted(files.items()))


def _read_image(
    path: Path,
    channels: Sequence[str] | None,
    exclude: Sequence[str] | None,
    channel_names: Sequence[str] | None,
) -> tuple[np.ndarray, list[str]]:
    """``(C, H, W)`` float32 array and its channel names."""
    if path.is_dir():
        files = _folder_files(path)
        names = _select(list(files), channels, exclude)
        image: np.ndarray | None = None
        for i, name in enumerate(names):  # only the selected files are read
            plane = _read_plane(files[name])
            if image is None:
                image = np.empty((len(names), *plane.shape), dtype=np.float32)
            elif plane.shape != image.shape[1:]:
                raise ValueError(f"Channel {name!r} ({files[name].name}) has shape {plane.shape}; the first "
                                 f"channel {names[0]!r} has {image.shape[1:]}. All channels must be the same size.")
            image[i] = plane
        assert image is not None
        return image, names
    if not path.is_file():
        raise FileNotFoundError(f"{path} is neither a folder of channel TIFFs nor a TIFF file.")
    stack, ome_names = _read_stack(path)
    if channel_names is not None:
        available = [str(n) for n in channel_names]
        if len(available) != stack.shape[0]:
            raise ValueError(f"{len(available)} channel_names for {stack.shape[0]} channels in {path.name}.")
    else:
        available = ome_names or [f"c{i}" for i in range(stack.shape[0])]
    if len(set(available)) != len(available):
        raise ValueError(f"Duplicate channel names in {path.name}: {available}.")
    names = _select(available, channels, exclude)
    index = [available.index(n) for n in names]
    return np.asarray(stack[index], dtype=np.float32), names


def read_channel_tiffs(
    path: str | os.PathLike,
    image_key: str = "image",
    channels: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    labels: str | os.PathLike | None = None,
    labels_key: str | None = None,
    table_key: str = "table",
    *,
    channel_names: Sequence[str] | None = None,
    background: int | Sequence[int] = 0,
):
    """Read a multiplexed image (and optionally its cell segmentation) into SpatialData.

    Parameters
    ----------
    path
        A folder with one single-channel TIFF per channel (``.tif``/``.tiff``; channel name =
        file stem; channels sorted by name), or one multi-channel (OME-)TIFF file (names from
        the OME-XML ``Channel Name`` attributes, else ``channel_names``, else ``"c0"``, ``"c1"``, ...).
    image_key
        Name of the image element.
    channels
        Channels to keep, in this order (default: all).
    exclude
        Channels to drop (applied after ``channels``).
    labels
        A segmentation TIFF of the same (H, W): integer cell ids, 0 = background. Adds a labels
        element and a table of per-cell mean intensities.
    labels_key
        Name of the labels element (default ``f"{image_key}_labels"``).
    table_key
        Name of the table.
    channel_names
        Names for the channels of a multi-channel file (overrides OME names); not used for folders.
    background
        Mask id(s) that are not cells; set to 0 in the labels element and left out of the table
        (some pipelines, e.g. the Angelo lab's MIBI masks, label the extracellular space 1).

    Returns
    -------
    spatialdata.SpatialData
        ``images[image_key]``: ``(c, y, x)`` float32 with channel names as ``c`` coordinates.
        With ``labels``: ``labels[labels_key]`` and ``tables[table_key]``, an AnnData with one
        row per cell id > 0 (``obs_names`` = the id as a string), ``obs["cell_id"]`` (int),
        ``obs["region"]`` (= ``labels_key``), ``obs["area"]`` (pixels), ``obsm["spatial"]``
        (centroid x, y in pixels), ``X``: mean intensity per channel (float32,
        ``var_names`` = channel names).

    Raises
    ------
    ValueError
        Unknown names in ``channels`` / ``exclude`` (the message lists those available),
        channels of different shapes, a mask that does not match the image or is not integer.
    FileNotFoundError
        If ``path`` or ``labels`` does not exist.

    Examples
    --------
    >>> sdata = bd.io.read_channel_tiffs("mibi_point14/channels", image_key="mibi", exclude=["Au", "Background"],
    ...                                  labels="mibi_point14/segmentationmask_SampleID14.tif", background=[0, 1])
    >>> sdata.tables["table"]                      # cells x channels, per-cell mean intensity
    >>> codex = bd.io.read_channel_tiffs("codex_region1.ome.tif", image_key="codex")   # one OME-TIFF
    """
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel

    path = Path(path).expanduser()
    image, names = _read_image(path, channels, exclude, channel_names)
    elements: dict = {"images": {image_key: Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=names)}}
    if labels is not None:
        import tifffile

        labels_path = Path(labels).expanduser()
        if not labels_path.is_file():
            raise FileNotFoundError(f"labels file {labels_path} not found.")
        mask = _check_labels(tifffile.imread(labels_path), what=f"labels ({labels_path.name})")
        background_ids = [int(b) for b in np.atleast_1d(background)]
        if any(b != 0 for b in background_ids):
            mask = np.where(np.isin(mask, background_ids), 0, mask).astype(mask.dtype, copy=False)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"labels {labels_path.name} has shape {mask.shape}; the image is {image.shape[1:]}.")
        labels_key = labels_key or f"{image_key}_labels"
        elements["labels"] = {labels_key: Labels2DModel.parse(mask, dims=("y", "x"))}
        elements["tables"] = {table_key: _cell_table(image, mask, names, labels_key)}
    return SpatialData(**elements)


def _cell_table(image: np.ndarray, mask: np.ndarray, names: list[str], region: str):
    """AnnData of per-cell means annotating the labels element ``region``."""
    from anndata import AnnData
    from spatialdata.models import TableModel

    means = aggregate_by_labels(image, mask, names)
    ids = means.index.to_numpy()
    present, inverse = _compact_ids(mask.ravel())
    counts = np.bincount(inverse, minlength=len(present)).astype(np.float64)
    yy, xx = np.indices(mask.shape)
    cy = np.bincount(inverse, weights=yy.ravel().astype(np.float64), minlength=len(present)) / counts
    cx = np.bincount(inverse, weights=xx.ravel().astype(np.float64), minlength=len(present)) / counts
    keep = present > 0
    obs = pd.DataFrame(
        {
            "cell_id": ids.astype(np.int64),
            "region": pd.Categorical([region] * len(ids)),
            "area": counts[keep].astype(np.int64),
        },
        index=pd.Index([str(i) for i in ids]),
    )
    adata = AnnData(
        X=means.to_numpy(dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(names)),
        obsm={"spatial": np.column_stack([cx[keep], cy[keep]])},
    )
    return TableModel.parse(adata, region=region, region_key="region", instance_key="cell_id")
