"""Gene-set libraries (GMT files) for offline enrichment.

Two libraries are looked for in the shared data folder (``genesets/`` under the folder in the
``BIODIFFUSE_DATA_DIR`` environment variable, or that folder itself, else
``../shared/data/genesets/`` relative to the working directory and to the repository root):

- ``"hallmark"``: MSigDB Hallmark v7.0, 50 sets of human gene symbols (``h.all.v7.0.symbols.gmt``);
- ``"go_bp"``: GO Biological Process 2021, the Enrichr library (``GO_Biological_Process_2021.gmt``).

Both come from zqfang/GSEApy ``tests/extdata`` (BSD-3 repository). Any other GMT file can be
read by passing its path. GMT files are parsed as plain text (one set per line: name,
description, genes, tab-separated); nothing in them is executed.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._locate import locate_file

__all__ = ["GENE_SET_LIBRARIES", "gene_sets", "read_gmt"]

GENE_SET_LIBRARIES: dict[str, str] = {
    "hallmark": "h.all.v7.0.symbols.gmt",
    "go_bp": "GO_Biological_Process_2021.gmt",
}


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse a GMT file into ``{set name: [genes]}``.

    Parameters
    ----------
    path
        A ``.gmt`` file: one gene set per line, ``name<TAB>description<TAB>gene<TAB>gene...``.
        Empty lines are skipped; empty gene fields (trailing tabs) are ignored; a gene
        repeated within a set is kept once (first occurrence).

    Returns
    -------
    dict
        Set names (file order) to gene lists.

    Raises
    ------
    ValueError
        On a line with fewer than three fields or no genes, a repeated set name, or a file
        without any set.

    Examples
    --------
    >>> sets = bd.datasets.read_gmt("my_sets.gmt")   # name<TAB>description<TAB>gene<TAB>gene...
    >>> {name: len(genes) for name, genes in sets.items()}
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            name = fields[0].strip()
            genes = [g.strip() for g in fields[2:] if g.strip()]
            if len(fields) < 3 or not name or not genes:
                raise ValueError(
                    f"{path}: line {lineno} is not a GMT gene set (expected 'name<TAB>description<TAB>genes...')."
                )
            if name in out:
                raise ValueError(f"{path}: gene set {name!r} appears twice (line {lineno}).")
            out[name] = list(dict.fromkeys(genes))
    if not out:
        raise ValueError(f"{path}: no gene sets found.")
    return out


def gene_sets(name: str | os.PathLike = "hallmark", *, path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """A gene-set library as ``{set name: [gene symbols]}``.

    Parameters
    ----------
    name
        ``"hallmark"`` (MSigDB Hallmark v7.0, 50 human sets), ``"go_bp"`` (GO Biological
        Process 2021, Enrichr), or the path of any GMT file.
    path
        For the named libraries: a folder holding the file, or the file itself (default: the
        shared data folder, see the module docstring).

    Returns
    -------
    dict
        Set names to gene symbols as written in the file (hallmark and GO BP: human symbols,
        upper case).

    Raises
    ------
    FileNotFoundError
        When the file is not found (the message lists the folders searched).
    ValueError
        On a malformed GMT file (see :func:`read_gmt`).

    Examples
    --------
    >>> hallmark = bd.datasets.gene_sets("hallmark")
    >>> hallmark["HALLMARK_HYPOXIA"][:3]
    ['PGK1', 'PDK1', 'GBE1']
    >>> go = bd.datasets.gene_sets("go_bp")
    """
    key = os.fspath(name)
    if key in GENE_SET_LIBRARIES:
        return read_gmt(locate_file("genesets", GENE_SET_LIBRARIES[key], path))
    p = Path(key).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"Gene-set library {key!r} is neither one of {sorted(GENE_SET_LIBRARIES)} nor a GMT file."
        )
    return read_gmt(p)
