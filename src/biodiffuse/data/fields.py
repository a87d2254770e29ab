"""Reading and validating the data fields a model registers, matched by name.

Declarative fields (:class:`MatrixField`, :class:`ObsmField`, :class:`ModalityField`,
:class:`ImageField`) validate an object, register the names they hold, read values by name
(batch by batch from backed AnnData) and transfer to a query object, once for all models.
The module-level functions below them are the older, lower-level helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .spatialdata import image_array, image_channels, image_element, is_spatialdata

__all__ = [
    "READ_CHUNK",
    "Field",
    "FieldTransfer",
    "MatrixField",
    "ObsmField",
    "ModalityField",
    "ImageField",
    "field_from_state",
    "check_adata",
    "get_matrix",
    "check_values",
    "get_obsm_frame",
    "columns_by_name",
    "log_normalize",
]


def check_adata(adata: object, what: str = "adata") -> AnnData:
    """Raise unless ``adata`` is a non-empty AnnData.

    Parameters
    ----------
    adata
        The object to check.
    what
        Its name in the error messages (e.g. ``"reference"``).

    Examples
    --------
    >>> adata = bd.data.check_adata(adata)               # returned as it is when valid
    >>> bd.data.check_adata(mdata, "reference")          # TypeError: reference must be an AnnData, got MuData.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{what} has no cells (n_obs == 0).")
    return adata


def get_matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``adata.X`` or ``adata.layers[layer]`` (not copied).

    Parameters
    ----------
    adata
        The AnnData.
    layer
        Layer name, or None for ``X``.

    Examples
    --------
    >>> counts = bd.data.get_matrix(adata, "counts")     # adata.layers["counts"], not a copy
    >>> x = bd.data.get_matrix(adata, None)              # adata.X
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the counts layer.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not in adata.layers (have {list(adata.layers.keys())}).")
    return adata.layers[layer]


