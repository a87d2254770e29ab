"""The small setup record a model leaves in ``adata.uns`` so that ``Model(adata)`` finds it.

Everything else a model knows about its data (channel names, normaliser statistics) lives on
the model and in its saved files, not in the user's object; no hidden columns are written
to ``obs``.
"""

from __future__ import annotations

from typing import Any

from anndata import AnnData

__all__ = ["UNS_KEY", "write_setup_record", "read_setup_record"]

UNS_KEY = "biodiffuse"


def write_setup_record(adata: AnnData, model_name: str, args: dict[str, Any]) -> None:
    """Store ``args`` under ``adata.uns["biodiffuse"][model_name]`` (None values omitted so that
    the object still writes to h5ad)."""
    record = {k: v for k, v in args.items() if v is not None}
    store = dict(adata.uns.get(UNS_KEY, {}))
    store[model_name] = record
    adata.uns[UNS_KEY] = store


def read_setup_record(adata: AnnData, model_name: str) -> dict[str, Any] | None:
    """The record written by :func:`write_setup_record`, or None."""
    store = adata.uns.get(UNS_KEY)
    if not store or model_name not in store:
        return None
    return {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v) for k, v in store[model_name].items()}
