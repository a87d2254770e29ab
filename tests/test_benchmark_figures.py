"""Figures drawn from saved benchmark outputs: files written, bad input refused."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from figures import acc_figures, spatial_figures


def test_acc_heatmap_from_saved_table(tmp_path) -> None:
    rows = [
        dict(target=t, conditions=c, method=m, fold=f, r2_latent=r, r2_feature=r / 2)
        for t, c in (("a", "b"), ("a", "b+c"), ("b", "a"))
        for m, r in (("CoherentDenoising", 0.2), ("ridge", 0.1))
        for f in range(2)
    ]
    (tmp_path / "res").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "res" / "acc_r2.csv", index=False)
    files = acc_figures(tmp_path / "res", tmp_path)
    assert [f.name for f in files] == ["acc_r2_latent_heatmap.png"] and files[0].stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        acc_figures(tmp_path / "nothing", tmp_path)


def test_spatial_figures_from_saved_predictions(tmp_path) -> None:
    if not (SHARED_DATA / "spatial" / "osmfish_allen_visp_33genes").exists():
        pytest.skip("osmFISH data not found (set BIODIFFUSE_DATA_DIR)")
    from biodiffuse import datasets

    sp, _ = datasets.osmfish_allen_visp()
    genes = list(sp.var_names[:3])
    res = tmp_path / "res"
    (res / "methods").mkdir(parents=True)
    per_gene = pd.DataFrame({"method": "kNN", "gene": genes, "PCC": [0.1, 0.3, -0.1]})
    per_gene.to_csv(res / "per_gene.csv", index=False)
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.random((sp.n_obs, 3)), index=sp.obs_names, columns=genes).to_csv(res / "methods" / "kNN_predicted.csv.gz")
    files = spatial_figures(res, tmp_path)
    assert sorted(f.name for f in files) == ["spatial_maps_kNN.png", "spatial_pcc_distribution.png"]
    assert all(f.stat().st_size > 1000 for f in files)
