"""Spatial transcriptomics loaders: osmFISH + Allen VISp reference, and the 915-gene imaging panel."""

from __future__ import annotations

import numpy as np
import pytest

from biodiffuse.datasets import osmfish_allen_visp, starmap_915

from conftest import SHARED_DATA

OSMFISH = SHARED_DATA / "spatial" / "osmfish_allen_visp_33genes"
STARMAP = SHARED_DATA / "spatial" / "starmap_like_915genes"


@pytest.mark.skipif(not OSMFISH.is_dir(), reason=f"shared data folder {OSMFISH} not present")
def test_osmfish_allen_visp():
    sp, ref = osmfish_allen_visp(OSMFISH)
    assert sp.shape == (3405, 33) and ref.shape == (5613, 33)
    assert list(sp.var_names) == list(ref.var_names)
    assert sp.var_names.is_unique
    for adata in (sp, ref):
        x = np.asarray(adata.X)
        assert x.min() >= 0 and np.array_equal(x, np.round(x))
        assert "Li et al. 2022" in adata.uns["source"]
    coords = sp.obsm["spatial"]
    assert coords.shape == (3405, 2) and coords.dtype == np.float64
    np.testing.assert_array_equal(coords[:, 0], sp.obs["x_coord"].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(coords[:, 1], sp.obs["y_coord"].to_numpy(dtype=np.float64))
    # A new object each call: changing one does not leak into the next.
    sp.X[0, 0] = -1
    assert osmfish_allen_visp(OSMFISH)[0].X[0, 0] >= 0


@pytest.mark.skipif(not STARMAP.is_dir(), reason=f"shared data folder {STARMAP} not present")
def test_starmap_915():
    adata = starmap_915(STARMAP)
    assert adata.shape == (645, 915)
    assert adata.obsm["spatial"].shape == (645, 2)
    assert np.asarray(adata.X).min() >= 0
    assert "dataset 5" in adata.uns["source"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        starmap_915(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dataset2_spatial_33.h5ad"):
        osmfish_allen_visp(tmp_path)
