"""Shared helpers of the tutorial builders (``_build_*.py``): assemble, execute and write a notebook.

Each builder holds its cells as a list of nbformat cells and calls :func:`main`::

    python tutorials/_build_xenium.py            # write the notebook without outputs
    python tutorials/_build_xenium.py --execute  # also run it (nbclient, CPU) and save the outputs
    python tutorials/_build_xenium.py --keep-outputs  # text-only edit: new markdown, the committed outputs

The executed notebook is what is committed, so that it renders with figures on GitHub and in the
documentation site; ``tests/test_tutorials.py`` runs the committed notebooks again from a clean state.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat
from nbformat.v4 import new_notebook


def build(cells: Sequence[nbformat.NotebookNode], substitutions: Mapping[str, object] = {}) -> nbformat.NotebookNode:
    """A notebook of ``cells`` with ``{NAME}`` placeholders replaced by ``substitutions``."""
    for cell in cells:
        for name, value in substitutions.items():
            cell.source = cell.source.replace("{" + name + "}", str(value))
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 1800) -> float:
    """Run ``nb`` in place in a temporary working directory; returns the seconds it took."""
    from nbclient import NotebookClient

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": tmp}}).execute()
    return time.time() - t0


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


def keep_outputs(nb: nbformat.NotebookNode, executed: Path) -> None:
    """Copy the outputs of the executed notebook ``executed`` into ``nb`` (a markdown-only edit).

    Raises ``ValueError`` unless every code cell of ``nb`` is, in order, exactly a code cell of
    ``executed``: outputs are never attached to code that did not produce them.
    """
    old = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    new = [c for c in nb.cells if c.cell_type == "code"]
    if [c.source for c in old] != [c.source for c in new]:
        raise ValueError(f"the code cells differ from those of {executed}: run the notebook again (--execute).")
    for a, b in zip(new, old):
        a.outputs, a.execution_count = b.outputs, b.execution_count


def main(cells: Sequence[nbformat.NotebookNode], out: Path, doc: str, substitutions: Mapping[str, object] = {}) -> None:
    """Command line of a builder: ``--execute`` runs the notebook and keeps its outputs."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="markdown-only edit: keep the outputs of the committed notebook (its code cells must be unchanged)")
    parser.add_argument("--output", type=Path, default=out)
    args = parser.parse_args()
    nb = build(cells, substitutions)
    if args.keep_outputs:
        keep_outputs(nb, args.output)
    elif args.execute:
        from nbclient.exceptions import CellExecutionError

        try:
            print(f"executed in {execute(nb):.0f} s")
        except CellExecutionError:
            failed = Path(tempfile.gettempdir()) / (args.output.stem + ".failed.ipynb")
            write(nb, failed)  # keep the partial outputs to look at
            raise
    write(nb, args.output)
