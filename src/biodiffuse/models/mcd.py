"""MCD: multi-channel diffusion for any-subset channel imputation.

Method (MCD paper, sections 3.1-3.3 and appendix C):

* **Data.** Target channels ``x`` (proteins from ``obsm``, or any channels in ``X``), per
  channel Yeo-Johnson + 1st/99th percentile scaling fitted on training cells
  (:class:`~biodiffuse.data.ChannelNormalizer`); for CITE-seq the genes are extra condition
  channels (log-normalised, standardised, highly variable genes chosen at set-up). Each cell
  is a 1x1 image. Query data are read by name through the declarative fields
  (:class:`~biodiffuse.data.MatrixField`, :class:`~biodiffuse.data.ObsmField`), in row chunks.
* **Network, objective, condition.** :mod:`biodiffuse.module.mcd`: MCD UNet inside EDM
  preconditioning; EDM loss with random channel masks; condition ``[genes, x * m, m]``.
* **Residual base** (``residual="ridge"`` or ``"krr"``, gene -> protein): a ridge or kernel ridge
  regression from the genes (:mod:`biodiffuse.module.residual_base`) is fitted on the training
  cells; the network learns the proteins minus its out-of-fold predictions, and every draw adds
  the base back.
* **Sampler.** :func:`biodiffuse.diffusion.sample_rows` with the EDM ODE sampler (Euler steps by
  default, on a schedule :meth:`MCD.tune_sampler` can choose), one random
  stream per cell (``row_seeds(seed, obs_names)``); the condition branch runs once per batch
  and observed channels are clamped to their values.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..data import ChannelNormalizer, check_adata, log_normalize, write_setup_record
from ..data.fields import MatrixField, ObsmField
from ..diffusion import Moments, row_seeds, sample_rows
from ..module.mcd import MCDNetwork, MCDObjective, build_condition, build_network, make_prepare
from ..module.residual_base import RESIDUAL_BASES, fit_residual_base, residual_base_from_state
from . import _mcd_image as img
from ._edm_sampling import EDMSamplerMixin, check_positive, checked_sampler
from .base import BaseModel

__all__ = ["MCD", "MCDObjective", "build_condition"]

logger = logging.getLogger("biodiffuse")


_GENE_CHUNK = 256  # rows of the full gene matrix read at once (library sizes)


class MCD(img.MCDImageMixin, EDMSamplerMixin, BaseModel):
    """Multi-channel diffusion: impute any missing subset of channels from any observed subset.

    Three set-ups (:meth:`setup_anndata`, :meth:`setup_spatialdata`):

    * **gene -> protein** (CITE-seq): ``protein_obsm_key`` names the protein table; genes in
      ``X`` (or ``layer``) are condition channels, proteins are target channels. The paper
      trains this without channel masking (``observed_fraction=0``, the default here).
    * **channels**: the channels are ``var_names``; random channel masking with
      ``observed_fraction`` (default 0.9) lets one model impute any subset from any other.
    * **image** (SpatialData): the channels of a multiplexed image element, as tiles; the
      same masking; imputation is stitched back into new image elements.

    Training (:meth:`train`, the shared signature) defaults: batch 256, AdamW lr 1e-3 and
    weight decay 1e-4, 90 % of the cells for training (the rest for early stopping; the
    normaliser, gene standardisation and gene PCA are fitted on the training cells only), about
    1,500 optimiser steps within 20-3,000 epochs for tables (image tiles: batches of 64, about
    500 steps), patience a tenth of the epochs (at least 20), EMA of the weights over about the
    last tenth of the steps. On tables 1,500 steps were as good as 750 and better than 3,000
    or 6,000 on a held-out donor (``docs/benchmarks.md``), and 3,000 cells trained in 4.5
    minutes on two CPU cores (``benchmarks/default_training.py``); on the MIBI image, 450
    steps scored better on the test region than 900 or 1,800 (about 5 minutes of training). Data option:
    ``holdout`` (images only): boolean ``(H, W)`` mask of pixels never used for training or
    validation (e.g. a test region from :func:`~biodiffuse.data.spatial_split`); for images
    the validation split is a set of whole blocks (``1 - train_size`` of the image) and only
    tiles lying entirely inside one region are used. Training needs an in-memory AnnData
    (backed AnnData works as a query).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` or SpatialData registered with
        :meth:`setup_spatialdata`.
    n_genes
        Gene -> protein only: number of highly variable genes (chosen on ``adata``'s
        log-normalised counts, no protein used) kept as condition channels; None keeps all.
    gene_pcs
        Gene -> protein only: condition on this many principal components of the
        standardised genes (PCA fitted on the training cells, scores whitened) instead of
        the genes themselves. Fewer, denser condition channels suit small data sets.
    residual
        Gene -> protein only. ``"ridge"``: fit a ridge regression from the condition genes (or
        their PCs) to the proteins on the training cells, and let the diffusion model learn the
        distribution of what the ridge leaves: the proteins minus its prediction (trained on
        5-fold out-of-fold residuals, so they are as wide as a new cell's). The draws are the
        ridge prediction plus a residual draw: the point estimate starts from the linear
        baseline and the network models what it misses, and how much. ``"krr"``: the same on
        an RBF kernel ridge from the top 50 principal components of the condition genes
        (the KRR baseline; its CV costs a few CPU minutes at thousands of cells, and its
        training points are saved with the model). None (default): the network models the
        proteins themselves (the paper).
    target_channels
        Channel-specific setting (channels / image modes): always hide these channels and
        observe all others in training, so the model imputes exactly these (the paper's
        "single channel" models, one per target). None: random masks (any subset).
    observed_fraction
        ``p`` of the Bern(p) channel masks. Default 0.9 (channels) / 0.0 (gene -> protein).
    loss_on
        ``"all"`` measured channels (paper) or only the ``"missing"`` (masked) ones.
    model_channels, channel_mult, num_blocks, heads
        UNet size (3 levels by default). ``model_channels`` and ``heads`` default to 32 and 4
        for tables and to 16 and 2 for image tiles (the size every MIBI benchmark ran).
    dropout, cond_dropout
        Dropout in residual blocks and on the condition input. ``cond_dropout`` defaults to
        0.5 for gene -> protein models (a thousand gene channels) and 0 otherwise (dropping
        entries of ``[x * m, m]`` would corrupt the mask the network conditions on).
    sigma_data
        EDM's data standard deviation (data are scaled to about [-1, 1]).
    solver, sigma_max, sigma_min, rho
        The sampler: ODE solver (``"euler"``, ``"heun"`` or ``"dpm2m"``) and Karras noise schedule. None
        takes the defaults: for tables DPM-Solver++ 2M (one evaluation a step) from
        ``sigma_max=10`` to ``sigma_min=0.05`` (``rho=7``). The schedule was chosen on the
        validation cells of one ECCITE-seq split, where 3 Heun steps from EDM's 80 scored a CRPS
        of 0.33 against 0.13. At 5 steps (recentred) the solver scored a lower fair CRPS than
        Euler's on every table it ran on: ECCITE-seq 0.1184 against 0.1235, dsb 0.1202 against
        0.1253, Abseq's new donors 0.1083 against 0.1114, with 90 % intervals covering 0.89-0.93
        (``docs/benchmarks.md``, session 18). Images: Euler from ``sigma_max=80`` to 0.002 with
        ``rho=3``, the schedule :meth:`tune_sampler` chose on the validation tiles of the MIBI
        image; on its test region 5 steps scored CRPS 0.141 and pixel r 0.458 against 0.228 and
        0.292 for EDM's Heun from 80, and 18 steps 0.143 / 0.427 against 0.152 / 0.405 for
        18 Heun steps (35 evaluations). :meth:`tune_sampler` chooses them on a model's own
        validation cells or tiles.
    recentre
        Whether :meth:`impute` / :meth:`posterior` recentre multi-step draws on the mean of
        their one-step draws by default (:attr:`recentres`; each call's ``recentre`` overrides
        it). None: True for tables, False for images. On the tables it helped every one
        measured (Abseq, ECCITE-seq, dsb: lower CRPS and energy score, r_p of the one-step
        mean); on the MIBI image it made the predictive distribution worse (CRPS 0.139 ->
        0.158, 90 % coverage 0.64 -> 0.53; ``docs/benchmarks.md``, session 17).
    P_mean, P_std
        Training noise levels, ``ln sigma ~ N(P_mean, P_std^2)`` (EDM's defaults).
    seed
        Seeds the initial weights (without touching the global random state).

    Examples
    --------
    >>> adata = bd.datasets.eccite_pbmc()
    >>> bd.models.MCD.setup_anndata(adata, protein_obsm_key="protein_expression")
    >>> model = bd.models.MCD(adata)
    >>> model.train()
    >>> model.impute(adata_query)  # obsm["MCD_imputed"], obsm["MCD_variance"], uns["MCD_imputed"]
    """

    _model_name = "MCD"
    _can_recentre = True
    # Tables: about 1,500 steps. On an Abseq donor fold (3,000 training cells) 750 / 1,500 / 3,000 / 6,000
    # steps scored CRPS 0.1104 / 0.1097 / 0.1105 / 0.1129 and r_p 0.519 / 0.516 / 0.506 / 0.484 on the
    # held-out donor (docs/benchmarks.md): longer training fitted the training donors, not the new one.
    _train_defaults = dict(
        batch_size=256, lr=1e-3, weight_decay=1e-4, train_size=0.9, max_epochs=None, steps=1500,
        epochs=(20, 3000), early_stopping_patience=None, min_patience=20, ema_decay="auto", lr_warmup_steps=0,
    )
    # Images (tiles): about 500 steps of 64 tiles with the 16-channel UNet. On the MIBI test region
    # 450 / 900 / 1,800 steps scored pixel r 0.461 / 0.442 / 0.418 at one sampler step (ridge 0.461;
    # docs/benchmarks.md) at 5.3-5.9 s per 9-step epoch on two CPU cores (~5 minutes); 6,000 steps of 256 tiles of
    # the 32-channel UNet projected to 6.8 hours.
    _image_train_defaults = {**_train_defaults, "batch_size": 64, "steps": 500, "epochs": (20, 3000)}
    _data_kwargs = ("holdout",)
    _inference_batch = 256  # cells per sampling batch (tiles: see MCDImageMixin)
    _network_chunk = 256  # draws per network call (fixed, so results do not depend on batch_size)

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        protein_obsm_key: str | None = None,
        layer: str | None = None,
        protein_names: Sequence[str] | None = None,
    ) -> None:
        """Register ``adata`` for MCD (writes only ``adata.uns["biodiffuse"]["MCD"]``).

        Parameters
        ----------
        adata
            Cells x genes (counts) with proteins in ``obsm``, or cells x channels.
        protein_obsm_key
            ``obsm`` key of the protein table (gene -> protein mode); None: channels = var_names.
        layer
            Layer holding raw counts (gene mode) or channel values; None uses ``X``.
        protein_names
            Names of the protein columns when ``obsm[protein_obsm_key]`` is a plain array.

        Examples
        --------
        >>> adata = bd.datasets.eccite_pbmc()
        >>> bd.models.MCD.setup_anndata(adata, protein_obsm_key="protein_expression")   # gene -> protein
        >>> adt = bd.datasets.dsb_adt_pbmc()
        >>> bd.models.MCD.setup_anndata(adt)                                            # channels = var_names
        """
        check_adata(adata)
        if protein_obsm_key is not None:
            MatrixField(layer, nonnegative=True).validate(adata)
            proteins = ObsmField(protein_obsm_key, names=protein_names, nonnegative=True, allow_nan=True)
            proteins.validate(adata)
            names = proteins.names(adata) if not isinstance(adata.obsm[protein_obsm_key], pd.DataFrame) else None
        else:
            MatrixField(layer, allow_nan=True).validate(adata)
            names = None
        write_setup_record(adata, cls._model_name, {"protein_obsm_key": protein_obsm_key, "layer": layer, "protein_names": names})

    def __init__(
        self,
        adata: Any,
        *,
        n_genes: int | None = 1000,
        gene_pcs: int | None = None,
        residual: str | None = None,
        target_channels: Sequence[str] | None = None,
        observed_fraction: float | None = None,
        loss_on: str = "all",
        model_channels: int | None = None,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        heads: int | None = None,
        dropout: float = 0.1,
        cond_dropout: float | None = None,
        sigma_data: float = 0.5,
        solver: str | None = None,
        sigma_max: float | None = None,
        sigma_min: float | None = None,
        rho: float | None = None,
        recentre: bool | None = None,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss_on not in ("all", "missing"):
            raise ValueError(f"loss_on must be 'all' or 'missing', got {loss_on!r}.")
        if img.is_spatialdata(adata):
            setup = self._setup_record(adata, "setup_spatialdata")
            mode = "image"
        else:
            check_adata(adata)
            setup = self._setup_record(adata, "setup_anndata")
            mode = "gene_to_protein" if setup.get("protein_obsm_key") is not None else "channels"
        gene_mode = mode == "gene_to_protein"
        if observed_fraction is None:
            observed_fraction = 0.0 if gene_mode else 0.9
        if cond_dropout is None:
            cond_dropout = 0.5 if gene_mode else 0.0
        if not 0.0 <= observed_fraction <= 1.0:
            raise ValueError(f"observed_fraction must lie in [0, 1], got {observed_fraction}.")
        table = mode != "image"  # the sampler and size defaults measured per mode (see the docstring)
        model_channels = (32 if table else 16) if model_channels is None else model_channels
        heads = (4 if table else 2) if heads is None else heads
        sampler = checked_sampler(
            solver=("dpm2m" if table else "euler") if solver is None else solver,
            sigma_max=(10.0 if table else 80.0) if sigma_max is None else sigma_max,
            sigma_min=(0.05 if table else 0.002) if sigma_min is None else sigma_min,
            rho=(7.0 if table else 3.0) if rho is None else rho,
        )
        for name, value in (("sigma_data", sigma_data), ("P_std", P_std)):
            check_positive(name, value)
        if isinstance(P_mean, bool) or not isinstance(P_mean, (int, float)) or not np.isfinite(P_mean):
            raise ValueError(f"P_mean must be a finite number, got {P_mean!r}.")
        self.registry = {"setup": setup, "mode": mode}
        if gene_mode:
            targets = self._target_field().names(adata)
            genes = self._select_genes(adata, setup.get("layer"), n_genes)
        elif mode == "channels":
            targets, genes = self._target_field().names(adata), []
        else:
            targets, genes = img.image_channels(adata, setup["image_key"]), []
        self.registry.update(
            target_names=targets, condition_genes=genes, normalizer=None, gene_mean=None, gene_std=None, gene_components=None,
            residual_base=None,
        )
        if target_channels is not None:
            target_channels = list(map(str, target_channels))
            unknown = [t for t in target_channels if t not in targets]
            if gene_mode or unknown or not target_channels or len(target_channels) == len(targets):
                raise ValueError(
                    "target_channels must name some (not all) of the model's channels, outside gene -> protein mode"
                    + (f"; unknown: {unknown[:5]}" if unknown else "") + "."
                )
        if gene_pcs is not None:
            if not gene_mode:
                raise ValueError("gene_pcs applies to gene -> protein models only (set up with protein_obsm_key).")
            if not 1 <= int(gene_pcs) <= len(genes):
                raise ValueError(f"gene_pcs must lie in [1, {len(genes)}] (the number of condition genes), got {gene_pcs}.")
            gene_pcs = int(gene_pcs)
        if residual is not None and residual not in RESIDUAL_BASES:
            raise ValueError(f"residual must be None or one of {list(RESIDUAL_BASES)}, got {residual!r}.")
        if residual is not None and not gene_mode:
            raise ValueError("residual applies to gene -> protein models only (set up with protein_obsm_key).")
        self.init_args = dict(
            n_genes=n_genes, gene_pcs=gene_pcs, residual=residual, target_channels=target_channels, observed_fraction=observed_fraction,
            loss_on=loss_on, model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
            heads=heads, dropout=dropout, cond_dropout=cond_dropout, sigma_data=sigma_data,
            **sampler, recentre=self._recentre_setting(recentre, table), P_mean=float(P_mean), P_std=float(P_std),
        )
        self.adata = adata
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._build_network()

    def _training_defaults(self) -> dict[str, Any]:
        return self._image_train_defaults if self.registry["mode"] == "image" else self._train_defaults

    # --- fields and set-up helpers ---------------------------------------------------------
    def _gene_field(self) -> MatrixField:
        return MatrixField(self.registry["setup"].get("layer"), nonnegative=True)

    def _target_field(self) -> MatrixField | ObsmField:
        setup = self.registry["setup"]
        if setup.get("protein_obsm_key") is not None:
            return ObsmField(setup["protein_obsm_key"], names=setup.get("protein_names"), nonnegative=True, allow_nan=True)
        return MatrixField(setup.get("layer"), allow_nan=True)

    def _select_genes(self, adata: AnnData, layer: str | None, n_genes: int | None) -> list[str]:
        names = self._gene_field().names(adata)  # unique var_names, or a clear error
        if n_genes is not None and (int(n_genes) != n_genes or n_genes < 1):
            raise ValueError(f"n_genes must be a positive integer (the number of condition genes) or None, got {n_genes!r}.")
        if n_genes is None or n_genes >= len(names):
            return names
        if adata.isbacked:
            raise ValueError(self._backed_message())
        import scanpy as sc
        from scipy import sparse

        counts = sparse.csr_matrix(self._gene_field()._matrix(adata), dtype=np.float32, copy=True)
        tmp = AnnData(counts)
        tmp.var_names = names
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        hv = sc.pp.highly_variable_genes(tmp, n_top_genes=n_genes, flavor="seurat", inplace=False)
        chosen = [names[i] for i in np.flatnonzero(np.asarray(hv["highly_variable"]))]
        if not chosen:
            raise ValueError(
                f"No condition gene: highly variable gene selection on {self._gene_field().where()} kept none "
                "(all genes constant?); MCD's gene -> protein mode needs genes that vary across cells."
            )
        return chosen

    @staticmethod
    def _backed_message() -> str:
        return (
            "MCD trains on an in-memory AnnData; this one is backed (on disk). Load it with "
            "adata.to_memory() to train; backed AnnData works as a query of impute / posterior."
        )

    @property
    def gene_mode(self) -> bool:
        """Whether this is a gene -> protein model."""
        return self.registry["mode"] == "gene_to_protein"

    @property
    def target_names(self) -> list[str]:
        """The model's target channels, in order."""
        return list(self.registry["target_names"])

    def _build_network(self) -> MCDNetwork:
        a = self.init_args
        return build_network(
            len(self.registry["target_names"]), a.get("gene_pcs") or len(self.registry["condition_genes"]),
            spatial=self.registry["mode"] == "image", model_channels=a["model_channels"], channel_mult=a["channel_mult"],
            num_blocks=a["num_blocks"], heads=a["heads"], dropout=a["dropout"], cond_dropout=a["cond_dropout"],
            sigma_data=a["sigma_data"],
        )

    # --- reading an object against the registry ---------------------------------------------
    def _log_genes(self, adata: AnnData, rows: np.ndarray) -> np.ndarray:
        """Log-normalised condition genes of ``rows`` (float32), read by name in row chunks;
        library sizes over all genes of the query."""
        field = self._gene_field()
        genes = self.registry["condition_genes"]
        transfer = field.transfer(adata, genes)  # no shared gene -> a clear error
        if transfer.absent:
            raise ValueError(
                f"{len(transfer.absent)} gene(s) the model was trained on are missing from the query's "
                f"{transfer.field} (e.g. {list(transfer.absent[:5])})."
            )
        have = field.names(adata)
        pos = pd.Index(have).get_indexer(genes)
        out = np.empty((len(rows), len(genes)), dtype=np.float32)
        for start in range(0, len(rows), _GENE_CHUNK):
            block = field.read(adata, have, rows=rows[start : start + _GENE_CHUNK], dtype=np.float64)
            out[start : start + _GENE_CHUNK] = log_normalize(block[:, pos], block.sum(axis=1))
        return out

    def _standardised_genes(self, logn: np.ndarray) -> np.ndarray:
        z = (logn - np.asarray(self.registry["gene_mean"])) / np.asarray(self.registry["gene_std"])
        if self.registry.get("gene_components") is not None:
            z = z @ np.asarray(self.registry["gene_components"])
        return z.astype(np.float32)

    def _target_values(self, adata: AnnData, rows: np.ndarray, require_all: bool) -> np.ndarray:
        """Target channels of ``rows`` by name (original scale, float64), NaN where a channel is
        absent or unmeasured."""
        names = self.registry["target_names"]
        field = self._target_field()
        if self.gene_mode and field.key not in adata.obsm and not require_all:
            return np.full((len(rows), len(names)), np.nan)
        if not self.gene_mode:
            field.transfer(adata, names)  # a query sharing no channel name is an error, not a silent draw
        values = field.read(adata, names, rows=rows, missing="nan", dtype=np.float64)
        if require_all:
            absent = [n for n, col in zip(names, np.isnan(values).all(axis=0)) if col]
            if absent:
                raise ValueError(f"{field.where(adata)}: channels with no measured value: {absent[:5]} ({len(absent)} in all).")
        return values

    def _validate_query(self, adata: Any) -> None:
        if img.is_spatialdata(adata):
            if self.registry["mode"] != "image":
                raise TypeError("This MCD model was trained on a table; pass an AnnData.")
            from ..data.fields import ImageField

            ImageField(self.registry["setup"]["image_key"]).transfer(adata, self.registry["target_names"])
            return
        if self.registry["mode"] == "image":
            raise TypeError("This MCD model was trained on images; pass a SpatialData.")
        check_adata(adata, "query")
        if self.gene_mode:
            self._log_genes(adata, np.arange(0))  # names
            self._gene_field().validate(adata)  # values, in row chunks
        else:
            self._target_field().transfer(adata, self.registry["target_names"])

    def _to_model_scale(self, values: np.ndarray) -> np.ndarray:
        return 2.0 * ChannelNormalizer.from_dict(self.registry["normalizer"]).transform(values) - 1.0

    # --- training ---------------------------------------------------------------------------
    def _objective(self) -> MCDObjective:
        a = self.init_args
        targets = a.get("target_channels")
        target_mask = torch.tensor(np.isin(self.registry["target_names"], targets)) if targets else None
        return MCDObjective(
            a["observed_fraction"], a["loss_on"], a["sigma_data"], target_mask,
            P_mean=a.get("P_mean", -1.2), P_std=a.get("P_std", 1.2),
        )

    def tune_sampler(
        self,
        adata: AnnData | None = None,
        *,
        nfe: int = 5,
        indices: Sequence[int] | np.ndarray | None = None,
        n_samples: int = 10,
        candidates: Sequence[dict[str, Any]] | None = None,
        max_tiles: int = 128,
        seed: int = 0,
        device: str = "auto",
    ) -> pd.DataFrame:
        """Choose the sampler (solver and noise schedule) by the fair CRPS of draws on validation data.

        Every candidate of :func:`~biodiffuse.diffusion.schedule_grid` at ``nfe`` network
        evaluations per draw samples the validation cells (tables) or validation tiles (images):
        by default those the training run held out for early stopping, never the test data. The
        one with the lowest fair CRPS (normalised scale, over the imputed channels; per pixel for
        images) becomes the model's schedule (``init_args``, kept by :meth:`save`), and sampling
        with ``steps`` equal to its ``steps`` then costs ``nfe`` evaluations per draw.

        Parameters
        ----------
        adata, indices
            Tables: cells to score on (with their measured targets); default: the training
            object's validation cells. Image models always score the validation tiles of their
            last training run (a loaded model has none: train it, or keep its schedule).
        nfe
            Network evaluations per draw to tune for.
        n_samples
            Draws per cell or tile (at least 2).
        candidates
            Schedules to try (dicts as :func:`~biodiffuse.diffusion.schedule_grid` returns);
            default: that grid.
        max_tiles
            Images: score at most this many validation tiles (a random subset; the same for
            every candidate).
        seed, device
            As in :meth:`impute`.

        Returns
        -------
        pandas.DataFrame
            One row per candidate: its settings, then ``crps``, ``energy_score``, ``r_p`` (mean
            per-channel Pearson of the draws' mean) and ``coverage80`` (central 80 % intervals)
            as :func:`~biodiffuse.metrics.score_draws` gives them, best fair CRPS (``crps_fair``) first. Also kept
            in ``registry["sampler_tuning"]`` (the chosen row).

        Examples
        --------
        >>> model.train()
        >>> table = model.tune_sampler(nfe=5)           # validation cells (or tiles) only
        >>> model.impute(query, n_samples=10, steps=int(table.iloc[0]["steps"]))
        """
        from ..metrics import score_draws

        image = self.registry["mode"] == "image"
        self._check_tuning(n_samples, max_tiles, unit="tile" if image else "cell", have_validation=True)
        if image and (adata is not None or indices is not None):
            raise TypeError("Image models score the validation tiles of their last training run; adata= and indices= are for tables.")
        if adata is None and indices is None and not image:
            indices = getattr(self, "validation_indices", None)
            if indices is None or len(indices) == 0:
                raise ValueError(
                    "No validation cells: this model has not been trained in this session (or with train_size=1); "
                    "pass adata= and indices= of cells that were not used for training."
                )
        names = self.registry["target_names"]
        if self.gene_mode:
            missing = list(names)
        elif self.init_args.get("target_channels"):
            missing = list(self.init_args["target_channels"])
        else:  # any-subset models: hide a fixed random share of channels, as in training
            k = max(1, int(round((1.0 - self.init_args["observed_fraction"]) * len(names))))
            missing = list(np.random.default_rng(seed).choice(names, size=min(k, len(names) - 1), replace=False))
        cols = np.isin(names, missing)
        if image:
            y, draw, n_scored = self._tile_scoring(cols, max_tiles, n_samples=n_samples, seed=seed, device=device)
        else:
            query, rows = self._query(adata, indices)
            truth = self._target_values(query, rows, require_all=False)
            y = ChannelNormalizer.from_dict(self.registry["normalizer"]).transform(truth)[:, cols]
            prepared = self._prepare_query(query, rows, missing=None if self.gene_mode else missing)  # genes read once
            n_scored = f"{len(rows)} validation cells"

            def draw(sampler) -> np.ndarray:
                return self._draw(prepared, sampler, n_samples=n_samples, seed=seed, device=device, return_draws=True,
                                  recentre=getattr(sampler, "keeps_one_step", False))["draws_normalized"][:, :, cols]
        if np.isnan(y).all():
            raise ValueError("The scoring data have no measured value in the channels to impute.")

        def score(sampler) -> dict[str, float]:
            return score_draws(y, draw(sampler), levels=(0.8,))

        return self._choose_sampler(score, nfe=nfe, candidates=candidates, scored_on=n_scored)

    def _training_data(self, train_size: float, seed: int, holdout: np.ndarray | None = None):
        objective = self._objective()
        if self.registry["mode"] == "image":
            train_t, val_t, _ = self._image_training_tensors(holdout, train_size, seed)
            return objective, train_t, val_t
        if holdout is not None:
            raise ValueError("holdout applies to image models only.")
        adata = self.adata
        if adata.isbacked:
            raise ValueError(self._backed_message())
        rng = np.random.default_rng(seed)
        train_idx, val_idx = self._split(adata.n_obs, train_size, rng)
        self.train_indices, self.validation_indices = train_idx, val_idx
        all_rows = np.arange(adata.n_obs)
        targets = self._target_values(adata, all_rows, require_all=True)
        if self.registry["normalizer"] is None:
            self.registry["normalizer"] = ChannelNormalizer().fit(targets[train_idx]).to_dict()
        x = self._to_model_scale(targets)
        available = ~np.isnan(x)
        tensors: dict[str, np.ndarray] = {"available": available}
        if self.gene_mode:
            logn = self._log_genes(adata, all_rows)
            if self.registry["gene_mean"] is None:
                self._fit_gene_scaling(logn[train_idx])
            tensors["genes"] = self._standardised_genes(logn)
            if self.init_args.get("residual") is not None:
                x = x - self._training_base(tensors["genes"], x, train_idx, seed)
        tensors["x"] = np.nan_to_num(x, nan=0.0).astype(np.float32)

        def part(idx: np.ndarray) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in tensors.items()}

        return objective, part(train_idx), part(val_idx)

    def _training_base(self, genes: np.ndarray, x: np.ndarray, train_idx: np.ndarray, seed: int) -> np.ndarray:
        """The residual base of every cell for training: out-of-fold predictions on the training
        cells, the base fitted on them elsewhere (fitted once, like the normaliser)."""
        if self.registry.get("residual_base") is None:
            fitted = fit_residual_base(self.init_args["residual"], genes[train_idx], x[train_idx], seed=seed)
            meta, arrays = fitted.to_state()
            self.registry["residual_base"] = meta
            self.fitted_arrays.update({f"residual_base/{k}": v for k, v in arrays.items()})
        base = self._residual_base()
        out = base.predict(genes).astype(np.float64)
        out[train_idx] = base.out_of_fold(genes[train_idx], x[train_idx], seed=seed)
        return out

    def _base(self, genes: np.ndarray | None) -> np.ndarray | None:
        """The residual base of query cells (model scale), or None for models without one."""
        if genes is None or self.registry.get("residual_base") is None:
            return None
        return self._residual_base().predict(genes)

    def _residual_base(self):
        """The fitted residual base (:mod:`biodiffuse.module.residual_base`)."""
        prefix = "residual_base/"
        arrays = {k[len(prefix) :]: v for k, v in self.fitted_arrays.items() if k.startswith(prefix)}
        return residual_base_from_state(self.registry["residual_base"], arrays)

    def _fit_gene_scaling(self, logn: np.ndarray) -> None:
        """Gene means / standard deviations (and the whitened PCA with ``gene_pcs``) of the training cells."""
        mu, sd = logn.mean(axis=0), logn.std(axis=0)
        self.registry["gene_mean"] = mu.astype(float).tolist()
        self.registry["gene_std"] = np.where(sd > 1e-6, sd, 1.0).astype(float).tolist()
        k = self.init_args.get("gene_pcs")
        if k is not None:
            z = (logn - mu) / np.asarray(self.registry["gene_std"])
            _, svals, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            if k > len(svals):
                raise ValueError(f"gene_pcs={k} exceeds the {len(svals)} components the training cells allow.")
            sd_pc = svals[:k] / math.sqrt(max(len(logn) - 1, 1))
            comps = vt[:k].T / np.where(sd_pc > 1e-8, sd_pc, 1.0)
            self.registry["gene_components"] = comps.astype(float).tolist()

    # --- inference --------------------------------------------------------------------------
    def _observed_mask(self, observed: Sequence[str] | None, missing: Sequence[str] | None) -> np.ndarray | None:
        """(C,) booleans of channels the caller lets the model observe (None: no restriction)."""
        names = self.registry["target_names"]
        if observed is not None and missing is not None:
            raise ValueError("Pass observed or missing, not both.")
        for what, given in (("observed", observed), ("missing", missing)):
            if isinstance(given, str):
                raise TypeError(f"{what} must be a list of channel names, got the string {given!r}.")
            unknown = [n for n in (given or []) if str(n) not in names]
            if unknown:
                raise ValueError(f"{what} names not among the model's channels: {unknown[:5]}.")
            given_names = pd.Index([str(n) for n in (given or [])])
            repeated = sorted(set(given_names[given_names.duplicated()]))
            if repeated:
                raise ValueError(f"{what} names a channel more than once: {repeated[:5]}.")
        if observed is not None:
            return np.isin(names, list(map(str, observed)))
        if missing is not None:
            return ~np.isin(names, list(map(str, missing)))
        if self.gene_mode:
            return np.zeros(len(names), bool)
        if self.init_args.get("target_channels"):
            return ~np.isin(names, self.init_args["target_channels"])
        return None

    @torch.no_grad()
    def posterior(
        self,
        adata: AnnData | None = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = 18,
        seed: int = 0,
        device: str = "auto",
        observed: Sequence[str] | None = None,
        missing: Sequence[str] | None = None,
        recentre: bool | None = None,
        return_draws: bool = False,
    ) -> dict[str, np.ndarray]:
        """Posterior mean and variance of every target channel, without writing anything.

        Parameters
        ----------
        adata, indices, batch_size, n_samples, steps, seed, device, observed, missing, recentre
            As in :meth:`impute`.
        return_draws
            Also return the draws themselves (normalised scale), e.g. to score the predictive
            distribution with :func:`biodiffuse.metrics.crps` / :func:`~biodiffuse.metrics.energy_score`.

        Returns
        -------
        dict
            (selected cells x channels) arrays: ``mean`` / ``variance`` in the original scale,
            ``mean_normalized`` / ``variance_normalized`` in the normaliser's [0, 1] scale,
            ``observed`` (entries used as condition and clamped: they hold their measured
            values with variance 0), and ``rows`` (the positions of the cells in ``adata``);
            with ``return_draws``, ``draws_normalized`` ``(cells, n_samples, channels)``.

        Examples
        --------
        >>> post = model.posterior(query, n_samples=20, steps=18, return_draws=True)
        >>> bd.metrics.crps(y_query_normalized, post["draws_normalized"])   # per protein
        """
        if self.registry["mode"] == "image":
            raise TypeError("Image models: use image_posterior(sdata, ...) or impute(sdata, ...).")
        adata, rows = self._query(adata, indices)
        check_adata(adata, "query")  # names are matched and values checked as the rows are read
        prepared = self._prepare_query(adata, rows, observed=observed, missing=missing)
        recentre = self._check_recentre(recentre, steps, n_samples)
        return self._draw(prepared, self._sampler(steps, keep_one_step=recentre), n_samples=n_samples, seed=seed,
                          device=device, batch_size=batch_size, return_draws=return_draws, recentre=recentre)

    def _prepare_query(
        self, adata: AnnData, rows: np.ndarray, *, observed: Sequence[str] | None = None, missing: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Read the query once: the observed channel values and mask, the model-scale inputs and
        the standardised genes of ``rows``, ready for :meth:`_draw` (with any sampler)."""
        names = self.registry["target_names"]
        keep = self._observed_mask(observed, missing)
        values = self._target_values(adata, rows, require_all=False)
        if keep is not None:
            if observed is not None:
                absent = [n for n, k, col in zip(names, keep, np.isnan(values).all(axis=0)) if k and col]
                if absent:
                    raise ValueError(f"observed channels not measured in the query: {absent[:5]}.")
            values = np.where(keep[None, :], values, np.nan)
        obs_mask = ~np.isnan(values)
        if obs_mask.any() and self.init_args["observed_fraction"] == 0:
            warnings.warn("This model was trained without channel masking; observed channels are clamped but not used as condition.")
        genes = self._standardised_genes(self._log_genes(adata, rows)) if self.gene_mode else None
        base = self._base(genes)
        x = self._to_model_scale(values)
        if base is not None:  # the network samples residuals: observed values enter as theirs
            x = x - base
        return dict(
            values=values, observed=obs_mask, rows=rows, keys=self._row_keys(adata.obs_names[rows]),
            x=np.nan_to_num(x, nan=0.0).astype(np.float32), genes=genes, base=base,
        )

    def _draw(
        self, prepared: dict[str, Any], sampler: Any, *, n_samples: int, seed: int, device: str,
        batch_size: int | None = None, return_draws: bool = False, recentre: bool = False,
    ) -> dict[str, np.ndarray]:
        """Sample the prepared query with ``sampler``; the dict :meth:`posterior` returns.
        ``recentre``: centre each cell's draws on the mean of its one-step draws, which
        ``sampler`` keeps (:class:`~biodiffuse.diffusion.Recentred`)."""
        x, obs_mask, genes, values = prepared["x"], prepared["observed"], prepared["genes"], prepared["values"]
        base = prepared.get("base")
        batch_size = self._inference_batch if batch_size is None else batch_size

        def read(r: np.ndarray):
            return x[r], obs_mask[r], None if genes is None else genes[r]

        norm = ChannelNormalizer.from_dict(self.registry["normalizer"])
        c = len(self.registry["target_names"])

        def normalized(d: np.ndarray, r: np.ndarray) -> np.ndarray:
            d = d.reshape(*d.shape[:2], c)
            return ((d if base is None else d + base[r][:, None, :]) + 1.0) / 2.0

        def original(d: np.ndarray, r: np.ndarray) -> np.ndarray:
            z = normalized(d, r)
            return norm.inverse_transform(z.reshape(-1, c)).reshape(z.shape)

        n = len(prepared["rows"])
        with self._on_device(device) as (net, dev):

            def run(smp: Any, reducer: Any) -> dict[str, np.ndarray]:
                return sample_rows(
                    make_prepare(net, read, self._network_chunk), n, (c, 1, 1), seeds=row_seeds(seed, prepared["keys"]),
                    sampler=smp, n_samples=n_samples, batch_size=batch_size, device=dev, reducer=reducer,
                )

            # the normalised scale first: it is the one whose draws are kept
            reducer = Moments(n, transforms={"normalized_": normalized, "": original}, keep_draws=bool(return_draws))
            res = self._run_recentred(run, sampler, reducer, recentre)  # centres in the draws' (residual) scale
        out = {
            "mean": np.where(obs_mask, values, res["mean"]),
            "variance": np.where(obs_mask, 0.0, res["variance"]),
            "mean_normalized": res["normalized_mean"],
            "variance_normalized": res["normalized_variance"],
            "observed": obs_mask,
            "rows": prepared["rows"],
        }
        if return_draws:
            out["draws_normalized"] = res["draws"]
        return out

    def impute(
        self,
        adata: Any = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = 18,
        seed: int = 0,
        key_added: str | None = None,
        variance_key_added: str | bool | None = None,
        overwrite: bool = False,
        device: str = "auto",
        observed: Sequence[str] | None = None,
        missing: Sequence[str] | None = None,
        recentre: bool | None = None,
        image_key: str | None = None,
    ) -> pd.DataFrame | Any:
        """Impute the target channels and write them into the object.

        Tables: ``obsm[key_added]`` (default ``"MCD_imputed"``: posterior mean, DataFrame with
        channel names as columns, original scale; observed entries keep their measured values)
        and ``obsm[variance_key_added]`` (posterior variance); the run's parameters go to
        ``uns[key_added]``. Images (``adata`` a SpatialData): new image elements at full
        resolution, ``key_added`` (default ``f"{image_key}_MCD_imputed"``) and its variance
        (default ``f"{image_key}_MCD_variance"``, or ``f"{key_added}_variance"``), with the
        imputed channels only; when the image has a segmentation annotated by a table,
        per-cell means go to that table's ``obsm[key_added or "MCD_imputed"]`` and
        ``obsm[<variance key> or "MCD_variance"]``; the run's parameters go to
        ``sdata.attrs[<image element key>]``.

        Parameters
        ----------
        adata
            Query object (default: the object the model was built on): an AnnData matched to
            the registry by name (genes for gene -> protein models, ``var_names`` otherwise;
            backed AnnData is read in row chunks), or a SpatialData for image models.
        indices
            Tables: cells to impute (integer positions, negative allowed, or a boolean mask);
            the other rows of the written frames are NaN. Repeated positions count once, and
            :meth:`posterior` returns the cells in their order in ``adata`` (its ``rows``).
            Not used by image models.
        batch_size
            Cells (default 256) or tiles (default 64) per batch; results do not depend on it.
        n_samples
            Posterior draws per cell; their mean is the imputation, their variance the
            uncertainty.
        steps
            Sampler steps: network evaluations per draw are ``steps`` with DPM-Solver++ 2M or
            Euler (the defaults of tables and images) and ``2 * steps - 1`` with Heun (see
            :meth:`network_evaluations`);
            ``steps=1`` is the denoiser's estimate of the conditional mean.
        recentre
            ``steps > 1`` and ``n_samples > 1`` (a single draw is left as drawn): shift each cell's (tile's) draws so that their mean is the mean of its
            one-step draws (the denoiser's estimate of the conditional mean). The spread and
            shape come from the ``steps``-step draws, the centre from one step: the mean of a
            few multi-step draws carries their sampling noise, the one-step mean much less
            (Monte Carlo moment matching). Costs no extra network evaluation: a draw's one-step
            draw is the first evaluation of its own solve. None (default): the model's setting
            (:attr:`recentres`; the constructor's ``recentre``).
        seed
            Same seed, same numbers (on the same device), whatever ``batch_size`` and whatever
            other cells are in the query: every cell (tile) draws from its own random stream
            keyed by its obs name (tile origin).
        key_added
            Where the mean goes (see above).
        variance_key_added
            Where the variance goes; default ``"MCD_variance"`` (tables), or
            ``f"{key_added}_variance"`` when ``key_added`` is given. ``False`` skips it.
        overwrite
            Replace existing entries under these keys (otherwise a KeyError, nothing written).
        device
            ``"auto"`` (GPU if present), ``"cpu"``, ``"cuda"``...
        observed
            Channel names to condition on. Default: none for gene -> protein models; every
            present, non-NaN channel otherwise (a channel-specific model hides its targets).
        missing
            Channel names to impute (the others present in the query are observed); an
            alternative to ``observed``. Channels absent from the query are always imputed.
        image_key
            Images only: the image element to impute (default: the registered one).

        Returns
        -------
        The imputed DataFrame (tables) or the new image element (images).

        Examples
        --------
        >>> query = adata[:20].copy()
        >>> del query.obsm["protein_expression"]                 # RNA only
        >>> model.impute(query, n_samples=10, steps=5)           # obsm["MCD_imputed"], obsm["MCD_variance"]
        >>> model.impute(adt[:200].copy(), missing=["CD4_PROT", "CD19_PROT"])   # channels mode
        """
        recentre = self._check_recentre(recentre, steps, n_samples)
        if self.registry["mode"] == "image":
            if indices is not None:
                raise ValueError("indices selects cells of a table; image models impute the whole image element.")
            return self._impute_image(
                adata, image_key=image_key, observed=observed, missing=missing, n_samples=n_samples, steps=steps,
                batch_size=batch_size, seed=seed, key_added=key_added, variance_key_added=variance_key_added,
                overwrite=overwrite, device=device, recentre=recentre,
            )
        if image_key is not None:
            raise ValueError("image_key applies to image models (set up with setup_spatialdata).")
        query, rows = self._query(adata, indices)
        check_adata(query, "query")
        key = self._key(key_added, "imputed")
        vkey = self._variance_key(key, key_added, variance_key_added, "MCD_variance", n_samples=n_samples)
        self._check_free(query.obsm, [key, vkey], "adata.obsm", overwrite)
        self._check_free(query.uns, [key], "adata.uns", overwrite)
        post = self.posterior(
            query, indices=rows, batch_size=batch_size, n_samples=n_samples, steps=steps, seed=seed, device=device,
            observed=observed, missing=missing, recentre=recentre,
        )
        cols = pd.Index(self.registry["target_names"])

        def frame(values: np.ndarray) -> pd.DataFrame:
            full = np.full((query.n_obs, len(cols)), np.nan)
            full[rows] = values
            return pd.DataFrame(full, index=query.obs_names.copy(), columns=cols)

        mean = frame(post["mean"])
        query.obsm[key] = mean
        if vkey is not None:
            query.obsm[vkey] = frame(post["variance"])
        self._record_run(query, key, dict(
            n_samples=n_samples, steps=steps, seed=seed, observed=observed, missing=missing, variance_key_added=vkey,
            n_cells=len(rows), mode=self.registry["mode"], recentre=recentre,
            network_evaluations_per_draw=self.network_evaluations(steps=steps),
            **self.sampler_settings,
        ))
        return mean

