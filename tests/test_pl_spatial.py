"""Spatial plots: measured vs predicted gene maps and per-method PCC distributions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from anndata import AnnData  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from biodiffuse.pl import pcc_distribution, spatial_genes  # noqa: E402


@pytest.fixture()
def adata(rng) -> AnnData:
    n = 40
    genes = ["a", "b", "c"]
    ad = AnnData(
        rng.poisson(3.0, size=(n, 3)).astype(np.float32),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=genes),
    )
    ad.obsm["spatial"] = rng.uniform(0, 100, size=(n, 2))
    ad.obsm["SpaDiT_predicted"] = pd.DataFrame(rng.uniform(0, 2, size=(n, 2)), index=ad.obs_names, columns=["a", "b"])
    return ad


def test_spatial_genes_axes_and_titles(adata):
    before = adata.X.copy()
    fig = spatial_genes(adata, ["a", "b"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "a measured (log-normalised)"
    assert titles[1].startswith("a predicted, r = ")
    # The colours of the measured panel are the log-normalised counts of gene a.
    lib = adata.X.sum(axis=1)
    expected = np.log1p(adata.X[:, 0] / np.where(lib > 0, lib, 1) * 1e4)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), expected, rtol=1e-5)
    np.testing.assert_array_equal(adata.X, before)
    plt.close(fig)
    # ncols=1: one gene per row; no normalisation when asked not to.
    fig = spatial_genes(adata, ["b"], normalize=False, ncols=1)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "b measured"
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), adata.X[:, 1])
    plt.close(fig)
    # Library over the given genes only.
    fig = spatial_genes(adata, ["a"], library_genes=["b", "c"])
    lib = adata.X[:, 1:].sum(axis=1)
    expected = np.log1p(adata.X[:, 0] / np.where(lib > 0, lib, 1) * 1e4)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), expected, rtol=1e-5)
    plt.close(fig)


def test_spatial_genes_errors(adata):
    with pytest.raises(KeyError, match="c"):
        spatial_genes(adata, ["a", "c"])  # measured but not predicted
    with pytest.raises(KeyError, match="zz"):
        spatial_genes(adata, ["zz"])
    with pytest.raises(KeyError, match="nokey"):
        spatial_genes(adata, ["a"], predicted_key="nokey")
    with pytest.raises(KeyError, match="nolayer"):
        spatial_genes(adata, ["a"], layer="nolayer")
    with pytest.raises(ValueError, match="empty"):
        spatial_genes(adata, [])
    with pytest.raises(KeyError, match="library_genes"):
        spatial_genes(adata, ["a"], library_genes=["a", "q"])
    no_coords = adata.copy()
    del no_coords.obsm["spatial"]
    with pytest.raises(KeyError, match="spatial"):
        spatial_genes(no_coords, ["a"])
    bad = adata.copy()
    bad.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        spatial_genes(bad, ["a"])


def test_pcc_distribution_wide_and_long():
    wide = pd.DataFrame({"kNN": [0.1, 0.2, np.nan, 0.4], "SpaGE": [0.3, 0.5, 0.2, 0.6]}, index=list("wxyz"))
    fig = pcc_distribution(wide, title="osmFISH")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["kNN\n(n=3, mean 0.233)", "SpaGE\n(n=4, mean 0.400)"]
    plt.close(fig)
    long = wide.reset_index().melt(id_vars="index", var_name="method", value_name="PCC")
    fig = pcc_distribution(long, order=["SpaGE", "kNN"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["SpaGE\n(n=4, mean 0.400)", "kNN\n(n=3, mean 0.233)"]
    plt.close(fig)


def test_pcc_distribution_errors():
    with pytest.raises(ValueError, match="empty"):
        pcc_distribution(pd.DataFrame())
    with pytest.raises(ValueError, match="no finite"):
        pcc_distribution(pd.DataFrame({"kNN": [np.nan, np.nan]}))
    with pytest.raises(ValueError, match="both columns"):
        pcc_distribution(pd.DataFrame({"method": ["a", "b"], "r": [0.1, 0.2]}))
    with pytest.raises(ValueError, match="numeric"):
        pcc_distribution(pd.DataFrame({"kNN": ["high", "low"]}))
    with pytest.raises(ValueError, match="order"):
        pcc_distribution(pd.DataFrame({"kNN": [0.1, 0.2]}), order=["SpaGE"])
    with pytest.raises(TypeError):
        pcc_distribution(np.zeros((3, 2)))
