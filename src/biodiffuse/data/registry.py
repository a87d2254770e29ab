"""The small set-up record a model leaves in the user's object so that ``Model(obj)`` finds it.

One key only: ``obj.uns["biodiffuse"][model]`` for AnnData and MuData,
``obj.attrs["biodiffuse"][model]`` for SpatialData. Everything else a model knows about its
data (channel names, normaliser statistics) lives on the model and in its saved files, not
in the user's object; no hidden columns are written to ``obs``.
"""

from __future__ import annotations

from typing import Any, MutableMapping

from anndata import AnnData

__all__ = ["UNS_KEY", "SDATA_ATTRS_KEY", "write_setup_record", "read_setup_record"]

UNS_KEY = "biodiffuse"
SDATA_ATTRS_KEY = UNS_KEY


def _is_mudata(obj: Any) -> bool:
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover - mudata is a dependency
        return False
    return isinstance(obj, MuData)


def _record_store(obj: Any) -> MutableMapping[str, Any]:
    """``obj.uns`` (AnnData, MuData) or ``obj.attrs`` (SpatialData); TypeError otherwise."""
    if isinstance(obj, AnnData) or _is_mudata(obj):
        return obj.uns
    from .spatialdata import is_spatialdata

    if is_spatialdata(obj):
        return obj.attrs
    raise TypeError(f"Set-up records live on an AnnData, MuData or SpatialData, got {type(obj).__name__}.")


def _plain(value: Any) -> Any:
    """0-d numpy values (as h5ad gives back scalars) as Python scalars."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def write_setup_record(obj: Any, model_name: str, args: dict[str, Any]) -> None:
    """Store a model's set-up arguments in the object.

    Parameters
    ----------
    obj
        AnnData or MuData (record in ``obj.uns["biodiffuse"][model_name]``) or SpatialData
        (``obj.attrs["biodiffuse"][model_name]``). No other key of ``obj`` is touched.
    model_name
        The model's name (e.g. ``"MCD"``).
    args
        Set-up arguments; None values are omitted so that the object still writes to
        h5ad / zarr.

    Raises
    ------
    TypeError
        If ``obj`` is none of the three types.

    Examples
    --------
    >>> bd.data.write_setup_record(adata, "MCD", {"protein_obsm_key": "protein_expression", "layer": None})
    >>> adata.uns["biodiffuse"]["MCD"]                          # None values are left out
    {'protein_obsm_key': 'protein_expression'}
    """
    store = _record_store(obj)
    records = dict(store.get(UNS_KEY, {}))
    records[model_name] = {k: v for k, v in args.items() if v is not None}
    store[UNS_KEY] = records


def read_setup_record(obj: Any, model_name: str) -> dict[str, Any] | None:
    """The record written by :func:`write_setup_record`.

    Parameters
    ----------
    obj
        AnnData, MuData or SpatialData.
    model_name
        The model's name.

    Returns
    -------
    dict or None
        A new dict (0-d arrays as Python scalars), or None when the model was not set up
        on ``obj``.

    Raises
    ------
    TypeError
        If ``obj`` is none of the three types.

    Examples
    --------
    >>> bd.data.write_setup_record(adata, "MCD", {"protein_obsm_key": "protein_expression", "layer": None})
    >>> bd.data.read_setup_record(adata, "MCD")
    {'protein_obsm_key': 'protein_expression'}
    >>> bd.data.read_setup_record(adata, "SpaDiT") is None     # not set up for this model
    True
    """
    records = _record_store(obj).get(UNS_KEY)
    if not records or model_name not in records:
        return None
    return {k: _plain(v) for k, v in records[model_name].items()}
