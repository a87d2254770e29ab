"""Write the stored saved models that tests/test_saved_models.py must keep loading.

Run from the repository root (``python tests/data/saved_models/make.py``) only when the saved
format changes ON PURPOSE: then bump ``SAVE_FORMAT_VERSION``, keep the old folders (the loader
must still read them) and add new ones named after the new version. Each folder holds
``model.json`` + ``model.pt`` and ``expected.json``: the 1-step imputation of a few rows of the
tiny query objects in ``tests/_tiny.py``, seed 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _tiny import channels, citeseq, histology, mudata, spatial_pair, staining  # noqa: E402
from biodiffuse.models import MCD, GeneFlow, MultiConditionDiffusion, SpaDiT, StainDiffuser  # noqa: E402
from biodiffuse.models.base import SAVE_FORMAT_VERSION  # noqa: E402

QUIET = dict(enable_progress_bar=False, accelerator="cpu", devices=1, max_epochs=3)


def outputs(name: str, model, query) -> dict:
    if name == "mcd":
        post = model.posterior(query, indices=np.arange(5), steps=1, n_samples=2, missing=["CD8"])
        return {"mean": post["mean"].tolist()}
    if name == "mcdkrr":  # gene -> protein on a kernel residual base (fitted arrays in model.pt, format 2)
        post = model.posterior(query, indices=np.arange(5), steps=1, n_samples=2)
        return {"mean": post["mean"].tolist()}
    if name == "spadit":
        post = model.posterior(query, indices=np.arange(5), steps=1, n_samples=2)
        return {"mean": post["mean"].tolist()}
    if name == "geneflow":
        tiles = model.generate(query, indices=np.arange(5), n_samples=2, steps=2, key_added="stored")
        return {"mean": tiles.values.mean(axis=1).tolist()}
    if name == "staindiffuser":  # two tiles of the mosaic's table (a 32-px tile of 16-px crops)
        out = model.predict(query, indices=[0, 31], n_samples=2, steps=2, key_added="stored")
        return {"mean": np.concatenate([out["stored"].values[:, :32, :32], out["stored_seg"].values[:, -32:, -32:]]).tolist()}
    res = model.sample(query, target="prot", indices=np.arange(5), steps=1, n_samples=2)
    return {"mean": np.asarray(res["mean"]).tolist()}


def build(name: str):
    if name == "mcd":
        a = channels()
        MCD.setup_anndata(a)
        m = MCD(a, model_channels=8, channel_mult=(1,), heads=1)
        m.train(**QUIET)
        return m, a
    if name == "mcdkrr":
        a = citeseq()
        MCD.setup_anndata(a, protein_obsm_key="protein")
        m = MCD(a, residual="krr", model_channels=8, channel_mult=(1,), heads=1)
        m.train(**QUIET)
        return m, a
    if name == "spadit":
        sp, ref = spatial_pair()
        SpaDiT.setup_anndata(sp, reference=ref)
        m = SpaDiT(sp, reference=ref, dim=16, depth=1, heads=2, ref_heads=1, bank_size=16)
        m.train(**QUIET)
        return m, sp
    if name == "geneflow":
        sdata = histology()[0]
        GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=16)
        m = GeneFlow(sdata, dim=16, rank=2, encoder_heads=2, model_channels=8, channel_mult=(1, 2), heads=2)
        m.train(batch_size=64, **QUIET)
        return m, histology()[0]
    if name == "staindiffuser":
        sdata = staining()[0]
        StainDiffuser.setup_spatialdata(sdata)
        m = StainDiffuser(sdata, crop_size=16, model_channels=8, channel_mult=(1, 2))
        m.train(batch_size=8, **QUIET)
        return m, staining()[0]
    md = mudata()
    MultiConditionDiffusion.setup_mudata(md, modalities=["rna", "prot"])
    m = MultiConditionDiffusion(md, latent_dim=3, hidden=16, layers=1, emb_dim=8)
    m.train(**QUIET)
    return m, md


if __name__ == "__main__":
    torch.set_num_threads(1)
    # python tests/data/saved_models/make.py [names]: only the named models (default: all)
    for name in sys.argv[1:] or ("mcd", "mcdkrr", "spadit", "multicond", "geneflow", "staindiffuser"):
        model, query = build(name)
        out = HERE / f"{name}_v{SAVE_FORMAT_VERSION}"
        model.save(out, overwrite=True)
        (out / "expected.json").write_text(json.dumps(outputs(name, model, query)))
        print(out, sum((out / f).stat().st_size for f in ("model.pt", "model.json")), "bytes")
