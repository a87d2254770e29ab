"""The tutorial notebooks run from top to bottom (CPU, a few minutes)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
R_P_LINE = re.compile(r"r_p MCD = -?\d+\.\d{3}, ridge = -?\d+\.\d{3}, kNN = -?\d+\.\d{3}")
SHARED_DATA = Path(os.environ.get("BIODIFFUSE_DATA_DIR", ROOT.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (Abseq, Xenium bone marrow)")


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def _run(name: str, tmp_path) -> str:
    """Execute a committed tutorial from a clean state; return its text outputs."""
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    # Start from a clean notebook: the committed one carries outputs.
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError if a cell fails
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return _text_outputs(nb)


@pytest.mark.slow
@needs_shared
def test_citeseq_tutorial_runs(tmp_path):
    text = _run("citeseq.ipynb", tmp_path)
    assert R_P_LINE.search(text), "the r_p comparison line was not printed"


@pytest.mark.slow
@needs_shared
def test_xenium_tutorial_runs(tmp_path):
    text = _run("xenium.ipynb", tmp_path)
    # each section printed its result and wrote its keys into the SpatialData table
    assert re.search(r"balanced accuracy on the held-out donor: 0\.\d\d", text)
    assert re.search(r"mean r_p on the held-out donor: MCD -?\d\.\d{3}, ridge -?\d\.\d{3}, kNN -?\d\.\d{3}", text)
    assert re.search(r"obsm: \[.*'MCD_imputed'.*'MCD_variance'.*'SpaDiT_predicted'.*'SpaDiT_variance'", text)
    assert "GeneFlow_importance" in text
