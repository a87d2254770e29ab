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


