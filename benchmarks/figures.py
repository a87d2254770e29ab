"""Figures of ``docs/`` drawn from saved benchmark outputs (no training here).

* ``--spatial DIR`` (output of ``benchmarks/spatial_genes.py``): per-gene PCC per
  method, and measured vs predicted maps of the best and worst predicted genes for each
  method whose predictions were saved.
* ``--acc DIR`` (output of ``benchmarks/multimodal_acc.py``): R^2 heat map,
  rows (target, condition subset), columns methods.

``python benchmarks/figures.py --spatial results/spatial_genes --acc results/multimodal_acc --out docs/figures``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["spatial_figures", "acc_figures"]


def spatial_figures(results: Path, out: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """PCC distribution per method and, per method with saved predictions, maps of the
    best and worst genes (by that method's PCC). Returns the files written."""
    from biodiffuse import datasets, pl

    per_gene = pd.read_csv(results / "per_gene.csv")
    if methods:
        per_gene = per_gene[per_gene["method"].isin(methods)]
    written = []
    fig = pl.pcc_distribution(per_gene, title="osmFISH: per-gene PCC (5-fold over genes)")
    written.append(out / "spatial_pcc_distribution.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    sp, _ = datasets.osmfish_allen_visp()
    for pred_file in sorted((results / "methods").glob("*_predicted.csv.gz")):
        name = pred_file.name.removesuffix("_predicted.csv.gz")
        if methods and name not in methods:
            continue
        pred = pd.read_csv(pred_file, index_col=0)
        pred.index = pred.index.astype(str)
        scores = per_gene[per_gene["method"] == name].set_index("gene")["PCC"].dropna().sort_values()
        genes = [scores.index[-1], scores.index[0]]
        view = sp.copy()
        view.obsm[f"{name}_predicted"] = pred.loc[view.obs_names, genes]
        # measured values on all genes' library: the maps compare patterns (each panel has its own range)
        fig = pl.spatial_genes(view, genes, predicted_key=f"{name}_predicted")
        written.append(out / f"spatial_maps_{name}.png")
        fig.savefig(written[-1], dpi=100, bbox_inches="tight")
    return written


def acc_figures(results: Path, out: Path, space: str = "r2_latent") -> list[Path]:
    """One R^2 heat map of the ACC benchmark: rows (target <- condition subset), columns methods."""
    from biodiffuse import pl
    from multimodal_acc import summarize_r2

    r2 = pd.read_csv(results / "acc_r2.csv")
    table = summarize_r2(r2, space)
    short = lambda name: "+".join(_SHORT.get(m, m) for m in str(name).split("+"))  # noqa: E731
    table.index = [f"{short(t)} <- {short(c)}" for t, c in table.index]
    fig = pl.r2_heatmap(table, label=f"R² ({space.split('_')[1]})")
    written = [out / f"acc_{space}_heatmap.png"]
    fig.savefig(written[0], dpi=100, bbox_inches="tight")
    return written


# short names of the TCGA ACC assays in figure labels
_SHORT = {"RNASeq2GeneNorm": "RNA", "gistict": "CNV", "RPPAArray": "RPPA", "miRNASeqGene": "miRNA"}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spatial", type=Path, default=None)
    p.add_argument("--acc", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    files = []
    if args.spatial:
        files += spatial_figures(args.spatial, args.out)
    if args.acc:
        files += acc_figures(args.acc, args.out)
    print("\n".join(map(str, files)))


if __name__ == "__main__":
    main()
