"""Plots for synthesised modalities (biodiffuse.pl.multimodal)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from biodiffuse.pl import acquisition_curves, r2_heatmap, real_vs_synthetic_umap


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _n_points(ax) -> list[int]:
    return [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]


def test_real_vs_synthetic_pca_panels_and_labels(rng):
    real = rng.normal(size=(30, 5))
    synth = {"MC": real + 0.1 * rng.normal(size=(30, 5)), "CD": rng.normal(size=(20, 5))}
    fig = real_vs_synthetic_umap(real, synth, basis="pca")
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["real (n=30)", "MC (n=30)", "CD (n=20)"]
    # every panel: all 80 points in grey, then its own source on top
    assert [_n_points(ax) for ax in axes] == [[80, 30], [80, 30], [80, 20]]
    labels = np.array(["x"] * 10 + ["y"] * 20 + ["x"] * 30 + ["z"] * 20)
    fig = real_vs_synthetic_umap(real, synth, labels=labels, basis="pca")
    assert _n_points(fig.axes[0]) == [80, 10, 20, 0]  # real: x and y, no z
    assert _n_points(fig.axes[2]) == [80, 0, 0, 20]  # CD: only z
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["x", "y", "z"]


def test_real_vs_synthetic_paired_labels_and_errors(rng):
    real, synth = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    fig = real_vs_synthetic_umap(real, synth, labels=["a"] * 4 + ["b"] * 8, basis="pca")
    assert _n_points(fig.axes[1]) == [24, 4, 8]  # one label per patient, reused for its completion
    with pytest.raises(ValueError, match="labels has 5"):
        real_vs_synthetic_umap(real, synth, labels=["a"] * 5, basis="pca")
    with pytest.raises(ValueError, match="features"):
        real_vs_synthetic_umap(real, rng.normal(size=(12, 4)), basis="pca")
    with pytest.raises(ValueError, match="basis"):
        real_vs_synthetic_umap(real, synth, basis="tsne")
    with pytest.raises(ValueError, match="reserved"):
        real_vs_synthetic_umap(real, {"real": synth}, basis="pca")


@pytest.mark.slow
def test_real_vs_synthetic_umap_runs(rng):
    # umap-learn compiles its numba kernels on first use (about 20 s of CPU)
    real = rng.normal(size=(40, 4))
    fig = real_vs_synthetic_umap(real, real + 5.0, n_neighbors=5)
    assert [_n_points(ax) for ax in fig.axes] == [[80, 40], [80, 40]]
    assert fig.axes[0].get_xlabel() == "UMAP 1"


def _curve(informed):
    x = np.linspace(0, 1, 5)
    return pd.DataFrame({"fraction": x, "informed": informed, "random_mean": x, "random_sd": np.full(5, 0.1)})


def test_acquisition_curves_lines_and_band():
    curve = _curve([0.0, 0.6, 0.9, 1.0, 1.0])
    fig = acquisition_curves(curve, ylabel="F1")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"random", "informed"}
    np.testing.assert_allclose(lines["informed"].get_ydata(), curve["informed"])
    np.testing.assert_allclose(lines["random"].get_ydata(), curve["random_mean"])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(-0.1) and ys.max() == pytest.approx(1.1)
    assert ax.get_ylabel() == "F1"
    fig2 = acquisition_curves({"MC": curve, "CD": _curve([0.0, 0.5, 0.8, 1.0, 1.0])})
    assert [ln.get_label() for ln in fig2.axes[0].get_lines()] == ["random", "MC", "CD"]
    with pytest.raises(ValueError, match="random_sd"):
        acquisition_curves(curve.drop(columns="random_sd"))


def test_r2_heatmap_annotations():
    table = pd.DataFrame(
        [[np.nan, 0.512, 0.3], [0.25, np.nan, -0.1]], index=["rna", "cna"], columns=["rna", "cna", "rna+wsi"]
    )
    fig = r2_heatmap(table)
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["0.51", "0.30", "0.25", "-0.10"])  # NaN cells stay blank
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rna", "cna"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rna", "cna", "rna+wsi"]
    assert ax.images[0].get_clim() == (-0.1, 0.512)
    with pytest.raises(ValueError, match="non-empty"):
        r2_heatmap(pd.DataFrame())
    with pytest.raises(ValueError, match="numeric"):
        r2_heatmap(pd.DataFrame({"a": ["x", "y"]}))
