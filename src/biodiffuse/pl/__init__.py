"""Plotting: what a person would rather look at than read."""

from .calibration import calibration
from .histology import enrichment_dotplot, importance_bars, tile_grid
from .images import image_imputation_panels
from .imputation import imputed_vs_measured, protein_correlation_bars, training_curve
from .multimodal import acquisition_curves, r2_heatmap, real_vs_synthetic_umap
from .spatial import pcc_distribution, spatial_genes
from .staining import positivity_scatter, stain_panels

__all__ = [
    "acquisition_curves",
    "calibration",
    "enrichment_dotplot",
    "importance_bars",
    "tile_grid",
    "image_imputation_panels",
    "imputed_vs_measured",
    "pcc_distribution",
    "positivity_scatter",
    "protein_correlation_bars",
    "r2_heatmap",
    "real_vs_synthetic_umap",
    "spatial_genes",
    "stain_panels",
    "training_curve",
]
