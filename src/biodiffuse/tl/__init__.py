"""Downstream tools: utility of synthesised modalities, counterfactual variance, acquisition curves."""

from .acquisition import acquisition_curve, area_under_curve, counterfactual_spread
from .counterfactual import counterfactual_variance
from .enrichment import enrichment
from .importance import gene_importance, importance_stability, top_overlap, write_importance
from .utility import (
    FittedPredictor,
    ablation_utility,
    fit_predictor,
    predict_output,
    predictor_score,
    survival_from_clinical,
    utility_summary,
)

__all__ = [
    "FittedPredictor",
    "ablation_utility",
    "acquisition_curve",
    "area_under_curve",
    "counterfactual_spread",
    "counterfactual_variance",
    "enrichment",
    "fit_predictor",
    "gene_importance",
    "importance_stability",
    "predict_output",
    "predictor_score",
    "survival_from_clinical",
    "top_overlap",
    "utility_summary",
    "write_importance",
]
