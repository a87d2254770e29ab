"""Histology plots: tile grids, importance bars and the enrichment dot plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from anndata import AnnData  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from biodiffuse.pl.histology import enrichment_dotplot, importance_bars, tile_grid  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture()
def tiles(rng) -> dict[str, np.ndarray]:
    n, h, w = 5, 6, 7
    return {
        "measured": rng.uniform(0, 1, size=(n, 1, h, w)),
        "GeneFlow": rng.uniform(0, 1, size=(n, 3, 1, h, w)),  # 3 generated samples
        "nearest tile": rng.uniform(0, 1, size=(n, 1, h, w)),
    }


def _grid(fig: Figure, ncols: int) -> list[list]:
    axes = fig.axes
    return [axes[i : i + ncols] for i in range(0, len(axes), ncols)]


def test_tile_grid_single_channel_rows_and_samples(tiles):
    before = {k: v.copy() for k, v in tiles.items()}
    fig = tile_grid(tiles, rows=[3, 1], row_labels=[f"cell{i}" for i in range(5)], sample=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 3
    grid = _grid(fig, 3)
    assert [ax.get_title() for ax in grid[0]] == ["measured", "GeneFlow", "nearest tile"]
    assert [ax.get_ylabel() for ax in (grid[0][0], grid[1][0])] == ["cell3", "cell1"]
    np.testing.assert_allclose(grid[0][0].images[0].get_array(), tiles["measured"][3, 0])
    np.testing.assert_allclose(grid[1][0].images[0].get_array(), tiles["measured"][1, 0])
    np.testing.assert_allclose(grid[1][1].images[0].get_array(), tiles["GeneFlow"][1, 2, 0])  # sample 2
    np.testing.assert_allclose(grid[0][2].images[0].get_array(), tiles["nearest tile"][3, 0])
    assert not grid[0][0].get_xticks().size and not grid[0][0].get_yticks().size
    for k in tiles:
        np.testing.assert_array_equal(tiles[k], before[k])


def test_tile_grid_default_sample_and_max_rows(tiles):
    fig = tile_grid(tiles, max_rows=4)
    assert len(fig.axes) == 4 * 3
    grid = _grid(fig, 3)
    np.testing.assert_allclose(grid[3][1].images[0].get_array(), tiles["GeneFlow"][3, 0, 0])


def test_tile_grid_rgb_is_clipped_hwc(rng, caplog):
    x = rng.uniform(-0.5, 1.5, size=(3, 3, 4, 5))
    with caplog.at_level("WARNING", logger="matplotlib.image"):
        fig = tile_grid({"measured": x, "generated": x[:, :1]})
    assert "Clipping" not in caplog.text  # clipped here, not left to matplotlib
    assert len(fig.axes) == 3 * 2
    arr = np.asarray(fig.axes[0].images[0].get_array())
    assert arr.shape == (4, 5, 3)
    np.testing.assert_allclose(arr, np.clip(np.moveaxis(x[0], 0, -1), 0, 1))
    assert arr.min() == 0.0 and arr.max() == 1.0


def test_tile_grid_rgb_value_range(rng):
    x = rng.uniform(-1, 1, size=(2, 3, 4, 4))
    fig = tile_grid({"measured": x}, vmin=-1.0, vmax=1.0)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), (np.moveaxis(x[1], 0, -1) + 1) / 2)


def test_tile_grid_xarray_and_channel(rng):
    xr = pytest.importorskip("xarray")
    x = rng.uniform(0, 1, size=(2, 4, 3, 3))
    da = xr.DataArray(x, dims=("n", "c", "y", "x"))
    with pytest.raises(ValueError, match="'if'.*4 channels.*channel="):
        tile_grid({"if": da})
    fig = tile_grid({"if": da}, channel=2)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), x[1, 2])


def test_tile_grid_bad_inputs(tiles, rng):
    bad = dict(tiles, baseline=rng.uniform(size=(4, 1, 6, 7)))
    with pytest.raises(ValueError, match="'baseline'"):
        tile_grid(bad)
    with pytest.raises(ValueError, match="'small'"):
        tile_grid(dict(tiles, small=rng.uniform(size=(5, 1, 6, 6))))
    with pytest.raises(ValueError, match="empty"):
        tile_grid({})
    nan = tiles["measured"].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'measured'.*NaN"):
        tile_grid(dict(tiles, measured=nan))
    with pytest.raises(ValueError, match="rows"):
        tile_grid(tiles, rows=[5])
    with pytest.raises(ValueError, match="row_labels"):
        tile_grid(tiles, row_labels=["a"])


def _top_label(ax) -> str:
    ticks = ax.get_yticks()
    return ax.get_yticklabels()[int(np.argmax(ticks))].get_text()


def test_importance_bars_order_from_adata():
    scores = [0.2, np.nan, 3.0, 1.0, 0.5]
    ad = AnnData(np.zeros((2, 5), dtype=np.float32), var=pd.DataFrame(index=list("abcde")))
    ad.var["GeneFlow_importance"] = scores
    fig = importance_bars(ad, n_top=3)
    ax = fig.axes[0]
    assert len(ax.patches) == 3  # NaN left out, n_top respected
    assert _top_label(ax) == "c"
    bars = sorted(ax.patches, key=lambda p: -p.get_y())
    np.testing.assert_allclose([b.get_width() for b in bars], [3.0, 1.0, 0.5])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "d", "e"]
    assert ad.var["GeneFlow_importance"].isna().sum() == 1


def test_importance_bars_series_and_errors():
    fig = importance_bars(pd.Series([0.1, 0.9, 0.4], index=["x", "y", "z"], name="score"), n_top=10)
    assert len(fig.axes[0].patches) == 3
    assert _top_label(fig.axes[0]) == "y"
    ad = AnnData(np.zeros((2, 2), dtype=np.float32), var=pd.DataFrame(index=["a", "b"]))
    with pytest.raises(KeyError, match="my_scores"):
        importance_bars(ad, key="my_scores")
    with pytest.raises(ValueError):
        importance_bars(pd.Series([np.nan, np.nan], index=["a", "b"]))


@pytest.fixture()
def prerank() -> pd.DataFrame:
    return pd.DataFrame({
        "Term": ["T_late", "T_top", "T_mid", "T_nan"],
        "ES": [0.3, 0.8, 0.5, 0.1],
        "NES": [1.1, 2.2, 1.6, np.nan],
        "NOM p-val": [0.2, 0.0, 0.01, 0.9],
        "FDR q-val": [0.3, 0.0, 0.02, 0.9],
        "FWER p-val": [0.5, 0.0, 0.03, 1.0],
        "Tag %": ["2/10", "5/12", "3/8", "1/5"],
        "Gene %": ["10%", "20%", "15%", "5%"],
        "Lead_genes": ["A;B", "A;B;C;D;E", "C;D;E", "F"],
    })


@pytest.fixture()
def ora() -> pd.DataFrame:
    return pd.DataFrame({
        "Term": ["S1", "S2", "S3"],
        "Overlap": ["4/20", "2/15", "6/30"],
        "P-value": [0.01, 0.2, 0.001],
        "Adjusted P-value": [0.02, 0.3, 0.003],
        "Odds Ratio": [3.0, 1.2, np.inf],
        "Combined Score": [10.0, 1.0, 30.0],
        "Genes": ["A;B;C;D", "E;F", "A;B;C;D;E;F"],
    })


def _dots(fig: Figure):
    ax = fig.axes[0]
    offsets = np.asarray(ax.collections[0].get_offsets())
    order = np.argsort(-offsets[:, 1])  # top to bottom
    labels = {round(t): lab.get_text() for t, lab in zip(ax.get_yticks(), ax.get_yticklabels())}
    sizes, colors = np.asarray(ax.collections[0].get_sizes()), np.asarray(ax.collections[0].get_array())
    return offsets[order, 0], [labels[round(y)] for y in offsets[order, 1]], sizes[order], colors[order]


def test_dotplot_prerank(prerank):
    fig = enrichment_dotplot(prerank)
    assert len(fig.axes) == 2  # dot plot + colour bar
    x, terms, sizes, colors = _dots(fig)
    assert terms == ["T_top", "T_mid", "T_late"]  # by FDR; the NaN-NES term is left out
    np.testing.assert_allclose(x, [2.2, 1.6, 1.1])
    assert sizes[0] > sizes[1] > sizes[2]  # 5, 3, 2 lead genes
    np.testing.assert_allclose(colors, -np.log10(np.array([0.0, 0.02, 0.3]) + 1e-10))
    x2, terms2, _, _ = _dots(enrichment_dotplot(prerank, n_top=2, x="ES"))
    assert terms2 == ["T_top", "T_mid"]
    np.testing.assert_allclose(x2, [0.8, 0.5])


def test_dotplot_overrepresentation_and_anndata(ora):
    x, terms, sizes, colors = _dots(enrichment_dotplot(ora))
    assert terms == ["S3", "S1", "S2"]
    np.testing.assert_allclose(x, -np.log10(np.array([0.003, 0.02, 0.3])), rtol=1e-6)
    assert sizes[0] > sizes[1] > sizes[2]  # overlap 6, 4, 2
    np.testing.assert_allclose(colors, [3.0, 3.0, 1.2])  # odds ratio; inf shown as the largest finite
    ad = AnnData(np.zeros((2, 2), dtype=np.float32))
    ad.uns["GeneFlow_importance_enrichment"] = {"results": ora, "params": {"method": "overrepresentation"}}
    x_ad, terms_ad, _, _ = _dots(enrichment_dotplot(ad))
    assert terms_ad == terms
    np.testing.assert_allclose(x_ad, x)
    with pytest.raises(KeyError, match="other_key"):
        enrichment_dotplot(ad, key="other_key")


def test_dotplot_errors(prerank):
    with pytest.raises(ValueError, match="empty"):
        enrichment_dotplot(prerank.iloc[:0])
    with pytest.raises(ValueError, match="Not an enrichment table"):
        enrichment_dotplot(pd.DataFrame({"Term": ["a"], "score": [1.0]}))
    with pytest.raises(KeyError, match="nope"):
        enrichment_dotplot(prerank, x="nope")
