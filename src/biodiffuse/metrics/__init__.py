"""Metrics for imputed / generated biological measurements."""

from .imputation import imputation_metrics, pearson_per_cell, pearson_per_channel, rmse
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
    "distance_to_closest_record",
    "energy_distance",
    "imputation_metrics",
    "js_per_gene",
    "pcc_per_gene",
    "pearson_per_cell",
    "pearson_per_channel",
    "precision_recall_manifold",
    "rmse",
    "rmse_per_gene",
    "spatial_gene_metrics",
    "ssim_per_gene",
]
