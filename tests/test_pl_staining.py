"""Virtual-staining plots: one row per (tile, stain) with H&E, real and each method; the
positivity scatter with one panel per marker; bad inputs named."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

import biodiffuse as bd


def _tiles(n=3, c=2, t=16, seed=0):
    rng = np.random.default_rng(seed)
    he = rng.integers(0, 256, (n, 3, t, t), dtype=np.uint8)
    real = rng.integers(0, 256, (n, c, t, t), dtype=np.uint8)
    return he, real, rng.random((n, c, t, t))


def test_stain_panels_rows_are_tile_stain_pairs():
    he, real, fake = _tiles()
    fig = bd.pl.stain_panels(he, real, {"SD": fake, "L1": fake * 0.5}, stains=["DAPI", "CD3"], rows=[2, 0],
                             tile_names=["a", "b", "c"])
    axes = np.array(fig.axes).reshape(4, 4)  # 2 tiles x 2 stains rows; H&E, real, SD, L1
    assert [ax.get_title() for ax in axes[0]] == ["H&E", "real", "SD", "L1"]
    assert axes[1, 0].get_ylabel() == "c\nCD3" and axes[2, 0].get_ylabel() == "a\nDAPI"
    # the real panel of row (tile 0, CD3) shows real[0, 1] / 255, the L1 panel fake[0, 1] / 2
    np.testing.assert_allclose(axes[3, 1].images[0].get_array(), real[0, 1] / 255)
    np.testing.assert_allclose(axes[3, 3].images[0].get_array(), fake[0, 1] * 0.5)
    one = bd.pl.stain_panels(he, real, {"SD": fake}, stains=["DAPI", "CD3"], stain="CD3", max_rows=2)
    assert len(one.axes) == 2 * 3
    matplotlib.pyplot.close("all")


def test_stain_panels_bad_inputs():
    he, real, fake = _tiles()
    with pytest.raises(ValueError, match="not in stains"):
        bd.pl.stain_panels(he, real, {"SD": fake}, stains=["DAPI", "CD3"], stain="CD8")
    with pytest.raises(ValueError, match=r"virtual\['SD'\] has shape"):
        bd.pl.stain_panels(he, real, {"SD": fake[:, :1]}, stains=["DAPI", "CD3"])
    with pytest.raises(ValueError, match="empty"):
        bd.pl.stain_panels(he, real, {}, stains=["DAPI", "CD3"])


def test_positivity_scatter_one_panel_per_marker_with_r():
    idx = pd.RangeIndex(5, name="tile")
    real = pd.DataFrame({"n_nuclei": 3, "frac_CD3": [0.0, 0.2, 0.4, 0.6, 0.8], "frac_CK": [0.1] * 5}, index=idx)
    good = real.assign(frac_CD3=real["frac_CD3"] * 0.5 + 0.1)
    fig = bd.pl.positivity_scatter(real, {"SD": good, "flat": real.assign(frac_CD3=0.3)})
    assert [ax.get_title() for ax in fig.axes] == ["CD3", "CK"]
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["SD (r = 1.00)", "flat (r = nan)"]
    with pytest.raises(ValueError, match="CD8"):
        bd.pl.positivity_scatter(real, {"SD": good}, markers=["CD8"])
    with pytest.raises(ValueError, match="tiles"):
        bd.pl.positivity_scatter(real, {"SD": good.iloc[:3]})
    matplotlib.pyplot.close("all")
