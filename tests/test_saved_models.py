"""Saved models of every format this biodiffuse has written must keep loading and give the
numbers they gave when they were saved (``tests/data/saved_models/make.py`` wrote them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from biodiffuse.models import MCD, GeneFlow, MultiConditionDiffusion, SpaDiT, StainDiffuser

HERE = Path(__file__).resolve().parent / "data" / "saved_models"
sys.path.insert(0, str(HERE))
from make import outputs  # noqa: E402

from _tiny import channels, citeseq, histology, mudata, spatial_pair, staining  # noqa: E402

CLASSES = {"mcd": (MCD, channels), "mcdkrr": (MCD, citeseq), "spadit": (SpaDiT, lambda: spatial_pair()[0]), "multicond": (MultiConditionDiffusion, mudata),
           "geneflow": (GeneFlow, lambda: histology()[0]), "staindiffuser": (StainDiffuser, lambda: staining()[0])}
FOLDERS = sorted(p for p in HERE.iterdir() if p.is_dir())


def test_there_are_stored_models() -> None:
    assert {p.name.split("_v")[0] for p in FOLDERS} == set(CLASSES)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_stored_model_loads_and_reproduces(folder: Path) -> None:
    cls, make_query = CLASSES[folder.name.split("_v")[0]]
    model = cls.load(folder)
    assert model.is_trained and len(model.history) == 3
    query = make_query()
    got = outputs(folder.name.split("_v")[0], model, query)
    want = json.loads((folder / "expected.json").read_text())
    np.testing.assert_allclose(np.asarray(got["mean"]), np.asarray(want["mean"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_inference_hands_the_network_back_to_the_cpu(folder: Path, monkeypatch) -> None:
    """Every model's sampling runs through ``BaseModel._on_device``: the network goes to the
    device in eval mode and back to the CPU afterwards (a model never holds GPU memory between
    calls), also when the sampling fails."""
    name = folder.name.split("_v")[0]
    cls, make_query = CLASSES[name]
    model = cls.load(folder)
    query = make_query()
    moves = []
    to_cpu = model.network.cpu

    def counted_cpu():
        moves.append(model.network.training)
        return to_cpu()

    monkeypatch.setattr(model.network, "cpu", counted_cpu)
    model.network.train()
    outputs(name, model, query)
    assert moves and moves[-1] is False  # back on the CPU, and it sampled in eval mode
    moves.clear()
    import biodiffuse.diffusion.posterior as posterior

    def broken(*args, **kwargs):
        raise RuntimeError("sampling failed")

    for module in {sys.modules[type(model).__module__], sys.modules["biodiffuse.models._mcd_image"], posterior}:
        if hasattr(module, "sample_rows"):
            monkeypatch.setattr(module, "sample_rows", broken)
    with pytest.raises(RuntimeError, match="sampling failed"):
        outputs(name, model, make_query())
    assert len(moves) == 1
