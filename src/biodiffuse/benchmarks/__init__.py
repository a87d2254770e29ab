"""Benchmarks: simple regression baselines, and (``python -m biodiffuse.benchmarks.citeseq``)
the gene -> protein comparison on real CITE-seq data."""

from .baselines import METHODS, fit_predict, gene_features
from .channel_baselines import CHANNEL_METHODS, MostCorrelatedChannel, fit_predict_channels, most_correlated_channel

__all__ = [
    "CHANNEL_METHODS",
    "METHODS",
    "MostCorrelatedChannel",
    "fit_predict",
    "fit_predict_channels",
    "gene_features",
    "most_correlated_channel",
]
