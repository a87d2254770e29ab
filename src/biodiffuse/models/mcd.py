"""MCD: multi-channel diffusion for any-subset channel imputation.

Method (MCD paper, sections 3.1-3.3 and appendix C):

* **Data.** Target channels ``x`` (proteins from ``obsm``, or any channels in ``X``), per
  channel Yeo-Johnson + 1st/99th percentile scaling fitted on training cells
  (:class:`~biodiffuse.data.ChannelNormalizer`); for CITE-seq the genes are extra condition
  channels (log-normalised, standardised, highly variable genes chosen at set-up). Each cell
  is a 1x1 image.
* **Network.** :class:`~biodiffuse.nn.MCDUNet`: diffusion branch + mirrored condition branch,
  SE-gated injection ``z = D(x_t) + SE(E(c))`` at skips and middle block, channel attention
  in every UNet block and ``y + Conv1x1(SE(y))`` at the output.
* **Objective.** EDM loss (:class:`~biodiffuse.diffusion.EDMLoss`) with random channel
  masking: the condition is ``[genes, x * m, m]`` with ``m ~ Bern(p)`` per channel; the loss
  is on all measured channels (paper) or only the masked ones.
* **Sampler.** Heun on the Karras schedule (:func:`~biodiffuse.diffusion.heun_sampler`); the
  condition branch runs once per batch; observed channels are clamped to their values.
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
from scipy import sparse

from ..data import (
    ChannelNormalizer,
    check_adata,
    check_values,
    columns_by_name,
    get_matrix,
    get_obsm_frame,
    log_normalize,
    read_setup_record,
    write_setup_record,
)
from ..diffusion import EDMLoss, EDMPrecond, heun_sampler, masked_condition, random_channel_mask
from ..nn import MCDUNet
from . import _mcd_image as img
from .base import BaseModel, resolve_device

__all__ = ["MCD", "MCDObjective"]

logger = logging.getLogger("biodiffuse")


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1); images pass through."""
    return x[:, :, None, None] if x.ndim == 2 else x


def build_condition(x: torch.Tensor, mask: torch.Tensor, genes: torch.Tensor | None) -> torch.Tensor:
    """MCD's condition: ``[genes, x * m, m]`` (genes only for gene -> protein models)."""
    cond = masked_condition(_as_image(x), mask)
    if genes is not None:
        cond = torch.cat([_as_image(genes), cond], dim=1)
    return cond


