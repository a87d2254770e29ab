"""SpaDiT: predict unmeasured spatial genes with a diffusion transformer.

Method (SpaDiT paper, with the protocol of stDiff; see ``docs/spadit.md`` for the choices):

* **Data.** Counts are library-size normalised and log1p-transformed, then z-scored per gene.
  The library size of a cell is estimated from its *observed* genes only
  (``sum_obs counts / sum_obs share``, ``share`` = each gene's mean fraction of the library
  on the training cells), so held-out genes never enter a cell's normalisation.
  With a reference (scRNA-seq), the spatial panel's genes are the *known* genes and every
  other reference gene (or ``target_genes``) is a *target*; the model learns known -> target
  on reference cells, whose full profiles it sees. Known genes of spatial cells are z-scored
  with the spatial data's own statistics (a per-dataset alignment of the shared genes);
  targets are returned in the reference's log-normalised scale.
  Without a reference (within-panel), the genes of the training cells are channels with
  random Bern(p) gene masks (as MCD), so any subset can be predicted from the rest.
* **Condition.** The known genes times their mask and the mask (the paper's ``Phi``), and
  :class:`~biodiffuse.nn.ReferenceAttention` over a bank of reference cells (the paper's
  ``psi``: a learned, masked soft nearest-neighbour transfer; a training cell never sees
  itself in the bank).
* **Network.** :class:`~biodiffuse.nn.GeneDiT` (adaLN-zero transformer over gene groups).
* **Objective / sampler.** The shared EDM loss on the masked genes, Heun sampling with the
  observed genes clamped; several draws give a mean and a variance.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from ..data import check_adata, check_values, get_matrix, read_setup_record, write_setup_record
from ..data.alignment import percentiles, quantile_map
from ..diffusion import EDMLoss, EDMPrecond, heun_sampler, random_channel_mask
from ..nn import GeneDiT, ReferenceAttention
from .base import BaseModel, resolve_device

__all__ = ["SpaDiT", "SpaDiTObjective", "SpaDiTNetwork"]

logger = logging.getLogger("biodiffuse")

# setup_anndata(adata, reference=...) keeps the reference here, keyed by the spatial object,
# so that SpaDiT(adata) finds it without storing an AnnData inside adata.uns.
_REFERENCES: dict[int, tuple[weakref.ref, AnnData]] = {}


def _remember_reference(adata: AnnData, reference: AnnData) -> None:
    key = id(adata)
    _REFERENCES[key] = (weakref.ref(adata), reference)
    weakref.finalize(adata, _REFERENCES.pop, key, None)


def _recall_reference(adata: AnnData) -> AnnData | None:
    entry = _REFERENCES.get(id(adata))
    if entry is None or entry[0]() is not adata:
        return None
    return entry[1]


def _counts_by_name(adata: AnnData, layer: str | None, genes: Sequence[str], what: str) -> np.ndarray:
    """(cells x genes) float64 counts, NaN for genes absent from ``adata``."""
    mat = get_matrix(adata, layer)
    check_values(mat, f"{what} counts" + (f" (layer {layer!r})" if layer else " (X)"), nonnegative=True)
    pos = pd.Index(map(str, adata.var_names)).get_indexer(list(genes))
    out = np.full((adata.n_obs, len(genes)), np.nan)
    if (pos >= 0).any():
        sub = mat[:, pos[pos >= 0]]
        out[:, pos >= 0] = sub.toarray() if sparse.issparse(sub) else np.asarray(sub, dtype=np.float64)
    return out


class SpaDiTNetwork(torch.nn.Module):
    """The reference attention and the DiT, called as an EDM raw network.

    The output is the DiT's plus a learned mixture of the reference heads, so that at the
    start of training the denoiser at high noise already returns the reference estimate
    (a soft nearest-neighbour transfer) and the DiT learns the correction.
    """

    def __init__(self, bank: torch.Tensor, ref_heads: int, **dit_kwargs: Any) -> None:
        super().__init__()
        self.reference = ReferenceAttention(bank, heads=ref_heads)
        self.dit = GeneDiT(bank.shape[1], cond_features=2 + ref_heads, **dit_kwargs)
        self.head_mix = torch.nn.Parameter(torch.zeros(ref_heads))

    def condition(self, x: torch.Tensor, mask: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``[x * m, m, psi_1 .. psi_H]`` per gene, shape (B, 2 + H, G); reads only observed entries."""
        m = mask.to(x.dtype)
        xm = torch.where(mask, x, torch.zeros_like(x))
        psi = self.reference(xm, m, exclude)
        return torch.cat([xm[:, None], m[:, None], psi], dim=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        prior = (cond[:, 2:] * torch.softmax(self.head_mix, dim=0)[None, :, None].to(cond.dtype)).sum(dim=1)
        return self.dit(x, c_noise, cond) + prior.to(x.dtype)


class SpaDiTObjective:
    """EDM loss on the masked genes. Batches hold ``x`` (B, G) in model scale, ``available``
    (B, G), ``bank_index`` (B,) and, in reference mode, the fixed ``known`` mask is used."""

    def __init__(self, known: torch.Tensor | None, observed_fraction: float, sigma_data: float, P_mean: float = 0.0, P_std: float = 1.5) -> None:
        self.known = known
        self.observed_fraction = observed_fraction
        self.loss = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, denoiser: EDMPrecond, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        x, avail = batch["x"], batch["available"]
        b, g = x.shape
        mask = random_channel_mask(b, g, self.observed_fraction, available=avail, generator=generator)
        if self.known is not None:
            mask &= self.known.to(x.device)[None, :]
        cond = denoiser.net.condition(x, mask, batch["bank_index"])
        return self.loss(denoiser, x, cond, loss_mask=avail & ~mask, generator=generator)


class SpaDiT(BaseModel):
    """Diffusion transformer that predicts unmeasured spatial genes.

    Parameters
    ----------
    adata
        Spatial object registered with :meth:`setup_anndata` (raw counts).
    reference
        scRNA-seq reference (raw counts); default: the one given to :meth:`setup_anndata`.
        None there too: within-panel mode (train on ``adata``'s cells, any subset of its genes
        predicted from the rest).
    target_genes
        Reference mode: the genes to learn to predict (default: every reference gene absent
        from ``adata``). Within-panel mode: ignored (all genes are channels).
    observed_fraction
        Bern(p) probability that a known gene is shown to the model in training. Default 1.0
        with a reference (the panel is always observed) and 0.8 within-panel.
    bank_size
        Reference cells in the attention bank (random subset of the training cells).
    genes_per_token
        Genes per DiT token; default ``max(4, ceil(n_genes / 64))``, so that a 1,000-gene
        model has about 64 tokens (attention cost grows with the square of the tokens).
    dim, depth, heads, dropout
        The DiT.
    ref_heads
        Heads of the reference attention.
    alignment
        Reference mode: how the spatial object's known genes are put on the reference's
        scale. ``"quantile"`` (default): per gene, each value goes to the reference value of
        the same quantile (101 percentiles of each data set, mid-rank for ties), then the
        reference's z-score; ``"zscore"``: each data set z-scored with its own mean and
        standard deviation. On osmFISH vs Smart-seq (5-fold over genes), quantile matching
        raised a plain kNN transfer's mean PCC from 0.105 to 0.152 and SpaDiT's on one fold
        from 0.119 to 0.141 (``docs/benchmarks.md``).
    sigma_data
        EDM's data standard deviation (the data are z-scored).
    sigma_max, P_mean, P_std
        Highest noise level of the sampler and the lognormal training noise levels. EDM's
        image defaults (80; -1.2, 1.2) almost never train the denoiser at the level where
        sampling starts (``P(sigma > 10) < 1e-4``); for z-scored genes we start at 10 and
        train with ``ln sigma ~ N(0, 1.5^2)`` (6% of draws above 10), so the first step, whose
        output is the conditional mean, is a level the network has learned.
    seed
        Seeds the initial weights and the bank.

    Examples
    --------
    >>> bd.models.SpaDiT.setup_anndata(adata_sp, reference=adata_sc)
    >>> model = bd.models.SpaDiT(adata_sp)
    >>> model.train()
    >>> model.predict(genes=["Gad1", "Slc17a7"])  # obsm["SpaDiT_predicted"], obsm["SpaDiT_variance"]
    """

    _model_name = "SpaDiT"
    reference: AnnData | None = None

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        reference: AnnData | None = None,
        layer: str | None = None,
        reference_layer: str | None = None,
    ) -> None:
        """Register a spatial object (and its scRNA-seq reference); writes only
        ``adata.uns["biodiffuse"]["SpaDiT"]``.

        Parameters
        ----------
        adata
            Spatial cells / spots x genes, raw counts.
        reference
            scRNA-seq cells x genes, raw counts; shared genes are found by name. None:
            within-panel mode.
        layer, reference_layer
            Layers holding the counts (None: ``X``).
        """
        check_adata(adata)
        get_matrix(adata, layer)
        check_values(get_matrix(adata, layer), "spatial counts", nonnegative=True)
        if reference is not None:
            check_adata(reference, "reference")
            check_values(get_matrix(reference, reference_layer), "reference counts", nonnegative=True)
            shared = set(map(str, adata.var_names)) & set(map(str, reference.var_names))
            if len(shared) < 2:
                raise ValueError(f"adata and reference share {len(shared)} gene name(s); at least 2 are needed.")
            _remember_reference(adata, reference)
        write_setup_record(adata, cls._model_name, {"layer": layer, "reference_layer": reference_layer, "has_reference": reference is not None})

    def __init__(
        self,
        adata: AnnData,
        reference: AnnData | None = None,
        target_genes: Sequence[str] | None = None,
        observed_fraction: float | None = None,
        bank_size: int = 2048,
        genes_per_token: int | None = None,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        ref_heads: int = 4,
        dropout: float = 0.0,
        alignment: str = "quantile",
        sigma_data: float = 1.0,
        sigma_max: float = 10.0,
        P_mean: float = 0.0,
        P_std: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_adata(adata)
        setup = read_setup_record(adata, self._model_name)
        if setup is None:
            self.setup_anndata(adata, reference=reference)
            setup = read_setup_record(adata, self._model_name)
        if reference is None and setup.get("has_reference"):
            reference = _recall_reference(adata)
            if reference is None:
                raise ValueError("adata was set up with a reference that is no longer available; pass reference=.")
        sp_genes = list(map(str, adata.var_names))
        if reference is not None:
            check_adata(reference, "reference")
            ref_genes = list(map(str, reference.var_names))
            sp_set = set(sp_genes)
            known = [g for g in ref_genes if g in sp_set]
            if target_genes is None:
                targets = [g for g in ref_genes if g not in sp_set]
            else:
                targets = list(map(str, target_genes))
                bad = [g for g in targets if g not in set(ref_genes)]
                if bad:
                    raise ValueError(f"target_genes not in the reference: {bad[:5]}.")
                leak = [g for g in targets if g in sp_set]
                if leak:
                    raise ValueError(f"target_genes are measured in adata (they would be known genes): {leak[:5]}.")
            if not targets:
                raise ValueError("No target genes: every reference gene is in the spatial panel.")
            if len(known) < 2:
                raise ValueError(f"Only {len(known)} known gene(s) shared with the reference.")
            genes = known + targets
        else:
            known, targets, genes = sp_genes, [], sp_genes
        if observed_fraction is None:
            observed_fraction = 1.0 if reference is not None else 0.8
        if alignment not in ("quantile", "zscore"):
            raise ValueError(f"alignment must be 'quantile' or 'zscore', got {alignment!r}.")
        if not 0.0 < observed_fraction <= 1.0:
            raise ValueError(f"observed_fraction must lie in (0, 1], got {observed_fraction}.")
        self.adata = adata
        self.reference = reference
        self.init_args = dict(
            observed_fraction=float(observed_fraction), bank_size=int(bank_size), genes_per_token=int(genes_per_token or max(4, math.ceil(len(genes) / 64))),
            dim=int(dim), depth=int(depth), heads=int(heads), ref_heads=int(ref_heads), dropout=float(dropout),
            alignment=alignment, sigma_data=float(sigma_data), sigma_max=float(sigma_max), P_mean=float(P_mean), P_std=float(P_std),
            seed=int(seed),
        )
        self.registry = dict(
            setup=setup, mode="reference" if reference is not None else "panel",
            genes=genes, known_genes=known, target_genes=targets,
            share=None, ref_mean=None, ref_std=None, query_mean=None, query_std=None, quantiles=None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._build_network(bank=torch.zeros(2, len(genes)))

    # --- network -----------------------------------------------------------------------------
    def _build_network(self, bank: torch.Tensor | None = None) -> EDMPrecond:
        a = self.init_args
        if bank is None:  # loading: the real bank comes with the state dict
            bank = torch.zeros(min(a["bank_size"], self.registry.get("bank_rows", 2)), len(self.registry["genes"]))
        net = SpaDiTNetwork(bank, a["ref_heads"], genes_per_token=a["genes_per_token"], dim=a["dim"], depth=a["depth"], heads=a["heads"], dropout=a["dropout"])
        return EDMPrecond(net, sigma_data=a["sigma_data"])

    # --- normalisation ------------------------------------------------------------------------
    def _log_norm(self, counts: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """log1p(counts / library * 1e4), the library estimated from observed genes only."""
        share = np.asarray(self.registry["share"])
        obs_counts = np.where(observed, counts, 0.0).sum(axis=1)
        obs_share = (observed * share[None, :]).sum(axis=1)
        lib = np.where(obs_share > 0, obs_counts / np.maximum(obs_share, 1e-12), 1.0)
        lib = np.where(lib > 0, lib, 1.0)
        return np.log1p(np.where(observed, counts, 0.0) / lib[:, None] * 1e4)

    def _fit_normalisation(self, ref_counts: np.ndarray, library_genes: np.ndarray) -> None:
        lib = ref_counts[:, library_genes].sum(axis=1, keepdims=True)
        frac = np.where(lib > 0, ref_counts / np.maximum(lib, 1e-12), 0.0)
        share = np.where(library_genes, frac.mean(axis=0), 0.0)
        share = share / max(share[library_genes].sum(), 1e-12)
        self.registry["share"] = share.tolist()
        logn = self._log_norm(ref_counts, np.ones_like(ref_counts, dtype=bool))
        mu, sd = logn.mean(axis=0), logn.std(axis=0)
        self.registry["ref_mean"] = mu.tolist()
        self.registry["ref_std"] = np.where(sd > 1e-6, sd, 1.0).tolist()

    def _query_scale(self, adata: AnnData, hide: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-scale values (0 where unobserved) and the observed mask of a spatial object;
        ``hide`` (G,) genes are treated as unmeasured, in the library size too."""
        counts = _counts_by_name(adata, self.registry["setup"].get("layer"), self.registry["genes"], "spatial")
        observed = ~np.isnan(counts) & ~hide[None, :]
        counts = np.nan_to_num(counts)
        logn = self._log_norm(counts, observed)
        z = (logn - np.asarray(self.registry["query_mean"])) / np.asarray(self.registry["query_std"])
        q = self.registry.get("quantiles")
        if q is not None:  # known genes: spatial quantile -> reference value of that quantile -> z
            cols = np.asarray(q["columns"])
            aligned = quantile_map(logn[:, cols], np.asarray(q["query"]), np.asarray(q["reference"]))
            z[:, cols] = (aligned - np.asarray(self.registry["ref_mean"])[cols]) / np.asarray(self.registry["ref_std"])[cols]
        return np.where(observed, z, 0.0).astype(np.float32), observed

    # --- training -----------------------------------------------------------------------------
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
        **trainer_kwargs: Any,
    ) -> pd.DataFrame:
        """Train on the reference cells (or, within-panel, on ``adata``'s cells).

        Parameters
        ----------
        max_epochs
            Default: about 4,000 optimiser steps, between 50 and 2,000 epochs.
        batch_size
            Cells per batch.
        lr, weight_decay
            AdamW settings.
        train_size
            Fraction of training cells; the rest is the validation split (early stopping).
        early_stopping, early_stopping_patience, ema_decay
            As :meth:`biodiffuse.models.MCD.train`.
        accelerator, devices, strategy, precision
            Passed to Lightning (GPU when present).
        checkpoint_dir
            Keep the best checkpoint there.
        seed
            Seeds the split, the bank and the training noise.
        enable_progress_bar
            Lightning's progress bar.
        **trainer_kwargs
            More :class:`lightning.pytorch.Trainer` arguments.
        """
        reg, a = self.registry, self.init_args
        genes = reg["genes"]
        if reg["mode"] == "reference":
            cells = _counts_by_name(self.reference, reg["setup"].get("reference_layer"), genes, "reference")
            library_genes = np.isin(genes, reg["known_genes"])
        else:
            cells = _counts_by_name(self.adata, reg["setup"].get("layer"), genes, "spatial")
            library_genes = np.ones(len(genes), dtype=bool)
        rng = np.random.default_rng(seed)
        train_idx, val_idx = self._split(len(cells), train_size, rng)
        first_fit = reg["share"] is None
        if first_fit:
            self._fit_normalisation(cells[train_idx], library_genes)
        cells_logn = self._log_norm(cells, np.ones_like(cells, dtype=bool))
        if first_fit and reg["mode"] == "reference":
            sp = _counts_by_name(self.adata, reg["setup"].get("layer"), genes, "spatial")
            logn = self._log_norm(np.nan_to_num(sp), ~np.isnan(sp))
            mu, sd = np.asarray(reg["ref_mean"]).copy(), np.asarray(reg["ref_std"]).copy()
            kn = library_genes
            mu[kn], sdk = logn[:, kn].mean(axis=0), logn[:, kn].std(axis=0)
            sd[kn] = np.where(sdk > 1e-6, sdk, 1.0)
            reg["query_mean"], reg["query_std"] = mu.tolist(), sd.tolist()
            if a.get("alignment", "zscore") == "quantile":
                cols = np.flatnonzero(kn)
                reg["quantiles"] = {
                    "columns": cols.tolist(),
                    "query": percentiles(logn[:, cols]).tolist(),
                    "reference": percentiles(cells_logn[train_idx][:, cols]).tolist(),
                }
        elif first_fit:
            reg["query_mean"], reg["query_std"] = reg["ref_mean"], reg["ref_std"]
        x = (cells_logn - np.asarray(reg["ref_mean"])) / np.asarray(reg["ref_std"])
        x = x.astype(np.float32)
        # the attention bank: a random subset of the training cells; each knows its bank row
        bank_rows = rng.choice(train_idx, size=min(a["bank_size"], len(train_idx)), replace=False)
        bank_index = np.full(len(cells), -1, dtype=np.int64)
        bank_index[bank_rows] = np.arange(len(bank_rows))
        reg["bank_rows"] = int(len(bank_rows))
        ref_att = self.network.net.reference
        if ref_att.bank.shape[0] != len(bank_rows) or not self.is_trained:
            bank = torch.from_numpy(x[bank_rows])
            ref_att.register_buffer("bank", bank.contiguous())
            ref_att.register_buffer("bank_sq", (bank**2).T.contiguous())
        tensors = {"x": x, "available": np.ones_like(x, dtype=bool), "bank_index": bank_index}

        def part(idx: np.ndarray) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in tensors.items()}

        known = torch.from_numpy(library_genes) if reg["mode"] == "reference" else None
        objective = SpaDiTObjective(known, a["observed_fraction"], a["sigma_data"], a["P_mean"], a["P_std"])
        max_epochs, patience, ema_decay = self._schedule(
            max_epochs, early_stopping_patience, ema_decay, len(train_idx), batch_size, steps=4000, epochs=(50, 2000), min_patience=10
        )
        return self._run_training(
            objective, part(train_idx), part(val_idx) if len(val_idx) else None,
            lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
            early_stopping=early_stopping, early_stopping_patience=patience, ema_decay=ema_decay,
            accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
            checkpoint_dir=checkpoint_dir, enable_progress_bar=enable_progress_bar, seed=seed,
            trainer_kwargs=trainer_kwargs,
        )

    # --- inference ----------------------------------------------------------------------------
    def _validate_query(self, adata: AnnData) -> None:
        check_adata(adata, "query")
        present = set(map(str, adata.var_names)) & set(self.registry["genes"])
        if not present:
            raise ValueError("The query shares no gene with the model.")

    @torch.no_grad()
    def posterior(
        self,
        genes: Sequence[str] | None = None,
        adata: AnnData | None = None,
        n_samples: int = 10,
        steps: int = 8,
        batch_size: int = 256,
        seed: int = 0,
        device: str = "auto",
    ) -> dict[str, Any]:
        """Mean and variance of ``genes`` for every cell of ``adata`` (log-normalised scale).

        Returns a dict with ``genes`` (list), ``mean`` and ``variance`` (cells x genes arrays).
        See :meth:`predict` for the parameters.
        """
        self._require_trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("Pass adata (no object is attached to this model).")
        self._validate_query(adata)
        reg = self.registry
        all_genes = reg["genes"]
        if genes is None:
            genes = reg["target_genes"] or [g for g in all_genes if g not in set(map(str, adata.var_names))]
        genes = list(map(str, genes))
        if not genes:
            raise ValueError("No genes to predict: pass genes=.")
        unknown = [g for g in genes if g not in set(all_genes)]
        if unknown:
            raise ValueError(f"genes not known to the model: {unknown[:5]}.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        hide = np.isin(all_genes, genes)
        x, observed = self._query_scale(adata, hide)
        if reg["mode"] == "reference" and not observed[:, np.isin(all_genes, reg["known_genes"])].any():
            raise ValueError("The query measures none of the model's known genes.")
        x = np.where(observed, x, 0.0).astype(np.float32)
        cols = np.flatnonzero(hide)
        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        gen = torch.Generator(device=dev).manual_seed(seed)
        mu = np.asarray(reg["ref_mean"])[cols]
        sd = np.asarray(reg["ref_std"])[cols]
        n, g = x.shape
        mean = np.empty((n, len(cols)))
        var = np.empty((n, len(cols)))
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            xb = torch.from_numpy(x[sl]).to(dev)
            mb = torch.from_numpy(observed[sl]).to(dev)
            cond = net.net.condition(xb, mb).repeat_interleave(n_samples, dim=0)
            latents = torch.randn((xb.shape[0] * n_samples, g), generator=gen, device=dev)
            s = heun_sampler(net, latents, cond, steps=int(steps), sigma_max=self.init_args.get("sigma_max", 80.0)).reshape(xb.shape[0], n_samples, g)
            vals = s[:, :, cols].double().cpu().numpy() * sd + mu
            vals = np.clip(vals, 0.0, None)  # log1p values are non-negative
            mean[sl] = vals.mean(axis=1)
            var[sl] = vals.var(axis=1)
        self.network.cpu()
        return {"genes": [all_genes[i] for i in cols], "mean": mean, "variance": var}

    def predict(
        self,
        genes: Sequence[str] | None = None,
        adata: AnnData | None = None,
        n_samples: int = 10,
        steps: int = 8,
        batch_size: int = 256,
        seed: int = 0,
        key_added: str = "SpaDiT_predicted",
        variance_key_added: str | None = "SpaDiT_variance",
        overwrite: bool = False,
        device: str = "auto",
    ) -> pd.DataFrame:
        """Predict ``genes`` for the cells of ``adata`` and write them into ``obsm``.

        Parameters
        ----------
        genes
            Genes to predict (default: the model's target genes, or, within-panel, the
            model's genes absent from ``adata``). A requested gene that ``adata`` measures is
            hidden from the model and predicted from the others.
        adata
            Spatial object (default: the one the model was set up with), matched by gene name.
        n_samples
            Draws per cell; their mean is the prediction, their variance the uncertainty.
        steps
            Heun sampler steps (``2 * steps - 1`` network evaluations per draw).
            ``steps=1`` returns the denoiser's output at the highest noise level, i.e. the
            model's estimate of the conditional mean: the better point prediction when the
            signal is weak (a mean of a few draws adds their spread to the error); the
            spatial benchmark averages several one-step outputs (``steps=1``).
        batch_size
            Cells per batch (memory is flat in the number of cells).
        seed
            Same seed, same numbers (on the same device).
        key_added, variance_key_added
            ``obsm`` keys (DataFrames, columns = genes) in the log1p(counts / library x 1e4)
            scale of the reference (library over the known genes).
        overwrite
            Replace existing entries under these keys.
        device
            ``"auto"`` (GPU if present) or a torch device.

        Returns
        -------
        The predicted DataFrame (also in ``adata.obsm[key_added]``).
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("Pass adata (no object is attached to this model).")
        for key in (key_added, variance_key_added):
            if key is not None and key in adata.obsm and not overwrite:
                raise KeyError(f"adata.obsm[{key!r}] exists; pass overwrite=True or another key_added.")
        post = self.posterior(genes, adata, n_samples, steps, batch_size, seed, device)
        cols = pd.Index(post["genes"])
        mean = pd.DataFrame(post["mean"], index=adata.obs_names, columns=cols)
        adata.obsm[key_added] = mean
        if variance_key_added is not None:
            adata.obsm[variance_key_added] = pd.DataFrame(post["variance"], index=adata.obs_names, columns=cols)
        return mean
