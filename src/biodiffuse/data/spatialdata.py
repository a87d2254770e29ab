"""Image elements of a SpatialData object: type check, the ``(c, y, x)`` element, channel names
and channel planes read by name.

Set-up records of SpatialData objects live in ``sdata.attrs["biodiffuse"]``; see
:mod:`biodiffuse.data.registry` (:func:`write_image_setup` / :func:`read_image_setup` are
kept here as aliases of its functions).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .registry import SDATA_ATTRS_KEY, read_setup_record, write_setup_record

__all__ = [
    "SDATA_ATTRS_KEY",
    "is_spatialdata",
    "image_element",
    "image_channels",
    "image_array",
    "write_image_setup",
    "read_image_setup",
]


def is_spatialdata(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`spatialdata.SpatialData`.

    Parameters
    ----------
    obj
        Any object.

    Returns
    -------
    bool
        False also when spatialdata is not installed.

    Examples
    --------
    >>> bd.data.is_spatialdata(bd.datasets.mibi_granuloma())
    True
    >>> bd.data.is_spatialdata(bd.datasets.eccite_pbmc())
    False
    """
    try:
        from spatialdata import SpatialData
    except ImportError:  # pragma: no cover - spatialdata is a dependency
        return False
    return isinstance(obj, SpatialData)


def image_element(sdata: Any, image_key: str) -> Any:
    """The full-resolution image element ``sdata.images[image_key]`` with dims ``(c, y, x)``.

    Parameters
    ----------
    sdata
        SpatialData.
    image_key
        Name of the image element; of a multiscale image, ``scale0`` is used.

    Returns
    -------
    xarray.DataArray
        The element itself (not copied).

    Raises
    ------
    KeyError
        If ``image_key`` is not an image element.
    ValueError
        If the element's dims are not ``("c", "y", "x")``.

    Examples
    --------
    >>> sdata = bd.datasets.hemit("train", tiles=4)
    >>> he = bd.data.image_element(sdata, "he")           # the DataArray, dims ("c", "y", "x")
    >>> he.sizes["c"]
    3
    """
    if image_key not in sdata.images:
        raise KeyError(f"{image_key!r} is not an image element of this SpatialData (have {list(sdata.images.keys())}).")
    elem = sdata.images[image_key]
    if not hasattr(elem, "dims"):  # multiscale DataTree: use full resolution
        elem = next(iter(elem["scale0"].values()))
    if tuple(elem.dims) != ("c", "y", "x"):
        raise ValueError(f"images[{image_key!r}] has dims {tuple(elem.dims)}; expected ('c', 'y', 'x').")
    return elem


_image_element = image_element  # the name _mcd_image.py used


def image_channels(sdata: Any, image_key: str) -> list[str]:
    """Channel names (the ``c`` coordinate) of an image element.

    Parameters
    ----------
    sdata
        SpatialData.
    image_key
        Name of the image element.

    Returns
    -------
    list of str
        Channel names in plane order.

    Raises
    ------
    ValueError
        If channel names repeat (reading by name would be ambiguous), or the dims are wrong.

    Examples
    --------
    >>> sdata = bd.datasets.imc_pancreas()
    >>> bd.data.image_channels(sdata, "E34")
    ['H3', 'CD99', 'PIN', 'CD8a', 'CDH']
    """
    names = [str(c) for c in image_element(sdata, image_key).coords["c"].values]
    index = pd.Index(names)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique().tolist()
        raise ValueError(
            f"images[{image_key!r}] has {len(dup)} duplicated channel name(s) (e.g. {dup[:5]}); channels are "
            "read by name, so rename the 'c' coordinate to unique names first "
            "(e.g. element.assign_coords(c=unique_names))."
        )
    return names


def image_array(sdata: Any, image_key: str, names: Sequence[str | None], rows: Any = None) -> np.ndarray:
    """Channel planes of an image element by name.

    Parameters
    ----------
    sdata
        SpatialData.
    image_key
        Name of the image element ``(c, y, x)``.
    names
        Channels to read, in output order; channels absent from the image, or given as None
        (not to be read, e.g. channels to impute), come back as NaN planes.
    rows
        Optional image rows (``y`` indices: a slice or an index array) to read; default all.

    Returns
    -------
    numpy.ndarray
        ``(len(names), H, W)`` float32 (``H`` = the number of selected rows).

    Raises
    ------
    ValueError
        On NaN / inf inside a present channel (missing channels are declared by absence or
        None, never by NaN pixels), non-numeric pixels or duplicated channel names.

    Examples
    --------
    >>> sdata = bd.datasets.mibi_granuloma()
    >>> planes = bd.data.image_array(sdata, "mibi", ["CD3", "CD8", None])   # (3, 1024, 1024), the last NaN
    >>> band = bd.data.image_array(sdata, "mibi", ["CD3"], rows=slice(0, 64))   # (1, 64, 1024)
    """
    elem = image_element(sdata, image_key)
    have = image_channels(sdata, image_key)
    if not (np.issubdtype(elem.dtype, np.number) or elem.dtype == bool):
        raise ValueError(f"images[{image_key!r}] is not numeric (dtype {elem.dtype}).")
    pos = {n: i for i, n in enumerate(have)}
    h, w = elem.shape[1:]
    sel = slice(None) if rows is None else rows
    h = len(range(h)[sel]) if isinstance(sel, slice) else len(np.asarray(sel))
    out = np.full((len(names), h, w), np.nan, dtype=np.float32)
    for j, name in enumerate(names):
        if name is not None and name in pos:
            plane = np.asarray(elem.data[pos[name]][sel], dtype=np.float32)
            if not np.isfinite(plane).all():
                raise ValueError(f"images[{image_key!r}] channel {name!r} holds NaN or inf.")
            out[j] = plane
    return out


def write_image_setup(sdata: Any, model_name: str, record: dict[str, Any]) -> None:
    """Alias of :func:`biodiffuse.data.registry.write_setup_record` (kept for compatibility)."""
    write_setup_record(sdata, model_name, record)


def read_image_setup(sdata: Any, model_name: str) -> dict[str, Any] | None:
    """Alias of :func:`biodiffuse.data.registry.read_setup_record` (kept for compatibility)."""
    return read_setup_record(sdata, model_name)
