"""GeneFlow's nearest-neighbour retrieval baseline: expression -> closest training tile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from biodiffuse.baselines.histology import NearestTile, fit_predict_nearest_tile

N, G, C, H, W = 40, 30, 3, 4, 5


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    expr = np.log1p(rng.gamma(1.0, 2.0, size=(N, G)))
    # Tile i is filled with the value i (+ a small pattern), so a tile names its training row.
    tiles = np.arange(N, dtype=np.float32)[:, None, None, None] + 0.01 * rng.random((N, C, H, W), dtype=np.float32)
    return expr, tiles


def _rows(pred: np.ndarray) -> np.ndarray:
    """Training row of every returned tile (tile i holds values in [i, i + 0.01))."""
    return np.floor(pred.reshape(*pred.shape[: pred.ndim - 3], -1)[..., 0]).astype(int)


def test_query_equal_to_training_row_returns_its_tile(data):
    expr, tiles = data
    model = NearestTile(10).fit(expr, tiles)
    pred = model.predict(expr[[7, 0, 39]])
    assert pred.shape == (3, C, H, W) and pred.dtype == np.float32
    np.testing.assert_array_equal(pred, tiles[[7, 0, 39]])
    np.testing.assert_array_equal(model.predict(expr), tiles)  # every row finds itself


def test_query_near_training_row_returns_its_tile(data):
    expr, tiles = data
    rng = np.random.default_rng(1)
    rows = np.array([3, 11, 25, 11])
    query = expr[rows] + rng.normal(scale=0.02, size=(len(rows), G))
    model = NearestTile(10).fit(expr, tiles)
    np.testing.assert_array_equal(model.predict(query), tiles[rows])
    dist, idx = model.kneighbors(query)
    assert dist.shape == idx.shape == (len(rows), 1)
    np.testing.assert_array_equal(idx[:, 0], rows)
    np.testing.assert_array_equal(fit_predict_nearest_tile(expr, tiles, query, n_components=10), tiles[rows])


def test_neighbours_match_an_independent_scaler_pca_pipeline(data):
    expr, tiles = data
    query = np.random.default_rng(2).permutation(expr, axis=1)[:12]  # far from every training row
    z = StandardScaler().fit(expr)
    pca = PCA(8, random_state=0).fit(z.transform(expr))
    d = np.linalg.norm(pca.transform(z.transform(query))[:, None] - pca.transform(z.transform(expr))[None], axis=2)
    dist, idx = NearestTile(8, k=4).fit(expr, tiles).kneighbors(query)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :4], rtol=1e-8)
    # Without scaling, PCA of the raw expression.
    pca = PCA(8, random_state=0).fit(expr)
    d = np.linalg.norm(pca.transform(query)[:, None] - pca.transform(expr)[None], axis=2)
    _, idx = NearestTile(8, k=2, scale=False).fit(expr, tiles).kneighbors(query)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :2])


def test_k_draws_come_only_from_the_k_nearest_and_are_seeded(data):
    expr, tiles = data
    query = np.random.default_rng(3).permutation(expr, axis=1)[:6]
    model = NearestTile(10, k=3).fit(expr, tiles)
    _, idx = model.kneighbors(query)
    pred = model.predict(query, n_samples=60, seed=5)
    assert pred.shape == (6, 60, C, H, W)
    drawn = _rows(pred)
    for i in range(6):
        assert set(drawn[i]) == set(idx[i])  # only the 3 nearest, and each of them at 60 draws
    np.testing.assert_array_equal(model.predict(query, n_samples=60, seed=5), pred)
    assert not np.array_equal(model.predict(query, n_samples=60, seed=6), pred)
    one = model.predict(query, seed=5)  # n_samples == 1: one draw, no sample axis
    assert one.shape == (6, C, H, W) and all(r in idx[i] for i, r in enumerate(_rows(one)))
    # k == 1 with several samples: the nearest tile repeated.
    rep = NearestTile(10).fit(expr, tiles).predict(expr[[4, 9]], n_samples=3)
    assert rep.shape == (2, 3, C, H, W)
    np.testing.assert_array_equal(_rows(rep), [[4, 4, 4], [9, 9, 9]])


def test_pca_is_fitted_on_training_only(data):
    expr, tiles = data
    model = NearestTile(10).fit(expr, tiles)
    before = model.pca_.components_.copy(), model.pca_.mean_.copy(), model.scaler_.mean_.copy()
    model.predict(10.0 + 3.0 * expr[::-1])
    model.kneighbors(expr[:3] * 2)
    for b, a in zip(before, (model.pca_.components_, model.pca_.mean_, model.scaler_.mean_)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.scaler_.mean_, expr.mean(axis=0))
    small = NearestTile(50).fit(expr[:5], tiles[:5])
    assert small.pca_.n_components_ == 4  # capped at N - 1
    assert NearestTile(50).fit(expr[:, :3], tiles).pca_.n_components_ == 3  # capped at G


def test_masked_windows_pool_real_cells_and_ignore_padding(data):
    expr, tiles = data
    rng = np.random.default_rng(4)
    m = 6
    cells = rng.normal(size=(N, m, G)) + expr[:, None]
    mask = rng.random((N, m)) < 0.6
    mask[:, 0] = True
    pooled = np.stack([cells[i, mask[i]].mean(axis=0) for i in range(N)])
    query_cells, query_mask = cells[[2, 17]] + 0.01, mask[[2, 17]]

    model = NearestTile(10, k=3).fit(cells, tiles, mask=mask)
    ref = NearestTile(10, k=3).fit(pooled, tiles)
    np.testing.assert_allclose(model.kneighbors(query_cells, mask=query_mask)[0], ref.kneighbors(pooled[[2, 17]] + 0.01)[0])
    pred = model.predict(query_cells, mask=query_mask, n_samples=4, seed=1)
    exact = NearestTile(10).fit(cells, tiles, mask=mask).predict(cells[[2, 17]], mask=mask[[2, 17]])
    np.testing.assert_array_equal(exact, tiles[[2, 17]])

    # Change every padded value (to junk, NaN included): nothing changes.
    junk_cells, junk_query = cells.copy(), query_cells.copy()
    junk_cells[~mask] = rng.normal(scale=100.0, size=((~mask).sum(), G))
    junk_cells[~mask, 0] = np.nan
    junk_query[~query_mask] = 1e6
    junk = NearestTile(10, k=3).fit(junk_cells, tiles, mask=mask)
    np.testing.assert_array_equal(junk.pca_.components_, model.pca_.components_)
    np.testing.assert_array_equal(junk.predict(junk_query, mask=query_mask, n_samples=4, seed=1), pred)
    # Without a mask every cell of a window counts.
    full = NearestTile(10).fit(cells, tiles)
    np.testing.assert_allclose(full.scaler_.mean_, cells.mean(axis=(0, 1)))


def test_sparse_equals_dense_and_inputs_stay_untouched(data):
    expr, tiles = data
    expr[expr < 1.0] = 0.0
    expr_before, tiles_before = expr.copy(), tiles.copy()
    dense = NearestTile(10, k=2).fit(expr, tiles)
    sp = NearestTile(10, k=2).fit(sparse.csr_matrix(expr), tiles)
    np.testing.assert_allclose(sp.kneighbors(sparse.csr_matrix(expr[:5]))[0], dense.kneighbors(expr[:5])[0], atol=1e-10)
    np.testing.assert_array_equal(sp.predict(sparse.csr_matrix(expr[:5]), n_samples=3), dense.predict(expr[:5], n_samples=3))
    # Tiles are kept by reference, read-only inside the model; the caller's stay writable.
    assert np.shares_memory(dense.tiles_, tiles) and not dense.tiles_.flags.writeable and tiles.flags.writeable
    out = dense.predict(expr[:2])
    out += 100.0  # a new array: the training tiles do not move
    np.testing.assert_array_equal(tiles, tiles_before)
    np.testing.assert_array_equal(expr, expr_before)
    # scikit-learn style
    params = clone(NearestTile(7, k=2, metric="cosine", scale=False)).get_params()
    assert params == {"n_components": 7, "k": 2, "metric": "cosine", "scale": False, "seed": 0}


def test_constant_genes_do_not_matter(data):
    expr, tiles = data
    expr = expr.copy()
    expr[:, 5] = 0.3
    model = NearestTile(10).fit(expr, tiles)
    query = expr[[1, 8]] + 0.02
    moved = query.copy()
    moved[:, 5] = 50.0
    d0, i0 = model.kneighbors(query)
    d1, i1 = model.kneighbors(moved)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(d1, d0, atol=1e-12)


def test_bad_inputs_raise(data):
    expr, tiles = data
    with pytest.raises(NotFittedError, match="not fitted"):
        NearestTile().predict(expr)
    model = NearestTile(5, k=2).fit(expr, tiles)
    with pytest.raises(ValueError, match="29 genes but the model was fitted on 30"):
        model.predict(expr[:, :-1])
    bad = expr.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*\[3\]"):
        NearestTile().fit(bad, tiles)
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(bad)
    with pytest.raises(ValueError, match="tiles has 39 rows but expression has 40"):
        NearestTile().fit(expr, tiles[:-1])
    with pytest.raises(ValueError, match="at least 2 training rows"):
        NearestTile().fit(expr[:1], tiles[:1])
    with pytest.raises(ValueError, match="tiles must be a numeric"):
        NearestTile().fit(expr, tiles[:, 0])
    with pytest.raises(ValueError, match="k must be a positive integer at most 40"):
        NearestTile(k=41).fit(expr, tiles)
    with pytest.raises(ValueError, match="n_components"):
        NearestTile(0).fit(expr, tiles)
    with pytest.raises(ValueError, match="n_samples"):
        model.predict(expr, n_samples=0)
    with pytest.raises(ValueError, match="empty"):
        model.predict(expr[:0])
    with pytest.raises(ValueError, match=r"\(N, G\) or \(N, M, G\)"):
        model.predict(expr[0])
    with pytest.raises(ValueError, match="mask is only for"):
        model.predict(expr, mask=np.ones((N, 2), bool))
    cells = np.repeat(expr[:, None], 3, axis=1)
    mask = np.ones((N, 3), bool)
    mask[6] = False
    with pytest.raises(ValueError, match=r"window\(s\) \[6\] have no real cell"):
        NearestTile().fit(cells, tiles, mask=mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        NearestTile().fit(cells, tiles, mask=mask[:, :2])
    with pytest.raises(ValueError, match="numeric"):
        NearestTile().fit(expr.astype(str), tiles)
