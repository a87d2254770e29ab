"""Gene importance, its stability across rankings, gene-set libraries and enrichment
(biodiffuse.tl.importance, biodiffuse.tl.enrichment, biodiffuse.datasets.genesets)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from biodiffuse.datasets import gene_sets, read_gmt
from biodiffuse.tl import enrichment, gene_importance, importance_stability, top_overlap, write_importance

from conftest import SHARED_DATA

SHAPE = (2, 4, 4)  # (C, H, W)
N_GENES = 12


class Toy(torch.nn.Module):
    """A velocity whose output depends on genes 0-4 only: a linear map of those genes
    broadcast over the image, scaled by time, plus a term in x_t; dropout to catch train mode."""

    def __init__(self, c: int = SHAPE[0], n_genes: int = N_GENES, x_t_weight: float = 0.5) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.lin = torch.nn.Linear(5, c, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(c, 5, generator=gen))
        self.drop = torch.nn.Dropout(0.5)
        self.a = x_t_weight
        self.n_genes = n_genes
        self.max_rows = 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.max_rows = max(self.max_rows, x_t.shape[0])
        h = self.drop(self.lin(cond[..., :5]))  # (B, C)
        return h[:, :, None, None] * (1 + t)[:, None, None, None] + self.a * x_t


def _x(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_GENES)).astype(np.float32)


def _importance(net, x, **kw):
    kw = {"image_shape": SHAPE, "n_t": 3, "n_noise": 2, "batch_size": 4, "seed": 0, **kw}
    return gene_importance(net, x, **kw)


# ----------------------------------------------------------------------------- gene_importance


def test_genes_that_drive_the_velocity_rank_top_and_the_rest_score_zero():
    scores = _importance(Toy(), _x())
    assert scores.shape == (N_GENES,) and scores.dtype == np.float64
    assert set(np.argsort(-scores)[:5]) == {0, 1, 2, 3, 4}
    assert (scores[:5] > 1e-3).all()
    np.testing.assert_array_equal(scores[5:], 0.0)


@pytest.mark.parametrize("norm", ["squared", "l2"])
def test_exact_value_for_a_linear_velocity(norm):
    # v = broadcast(W x[:5]) over H x W: ||v||^2 = HW ||W x||^2, d/dx = 2 HW W^T W x; ||v||: sqrt(HW) W^T W x / ||W x||
    net = Toy(x_t_weight=0.0)
    x = _x(7)
    w = net.lin.weight.detach().double().numpy()
    hw = SHAPE[1] * SHAPE[2]
    wx = x[:, :5].astype(np.float64) @ w.T
    if norm == "squared":
        grad = 2 * hw * wx @ w
    else:
        grad = math.sqrt(hw) * (wx @ w) / np.linalg.norm(wx, axis=1, keepdims=True)
    # the velocity is scaled by (1 + t): average the factor (2 (1+t)^2 or (1+t)) over the drawn t
    # by taking t_range = (0, 0), where the factor is 1.
    got = _importance(net, x, norm=norm, t_range=(0.0, 0.0))
    np.testing.assert_allclose(got[:5], np.abs(grad).mean(0), rtol=1e-5)
    np.testing.assert_array_equal(got[5:], 0.0)


def test_images_put_x_t_on_the_training_path():
    # v = x_t * sum(x[:5]); at t = 1, x_t = x1 exactly: d||v||^2/dx_j = 2 ||x1||^2 sum(x[:5]) for j < 5
    def velocity(x_t, t, cond):
        return x_t * cond[:, :5].sum(1)[:, None, None, None]

    x = _x(6)
    images = np.random.default_rng(3).normal(size=(6, *SHAPE)).astype(np.float32)
    got = gene_importance(velocity, x, image_shape=SHAPE, images=images, t_range=(1.0, 1.0), n_t=2, n_noise=2)
    sq = (images.astype(np.float64) ** 2).reshape(6, -1).sum(1)
    expect = np.abs(2 * sq * x[:, :5].astype(np.float64).sum(1)).mean()
    np.testing.assert_allclose(got[:5], expect, rtol=1e-5)
    np.testing.assert_array_equal(got[5:], 0.0)
    with pytest.raises(ValueError, match="images must have shape"):
        gene_importance(velocity, x, image_shape=SHAPE, images=images[:3])


def test_encoder_and_tiles_of_several_cells():
    # x of shape (N, cells, G); the encoder pools the cells: importance is averaged over rows and cells
    enc = torch.nn.Linear(N_GENES, N_GENES, bias=False)
    with torch.no_grad():
        enc.weight.copy_(torch.eye(N_GENES))
    x3 = np.random.default_rng(1).normal(size=(5, 3, N_GENES)).astype(np.float32)
    scores = gene_importance(Toy(), x3, image_shape=SHAPE, encode=lambda x: enc(x).mean(1), n_t=2, n_noise=2)
    assert set(np.argsort(-scores)[:5]) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(scores[5:], 0.0)


def test_times_are_stratified_in_t_range():
    seen = []

    def velocity(x_t, t, cond):
        seen.append(t.detach().clone())
        return x_t * cond[:, :1, None, None]

    gene_importance(velocity, _x(3), image_shape=SHAPE, n_t=4, n_noise=1, t_range=(0.2, 0.6), batch_size=3)
    t = torch.stack(seen, 1).numpy()  # (rows, n_t) in call order
    lo = 0.2 + 0.1 * np.arange(4)
    assert ((t >= lo) & (t < lo + 0.1)).all()  # one draw in each of the 4 strata, for every row
    assert len(np.unique(t[:, 0])) == 3  # rows draw their own times


def test_mask_averages_over_real_cells_only():
    # tiles of 3 cell slots with one real cell each: the same numbers as the cells alone
    x = _x(5)
    tiles = np.random.default_rng(2).normal(size=(5, 3, N_GENES)).astype(np.float32) * 100  # junk padding
    slot = np.arange(5) % 3
    tiles[np.arange(5), slot] = x
    mask = np.zeros((5, 3), dtype=bool)
    mask[np.arange(5), slot] = True

    def masked_mean(xx, m):
        return (xx * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    got = _importance(Toy(), tiles, encode=masked_mean, mask=mask)
    np.testing.assert_allclose(got, _importance(Toy(), x), rtol=1e-5)
    with pytest.raises(ValueError, match="mask must have shape"):
        _importance(Toy(), tiles, encode=masked_mean, mask=mask[:, :2])


def test_deterministic_by_seed_and_independent_of_batch_size_and_input_type():
    net, x = Toy(), _x(11)
    a = _importance(net, x, seed=3, batch_size=4)
    np.testing.assert_array_equal(a, _importance(net, x, seed=3, batch_size=4))
    assert not np.allclose(a, _importance(net, x, seed=4, batch_size=4))
    for bs in (1, 3, 64):
        np.testing.assert_allclose(_importance(net, x, seed=3, batch_size=bs), a, rtol=1e-5)
    np.testing.assert_allclose(_importance(net, sparse.csr_matrix(x), seed=3), a, rtol=1e-5)
    np.testing.assert_allclose(_importance(net, torch.as_tensor(x), seed=3), a, rtol=1e-5)
    # rows keyed by name: shuffling rows together with their keys gives the same numbers
    perm = np.random.default_rng(0).permutation(len(x))
    keys = [f"cell{i}" for i in range(len(x))]
    b = _importance(net, x, seed=3, keys=keys)
    np.testing.assert_allclose(_importance(net, x[perm], seed=3, keys=[keys[i] for i in perm]), b, rtol=1e-5)


def test_random_state_modes_and_grads_left_as_found():
    net = Toy()
    net.train()
    net.lin.eval()  # mixed modes must come back exactly
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    _importance(net, _x(9), batch_size=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    new_np = np.random.get_state()
    assert new_np[0] == np_state[0] and np.array_equal(new_np[1], np_state[1]) and new_np[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert net.training and net.drop.training and not net.lin.training
    assert all(p.grad is None for p in net.parameters())
    assert net.max_rows <= 4  # never more rows per call than batch_size: memory flat in N


def test_gene_importance_bad_inputs():
    net, x = Toy(), _x(4)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _importance(net, bad)
    with pytest.raises(ValueError, match="t_range"):
        _importance(net, x, t_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="n_t"):
        _importance(net, x, n_t=0)
    with pytest.raises(ValueError, match="shape"):
        _importance(net, x[:, 0])  # one dimension only
    with pytest.raises(ValueError, match="velocity returned shape"):
        _importance(lambda x_t, t, c: x_t.mean(1) * c[:, :1, None], x)

    def detached(x_t, t, cond):
        with torch.no_grad():
            return net(x_t, t, cond)

    with pytest.raises(RuntimeError, match="does not depend"):
        _importance(detached, x)


# ----------------------------------------------------------------------------- write_importance


def _adata(genes: list[str], n: int = 3) -> ad.AnnData:
    return ad.AnnData(np.zeros((n, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))


def test_write_importance_by_name_and_no_silent_overwrite():
    genes = [f"g{i}" for i in range(6)]
    adata = _adata(genes[::-1] + ["extra"])  # permuted order, plus a gene without a score
    write_importance(adata, np.arange(6.0), genes=genes)
    col = adata.var["GeneFlow_importance"]
    assert col.loc["g0"] == 0.0 and col.loc["g5"] == 5.0 and np.isnan(col.loc["extra"])
    with pytest.raises(KeyError, match="overwrite"):
        write_importance(adata, pd.Series(np.ones(6), index=genes))
    assert adata.var["GeneFlow_importance"].loc["g5"] == 5.0
    write_importance(adata, pd.Series(np.ones(6), index=genes), overwrite=True)
    assert adata.var["GeneFlow_importance"].loc["g5"] == 1.0
    with pytest.raises(KeyError, match="not in adata.var_names"):
        write_importance(adata, pd.Series([1.0], index=["nope"]), key_added="other")
    with pytest.raises(ValueError, match="genes="):
        write_importance(adata, np.ones(7), key_added="other")
    assert "other" not in adata.var


# ----------------------------------------------------------------------------- stability


def test_top_overlap_identical_disjoint_and_hand_value():
    g, k = 40, 5
    s = np.arange(g, dtype=float)
    same = top_overlap(s, s, k=k)
    assert same["overlap"] == k and same["expected"] == pytest.approx(k * k / g)
    assert same["p_value"] == pytest.approx(1 / math.comb(g, k))
    disjoint = top_overlap(s, -s, k=k)
    assert disjoint["overlap"] == 0 and disjoint["p_value"] == pytest.approx(1.0)
    # overlap 3 of top-5 among 20 genes: P(X >= 3) by hand
    genes = [f"g{i}" for i in range(20)]
    a = pd.Series(np.arange(20.0)[::-1], index=genes)  # top-5: g0..g4
    b = a.copy()
    b[["g3", "g4"]] = 10.5  # moved to mid-ranking: top-5 of b = g0, g1, g2, g5, g6 (bottoms agree)
    hand = sum(math.comb(5, x) * math.comb(15, 5 - x) for x in range(3, 6)) / math.comb(20, 5)
    r = top_overlap(a, b, k=5)
    assert r["overlap"] == 3 and r["p_value"] == pytest.approx(hand, rel=1e-10)


def test_top_overlap_matches_shared_genes_and_checks_k():
    a = pd.Series([5.0, 4, 3, 2, 1], index=list("abcde"))
    b = pd.Series([1.0, 9, 8, 7], index=list("xabc"))  # shares a, b, c
    r = top_overlap(a, b, k=2)
    assert r["n_genes"] == 3 and r["overlap"] == 2  # on the shared genes both rank a > b > c
    with pytest.raises(ValueError, match="exceeds"):
        top_overlap(a, b, k=4)
    with pytest.raises(TypeError):
        top_overlap(a, np.ones(5), k=2)


def test_importance_stability_table():
    rng = np.random.default_rng(0)
    runs = {"m1": rng.random(30), "m2": rng.random(30), "m3": rng.random(30)}
    table = importance_stability(runs, k=[3, 5])
    assert len(table) == 6 and list(table.columns) == ["a", "b", "k", "n_genes", "overlap", "expected", "p_value"]
    row = table[(table.a == "m1") & (table.b == "m3") & (table.k == 5)].iloc[0]
    assert row.p_value == pytest.approx(top_overlap(runs["m1"], runs["m3"], k=5)["p_value"])
    with pytest.raises(ValueError, match="two"):
        importance_stability([runs["m1"]])


# ----------------------------------------------------------------------------- gene-set libraries


HALLMARK = SHARED_DATA / "genesets" / "h.all.v7.0.symbols.gmt"


@pytest.mark.skipif(not HALLMARK.is_file(), reason="shared gene-set folder not present")
def test_hallmark_library_parses():
    sets = gene_sets("hallmark")
    assert len(sets) == 50
    emt = sets["HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"]
    assert len(emt) == 200 and "COL1A1" in emt and all(g == g.strip() and g for g in emt)
    assert gene_sets(HALLMARK) == sets


def test_tmp_gmt_and_malformed_files(tmp_path: Path):
    p = tmp_path / "sets.gmt"
    p.write_text("SET_A\tdesc\tG1\tG2\tG1\t\r\n\nSET_B\t\tG3\n", encoding="utf-8")
    assert gene_sets(p) == {"SET_A": ["G1", "G2"], "SET_B": ["G3"]}
    (tmp_path / "bad.gmt").write_text("ONLY_NAME\tdesc\n")
    with pytest.raises(ValueError, match="line 1"):
        read_gmt(tmp_path / "bad.gmt")
    (tmp_path / "dup.gmt").write_text("A\td\tG1\nA\td\tG2\n")
    with pytest.raises(ValueError, match="twice"):
        read_gmt(tmp_path / "dup.gmt")
    with pytest.raises(FileNotFoundError, match="hallmark"):
        gene_sets("no_such_library")


# ----------------------------------------------------------------------------- enrichment


def _planted(n_genes: int = 120, lower: bool = False) -> tuple[ad.AnnData, dict]:
    """Scores with the 15 members of PLANTED on top; four decoy sets among the rest."""
    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(n_genes)]
    scores = rng.random(n_genes)
    scores[:15] += 2.0
    rest = genes[15:]
    sets = {"PLANTED": genes[:15], **{f"DECOY{j}": list(rng.choice(rest, 15, replace=False)) for j in range(4)}}
    names = [g.capitalize() if lower else g for g in genes]  # "Gene0": mouse-style case
    adata = _adata(names)
    adata.var["GeneFlow_importance"] = scores
    return adata, sets


def test_prerank_puts_the_planted_set_first_and_round_trips_h5ad(tmp_path: Path):
    adata, sets = _planted()
    np_state = np.random.get_state()
    table = enrichment(adata, gene_sets=sets, permutations=50, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert table.loc[0, "Term"] == "PLANTED"
    assert table["NES"].idxmax() == 0 and table["FDR q-val"].idxmin() == 0
    assert table.loc[0, "FDR q-val"] < 0.05
    again = enrichment(adata, gene_sets=sets, permutations=50, seed=0, key_added="again")
    pd.testing.assert_frame_equal(table, again)
    rec = adata.uns["GeneFlow_importance_enrichment"]
    assert rec["params"]["method"] == "prerank" and rec["params"]["n_sets_tested"] == 5
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path).uns["GeneFlow_importance_enrichment"]
    assert list(back["results"]["Term"]) == list(table["Term"])
    np.testing.assert_allclose(back["results"]["NES"].to_numpy(), table["NES"].to_numpy())
    assert back["params"]["permutations"] == 50


def test_overrepresentation_finds_the_planted_set(tmp_path: Path):
    adata, sets = _planted()
    table = enrichment(adata, gene_sets=sets, method="overrepresentation", top_k=15, key_added="ora")
    assert table.loc[0, "Term"] == "PLANTED" and table.loc[0, "Overlap"] == "15/15"
    assert table.loc[0, "Adjusted P-value"] < 1e-10
    adata.write_h5ad(tmp_path / "b.h5ad")
    assert ad.read_h5ad(tmp_path / "b.h5ad").uns["ora"]["params"]["top_k"] == 15


def test_mouse_case_needs_upper_and_bad_inputs_change_nothing():
    adata, sets = _planted(lower=True)
    before_var, before_uns = adata.var.copy(), dict(adata.uns)
    with pytest.raises(ValueError, match="case='upper'"):
        enrichment(adata, gene_sets=sets, permutations=20)
    with pytest.raises(KeyError, match="no column 'nope'"):
        enrichment(adata, key="nope", gene_sets=sets)
    with pytest.raises(ValueError, match="No gene set"):
        enrichment(adata, gene_sets={"X": ["A", "B", "C", "D", "E"]}, case="upper")
    with pytest.raises(ValueError, match="method"):
        enrichment(adata, gene_sets=sets, method="gsea")
    pd.testing.assert_frame_equal(adata.var, before_var)
    assert dict(adata.uns) == before_uns
    table = enrichment(adata, gene_sets=sets, method="overrepresentation", top_k=15, case="upper")
    assert table.loc[0, "Term"] == "PLANTED"
    lower_sets = {k: [g.lower() for g in v] for k, v in sets.items()}  # both sides are upper-cased
    table = enrichment(adata, gene_sets=lower_sets, method="overrepresentation", top_k=15, case="upper",
                       key_added="lower")
    assert table.loc[0, "Term"] == "PLANTED"
    with pytest.raises(KeyError, match="overwrite"):
        enrichment(adata, gene_sets=sets, method="overrepresentation", top_k=15, case="upper")
    enrichment(adata, gene_sets=sets, method="overrepresentation", top_k=10, case="upper", overwrite=True)
    assert adata.uns["GeneFlow_importance_enrichment"]["params"]["top_k"] == 10


@pytest.mark.skipif(not HALLMARK.is_file(), reason="shared gene-set folder not present")
def test_hallmark_prerank_finds_emt():
    sets = gene_sets("hallmark")
    genes = sorted(set().union(*sets.values()))
    adata = _adata(genes, n=1)
    emt = set(sets["HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"])
    rng = np.random.default_rng(1)
    adata.var["GeneFlow_importance"] = [rng.random() + (1.0 if g in emt else 0.0) for g in genes]
    table = enrichment(adata, gene_sets="hallmark", permutations=50)
    assert table.loc[0, "Term"] == "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"
