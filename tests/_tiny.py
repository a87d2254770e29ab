"""Tiny synthetic objects shared by the bad-input table and the saved-model tests
(deterministic: numpy's default_rng streams are stable across versions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData


def _counts(n: int, g: int, prefix: str = "g", seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    a = AnnData(rng.poisson(2.0, size=(n, g)).astype(np.float32))
    a.var_names = [f"{prefix}{i}" for i in range(g)]
    a.obs_names = [f"c{i}" for i in range(n)]
    return a


def citeseq(n: int = 40) -> AnnData:
    a = _counts(n, 12)
    a.obsm["protein"] = pd.DataFrame(
        np.random.default_rng(1).gamma(2.0, size=(n, 3)), index=a.obs_names, columns=["CD4", "CD8", "CD19"]
    )
    return a


def channels(n: int = 40) -> AnnData:
    a = AnnData(np.random.default_rng(2).normal(size=(n, 4)).astype(np.float32))
    a.var_names = ["CD3", "CD4", "CD8", "CD20"]
    a.obs_names = [f"c{i}" for i in range(n)]
    return a


def spatial_pair() -> tuple[AnnData, AnnData]:
    ref = _counts(60, 10, seed=3)
    sp = _counts(30, 10, seed=4)[:, :6].copy()
    return sp, ref


def mudata(n: int = 30, overlap: bool = True) -> MuData:
    rng = np.random.default_rng(5)
    mods = {}
    for m, d in (("rna", 8), ("prot", 5)):
        x = AnnData(rng.normal(size=(n, d)).astype(np.float32))
        x.obs_names = [f"p{i}" for i in range(n)] if overlap or m == "rna" else [f"q{i}" for i in range(n)]
        x.var_names = [f"{m}{j}" for j in range(d)]
        mods[m] = x
    return MuData(mods)




def histology(side: int = 16, spacing: int = 16, seed: int = 0):
    """A SpatialData of ``side x side`` cells on a grid (``spacing`` pixels apart) in one 8-bit
    DAPI-like channel: each cell a Gaussian blob, bright (type 1) or dim (type 0); gene ``bright``
    is high and gene ``dim`` low in type-1 cells, the rest are noise genes. Returns the
    SpatialData and the (n,) types."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, TableModel

    rng = np.random.default_rng(seed)
    n = side * side
    yy, xx = np.divmod(np.arange(n), side)
    xy = np.column_stack([xx * spacing + spacing // 2, yy * spacing + spacing // 2]).astype(np.float64)
    types = rng.integers(0, 2, n)
    h = w = side * spacing
    gy, gx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w))
    for (x, y), t in zip(xy, types):
        r = 2.0 + 1.5 * t
        image += (0.35 + 0.65 * t) * np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * r**2))
    image = np.clip(image * 230 + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    counts = rng.poisson(3.0, size=(n, 8)).astype(np.float32)
    counts[:, 0] += rng.poisson(2 + 20 * types)
    counts[:, 1] += rng.poisson(2 + 20 * (1 - types))
    table = AnnData(counts, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]))
    table.var_names = ["bright", "dim"] + [f"noise{i}" for i in range(6)]
    table.obsm["spatial"] = xy
    img = Image2DModel.parse(image[None], dims=("c", "y", "x"), c_coords=["DAPI"])
    return sd.SpatialData(images={"dapi": img}, tables={"table": TableModel.parse(table)}), types


STAIN_TILE = 32  #: tile side of :func:`staining`'s mosaic


def staining(n_tiles: int = 32, columns: int = 8, n_val: int = 8, seed: int = 0, table: bool = True):
    """H&E-like mosaic (pink background, dark purple round "cells") and a 2-stain target:
    stain A bright inside the cells, stain B noise. Tiles table with regions r0 / r1 (the last
    ``n_val`` tiles). Returns the SpatialData and the boolean cell mask."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel

    rng = np.random.default_rng(seed)
    rows = -(-n_tiles // columns)
    h, w = rows * STAIN_TILE, columns * STAIN_TILE
    yy, xx = np.mgrid[:h, :w]
    inside = np.zeros((h, w), bool)
    origins = np.array([((i // columns) * STAIN_TILE, (i % columns) * STAIN_TILE) for i in range(n_tiles)])
    for y0, x0 in origins:
        for _ in range(3):
            cy, cx = y0 + rng.integers(5, STAIN_TILE - 5), x0 + rng.integers(5, STAIN_TILE - 5)
            inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
    he = np.where(inside, np.array([90, 50, 140])[:, None, None], np.array([235, 190, 215])[:, None, None])
    he = np.clip(he + rng.normal(0, 8, he.shape), 0, 255).astype(np.uint8)
    a = np.clip(np.where(inside, 210, 20) + rng.normal(0, 8, (h, w)), 0, 255)
    b = np.clip(60 + rng.normal(0, 15, (h, w)), 0, 255)
    images = {"he": Image2DModel.parse(he, dims=("c", "y", "x"), c_coords=["R", "G", "B"]),
              "mihc": Image2DModel.parse(np.stack([a, b]).astype(np.uint8), dims=("c", "y", "x"), c_coords=["A", "B"])}
    tables = {}
    if table:
        obs = pd.DataFrame({"y0": origins[:, 0], "x0": origins[:, 1], "tile_size": STAIN_TILE,
                            "region": pd.Categorical(["r0"] * (n_tiles - n_val) + ["r1"] * n_val)},
                           index=[f"t{i}" for i in range(n_tiles)])
        tables["tiles"] = TableModel.parse(ad.AnnData(np.zeros((n_tiles, 0), np.float32), obs=obs))
    return SpatialData(images=images, tables=tables), inside
