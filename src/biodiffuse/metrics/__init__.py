"""Metrics for imputed / generated biological measurements."""

from .calibration import (
    crps,
    crps_gaussian,
    energy_score,
    gaussian_coverage,
    gaussian_samples,
    interval_coverage,
    pit_values,
    score_draws,
)
from .conditioning import FidelityProbe, conditioning_fidelity, paired_difference, tile_features
from .images import feature_distance, fid, image_fid_kid, inception_features, kid, psnr, ssim
from .imputation import as_float_2d, imputation_metrics, pearson_per_cell, pearson_per_channel, rmse
from .modality import output_variance_fraction, r2_score_modality
from .morphometry import MORPHOMETRY_FEATURES, morphometry_distance, nuclei_morphometry, tile_counts
from .privacy import distance_to_closest_record, energy_distance, precision_recall_manifold
from .staining import cell_means, dice, iou, nuclei_labels, nuclei_positivity, per_stain_scores, positivity_agreement, stain_masks
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
    "crps",
    "crps_gaussian",
    "energy_score",
    "gaussian_coverage",
    "gaussian_samples",
    "interval_coverage",
    "pit_values",
    "score_draws",
    "MORPHOMETRY_FEATURES",
    "SPATIAL_METRICS",
    "accuracy_score",
    "as_float_2d",
    "FidelityProbe",
    "conditioning_fidelity",
    "cell_means",
    "dice",
    "iou",
    "nuclei_labels",
    "nuclei_positivity",
    "per_stain_scores",
    "positivity_agreement",
    "stain_masks",
    "paired_difference",
    "tile_features",
    "distance_to_closest_record",
    "energy_distance",
    "feature_distance",
    "fid",
    "image_fid_kid",
    "imputation_metrics",
    "inception_features",
    "js_per_gene",
    "kid",
    "morphometry_distance",
    "nuclei_morphometry",
    "output_variance_fraction",
    "pcc_per_gene",
    "pearson_per_cell",
    "pearson_per_channel",
    "precision_recall_manifold",
    "psnr",
    "r2_score_modality",
    "rmse",
    "rmse_per_gene",
    "spatial_gene_metrics",
    "ssim",
    "ssim_per_gene",
    "tile_counts",
]