class MCDObjective:
    """EDM loss with random channel masking (MCD Algorithm 1).

    Batches hold ``x`` (B, C[, H, W]) in model scale with 0 where unmeasured, ``available``
    (B, C) booleans, and optionally ``genes`` (B, G). With ``target_mask`` (C,) the mask is not
    random: the target channels are always hidden and every other available channel observed
    (the paper's channel-specific setting).
    """

    def __init__(self, observed_fraction: float, loss_on: str, sigma_data: float, target_mask: torch.Tensor | None = None) -> None:
        self.observed_fraction = observed_fraction
        self.loss_on = loss_on
        self.loss = EDMLoss(sigma_data=sigma_data)
        self.target_mask = target_mask

    def __call__(self, denoiser: EDMPrecond, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, avail = batch["x"], batch["available"]
        if x.ndim == 4 and x.shape[-1] > 1:  # image tiles: a random rotation / flip of the batch
            k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
            x = torch.rot90(x, k, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip % 2 else x
        if self.target_mask is not None:
            mask = avail & ~self.target_mask.to(avail.device)[None, :]
        else:
            mask = random_channel_mask(x.shape[0], x.shape[1], self.observed_fraction, available=avail, generator=generator)
        cond = build_condition(x, mask, batch.get("genes"))
        counted = avail & ~mask if self.loss_on == "missing" else avail
        x4 = _as_image(x)
        loss_mask = counted.reshape(*counted.shape, *([1] * (x4.ndim - 2)))
        return self.loss(denoiser, x4, cond, loss_mask=loss_mask, generator=generator)


class MCD(img.MCDImageMixin, BaseModel):
    """Multi-channel diffusion: impute any missing subset of channels from any observed subset.

    Three set-ups (:meth:`setup_anndata`, :meth:`setup_spatialdata`):

    * **gene -> protein** (CITE-seq): ``protein_obsm_key`` names the protein table; genes in
      ``X`` (or ``layer``) are condition channels, proteins are target channels. The paper
      trains this without channel masking (``observed_fraction=0``, the default here).
    * **channels**: the channels are ``var_names``; random channel masking with
      ``observed_fraction`` (default 0.9) lets one model impute any subset from any other.
    * **image** (SpatialData): the channels of a multiplexed image element, as tiles; the
      same masking; imputation is stitched back into new image elements (see
      :meth:`setup_spatialdata`, :meth:`image_posterior`, :meth:`impute`).

    Parameters
    ----------
    adata
        Object registered with :meth:`setup_anndata` (set up with defaults if not).
    n_genes
        Gene -> protein only: number of highly variable genes (chosen on ``adata``'s
        log-normalised counts, no protein used) kept as condition channels; None keeps all.
    gene_pcs
        Gene -> protein only: condition on this many principal components of the
        standardised genes (PCA fitted on the training cells, scores whitened) instead of
        the genes themselves. Fewer, denser condition channels suit small data sets.
    target_channels
        Channel-specific setting (channels / image modes): always hide these channels and
        observe all others in training, so the model imputes exactly these (the paper's
        "single channel" models, one per target). None: random masks (any subset).
    observed_fraction
        ``p`` of the Bern(p) channel masks. Default 0.9 (channels) / 0.0 (gene -> protein).
    loss_on
        ``"all"`` measured channels (paper) or only the ``"missing"`` (masked) ones.
    model_channels, channel_mult, num_blocks, heads
        UNet size (3 levels by default).
    dropout, cond_dropout
        Dropout in residual blocks and on the condition input. ``cond_dropout`` defaults to
        0.5 for gene -> protein models (a thousand gene channels) and 0 otherwise (dropping
        entries of ``[x * m, m]`` would corrupt the mask the network conditions on).
    sigma_data
        EDM's data standard deviation (data are scaled to about [-1, 1]).
    seed
        Seeds the initial weights (without touching the global random state).

    Examples
    --------
    >>> adata = bd.datasets.eccite_pbmc()
    >>> bd.models.MCD.setup_anndata(adata, protein_obsm_key="protein_expression")
    >>> model = bd.models.MCD(adata)
    >>> model.train()
    >>> model.impute(adata_query)  # obsm["MCD_imputed"], obsm["MCD_variance"]
    """

    _model_name = "MCD"

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
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
        """
        check_adata(adata)
        x = get_matrix(adata, layer)
        if protein_obsm_key is not None:
            check_values(x, "RNA counts" + (f" (layer {layer!r})" if layer else " (X)"), nonnegative=True)
            frame = get_obsm_frame(adata, protein_obsm_key, protein_names)
            check_values(frame.to_numpy(dtype=float), f"obsm[{protein_obsm_key!r}]", nonnegative=True, allow_nan=True)
            names = list(map(str, frame.columns))
        else:
            check_values(x, "channel values" + (f" (layer {layer!r})" if layer else " (X)"), nonnegative=False, allow_nan=True)
            names = None
        write_setup_record(
            adata,
            cls._model_name,
            {"protein_obsm_key": protein_obsm_key, "layer": layer, "protein_names": names if isinstance(adata.obsm.get(protein_obsm_key), np.ndarray) else None},
        )

    def __init__(
        self,
        adata: AnnData,
        n_genes: int | None = 1000,
        gene_pcs: int | None = None,
        target_channels: Sequence[str] | None = None,
        observed_fraction: float | None = None,
        loss_on: str = "all",
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        cond_dropout: float | None = None,
        sigma_data: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss_on not in ("all", "missing"):
            raise ValueError(f"loss_on must be 'all' or 'missing', got {loss_on!r}.")
        if img.is_spatialdata(adata):
            setup = img.read_image_setup(adata, self._model_name)
            if setup is None:
                if len(adata.images) != 1:
                    raise ValueError("SpatialData not set up for MCD; call MCD.setup_spatialdata(sdata, image_key=...).")
                key = next(iter(adata.images.keys()))
                warnings.warn(f"sdata was not set up for MCD; set it up with image_key={key!r}.", UserWarning, stacklevel=2)
                self.setup_spatialdata(adata, image_key=key)
                setup = img.read_image_setup(adata, self._model_name)
            mode = "image"
        else:
            check_adata(adata)
            setup = read_setup_record(adata, self._model_name)
            if setup is None:
                key = "protein_expression" if "protein_expression" in adata.obsm else None
                logger.warning("adata was not set up for MCD; running MCD.setup_anndata(adata, protein_obsm_key=%r).", key)
                warnings.warn(f"adata was not set up for MCD; set it up with protein_obsm_key={key!r}.", UserWarning, stacklevel=2)
                self.setup_anndata(adata, protein_obsm_key=key)
                setup = read_setup_record(adata, self._model_name)
            mode = "gene_to_protein" if setup.get("protein_obsm_key") is not None else "channels"
        gene_mode = mode == "gene_to_protein"
        if observed_fraction is None:
            observed_fraction = 0.0 if gene_mode else 0.9
        if cond_dropout is None:
            cond_dropout = 0.5 if gene_mode else 0.0
        if not 0.0 <= observed_fraction <= 1.0:
            raise ValueError(f"observed_fraction must lie in [0, 1], got {observed_fraction}.")
        if gene_mode:
            frame = get_obsm_frame(adata, setup["protein_obsm_key"], setup.get("protein_names"))
            targets = list(map(str, frame.columns))
            genes = self._select_genes(adata, setup.get("layer"), n_genes)
        elif mode == "channels":
            targets, genes = list(map(str, adata.var_names)), []
        else:
            targets, genes = img.image_channels(adata, setup["image_key"]), []
        self.registry = {
            "setup": setup,
            "mode": mode,
            "target_names": targets,
            "condition_genes": genes,
            "normalizer": None,
            "gene_mean": None,
            "gene_std": None,
            "gene_components": None,
        }
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
        self.init_args = dict(
            n_genes=n_genes, gene_pcs=gene_pcs, target_channels=target_channels, observed_fraction=observed_fraction, loss_on=loss_on, model_channels=model_channels,
            channel_mult=list(channel_mult), num_blocks=num_blocks, heads=heads, dropout=dropout,
            cond_dropout=cond_dropout, sigma_data=sigma_data,
        )
        self.adata = adata
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._build_network()

    # --- set-up helpers --------------------------------------------------------------------
    @staticmethod
    def _select_genes(adata: AnnData, layer: str | None, n_genes: int | None) -> list[str]:
        names = list(map(str, adata.var_names))
        if n_genes is None or n_genes >= len(names):
            return names
        import scanpy as sc

        counts = get_matrix(adata, layer)
        counts = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
        tmp = AnnData(counts)
        tmp.var_names = names
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        hv = sc.pp.highly_variable_genes(tmp, n_top_genes=n_genes, flavor="seurat", inplace=False)
        chosen = np.flatnonzero(np.asarray(hv["highly_variable"]))
        return [names[i] for i in chosen]

    @property
    def gene_mode(self) -> bool:
        return self.registry["mode"] == "gene_to_protein"

    @property
    def target_names(self) -> list[str]:
        return list(self.registry["target_names"])

    def _build_network(self) -> EDMPrecond:
        a = self.init_args
        n_targets = len(self.registry["target_names"])
        n_gene_channels = a.get("gene_pcs") or len(self.registry["condition_genes"])
        cond_channels = n_gene_channels + 2 * n_targets
        unet = MCDUNet(
            channels=n_targets, cond_channels=cond_channels, model_channels=a["model_channels"],
            channel_mult=a["channel_mult"], num_blocks=a["num_blocks"], spatial=self.registry["mode"] == "image",
            dropout=a["dropout"], cond_dropout=a["cond_dropout"], heads=a["heads"],
        )
        return EDMPrecond(unet, sigma_data=a["sigma_data"])

    # --- reading an object against the registry ---------------------------------------------
    def _raw_genes(self, adata: AnnData) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
        layer = self.registry["setup"].get("layer")
        counts = get_matrix(adata, layer)
        check_values(counts, "RNA counts" + (f" (layer {layer!r})" if layer else " (X)"), nonnegative=True)
        lib = np.asarray(counts.sum(axis=1)).ravel()
        sel = columns_by_name(counts, list(map(str, adata.var_names)), self.registry["condition_genes"], "gene")
        return log_normalize(sel, lib), lib

    def _targets(self, adata: AnnData, require_all: bool) -> np.ndarray:
        """Target channels by name (original scale), NaN where a channel is absent or unmeasured."""
        setup = self.registry["setup"]
        names = self.registry["target_names"]
        if self.gene_mode:
            key = setup["protein_obsm_key"]
            if key not in adata.obsm:
                if require_all:
                    raise KeyError(f"{key!r} not in adata.obsm (have {list(adata.obsm.keys())}).")
                return np.full((adata.n_obs, len(names)), np.nan)
            frame = get_obsm_frame(adata, key, setup.get("protein_names"))
            values = frame.reindex(columns=names).to_numpy(dtype=np.float64)
            check_values(values, f"obsm[{key!r}]", nonnegative=True, allow_nan=True)
        else:
            mat = get_matrix(adata, setup.get("layer"))
            index = pd.Index(map(str, adata.var_names))
            pos = index.get_indexer(names)
            values = np.full((adata.n_obs, len(names)), np.nan)
            if (pos >= 0).any():
                sub = mat[:, pos[pos >= 0]]
                values[:, pos >= 0] = sub.toarray() if sparse.issparse(sub) else np.asarray(sub, dtype=np.float64)
            check_values(values, "channel values", nonnegative=False, allow_nan=True)
        if require_all:
            absent = [n for n, col in zip(names, np.isnan(values).all(axis=0)) if col]
            if absent:
                raise ValueError(f"Channels with no measured value: {absent[:5]} ({len(absent)} in all).")
        return values

    def _validate_query(self, adata: AnnData) -> None:
        if img.is_spatialdata(adata):
            if self.registry["mode"] != "image":
                raise TypeError("This MCD model was trained on a table; pass an AnnData.")
            key = self.registry["setup"]["image_key"]
            have = img.image_channels(adata, key)
            if not set(have) & set(self.registry["target_names"]):
                raise ValueError(f"images[{key!r}] shares no channel with the model.")
            return
        if self.registry["mode"] == "image":
            raise TypeError("This MCD model was trained on images; pass a SpatialData.")
        check_adata(adata, "query")
        if self.gene_mode:
            self._raw_genes(adata)
        else:
            self._targets(adata, require_all=False)

    def _to_model_scale(self, values: np.ndarray) -> np.ndarray:
        return 2.0 * ChannelNormalizer.from_dict(self.registry["normalizer"]).transform(values) - 1.0

    def _gene_tensor(self, adata: AnnData) -> np.ndarray:
        logn, _ = self._raw_genes(adata)
        z = (logn - np.asarray(self.registry["gene_mean"])) / np.asarray(self.registry["gene_std"])
        if self.registry.get("gene_components") is not None:
            z = z @ np.asarray(self.registry["gene_components"])
        return z.astype(np.float32)

    # --- training ---------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        train_size: float = 0.9,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        ema_decay: float | str | None = "auto",
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        precision: str | int = "32-true",
        checkpoint_dir: str | None = None,
        seed: int = 0,
        enable_progress_bar: bool = True,
        holdout: np.ndarray | None = None,
        **trainer_kwargs: Any,
    ) -> pd.DataFrame:
        """Train on the registered object; returns (and appends to ``self.history``) the losses.

        Parameters
        ----------
        max_epochs
            Default: about 6,000 optimiser steps, between 100 and 3,000 epochs.
        batch_size
            Cells per batch (paper: 256).
        lr, weight_decay
            AdamW settings.
        train_size
            Fraction of cells for training; the rest is the validation split for early
            stopping. The normaliser is fitted on the training cells only.
        early_stopping, early_stopping_patience
            Stop when the validation loss stalls (default patience: a tenth of max_epochs).
        ema_decay
            Exponential moving average of the weights; ``"auto"`` averages over about the
            last tenth of the optimiser steps (decay between 0.9 and 0.999); None: off.
        accelerator, devices, strategy, precision
            Passed to Lightning (GPU when present; ``strategy="ddp"`` for several GPUs).
        checkpoint_dir
            Keep the best checkpoint there.
        seed
            Seeds the split, the initial weights' updates and the noise.
        enable_progress_bar
            Lightning's progress bar.
        holdout
            Images only: boolean (H, W) mask of pixels never used for training or validation
            (e.g. a test region from :func:`~biodiffuse.data.spatial_split`). For images the
            validation split is a set of whole blocks (``1 - train_size`` of the image).
        **trainer_kwargs
            More :class:`lightning.pytorch.Trainer` arguments.
        """
        adata = self.adata
        if adata is None:
            raise RuntimeError("No AnnData attached; pass one to MCD(...) or MCD.load(..., adata=...).")
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size}.")
        a = self.init_args
        targets = a.get("target_channels")
        target_mask = torch.tensor(np.isin(self.registry["target_names"], targets)) if targets else None
        objective = MCDObjective(a["observed_fraction"], a["loss_on"], a["sigma_data"], target_mask)
        fit_kwargs = dict(
            lr=lr, weight_decay=weight_decay, batch_size=batch_size,
            accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
            early_stopping=early_stopping, checkpoint_dir=checkpoint_dir, enable_progress_bar=enable_progress_bar,
            seed=seed, trainer_kwargs=trainer_kwargs,
        )
        if self.registry["mode"] == "image":
            train_t, val_t, n_tiles = self._image_training_tensors(holdout, train_size, seed)
            max_epochs, patience, ema = self._schedule(max_epochs, early_stopping_patience, ema_decay, n_tiles, batch_size, steps=6000, epochs=(100, 3000), min_patience=20)
            return self._run_training(objective, train_t, val_t, max_epochs=max_epochs,
                                      early_stopping_patience=patience, ema_decay=ema, **fit_kwargs)
        if holdout is not None:
            raise ValueError("holdout applies to image models only.")
        rng = np.random.default_rng(seed)
        train_idx, val_idx = self._split(adata.n_obs, train_size, rng)
        self.train_indices, self.validation_indices = train_idx, val_idx

        targets = self._targets(adata, require_all=True)
        if self.registry["normalizer"] is None:
            self.registry["normalizer"] = ChannelNormalizer().fit(targets[train_idx]).to_dict()
        x = self._to_model_scale(targets)
        available = ~np.isnan(x)
        x = np.nan_to_num(x, nan=0.0).astype(np.float32)
        tensors: dict[str, np.ndarray] = {"x": x, "available": available}
        if self.gene_mode:
            logn, _ = self._raw_genes(adata)
            if self.registry["gene_mean"] is None:
                mu = logn[train_idx].mean(axis=0)
                sd = logn[train_idx].std(axis=0)
                self.registry["gene_mean"] = mu.astype(float).tolist()
                self.registry["gene_std"] = np.where(sd > 1e-6, sd, 1.0).astype(float).tolist()
                k = self.init_args.get("gene_pcs")
                if k is not None:
                    z = (logn[train_idx] - mu) / np.asarray(self.registry["gene_std"])
                    _, svals, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
                    if k > len(svals):
                        raise ValueError(f"gene_pcs={k} exceeds the {len(svals)} components the training cells allow.")
                    sd_pc = svals[:k] / math.sqrt(max(len(train_idx) - 1, 1))
                    comps = vt[:k].T / np.where(sd_pc > 1e-8, sd_pc, 1.0)
                    self.registry["gene_components"] = comps.astype(float).tolist()
            tensors["genes"] = self._gene_tensor(adata)

        def part(idx: np.ndarray) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in tensors.items()}

        max_epochs, patience, ema = self._schedule(max_epochs, early_stopping_patience, ema_decay, len(train_idx), batch_size, steps=6000, epochs=(100, 3000), min_patience=20)
        return self._run_training(
            objective, part(train_idx), part(val_idx) if len(val_idx) else None,
            max_epochs=max_epochs, early_stopping_patience=patience, ema_decay=ema, **fit_kwargs,
        )

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def posterior(
        self,
        adata: AnnData | None = None,
        observed: Sequence[str] | None = None,
        n_samples: int = 10,
        steps: int = 18,
        batch_size: int = 256,
        seed: int = 0,
        device: str = "auto",
        indices: Sequence[int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Posterior mean and variance of every target channel, batch by batch.

        Returns a dict of (cells x channels) arrays: ``mean`` / ``variance`` in the original
        scale, ``mean_normalized`` / ``variance_normalized`` in the normaliser's [0, 1] scale,
        and ``observed`` (the boolean mask of entries used as condition and clamped).
        See :meth:`impute` for the parameters.
        """
        self._require_trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("Pass adata (no object is attached to this model).")
        if self.registry["mode"] == "image":
            raise TypeError("Image models: use image_posterior(sdata, ...) or impute(sdata, ...).")
        self._validate_query(adata)
        if indices is not None:
            adata = adata[np.asarray(indices)]
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        names = self.registry["target_names"]
        values = self._targets(adata, require_all=False)
        if observed is not None:
            observed = list(map(str, observed))
            unknown = [o for o in observed if o not in names]
            if unknown:
                raise ValueError(f"observed names not among the model's channels: {unknown[:5]}.")
            keep = np.isin(names, observed)
            values = np.where(keep[None, :], values, np.nan)
        elif self.gene_mode:
            values = np.full_like(values, np.nan)
        elif self.init_args.get("target_channels"):
            values = np.where(np.isin(names, self.init_args["target_channels"])[None, :], np.nan, values)
        obs_mask = ~np.isnan(values)
        if obs_mask.any() and self.init_args["observed_fraction"] == 0:
            warnings.warn("This model was trained without channel masking; observed channels are clamped but not used as condition.")
        x = np.nan_to_num(self._to_model_scale(values), nan=0.0).astype(np.float32)
        genes = self._gene_tensor(adata) if self.gene_mode else None

        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        gen = torch.Generator(device=dev).manual_seed(seed)
        steps_n = int(steps)
        norm = ChannelNormalizer.from_dict(self.registry["normalizer"])
        n, c = x.shape
        out = {k: np.empty((n, c)) for k in ("mean", "variance", "mean_normalized", "variance_normalized")}
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            xb = torch.from_numpy(x[sl]).to(dev)
            mb = torch.from_numpy(obs_mask[sl]).to(dev)
            gb = torch.from_numpy(genes[sl]).to(dev) if genes is not None else None
            feats = net.net.encode_condition(build_condition(xb, mb, gb))
            feats = [f.repeat_interleave(n_samples, dim=0) for f in feats]
            latents = torch.randn((xb.shape[0] * n_samples, c, 1, 1), generator=gen, device=dev)
            s = heun_sampler(net, latents, feats, steps=steps_n).reshape(xb.shape[0], n_samples, c)
            s = torch.where(mb[:, None, :], xb[:, None, :], s)  # clamp observed channels
            z = ((s + 1.0) / 2.0).double().cpu().numpy()
            orig = norm.inverse_transform(z.reshape(-1, c)).reshape(z.shape)
            out["mean_normalized"][sl] = z.mean(axis=1)
            out["variance_normalized"][sl] = z.var(axis=1)
            out["mean"][sl] = orig.mean(axis=1)
            out["variance"][sl] = orig.var(axis=1)
        raw = np.where(obs_mask, values, 0.0)
        out["mean"] = np.where(obs_mask, raw, out["mean"])
        out["variance"] = np.where(obs_mask, 0.0, out["variance"])
        out["observed"] = obs_mask
        return out

    def impute(
        self,
        adata: AnnData | None = None,
        observed: Sequence[str] | None = None,
        n_samples: int = 10,
        steps: int = 18,
        batch_size: int = 256,
        seed: int = 0,
        key_added: str = "MCD_imputed",
        variance_key_added: str | None = "MCD_variance",
        overwrite: bool = False,
        device: str = "auto",
        missing: Sequence[str] | None = None,
        image_key: str | None = None,
    ) -> pd.DataFrame:
        """Impute the target channels of ``adata`` and write them into ``obsm``.

        For image models ``adata`` is a SpatialData: the imputed channels are written as new
        image elements at full resolution (``f"{image_key}_MCD_imputed"`` and
        ``f"{image_key}_MCD_variance"`` unless keys are given), and, when the image has a
        segmentation annotated by a table, per-cell means go to that table's
        ``obsm["MCD_imputed"]`` / ``obsm["MCD_variance"]``; the image element is returned.

        Parameters
        ----------
        adata
            Query object (defaults to the training object). Matched to the registry by
            name: genes for gene -> protein models; channels by ``var_names`` otherwise.
        observed
            Channel names to condition on (read from the query). Default: none for
            gene -> protein models; every present, non-NaN channel otherwise.
        n_samples
            Posterior draws per cell; their mean is the imputation, their variance the
            uncertainty.
        steps
            Heun sampler steps (``2 * steps - 1`` network evaluations per draw).
        batch_size
            Cells per batch (memory is flat in the number of cells).
        seed
            Same seed, same numbers (on the same device).
        key_added, variance_key_added
            ``obsm`` keys for the mean and variance DataFrames (columns = channel names,
            original scale). ``variance_key_added=None`` skips the variance.
        overwrite
            Replace existing ``obsm`` entries under these keys.
        device
            ``"auto"`` (GPU if present), ``"cpu"``, ``"cuda"``...
        missing
            Channel names to impute (the others present in the query are observed); an
            alternative to ``observed``. Channels absent from the query are always imputed.
        image_key
            Images only: the image element to impute (default: the registered one).

        Returns
        -------
        The imputed DataFrame (also in ``adata.obsm[key_added]``).
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("Pass adata (no object is attached to this model).")
        if self.registry["mode"] == "image":
            if not img.is_spatialdata(adata):
                raise TypeError("This MCD model was trained on images; pass a SpatialData.")
            return self._impute_image(
                adata, image_key, observed, missing, n_samples, steps, batch_size, seed,
                None if key_added == "MCD_imputed" else key_added, variance_key_added, overwrite, device,
            )
        if missing is not None:
            if observed is not None:
                raise ValueError("Pass observed or missing, not both.")
            unknown = [m for m in missing if m not in self.registry["target_names"]]
            if unknown:
                raise ValueError(f"missing names not among the model's channels: {unknown[:5]}.")
            observed = [n for n in self.registry["target_names"] if n not in set(missing)]
        for key in (key_added, variance_key_added):
            if key is not None and key in adata.obsm and not overwrite:
                raise KeyError(f"adata.obsm[{key!r}] exists; pass overwrite=True or another key_added.")
        post = self.posterior(adata, observed, n_samples, steps, batch_size, seed, device)
        cols = pd.Index(self.registry["target_names"])
        mean = pd.DataFrame(post["mean"], index=adata.obs_names, columns=cols)
        adata.obsm[key_added] = mean
        if variance_key_added is not None:
            adata.obsm[variance_key_added] = pd.DataFrame(post["variance"], index=adata.obs_names, columns=cols)
        return mean