def check_values(x: np.ndarray | sparse.spmatrix, name: str, *, nonnegative: bool, allow_nan: bool = False) -> None:
    """Raise a ValueError naming ``name`` on NaN (unless allowed), inf or negative values.

    Parameters
    ----------
    x
        Values to check: an array or a scipy sparse matrix (only its stored entries are checked).
    name
        Name of ``x`` in the error messages (e.g. ``"adata.layers['counts']"``).
    nonnegative
        Also raise on negative values (raw counts).
    allow_nan
        Accept NaN values.

    Examples
    --------
    >>> bd.data.check_values(adata.X, "adata.X", nonnegative=True)      # raw counts: passes silently
    >>> bd.data.check_values(np.array([1.0, np.nan]), "x", nonnegative=False, allow_nan=True)
    """
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
    or ``adata.uns["protein_names"]`` (the rule of :class:`ObsmField`, which this calls).

    Parameters
    ----------
    adata
        The AnnData.
    key
        Key of ``adata.obsm`` (a DataFrame, or a 2-D array / sparse matrix).
    names
        Column names for an array (ignored for a DataFrame).

    Examples
    --------
    >>> prot = bd.data.get_obsm_frame(adata, "protein_expression")              # a DataFrame: itself
    >>> adt = bd.data.get_obsm_frame(adata, "adt", names=["CD3", "CD4", "CD8"])  # an (n_obs, 3) array
    """
    if key not in adata.obsm:
        raise KeyError(f"{key!r} not in adata.obsm (have {list(adata.obsm.keys())}).")
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        return value
    arr = value.toarray() if sparse.issparse(value) else np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] must be 2-D, got shape {arr.shape}.")
    cols = ObsmField(key, names=names).names(adata)
    return pd.DataFrame(arr, index=adata.obs_names, columns=pd.Index(cols, dtype=str))


def columns_by_name(
    x: np.ndarray | sparse.spmatrix, have: Sequence[str], want: Sequence[str], what: str
) -> np.ndarray | sparse.spmatrix:
    """Select columns ``want`` (in that order) from ``x`` whose columns are named ``have``.

    Parameters
    ----------
    x
        Rows x columns, an array or a scipy sparse matrix (column-indexable).
    have
        The names of the columns of ``x`` (unique).
    want
        The names to select, in the order wanted; each must be in ``have``.
    what
        What the columns are (e.g. ``"gene"``), for the error messages.

    Examples
    --------
    >>> x = bd.data.columns_by_name(adata.X, adata.var_names, ["CD3E", "MS4A1"], "gene")   # (n_obs, 2)
    """
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
    """``log1p(counts / library_size * target_sum)`` as a dense float32 array.

    Parameters
    ----------
    counts_selected
        Cells x genes counts (dense or scipy sparse), e.g. of the genes a model reads.
    library_size
        ``(n_cells,)`` library size of each cell (e.g. summed over all its genes); 0 is
        treated as 1.
    target_sum
        Counts per cell after scaling.

    Examples
    --------
    >>> bd.data.log_normalize(np.array([[1.0, 3.0]]), np.array([4.0]), target_sum=4.0)
    array([[0.6931472, 1.3862944]], dtype=float32)
    >>> x = bd.data.log_normalize(adata[:, genes].X, np.asarray(adata.X.sum(axis=1)).ravel())
    """
    lib = np.asarray(library_size, dtype=np.float64).reshape(-1, 1)
    lib = np.where(lib > 0, lib, 1.0)
    if sparse.issparse(counts_selected):
        counts_selected = counts_selected.toarray()
    return np.log1p(np.asarray(counts_selected, dtype=np.float64) / lib * target_sum).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Declarative fields
# ---------------------------------------------------------------------------------------------

READ_CHUNK = 10_000
"""Rows read at a time from backed (on-disk) matrices."""

_DENSE_CHUNK_BYTES = 256 * 2**20  # cap of one row block read from a backed dense matrix
_MISSING = ("error", "nan")


@dataclass(frozen=True)
class FieldTransfer:
    """How a query object's names meet the names a field registered.

    Parameters
    ----------
    field
        Where the field reads in the query.
    registered
        The registered names.
    present, absent
        Registered names the query has / lacks, in registry order.
    extra
        Query names not registered, in query order.

    Attributes
    ----------
    field
        Where the field reads (e.g. ``"adata.layers['counts']"``).
    registered
        The registered names, in registry order.
    present
        Registered names the query has (registry order).
    absent
        Registered names the query lacks (registry order): to be treated as unobserved.
    extra
        Query names the registry does not know (query order): ignored by the model.

    Examples
    --------
    >>> field = bd.data.ObsmField("protein_expression")
    >>> t = field.transfer(adata_query, model.target_names)      # MCD's registered proteins
    >>> t.complete, t.absent                       # absent proteins are imputed as unobserved
    >>> t.mask                                     # (len(registered),) bool
    """

    field: str
    registered: tuple[str, ...]
    present: tuple[str, ...]
    absent: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def mask(self) -> np.ndarray:
        """``(len(registered),)`` bool, True where the query has the registered name."""
        have = set(self.present)
        return np.array([n in have for n in self.registered], dtype=bool)

    @property
    def complete(self) -> bool:
        """Whether the query has every registered name."""
        return not self.absent


def _affix_hint(registered: Sequence[str], query: Sequence[str]) -> str:
    """A hint when a common suffix / prefix (e.g. ``_PROT``) or letter case explains a mismatch."""
    reg, qry = set(registered), set(query)
    for names, other, side, other_side in ((query, reg, "query", "registered"), (registered, qry, "registered", "query")):
        for kind in ("suffix", "prefix"):
            if kind == "suffix":
                common = _common_prefix([n[::-1] for n in names])[::-1]
                cands = [common[i:] for i in range(len(common))]
            else:
                common = _common_prefix(list(names))
                cands = [common[:k] for k in range(len(common), 0, -1)]
            best, best_hits = "", 0
            for affix in cands:  # the affix that explains most names (the shorter on a tie)
                stripped = {n[: len(n) - len(affix)] if kind == "suffix" else n[len(affix) :] for n in names}
                hits = len(stripped & other)
                if hits > best_hits or (hits == best_hits and hits and len(affix) < len(best)):
                    best, best_hits = affix, hits
            if best_hits:
                fix = "removesuffix" if kind == "suffix" else "removeprefix"
                return (
                    f" The {side} names all {'end' if kind == 'suffix' else 'start'} with {best!r} and the "
                    f"{other_side} names do not: rename them (e.g. names.str.{fix}({best!r}))."
                )
    if {n.lower() for n in reg} & {n.lower() for n in qry}:
        return " Some names differ only in letter case: names are matched exactly."
    return ""


def _common_prefix(names: Sequence[str]) -> str:
    if not names:
        return ""
    lo, hi = min(names), max(names)
    i = 0
    while i < min(len(lo), len(hi)) and lo[i] == hi[i]:
        i += 1
    return lo[:i]


def _unique_names(names: Sequence[Any], what: str, fix: str) -> list[str]:
    """``names`` as str, ValueError naming ``what`` and the fix when they repeat."""
    index = pd.Index([str(n) for n in names])
    if index.has_duplicates:
        dup = index[index.duplicated()].unique().tolist()
        raise ValueError(
            f"{what} has {len(dup)} duplicated name(s) (e.g. {dup[:5]}); names must be unique to match "
            f"a query by name: {fix}."
        )
    return index.tolist()


def _row_index(rows: Any, n: int, what: str) -> np.ndarray:
    """``rows`` (None, slice, bool mask or integer indices) as int64 indices in ``[0, n)``."""
    if rows is None:
        return np.arange(n)
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    idx = np.asarray(rows)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"rows of {what}: a boolean mask must have length {n}, got shape {idx.shape}.")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"rows of {what} must be a slice, a boolean mask or 1-D integer indices.")
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"rows of {what} out of range for {n} rows.")
    return idx


def _is_in_memory(x: Any) -> bool:
    return isinstance(x, np.ndarray) or sparse.issparse(x)


def _dtype_kind(dtype: Any, what: str) -> str:
    """The numpy kind of ``dtype`` (``b``, ``i``, ``u``, ``f``); ValueError naming ``what`` otherwise."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} is not numeric (dtype {dtype}); it must hold numbers.")
    return dtype.kind


