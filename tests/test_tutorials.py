"""The tutorial notebooks run from top to bottom (CPU, a few minutes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
R_P_LINE = re.compile(r"r_p MCD = -?\d+\.\d{3}, KRR = -?\d+\.\d{3}")


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_citeseq_tutorial_runs(tmp_path):
    nb = nbformat.read(TUTORIALS / "citeseq.ipynb", as_version=4)
    # Start from a clean notebook: the committed one carries outputs.
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError if a cell fails

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = _text_outputs(nb)
    assert R_P_LINE.search(text), "the r_p comparison line was not printed"
