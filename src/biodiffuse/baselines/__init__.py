"""Baselines the benchmarks compare against: scikit-learn-style estimators and the
``fit_predict_*`` functions built on them.

- :mod:`.tables`: table -> table regression (mean, ridge, kNN, kernel ridge) on shared
  features, e.g. gene -> protein (:func:`gene_features`, :func:`fit_predict`,
  :class:`BaselineRegressor`);
- :mod:`.distributions`: predictive distributions from those regressors (conformal-style
  residual draws, Gaussian residual variance, kNN neighbours as draws;
  :func:`fit_predict_draws`; :func:`out_of_fold`, the one cross-fitting split, also MCD's
  residual base's), scored like a generative model's draws;
- :mod:`.channels`: channel -> channel imputation within a panel (mean, most-correlated
  channel, ridge, kNN, kernel ridge; :class:`ChannelRegressor`);
- :mod:`.spatial`: unmeasured spatial genes from an scRNA-seq reference (kNN, SpaGE-style;
  kNN with a predictive distribution: :func:`fit_predict_knn_draws`);
- :mod:`.external`: wrappers of Tangram and gimVI (optional extra
  ``biodiffuse[spatial-baselines]``);
- :mod:`.modality`: a missing omics modality from the others (mean, kNN, ridge;
  :class:`ModalityRegressor`) and their cross-validation over patients;
- :mod:`.histology`: histology tiles from expression: the training tile of the nearest
  expression profile in PCA space (:class:`NearestTile`, GeneFlow's retrieval baseline);
- :mod:`.totalvi`: totalVI gene -> protein imputation (optional extra ``biodiffuse[totalvi]``).

Virtual-staining baselines need the same networks, data path and trainer as the model, so they
are options of :class:`biodiffuse.models.StainDiffuser` rather than classes here:
``objective="pix2pix"`` (U-Net generator + PatchGAN, ``100 L1 + GAN``; the trainer's
adversarial step), ``objective="l1"`` (U-Net, L1 only) and ``segmentation=False`` (the
single-task diffusion model). GeneFlow's UNet-MSE and EDM baselines are likewise
``GeneFlow(objective="mse" | "edm")``.

The runnable comparisons are in the repository's ``benchmarks/`` folder (not installed).
"""

from .channels import CHANNEL_METHODS, ChannelRegressor, MostCorrelatedChannel, fit_predict_channels, most_correlated_channel
from .histology import NearestTile, fit_predict_nearest_tile
from .external import EXTERNAL_SPATIAL_BASELINES, fit_predict_gimvi, fit_predict_stdiff, fit_predict_tangram
from .modality import MODALITY_METHODS, ModalityRegressor, cross_validate_modality, fit_predict_modality, summarize_folds
from .spatial import SPATIAL_BASELINES, fit_predict_knn, fit_predict_knn_draws, fit_predict_spage, shared_log_normalized
from .distributions import DRAW_KINDS, fit_predict_draws, out_of_fold
from .tables import METHODS, BaselineRegressor, fit_predict, gene_features
from .totalvi import totalvi_impute

__all__ = [
    "CHANNEL_METHODS",
    "DRAW_KINDS",
    "fit_predict_draws",
    "EXTERNAL_SPATIAL_BASELINES",
    "METHODS",
    "MODALITY_METHODS",
    "SPATIAL_BASELINES",
    "BaselineRegressor",
    "ChannelRegressor",
    "ModalityRegressor",
    "NearestTile",
    "MostCorrelatedChannel",
    "cross_validate_modality",
    "fit_predict",
    "fit_predict_channels",
    "fit_predict_gimvi",
    "fit_predict_knn",
    "fit_predict_modality",
    "fit_predict_nearest_tile",
    "fit_predict_spage",
    "fit_predict_stdiff",
    "fit_predict_tangram",
    "gene_features",
    "most_correlated_channel",
    "shared_log_normalized",
    "summarize_folds",
    "totalvi_impute",
]
