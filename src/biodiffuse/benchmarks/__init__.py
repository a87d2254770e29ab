"""Benchmarks: simple regression baselines, and (``python -m biodiffuse.benchmarks.citeseq``)
the gene -> protein comparison on real CITE-seq data."""

from .baselines import METHODS, fit_predict, gene_features

__all__ = ["METHODS", "fit_predict", "gene_features"]
