"""Metrics for imputed / generated biological measurements."""

from .imputation import imputation_metrics, pearson_per_cell, pearson_per_channel, rmse

__all__ = ["imputation_metrics", "pearson_per_cell", "pearson_per_channel", "rmse"]