class Field:
    """A named block of an object that a model registers and reads by name.

    Subclasses name where they read (:meth:`where`), which object types they accept, the
    names they hold and how to read a block of rows. The shared interface is:

    - :meth:`validate` raises clear errors naming the key;
    - :meth:`register` validates and returns the JSON-serialisable state;
    - :meth:`read` / :meth:`iter_rows` read columns by name (in the order asked for);
    - :meth:`transfer` matches a query's names to the registered ones.

    No method changes the object it is given.

    Examples
    --------
    >>> field = bd.data.MatrixField(nonnegative=True)                 # a concrete Field: adata.X
    >>> state = field.register(adata)                                 # validated, JSON-serialisable
    >>> x = field.read(adata, state["names"][:10], rows=slice(0, 100))   # (100, 10) float32
    >>> field.transfer(adata_query, state["names"]).absent            # registered genes the query lacks
    """

    field_type: ClassVar[str] = "Field"
    nonnegative: bool = False
    allow_nan: bool = False

    # --- what subclasses provide ----------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable)."""
        raise NotImplementedError

    def where(self, obj: Any = None) -> str:
        """Where the field reads, as the user would write it (e.g. ``"adata.layers['counts']"``)."""
        raise NotImplementedError

    def check_type(self, obj: Any) -> None:
        """TypeError unless ``obj`` is of a type this field reads."""
        raise NotImplementedError

    def names(self, obj: Any) -> list[str]:
        """The names the field holds in ``obj`` (validated: right type, non-empty, unique).

        Values are not checked here (see :meth:`validate`).
        """
        raise NotImplementedError

    def n_obs(self, obj: Any) -> int:
        """Number of rows the field has in ``obj``."""
        raise NotImplementedError

    def _dtype(self, obj: Any) -> np.dtype:
        raise NotImplementedError

    def _check_values(self, obj: Any) -> None:
        raise NotImplementedError

    def _read_block(self, obj: Any, rows: np.ndarray, cols: np.ndarray, dtype: Any) -> np.ndarray:
        """Dense ``(len(rows), len(cols))`` values of the given row / column positions."""
        raise NotImplementedError

    def _chunk_rows(self, obj: Any) -> int:
        return READ_CHUNK

    # --- shared -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.field_type}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash(repr(self))

    def validate(self, obj: Any) -> None:
        """Check ``obj`` in full: type, non-empty, unique names, numeric dtype and values.

        Parameters
        ----------
        obj
            The object the field reads.

        Raises
        ------
        TypeError
            If ``obj`` is not of a type the field reads.
        KeyError
            If the key (layer, obsm key, modality, image) is absent.
        ValueError
            On an empty field, duplicated names, non-numeric values, NaN (unless allowed),
            inf, negative values (when counts are required) or wrong image dims; the message
            names the key and the problem. Backed matrices are checked batch by batch.
        """
        self.names(obj)
        _dtype_kind(self._dtype(obj), self.where(obj))
        self._check_values(obj)

    def register(self, obj: Any) -> dict[str, Any]:
        """Validate ``obj`` and return the field's state.

        Parameters
        ----------
        obj
            The object the model is set up on.

        Returns
        -------
        dict
            JSON-serialisable: ``field`` (class name), ``params`` (constructor arguments),
            ``key`` (:meth:`where`), ``names`` (list of str), ``dtype`` (numpy kind: ``"f"``,
            ``"i"``, ``"u"`` or ``"b"``) and ``n_obs``. :func:`field_from_state` rebuilds
            the field from it.
        """
        self.validate(obj)
        return {
            "field": self.field_type,
            "params": self.params(),
            "key": self.where(obj),
            "names": self.names(obj),
            "dtype": _dtype_kind(self._dtype(obj), self.where(obj)),
            "n_obs": int(self.n_obs(obj)),
        }

    def _positions(self, obj: Any, names: Sequence[str], missing: str) -> np.ndarray:
        if missing not in _MISSING:
            raise ValueError(f"missing must be one of {_MISSING}, got {missing!r}.")
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of names, got the string {names!r}.")
        names = [str(n) for n in names]
        pos = pd.Index(self.names(obj)).get_indexer(names)
        if missing == "error" and (pos < 0).any():
            lost = [n for n, p in zip(names, pos) if p < 0]
            raise ValueError(
                f"{len(lost)} of {len(names)} requested name(s) are missing from {self.where(obj)} "
                f"(e.g. {lost[:5]}); pass missing='nan' to read them as NaN columns."
            )
        return pos

    def read(
        self,
        obj: Any,
        names: Sequence[str],
        *,
        rows: Any = None,
        missing: str = "error",
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """Values of the columns ``names`` (matched by name, in that order).

        Parameters
        ----------
        obj
            The object to read (the registered one or a query).
        names
            Names to read.
        rows
            Rows to read: None (all), a slice, a boolean mask or integer indices (any order,
            repeats allowed).
        missing
            ``"error"``: a name absent from ``obj`` raises; ``"nan"``: it comes back as a
            NaN column.
        dtype
            Float dtype of the result.

        Returns
        -------
        numpy.ndarray
            ``(n_rows, len(names))`` (images: ``(len(names), n_rows, W)``), a new array.
            Backed matrices are read ``READ_CHUNK`` rows at a time and never densified whole.

        Raises
        ------
        ValueError
            On names missing with ``missing="error"``, or bad values in the rows read
            (NaN where not allowed, inf, negative counts); the message names the key.
        """
        pos = self._positions(obj, names, missing)
        idx = _row_index(rows, self.n_obs(obj), self.where(obj))
        _dtype_kind(self._dtype(obj), self.where(obj))
        out = np.full((idx.size, pos.size), np.nan, dtype=dtype)
        keep = np.flatnonzero(pos >= 0)
        if keep.size == 0:
            return out
        step = self._chunk_rows(obj)
        for start in range(0, idx.size, step):
            block = self._read_block(obj, idx[start : start + step], pos[keep], dtype)
            self._check_block(block, obj)
            out[start : start + step, keep] = block
        return out

    def iter_rows(
        self,
        obj: Any,
        names: Sequence[str],
        batch_size: int = READ_CHUNK,
        *,
        missing: str = "error",
        dtype: Any = np.float32,
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream the columns ``names`` batch by batch.

        Parameters
        ----------
        obj
            The object to read.
        names
            Names to read (matched by name).
        batch_size
            Rows per batch.
        missing
            As in :meth:`read`.
        dtype
            Float dtype of the blocks.

        Yields
        ------
        rows : slice
            The rows of the batch (``slice(start, stop)``).
        block : numpy.ndarray
            ``read(obj, names, rows)`` for those rows.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.read(obj, names, rows=slice(0, 0), missing=missing, dtype=dtype)  # fail before the first batch
        n = self.n_obs(obj)
        for start in range(0, n, int(batch_size)):
            sl = slice(start, min(n, start + int(batch_size)))
            yield sl, self.read(obj, names, rows=sl, missing=missing, dtype=dtype)

    def _check_block(self, block: np.ndarray, obj: Any) -> None:
        check_values(block, self.where(obj), nonnegative=self.nonnegative, allow_nan=self.allow_nan)

    def transfer(self, query: Any, names: Sequence[str]) -> FieldTransfer:
        """Match a query object's names to the registered ``names``.

        Parameters
        ----------
        query
            The object a trained model is applied to.
        names
            The registered names (``register(...)["names"]``).

        Returns
        -------
        FieldTransfer
            Which registered names the query has and lacks, and its extra names.

        Raises
        ------
        ValueError
            If the query shares no name with the registry (the message shows examples of both
            and hints at a common suffix / prefix such as ``_PROT`` when one explains it), or
            the query's names repeat / it is empty.
        """
        have = self.names(query)
        registered = tuple(str(n) for n in names)
        have_set, reg_set = set(have), set(registered)
        present = tuple(n for n in registered if n in have_set)
        if registered and not present:
            raise ValueError(
                f"{self!r}: the query's {self.where(query)} shares no name with the {len(registered)} "
                f"registered names (registered e.g. {list(registered[:5])}; query has e.g. {have[:5]})."
                + _affix_hint(registered, have)
            )
        return FieldTransfer(
            field=self.where(query),
            registered=registered,
            present=present,
            absent=tuple(n for n in registered if n not in have_set),
            extra=tuple(n for n in have if n not in reg_set),
        )


def _require_anndata(obj: Any, field: Field, also_mudata: bool = False) -> str:
    """``"adata"`` / ``"mdata"``; TypeError naming the field otherwise."""
    if isinstance(obj, AnnData):
        return "adata"
    if also_mudata and _is_mudata(obj):
        return "mdata"
    want = "an AnnData or MuData" if also_mudata else "an AnnData"
    hint = " (for a MuData modality use ModalityField)" if _is_mudata(obj) else ""
    raise TypeError(f"{field!r} reads {want}, got {type(obj).__name__}{hint}.")


def _is_mudata(obj: Any) -> bool:
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover - mudata is a dependency
        return False
    return isinstance(obj, MuData)


def _read_matrix_rows(x: Any, rows: np.ndarray, cols: np.ndarray, dtype: Any) -> np.ndarray:
    """Dense ``x[rows][:, cols]`` of an in-memory (dense / sparse) or on-disk matrix."""
    if _is_in_memory(x):
        if sparse.issparse(x):
            if x.format not in ("csr", "csc"):
                x = sparse.csr_matrix(x)
            return np.asarray(x[rows][:, cols].toarray(), dtype=dtype)
        return np.asarray(x[np.ix_(rows, cols)], dtype=dtype)
    # on disk (h5py dataset, anndata's backed sparse dataset) or lazy (dask): rows must be
    # read in increasing order; read each distinct row once, then put them back in order
    uniq, inverse = np.unique(rows, return_inverse=True)
    if uniq.size and uniq[-1] - uniq[0] + 1 == uniq.size:
        block = x[int(uniq[0]) : int(uniq[-1]) + 1]
    else:
        block = x[uniq]
    if sparse.issparse(block):
        block = block.tocsr()[:, cols].toarray()
    else:
        block = np.asarray(block)[:, cols]
    return np.asarray(block, dtype=dtype)[inverse]


class MatrixField(Field):
    """``adata.X`` or a layer; names are ``adata.var_names``.

    Parameters
    ----------
    layer
        Layer to read; None reads ``X``.
    nonnegative
        Require values >= 0 (counts).
    allow_nan
        Allow NaN values.

    Notes
    -----
    Backed AnnData (``anndata.read_h5ad(path, backed="r")``) is read ``READ_CHUNK`` rows at a
    time (dense rows capped at 256 MiB per block), never densified whole.

    Examples
    --------
    >>> field = bd.data.MatrixField(layer="counts", nonnegative=True)
    >>> state = field.register(adata)                    # state["names"]: adata.var_names
    >>> x = field.read(adata, ["CD3E", "MS4A1"])         # (n_obs, 2), by gene name
    >>> for rows, block in field.iter_rows(adata, state["names"], batch_size=5000): ...
    """

    field_type = "MatrixField"

    def __init__(self, layer: str | None = None, nonnegative: bool = False, allow_nan: bool = False) -> None:
        self.layer = layer
        self.nonnegative = bool(nonnegative)
        self.allow_nan = bool(allow_nan)

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "nonnegative": self.nonnegative, "allow_nan": self.allow_nan}

    def where(self, obj: Any = None) -> str:
        return "adata.X" if self.layer is None else f"adata.layers[{self.layer!r}]"

    def check_type(self, obj: Any) -> None:
        _require_anndata(obj, self)

    def _matrix(self, adata: AnnData) -> Any:
        self.check_type(adata)
        if self.layer is None:
            if adata.X is None:
                raise ValueError("adata.X is empty (None); pass layer= naming the matrix to read.")
            return adata.X
        if self.layer not in adata.layers:
            raise KeyError(f"layer {self.layer!r} not in adata.layers (have {list(adata.layers.keys())}).")
        return adata.layers[self.layer]

    def names(self, obj: Any) -> list[str]:
        x = self._matrix(obj)
        if 0 in tuple(x.shape):
            raise ValueError(f"{self.where()} is empty (shape {tuple(x.shape)}); the field needs cells and variables.")
        return _unique_names(obj.var_names, "adata.var_names", "call adata.var_names_make_unique() first")

    def n_obs(self, obj: Any) -> int:
        self.check_type(obj)
        return int(obj.n_obs)

    def _dtype(self, obj: Any) -> np.dtype:
        return np.dtype(self._matrix(obj).dtype)

    def _chunk_rows(self, obj: Any) -> int:
        x = self._matrix(obj)
        if _is_in_memory(x) or sparse.issparse(x) or hasattr(x, "format"):
            return READ_CHUNK  # in memory, or backed sparse (rows are read sparse)
        row_bytes = max(1, int(x.shape[1]) * np.dtype(x.dtype).itemsize)
        return max(1, min(READ_CHUNK, _DENSE_CHUNK_BYTES // row_bytes))

    def _read_block(self, obj: Any, rows: np.ndarray, cols: np.ndarray, dtype: Any) -> np.ndarray:
        return _read_matrix_rows(self._matrix(obj), rows, cols, dtype)

    def _check_values(self, obj: Any) -> None:
        x = self._matrix(obj)
        if np.dtype(x.dtype).kind == "b":
            return  # booleans are finite and non-negative
        if _is_in_memory(x):
            check_values(x, self.where(), nonnegative=self.nonnegative, allow_nan=self.allow_nan)
            return
        n, step, allc = int(x.shape[0]), self._chunk_rows(obj), np.arange(x.shape[1])
        for start in range(0, n, step):
            rows = np.arange(start, min(n, start + step))
            self._check_block(_read_matrix_rows(x, rows, allc, np.float64), obj)


class ObsmField(Field):
    """A table in ``obsm``: a DataFrame (names = its columns) or an array with names.

    Parameters
    ----------
    key
        The ``obsm`` key.
    names
        Column names when ``obsm[key]`` is an array; default ``uns[f"{key}_names"]`` or
        ``uns["protein_names"]``. Ignored for DataFrames (their columns are the names).
    nonnegative
        Require values >= 0.
    allow_nan
        Allow NaN values (default True: e.g. proteins not measured in a panel).

    Examples
    --------
    >>> field = bd.data.ObsmField("protein_expression", nonnegative=True)
    >>> field.names(adata)[:3]                           # the DataFrame's columns
    >>> x = field.read(adata, ["CD3", "CD4", "CD8"], missing="nan")   # NaN columns for absent proteins
    """

    field_type = "ObsmField"

    def __init__(
        self, key: str, names: Sequence[str] | None = None, nonnegative: bool = False, allow_nan: bool = True
    ) -> None:
        self.key = key
        self.column_names = None if names is None else [str(n) for n in names]
        self.nonnegative = bool(nonnegative)
        self.allow_nan = bool(allow_nan)

    def params(self) -> dict[str, Any]:
        return {"key": self.key, "names": self.column_names, "nonnegative": self.nonnegative, "allow_nan": self.allow_nan}

    def where(self, obj: Any = None) -> str:
        owner = "mdata" if obj is not None and _is_mudata(obj) else "adata"
        return f"{owner}.obsm[{self.key!r}]"

    def check_type(self, obj: Any) -> None:
        _require_anndata(obj, self, also_mudata=True)

    def _value(self, obj: Any) -> Any:
        self.check_type(obj)
        if self.key not in obj.obsm:
            owner = self.where(obj).split(".")[0]
            raise KeyError(f"{self.key!r} not in {owner}.obsm (have {list(obj.obsm.keys())}).")
        value = obj.obsm[self.key]
        if not isinstance(value, pd.DataFrame) and np.ndim(value) != 2:
            raise ValueError(f"{self.where(obj)} must be 2-D, got shape {np.shape(value)}.")
        return value

    def names(self, obj: Any) -> list[str]:
        value = self._value(obj)
        if isinstance(value, pd.DataFrame):
            names = list(value.columns)
        else:
            names = self.column_names
            if names is None:
                for k in (f"{self.key}_names", "protein_names"):
                    if k in obj.uns:
                        names = list(np.asarray(obj.uns[k]).astype(str))
                        break
            if names is None:
                raise ValueError(
                    f"{self.where(obj)} is an array without column names: store it as a DataFrame or pass "
                    f"ObsmField({self.key!r}, names=...)."
                )
            if len(names) != value.shape[1]:
                raise ValueError(f"{self.where(obj)} has {value.shape[1]} columns but {len(names)} names were given.")
        if value.shape[0] == 0 or value.shape[1] == 0:
            raise ValueError(f"{self.where(obj)} is empty (shape {tuple(value.shape)}).")
        return _unique_names(names, f"{self.where(obj)} columns", "rename the columns to unique names first")

    def n_obs(self, obj: Any) -> int:
        self.check_type(obj)
        return int(obj.n_obs)

    def _dtype(self, obj: Any) -> np.dtype:
        value = self._value(obj)
        if not isinstance(value, pd.DataFrame):
            return np.dtype(value.dtype)
        bad = [str(c) for c, t in value.dtypes.items() if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))]
        if bad:
            raise ValueError(f"{self.where(obj)} has non-numeric column(s) {bad[:5]}; every column must hold numbers.")
        return np.result_type(*[np.dtype(getattr(t, "numpy_dtype", t)) for t in value.dtypes])

    def _read_block(self, obj: Any, rows: np.ndarray, cols: np.ndarray, dtype: Any) -> np.ndarray:
        value = self._value(obj)
        if isinstance(value, pd.DataFrame):
            return value.iloc[rows, cols].to_numpy(dtype=dtype, na_value=np.nan)
        return _read_matrix_rows(value, rows, cols, dtype)

    def _check_values(self, obj: Any) -> None:
        value = self._value(obj)
        if isinstance(value, pd.DataFrame):
            value = value.to_numpy(dtype=np.float64, na_value=np.nan)
        elif np.dtype(value.dtype).kind == "b":
            return
        check_values(value, self.where(obj), nonnegative=self.nonnegative, allow_nan=self.allow_nan)


class ModalityField(Field):
    """One modality of a MuData, laid out on all of the MuData's rows.

    Names are ``mdata.mod[mod].var_names``; rows are ``mdata.obs_names``. Rows of patients
    without the modality read as NaN (see :meth:`present`); values of present rows are
    checked. Reads go through :func:`biodiffuse.data.modality.modality_matrix` (the
    modality is densified: MuData of patients are small).

    Parameters
    ----------
    mod
        Modality name (a key of ``mdata.mod``).
    layer
        Layer of the modality; default ``X``.
    nonnegative
        Require values >= 0.
    allow_nan
        Allow NaN values inside present rows.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_acc()
    >>> field = bd.data.ModalityField("RPPAArray")
    >>> x = field.read(mdata, field.names(mdata))        # (92, 33): NaN rows for patients without it
    >>> field.present(mdata).sum()                       # 46 patients have the modality
    """

    field_type = "ModalityField"

    def __init__(self, mod: str, layer: str | None = None, nonnegative: bool = False, allow_nan: bool = False) -> None:
        self.mod = mod
        self.layer = layer
        self.nonnegative = bool(nonnegative)
        self.allow_nan = bool(allow_nan)

    def params(self) -> dict[str, Any]:
        return {"mod": self.mod, "layer": self.layer, "nonnegative": self.nonnegative, "allow_nan": self.allow_nan}

    def where(self, obj: Any = None) -> str:
        base = f"mdata.mod[{self.mod!r}]"
        return base if self.layer is None else f"{base}.layers[{self.layer!r}]"

    def check_type(self, obj: Any) -> None:
        if not _is_mudata(obj):
            raise TypeError(f"{self!r} reads a MuData, got {type(obj).__name__}.")

    def _modality(self, obj: Any) -> AnnData:
        self.check_type(obj)
        if self.mod not in obj.mod:
            raise KeyError(f"modality {self.mod!r} not in mdata.mod (have {list(obj.mod.keys())}).")
        adata = obj.mod[self.mod]
        if self.layer is not None and self.layer not in adata.layers:
            raise KeyError(f"layer {self.layer!r} not in mdata.mod[{self.mod!r}].layers (have {list(adata.layers.keys())}).")
        if self.layer is None and adata.X is None:
            raise ValueError(f"{self.where()} has no X (None); pass layer=.")
        return adata

    def names(self, obj: Any) -> list[str]:
        adata = self._modality(obj)
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"{self.where()} is empty (shape {adata.shape}).")
        return _unique_names(
            adata.var_names, f"mdata.mod[{self.mod!r}].var_names", f"call mdata.mod[{self.mod!r}].var_names_make_unique() first"
        )

    def n_obs(self, obj: Any) -> int:
        self.check_type(obj)
        return int(obj.n_obs)

    def _dtype(self, obj: Any) -> np.dtype:
        adata = self._modality(obj)
        return np.dtype((adata.X if self.layer is None else adata.layers[self.layer]).dtype)

    def _matrix(self, obj: Any) -> tuple[np.ndarray, np.ndarray]:
        from .modality import modality_matrix

        self.names(obj)
        _dtype_kind(self._dtype(obj), self.where())
        return modality_matrix(obj, self.mod, self.layer)

    def present(self, obj: Any, rows: Any = None) -> np.ndarray:
        """Which rows have the modality.

        Parameters
        ----------
        obj
            MuData; a MuData without the modality gives all False.
        rows
            As in :meth:`read`.

        Returns
        -------
        numpy.ndarray
            ``(n_rows,)`` bool.
        """
        self.check_type(obj)
        idx = _row_index(rows, obj.n_obs, self.where())
        if self.mod not in obj.mod:
            return np.zeros(idx.size, dtype=bool)
        have = pd.Index(obj.obs_names).isin(pd.Index(obj.mod[self.mod].obs_names))
        return have[idx]

    def read(
        self, obj: Any, names: Sequence[str], *, rows: Any = None, missing: str = "error", dtype: Any = np.float32
    ) -> np.ndarray:
        """As :meth:`Field.read`; rows of patients without the modality are NaN, and with
        ``missing="nan"`` a MuData lacking the modality altogether reads as all NaN."""
        if missing == "nan" and _is_mudata(obj) and self.mod not in obj.mod:
            idx = _row_index(rows, obj.n_obs, self.where())
            return np.full((idx.size, len(names)), np.nan, dtype=dtype)
        return super().read(obj, names, rows=rows, missing=missing, dtype=dtype)

    def _chunk_rows(self, obj: Any) -> int:
        return max(1, int(obj.n_obs))  # one block: the modality is densified anyway

    def _read_block(self, obj: Any, rows: np.ndarray, cols: np.ndarray, dtype: Any) -> np.ndarray:
        x, present = self._matrix(obj)
        block = x[np.ix_(rows, cols)]
        check_values(block[present[rows]], self.where(), nonnegative=self.nonnegative, allow_nan=self.allow_nan)
        return block.astype(dtype)

    def _check_block(self, block: np.ndarray, obj: Any) -> None:
        pass  # checked on the present rows in _read_block

    def _check_values(self, obj: Any) -> None:
        x, present = self._matrix(obj)
        check_values(x[present], self.where(), nonnegative=self.nonnegative, allow_nan=self.allow_nan)


