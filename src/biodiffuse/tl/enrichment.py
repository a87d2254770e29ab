"""Gene-set enrichment of an importance ranking, offline, through gseapy.

Two tests, both with local gene sets only (a library name read by
:func:`biodiffuse.datasets.gene_sets`, a GMT path, or a dict); no Enrichr / MSigDB request is
ever made:

- ``"prerank"``: GSEA pre-ranked (``gseapy.prerank``) on all scored genes ordered by
  importance; the table has ``ES``, ``NES``, ``NOM p-val``, ``FDR q-val``, ``FWER p-val``,
  ``Tag %``, ``Gene %``, ``Lead_genes``. Importance is non-negative, so only the top of the
  ranking (positive NES) is of interest.
- ``"overrepresentation"``: the top-k genes against all scored genes as background
  (``gseapy.enrich``, hypergeometric test, as Enrichr); the table has ``Overlap``,
  ``P-value``, ``Adjusted P-value`` (Benjamini-Hochberg), ``Odds Ratio``,
  ``Combined Score``, ``Genes``.

Gene names: the bundled libraries are human symbols (upper case). ``case="exact"`` matches
names as they are; ``case="upper"`` upper-cases both sides first, which is how mouse symbols
(``Cd3e``) are usually matched to human sets (``CD3E``): an approximation to orthology, wrong
for genes whose mouse and human symbols differ. Matching is done here, before gseapy sees
the names, so gseapy's own automatic upper-casing never changes what is tested.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..diffusion import check_count

__all__ = ["enrichment"]

_METHODS = ("prerank", "overrepresentation")


def _library(gene_sets: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, list[str]], str]:
    """Gene sets as a dict, and a label for the record in ``uns``."""
    if isinstance(gene_sets, Mapping):
        if not gene_sets:
            raise ValueError("gene_sets is an empty mapping.")
        out = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str) or not hasattr(genes, "__iter__"):
                raise TypeError(f"gene_sets[{name!r}] must be a list of gene names, got {type(genes).__name__}.")
            out[str(name)] = [str(g) for g in genes]
        return out, f"custom ({len(out)} sets)"
    from ..datasets.genesets import gene_sets as load

    return load(gene_sets), os.fspath(gene_sets)


def _scores(adata: Any, key: str, case: str) -> pd.Series:
    """Finite importance scores by (case-mapped) gene name."""
    if key not in adata.var.columns:
        raise KeyError(f"adata.var has no column {key!r} (write scores with biodiffuse.tl.write_importance).")
    s = pd.Series(pd.to_numeric(adata.var[key], errors="coerce").to_numpy(dtype=np.float64),
                  index=adata.var_names.astype(str))
    s = s[np.isfinite(s.to_numpy())]
    if s.empty:
        raise ValueError(f"adata.var[{key!r}] has no finite score.")
    if case == "upper":
        s.index = s.index.str.upper()
    if s.index.has_duplicates:
        dup = s.index[s.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"Gene names repeat{' after upper-casing' if case == 'upper' else ''}: {dup}.")
    return s


def _restrict(sets: dict[str, list[str]], universe: pd.Index, case: str, min_size: int, max_size: int) -> dict:
    """Sets cut to the scored genes, kept when their size there is in [min_size, max_size]."""
    kept = {}
    for name, genes in sets.items():
        g = [x.upper() for x in genes] if case == "upper" else genes
        members = list(dict.fromkeys(x for x in g if x in universe))
        if min_size <= len(members) <= max_size:
            kept[name] = members
    return kept


def enrichment(
    adata: Any,
    *,
    key: str = "GeneFlow_importance",
    gene_sets: str | os.PathLike | Mapping[str, Any] = "hallmark",
    method: Literal["prerank", "overrepresentation"] = "prerank",
    top_k: int = 50,
    permutations: int = 1000,
    min_size: int = 5,
    max_size: int = 500,
    case: Literal["exact", "upper"] = "exact",
    seed: int = 0,
    key_added: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Enrichment of gene sets among the most important genes (module docstring).

    Parameters
    ----------
    adata
        AnnData with importance scores in ``adata.var[key]`` (genes without a finite score
        are left out of the ranking and the background).
    key
        Column of ``adata.var`` with the scores (higher = more important).
    gene_sets
        ``"hallmark"``, ``"go_bp"``, a GMT path, or a dict ``{set: [genes]}``.
    method
        ``"prerank"`` or ``"overrepresentation"``.
    top_k
        Overrepresentation: number of top genes tested (ties broken by gene order).
    permutations
        Prerank: gene-set permutations for the p-values (their resolution is
        ``1 / permutations``).
    min_size, max_size
        Sets are tested when this many of their genes are scored (gseapy's default minimum
        is 15; 5 suits panels of a few hundred genes).
    case
        ``"exact"`` or ``"upper"`` (module docstring; use ``"upper"`` for mouse symbols).
    seed
        Seed of the permutations (the global random state is restored afterwards).
    key_added
        Key of ``adata.uns``; default ``f"{key}_enrichment"``. Holds ``{"results": table,
        "params": {...}}`` and writes to h5ad.
    overwrite
        Replace an existing ``adata.uns[key_added]``.

    Returns
    -------
    pandas.DataFrame
        One row per tested set, ``Term`` first; prerank sorted by FDR then NES (descending),
        overrepresentation by p-value.

    Raises
    ------
    KeyError
        Unknown ``key``, or ``key_added`` exists without ``overwrite``.
    ValueError
        Unknown method / case, bad sizes, no finite score, or no gene set with enough scored
        genes (the message suggests ``case="upper"`` when that would match). ``adata`` is
        unchanged when an error is raised.

    Examples
    --------
    >>> model.gene_importance(sdata)                 # writes table.var["GeneFlow_importance"]
    >>> table = sdata.tables["table"]
    >>> res = bd.tl.enrichment(table, key="GeneFlow_importance", gene_sets="hallmark")
    >>> ora = bd.tl.enrichment(table, method="overrepresentation", top_k=50, key_added="GeneFlow_ora")
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if case not in ("exact", "upper"):
        raise ValueError(f"case must be 'exact' or 'upper', got {case!r}.")
    for name, value in (("min_size", min_size), ("max_size", max_size), ("top_k", top_k), ("permutations", permutations)):
        check_count(value, name)
    if not 1 <= int(min_size) <= int(max_size):
        raise ValueError(f"Need 1 <= min_size <= max_size, got {min_size}, {max_size}.")
    key_added = key_added or f"{key}_enrichment"
    if key_added in adata.uns and not overwrite:
        raise KeyError(f"adata.uns[{key_added!r}] exists; pass overwrite=True to replace it.")
    scores = _scores(adata, key, case)
    sets, label = _library(gene_sets)
    kept = _restrict(sets, scores.index, case, int(min_size), int(max_size))
    if not kept:
        hint = ""
        if case == "exact" and _restrict(sets, scores.index.str.upper(), "upper", int(min_size), int(max_size)):
            hint = " Names differ in case only (e.g. mouse symbols vs human sets): try case='upper'."
        raise ValueError(
            f"No gene set of {label} has between {min_size} and {max_size} of the {len(scores)} scored genes "
            f"of adata.var[{key!r}].{hint}"
        )
    ranked = scores.sort_values(ascending=False, kind="stable")
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        if method == "prerank":
            table = _prerank(ranked, kept, int(permutations), int(seed), int(min_size), int(max_size))
        else:
            if not 1 <= int(top_k) <= len(ranked):
                raise ValueError(f"top_k must be in [1, {len(ranked)}] (scored genes), got {top_k!r}.")
            table = _ora(ranked, kept, int(top_k))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    params = {
        "key": key, "gene_sets": label, "method": method, "top_k": int(top_k), "permutations": int(permutations),
        "min_size": int(min_size), "max_size": int(max_size), "case": case, "seed": int(seed),
        "n_genes": int(len(scores)), "n_sets_tested": int(len(kept)),
    }
    adata.uns[key_added] = {"results": table.copy(), "params": params}
    return table


def _clean(df: pd.DataFrame, text: tuple[str, ...]) -> pd.DataFrame:
    """Numeric columns as float, text columns as str (so the table writes to h5ad)."""
    df = df.reset_index(drop=True)
    for col in df.columns:
        df[col] = df[col].astype(str) if col in text else pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df


def _prerank(ranked: pd.Series, sets: dict, permutations: int, seed: int, min_size: int, max_size: int) -> pd.DataFrame:
    import gseapy

    if permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}.")
    res = gseapy.prerank(
        rnk=ranked, gene_sets=sets, permutation_num=permutations, seed=seed, min_size=min_size, max_size=max_size,
        ascending=False, threads=1, outdir=None, no_plot=True, verbose=False,
    )
    df = res.res2d.drop(columns=[c for c in ("Name",) if c in res.res2d.columns])
    df = _clean(df, ("Term", "Tag %", "Gene %", "Lead_genes"))
    return df.sort_values(["FDR q-val", "NES"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _ora(ranked: pd.Series, sets: dict, top_k: int) -> pd.DataFrame:
    import gseapy

    res = gseapy.enrich(
        gene_list=list(ranked.index[:top_k]), gene_sets=sets, background=list(ranked.index),
        outdir=None, no_plot=True, verbose=False,
    )
    df = res.res2d.drop(columns=[c for c in ("Gene_set",) if c in res.res2d.columns])
    df = _clean(df, ("Term", "Overlap", "Genes"))
    return df.sort_values(["P-value", "Term"], kind="stable").reset_index(drop=True)
