"""Metrics for imputed / generated biological measurements."""

from .imputation import as_float_2d, imputation_metrics, pearson_per_cell, pearson_per_channel, rmse
from .modality import output_variance_fraction, r2_score_modality
from .privacy import distance_to_closest_record, energy_distance, precision_recall_manifold
from .spatial import (
    SPATIAL_METRICS,
    accuracy_score,
    js_per_gene,
    pcc_per_gene,
    rmse_per_gene,
    spatial_gene_metrics,
    ssim_per_gene,
)

__all__ = [
    "SPATIAL_METRICS",
    "accuracy_score",
    "as_float_2d",
    "distance_to_closest_record",
    "energy_distance",
    "imputation_metrics",
    "js_per_gene",
    "output_variance_fraction",
    "pcc_per_gene",
    "pearson_per_cell",
    "pearson_per_channel",
    "precision_recall_manifold",
    "r2_score_modality",
    "rmse",
    "rmse_per_gene",
    "spatial_gene_metrics",
    "ssim_per_gene",
]
