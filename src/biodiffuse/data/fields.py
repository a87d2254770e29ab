"""Reading and validating the AnnData fields a model registers (matrices, obsm tables, names)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = [
    "check_adata",
    "get_matrix",
    "check_values",
    "get_obsm_frame",
    "columns_by_name",
    "log_normalize",
]


def check_adata(adata: object, what: str = "adata") -> AnnData:
    """Raise unless ``adata`` is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{what} has no cells (n_obs == 0).")
    return adata


def get_matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``adata.X`` or ``adata.layers[layer]`` (not copied)."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the counts layer.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not in adata.layers (have {list(adata.layers.keys())}).")
    return adata.layers[layer]


def check_values(x: np.ndarray | sparse.spmatrix, name: str, *, nonnegative: bool, allow_nan: bool = False) -> None:
    """Raise a ValueError naming ``name`` on NaN (unless allowed), inf or negative values."""
    data = x.data if sparse.issparse(x) else np.asarray(x)
    if data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{name} is not numeric (dtype {data.dtype}).")
    if np.isinf(data).any():
        raise ValueError(f"{name} contains inf values.")
    nan = np.isnan(data)
    if nan.any() and not allow_nan:
        raise ValueError(f"{name} contains {int(nan.sum())} NaN value(s).")
    if nonnegative and (data[~nan] < 0).any():
        raise ValueError(f"{name} contains negative values; raw counts are required.")


def get_obsm_frame(adata: AnnData, key: str, names: Sequence[str] | None = None) -> pd.DataFrame:
    """``adata.obsm[key]`` as a DataFrame with channel names as columns (not copied if it is one).

    Names come from the DataFrame's columns, else ``names``, else ``adata.uns[f"{key}_names"]``
    or ``adata.uns["protein_names"]``.
    """
    if key not in adata.obsm:
        raise KeyError(f"{key!r} not in adata.obsm (have {list(adata.obsm.keys())}).")
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        return value
    arr = value.toarray() if sparse.issparse(value) else np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] must be 2-D, got shape {arr.shape}.")
    if names is None:
        for k in (f"{key}_names", "protein_names"):
            if k in adata.uns:
                names = list(np.asarray(adata.uns[k]).astype(str))
                break
    if names is None:
        raise ValueError(
            f"adata.obsm[{key!r}] is an array without channel names: store it as a DataFrame "
            f"or pass the names (e.g. protein_names=...)."
        )
    if len(names) != arr.shape[1]:
        raise ValueError(f"adata.obsm[{key!r}] has {arr.shape[1]} columns but {len(names)} names were given.")
    return pd.DataFrame(arr, index=adata.obs_names, columns=pd.Index(names, dtype=str))


def columns_by_name(
    x: np.ndarray | sparse.spmatrix, have: Sequence[str], want: Sequence[str], what: str
) -> np.ndarray | sparse.spmatrix:
    """Select columns ``want`` (in that order) from ``x`` whose columns are named ``have``."""
    index = pd.Index(have)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{what} names are not unique (e.g. {dup}); make them unique first.")
    pos = index.get_indexer(want)
    if (pos < 0).any():
        missing = [w for w, p in zip(want, pos) if p < 0]
        raise ValueError(
            f"{len(missing)} {what}(s) the model was trained on are missing from the query "
            f"(e.g. {missing[:5]})."
        )
    return x[:, pos]


def log_normalize(
    counts_selected: np.ndarray | sparse.spmatrix, library_size: np.ndarray, target_sum: float = 1e4
) -> np.ndarray:
    """``log1p(counts / library_size * target_sum)`` as a dense float32 array."""
    lib = np.asarray(library_size, dtype=np.float64).reshape(-1, 1)
    lib = np.where(lib > 0, lib, 1.0)
    if sparse.issparse(counts_selected):
        counts_selected = counts_selected.toarray()
    return np.log1p(np.asarray(counts_selected, dtype=np.float64) / lib * target_sum).astype(np.float32)
