"""Plotting: what a person would rather look at than read."""

from .imputation import imputed_vs_measured, protein_correlation_bars, training_curve

__all__ = ["imputed_vs_measured", "protein_correlation_bars", "training_curve"]
