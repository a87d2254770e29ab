"""Plotting: what a person would rather look at than read."""

from .images import image_imputation_panels
from .imputation import imputed_vs_measured, protein_correlation_bars, training_curve

__all__ = ["image_imputation_panels", "imputed_vs_measured", "protein_correlation_bars", "training_curve"]