class ImageField(Field):
    """A SpatialData image element with dims ``(c, y, x)``; names are its ``c`` coordinates.

    "Rows" of an image are its ``y`` rows: :meth:`read` returns ``(len(names), n_rows, W)``
    float32 planes and :meth:`iter_rows` streams horizontal bands. Pixels must be finite.

    Parameters
    ----------
    image_key
        Name of the image element (multiscale images: ``scale0``).

    Examples
    --------
    >>> field = bd.data.ImageField("mibi")
    >>> field.names(sdata)[:3], field.shape(sdata)              # channel names, (C, H, W)
    >>> planes = field.read(sdata, ["CD3", "CD8"], rows=slice(0, 256))   # (2, 256, W) float32
    """

    field_type = "ImageField"
    allow_nan = False

    def __init__(self, image_key: str) -> None:
        self.image_key = image_key

    def params(self) -> dict[str, Any]:
        return {"image_key": self.image_key}

    def where(self, obj: Any = None) -> str:
        return f"sdata.images[{self.image_key!r}]"

    def check_type(self, obj: Any) -> None:
        if not is_spatialdata(obj):
            raise TypeError(f"{self!r} reads a SpatialData, got {type(obj).__name__}.")

    def _element(self, obj: Any) -> Any:
        self.check_type(obj)
        return image_element(obj, self.image_key)

    def names(self, obj: Any) -> list[str]:
        elem = self._element(obj)
        if 0 in tuple(elem.shape):
            raise ValueError(f"{self.where()} is empty (shape {tuple(elem.shape)}).")
        return image_channels(obj, self.image_key)

    def n_obs(self, obj: Any) -> int:
        return int(self._element(obj).shape[1])

    def shape(self, obj: Any) -> tuple[int, int, int]:
        """``(C, H, W)`` of the element."""
        return tuple(int(s) for s in self._element(obj).shape)

    def _dtype(self, obj: Any) -> np.dtype:
        return np.dtype(self._element(obj).dtype)

    def register(self, obj: Any) -> dict[str, Any]:
        """As :meth:`Field.register`, plus ``shape`` ``[C, H, W]``; ``n_obs`` is ``H``."""
        state = super().register(obj)
        state["shape"] = list(self.shape(obj))
        return state

    def read(
        self, obj: Any, names: Sequence[str], *, rows: Any = None, missing: str = "error", dtype: Any = np.float32
    ) -> np.ndarray:
        """Channel planes by name: ``(len(names), n_rows, W)``; ``rows`` selects ``y`` rows.

        Raises on NaN / inf pixels of present channels; absent channels raise, or are NaN
        planes with ``missing="nan"``.
        """
        pos = self._positions(obj, names, missing)
        _dtype_kind(self._dtype(obj), self.where())
        sel = rows if rows is None or isinstance(rows, slice) else _row_index(rows, self.n_obs(obj), self.where())
        want = [str(n) if p >= 0 else None for n, p in zip(names, pos)]
        return image_array(obj, self.image_key, want, rows=sel).astype(dtype, copy=False)

    def _check_values(self, obj: Any) -> None:
        names = self.names(obj)
        for name in names:  # one plane at a time
            image_array(obj, self.image_key, [name])


_FIELD_TYPES = {cls.field_type: cls for cls in (MatrixField, ObsmField, ModalityField, ImageField)}


def field_from_state(state: dict[str, Any]) -> Field:
    """Rebuild a field from :meth:`Field.register` output (plain data; nothing is executed).

    Parameters
    ----------
    state
        A registered state (``field`` and ``params`` keys are used).

    Returns
    -------
    Field
        A new field equal to the registered one.

    Examples
    --------
    >>> state = bd.data.MatrixField(layer="counts", nonnegative=True).register(adata)
    >>> field = bd.data.field_from_state(state)
    >>> field == bd.data.MatrixField(layer="counts", nonnegative=True)
    True
    """
    try:
        cls = _FIELD_TYPES[state["field"]]
        return cls(**state["params"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a registered field state: {state!r:.200}") from err
