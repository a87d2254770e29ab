"""Benchmarks: simple regression baselines, and (``python -m biodiffuse.benchmarks.citeseq``)
the gene -> protein comparison on real CITE-seq data; missing-modality baselines on TCGA
(:func:`modality_baselines.main`)."""

from .baselines import METHODS, fit_predict, gene_features
from .channel_baselines import CHANNEL_METHODS, MostCorrelatedChannel, fit_predict_channels, most_correlated_channel
from .modality_baselines import (
    MODALITY_METHODS,
    cross_validate_modality,
    fit_predict_modality,
    output_variance_fraction,
    r2_score_modality,
    summarize_folds,
)
from .spatial_baselines import SPATIAL_BASELINES, fit_predict_knn, fit_predict_spage, shared_log_normalized
from .spatial_external import (
    EXTERNAL_SPATIAL_BASELINES,
    fit_predict_gimvi,
    fit_predict_stdiff,
    fit_predict_tangram,
)

__all__ = [
    "CHANNEL_METHODS",
    "EXTERNAL_SPATIAL_BASELINES",
    "METHODS",
    "MODALITY_METHODS",
    "MostCorrelatedChannel",
    "SPATIAL_BASELINES",
    "fit_predict",
    "cross_validate_modality",
    "fit_predict_channels",
    "fit_predict_gimvi",
    "fit_predict_stdiff",
    "fit_predict_tangram",
    "fit_predict_modality",
    "fit_predict_knn",
    "fit_predict_spage",
    "gene_features",
    "most_correlated_channel",
    "output_variance_fraction",
    "r2_score_modality",
    "shared_log_normalized",
    "summarize_folds",
]
