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
* **Condition, network, objective** (:mod:`biodiffuse.module.spadit`): the known genes
  times their mask and the mask (the paper's ``Phi``) and
  :class:`~biodiffuse.nn.ReferenceAttention` over a bank of reference cells (the paper's
  ``psi``: a learned, masked soft nearest-neighbour transfer; a training cell never sees
  itself in the bank); :class:`~biodiffuse.nn.GeneDiT` (adaLN-zero transformer over gene
  groups); the shared EDM loss on the genes not shown.
* **Sampler.** :func:`biodiffuse.diffusion.sample_rows` with the EDM ODE sampler on the
  model's schedule (Heun from ``sigma_max`` by default; :meth:`~SpaDiT.set_sampler`) and one
  random stream per cell (``obs_name``); several draws give a mean and a variance.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..data import check_adata, write_setup_record
from ..data.alignment import percentiles, quantile_map
from ..data.fields import MatrixField
from ..diffusion import Moments, row_seeds, sample_rows
from ..module.spadit import SpaDiTDenoiser, SpaDiTObjective, build_network, make_prepare
from ._edm_sampling import EDMSamplerMixin, checked_sampler
from .base import BaseModel

__all__ = ["SpaDiT"]

logger = logging.getLogger("biodiffuse")


def _counts_field(layer: str | None) -> MatrixField:
    return MatrixField(layer, nonnegative=True)


def _named(err: Exception, what: str) -> Exception:
    """The same error with ``what`` (e.g. ``"reference"``) in front of its message."""
    msg = err.args[0] if err.args else str(err)
    return type(err)(f"{what}: {msg}")


def _read_counts(obj: AnnData, layer: str | None, genes: Sequence[str], what: str, *, rows: Any = None, missing: str = "error") -> np.ndarray:
    """(rows x genes) float64 counts read by name (NaN for absent genes with ``missing="nan"``);
    NaN / inf / negative counts raise naming ``what`` and the key."""
    try:
        return _counts_field(layer).read(obj, list(genes), rows=rows, missing=missing, dtype=np.float64)
    except (ValueError, KeyError) as err:
        raise _named(err, what) from err


class SpaDiT(EDMSamplerMixin, BaseModel):
    """Diffusion transformer that predicts unmeasured spatial genes.

    Parameters
    ----------
    adata
        Spatial object registered with :meth:`setup_anndata` (raw counts).
    reference
        The scRNA-seq reference (raw counts) given to :meth:`setup_anndata` (its gene names
        must be the recorded ones); required when ``adata`` was set up with one, refused
        otherwise. It is the data :meth:`train` learns from; kept as the attribute
        ``reference`` (not saved: a loaded model trains again after
        ``SpaDiT.load(path, adata, reference=adata_sc)`` or ``model.reference = adata_sc``).
        Without a reference (within-panel mode) the model trains on ``adata``'s cells and
        predicts any subset of its genes from the rest.
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
        The DiT. The defaults (64, 2) are the size every SpaDiT benchmark ran; a 4x larger DiT
        (128, 4) did not predict better on the osmFISH fold it was tried on and trained 3.3x
        slower on CPU (``docs/benchmarks.md``).
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
    solver, sigma_min, rho
        The rest of the sampler (:func:`~biodiffuse.diffusion.edm_sampler`): ODE solver
        (``"heun"``, ``2 * steps - 1`` evaluations per draw, or ``"euler"``, ``steps``) and the
        Karras schedule's lowest level and curvature; :meth:`set_sampler` changes them. The
        defaults are EDM's, the sampler every SpaDiT benchmark ran.
    recentre
        Whether :meth:`predict` / :meth:`posterior` recentre multi-step draws on the mean of
        their one-step draws by default (:attr:`recentres`; each call's ``recentre`` overrides
        it). On osmFISH it lowered the CRPS and the energy score on every gene fold and raised
        the draws' r_p (0.125 -> 0.147), with 90 % coverage 0.74 -> 0.69 (``docs/benchmarks.md``,
        session 16).
    seed
        Seeds the initial weights.

    Notes
    -----
    **Training** (:meth:`~biodiffuse.models.BaseModel.train`) runs on the reference cells
    (within-panel: on ``adata``'s cells). Defaults: ``batch_size=256``, AdamW with
    ``lr=1e-3``, ``weight_decay=1e-4``; ``train_size=0.9`` (the rest is the validation split
    for early stopping); ``max_epochs`` about 1,200 optimiser steps (the osmFISH benchmark's
    budget), between 20 and 2,000 epochs; patience a tenth of the epochs, at least 10;
    ``ema_decay="auto"``. The first
    call fits the normalisation (gene shares, z-scores) on the training rows and, in
    reference mode, the quantile alignment of ``adata``'s known genes; later calls reuse
    them. ``seed`` also draws the attention bank (a random subset of ``bank_size`` training
    cells, kept with the weights).

    Examples
    --------
    >>> bd.models.SpaDiT.setup_anndata(adata_sp, reference=adata_sc)
    >>> model = bd.models.SpaDiT(adata_sp, reference=adata_sc)
    >>> model.train()
    >>> model.predict(genes=["Gad1", "Slc17a7"])  # obsm["SpaDiT_predicted"], obsm["SpaDiT_variance"]
    """

    _model_name = "SpaDiT"
    _can_recentre = True
    _train_defaults = dict(
        batch_size=256, lr=1e-3, weight_decay=1e-4, train_size=0.9, max_epochs=None, steps=1200,
        epochs=(20, 2000), early_stopping_patience=None, min_patience=10, ema_decay="auto", lr_warmup_steps=0,
    )
    _default_batch_size = 256
    network: SpaDiTDenoiser
    #: The scRNA-seq reference :meth:`train` learns from (reference mode); not saved.
    reference: AnnData | None = None

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        reference: AnnData | None = None,
        layer: str | None = None,
        reference_layer: str | None = None,
    ) -> None:
        """Register a spatial object (and its scRNA-seq reference); writes only
        ``adata.uns["biodiffuse"]["SpaDiT"]`` (the layers and the reference's gene names).

        Parameters
        ----------
        adata
            Spatial cells / spots x genes, raw counts.
        reference
            scRNA-seq cells x genes, raw counts; shared genes are found by name. Not stored:
            pass it again to :class:`SpaDiT`. None: within-panel mode.
        layer, reference_layer
            Layers holding the counts (None: ``X``).

        Raises
        ------
        ValueError
            On duplicated gene names, NaN / inf / negative counts, an empty object, or fewer
            than 2 gene names shared with the reference; ``adata`` is left unchanged.

        Examples
        --------
        >>> sp, sc = bd.datasets.osmfish_allen_visp()
        >>> panel = sp[:, ~sp.var_names.isin(["Gad2", "Vip"])].copy()
        >>> bd.models.SpaDiT.setup_anndata(panel, reference=sc)     # known genes: the shared names
        >>> bd.models.SpaDiT.setup_anndata(sp)                      # within-panel mode
        """
        check_adata(adata)
        try:
            sp_names = _counts_field(layer).register(adata)["names"]
        except (ValueError, KeyError) as err:
            raise _named(err, "adata") from err
        record: dict[str, Any] = {"layer": layer, "reference_layer": reference_layer, "has_reference": reference is not None}
        if reference is not None:
            check_adata(reference, "reference")
            try:
                ref_names = _counts_field(reference_layer).register(reference)["names"]
            except (ValueError, KeyError) as err:
                raise _named(err, "reference") from err
            shared = set(sp_names) & set(ref_names)
            if len(shared) < 2:
                raise ValueError(
                    f"adata.var_names and reference.var_names share {len(shared)} gene name(s); at least 2 are "
                    f"needed (adata has e.g. {sp_names[:5]}, reference e.g. {ref_names[:5]})."
                )
            record["reference_genes"] = list(ref_names)
        write_setup_record(adata, cls._model_name, record)

    def __init__(
        self,
        adata: AnnData,
        *,
        reference: AnnData | None = None,
        target_genes: Sequence[str] | None = None,
        observed_fraction: float | None = None,
        bank_size: int = 2048,
        genes_per_token: int | None = None,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        ref_heads: int = 4,
        dropout: float = 0.0,
        alignment: str = "quantile",
        sigma_data: float = 1.0,
        sigma_max: float = 10.0,
        P_mean: float = 0.0,
        P_std: float = 1.5,
        solver: str = "heun",
        sigma_min: float = 0.002,
        rho: float = 7.0,
        recentre: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sampler = checked_sampler(solver=solver, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)
        check_adata(adata)
        setup = self._setup_record(adata)
        if setup.get("has_reference"):
            if reference is None:
                raise ValueError(
                    "adata was set up with a reference (SpaDiT.setup_anndata(adata, reference=...)); pass the same "
                    "one: SpaDiT(adata, reference=adata_sc)."
                )
            self._check_reference_names(reference, setup)
        elif reference is not None:
            raise ValueError(
                "adata was set up without a reference; call SpaDiT.setup_anndata(adata, reference=reference) first."
            )
        sp_genes = list(map(str, adata.var_names))
        if reference is not None:
            ref_genes = list(map(str, reference.var_names))
            sp_set, ref_set = set(sp_genes), set(ref_genes)
            known = [g for g in ref_genes if g in sp_set]
            if target_genes is None:
                targets = [g for g in ref_genes if g not in sp_set]
            else:
                targets = list(map(str, target_genes))
                bad = [g for g in targets if g not in ref_set]
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
            alignment=alignment, sigma_data=float(sigma_data), P_mean=float(P_mean), P_std=float(P_std),
            seed=int(seed), **sampler, recentre=self._recentre_setting(recentre, True),
        )
        self.registry = dict(
            setup={k: v for k, v in setup.items() if k != "reference_genes"}, mode="reference" if reference is not None else "panel",
            genes=genes, known_genes=known, target_genes=targets,
            share=None, ref_mean=None, ref_std=None, query_mean=None, query_std=None, quantiles=None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._build_network(bank_rows=2)

    # --- network -----------------------------------------------------------------------------
    def _build_network(self, bank_rows: int | None = None) -> SpaDiTDenoiser:
        a = self.init_args
        if bank_rows is None:  # loading: the real bank comes with the state dict
            bank_rows = min(a["bank_size"], self.registry.get("bank_rows", 2))
        return build_network(
            len(self.registry["genes"]), bank_rows=bank_rows, ref_heads=a["ref_heads"], genes_per_token=a["genes_per_token"],
            dim=a["dim"], depth=a["depth"], heads=a["heads"], dropout=a["dropout"], sigma_data=a["sigma_data"],
        )

    # --- the reference -----------------------------------------------------------------------
    @staticmethod
    def _check_reference_names(reference: AnnData, setup: dict[str, Any]) -> None:
        check_adata(reference, "reference")
        recorded = setup.get("reference_genes")
        if recorded is None:
            return
        names = list(map(str, reference.var_names))
        if names != [str(g) for g in recorded]:
            raise ValueError(
                f"reference.var_names ({len(names)} genes, e.g. {names[:3]}) differ from those recorded by "
                f"SpaDiT.setup_anndata ({len(recorded)} genes, e.g. {[str(g) for g in recorded[:3]]}); pass the "
                "reference that adata was set up with, or set up again with this one."
            )

    def _check_reference(self, reference: AnnData) -> None:
        """A reference for a model whose genes are fixed: it must hold them all (by name)."""
        check_adata(reference, "reference")
        if self.registry.get("mode") != "reference":
            raise ValueError("This SpaDiT was trained within-panel (no reference); it takes no reference.")
        have = set(map(str, reference.var_names))
        lost = [g for g in self.registry["genes"] if g not in have]
        if lost:
            raise ValueError(f"reference lacks {len(lost)} of the model's {len(self.registry['genes'])} genes (e.g. {lost[:5]}).")

    @classmethod
    def load(
        cls, dir_path: str | Path, adata: AnnData | None = None, *, reference: AnnData | None = None, device: str = "cpu"
    ) -> "SpaDiT":
        """Load a model saved with :meth:`save` (weights, registry and the attention bank).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Optional spatial object to attach (matched by gene name).
        reference
            Reference mode: the scRNA-seq reference to :meth:`train` on again (it must hold
            the model's genes); not needed to predict. Can also be set later as
            ``model.reference``.
        device
            Where to put the weights.

        Examples
        --------
        >>> model.save("spadit/")
        >>> model = bd.models.SpaDiT.load("spadit/", panel, reference=sc)   # the reference only to train again
        """
        obj = super().load(dir_path, adata, device=device)
        if reference is not None:
            obj._check_reference(reference)
            obj.reference = reference
        return obj

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

    def _query_scale(self, adata: AnnData, hide: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-scale values (0 where unobserved) and the observed mask of rows ``rows`` of a
        spatial object, read by gene name. ``hide`` (G,) genes are treated as unmeasured, in
        the library size too; in reference mode only the known genes are observed (a target
        gene the query happens to measure never enters the condition)."""
        reg = self.registry
        counts = _read_counts(adata, reg["setup"].get("layer"), reg["genes"], "query", rows=rows, missing="nan")
        observed = ~np.isnan(counts) & ~hide[None, :]
        if reg["mode"] == "reference":
            observed &= np.isin(reg["genes"], reg["known_genes"])[None, :]
        counts = np.nan_to_num(counts)
        logn = self._log_norm(counts, observed)
        z = (logn - np.asarray(reg["query_mean"])) / np.asarray(reg["query_std"])
        q = reg.get("quantiles")
        if q is not None:  # known genes: spatial quantile -> reference value of that quantile -> z
            cols = np.asarray(q["columns"])
            aligned = quantile_map(logn[:, cols], np.asarray(q["query"]), np.asarray(q["reference"]))
            z[:, cols] = (aligned - np.asarray(reg["ref_mean"])[cols]) / np.asarray(reg["ref_std"])[cols]
        return np.where(observed, z, 0.0).astype(np.float32), observed

    # --- training -----------------------------------------------------------------------------
    def _training_data(self, train_size: float, seed: int, **data_kwargs: Any) -> tuple[SpaDiTObjective, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        reg, a = self.registry, self.init_args
        genes = reg["genes"]
        layer = reg["setup"].get("layer")
        if reg["mode"] == "reference":
            if self.reference is None:
                raise ValueError(
                    "This SpaDiT learns from an scRNA-seq reference, which is not saved with the model: load it with "
                    "SpaDiT.load(path, adata, reference=adata_sc) or set model.reference = adata_sc, then train()."
                )
            self._check_reference(self.reference)
            cells = _read_counts(self.reference, reg["setup"].get("reference_layer"), genes, "reference")
            library_genes = np.isin(genes, reg["known_genes"])
        else:
            cells = _read_counts(self.adata, layer, genes, "adata")
            library_genes = np.ones(len(genes), dtype=bool)
        rng = np.random.default_rng(seed)
        train_idx, val_idx = self._split(len(cells), train_size, rng)
        first_fit = reg["share"] is None
        if first_fit:
            self._fit_normalisation(cells[train_idx], library_genes)
        cells_logn = self._log_norm(cells, np.ones_like(cells, dtype=bool))
        if first_fit and reg["mode"] == "reference":
            sp = _read_counts(self.adata, layer, genes, "adata", missing="nan")
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
        x = ((cells_logn - np.asarray(reg["ref_mean"])) / np.asarray(reg["ref_std"])).astype(np.float32)
        # the attention bank: a random subset of the training cells; each knows its bank row
        bank_rows = rng.choice(train_idx, size=min(a["bank_size"], len(train_idx)), replace=False)
        bank_index = np.full(len(cells), -1, dtype=np.int64)
        bank_index[bank_rows] = np.arange(len(bank_rows))
        reg["bank_rows"] = int(len(bank_rows))
        if self.network.bank_size != len(bank_rows) or not self.is_trained:
            self.network.set_bank(torch.from_numpy(x[bank_rows]))
        tensors = {"x": x, "available": np.ones_like(x, dtype=bool), "bank_index": bank_index}

        def part(idx: np.ndarray) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in tensors.items()}

        # for tune_sampler: the validation cells on the log-normalised and the model's scale
        self._validation = (cells_logn[val_idx], x[val_idx]) if len(val_idx) else None
        known = torch.from_numpy(library_genes) if reg["mode"] == "reference" else None
        objective = SpaDiTObjective(known, a["observed_fraction"], a["sigma_data"], a["P_mean"], a["P_std"])
        return objective, part(train_idx), part(val_idx) if len(val_idx) else None

    # --- inference ----------------------------------------------------------------------------
    def _validate_query(self, adata: AnnData) -> None:
        check_adata(adata, "query")
        try:
            _counts_field(self.registry["setup"].get("layer")).transfer(adata, self.registry["genes"])
        except (ValueError, KeyError) as err:
            raise _named(err, "query") from err
        if self.registry["mode"] == "reference" and not set(map(str, adata.var_names)) & set(self.registry["known_genes"]):
            raise ValueError(
                f"The query measures none of the model's {len(self.registry['known_genes'])} known genes "
                f"(e.g. {self.registry['known_genes'][:5]})."
            )

    def _genes(self, adata: AnnData, genes: Sequence[str] | None) -> list[str]:
        all_genes = self.registry["genes"]
        if genes is None:
            have = set(map(str, adata.var_names))
            genes = self.registry["target_genes"] or [g for g in all_genes if g not in have]
        if isinstance(genes, str):
            genes = [genes]
        genes = list(map(str, genes))
        if not genes:
            raise ValueError("No genes to predict: pass genes=.")
        unknown = [g for g in genes if g not in set(all_genes)]
        if unknown:
            raise ValueError(f"genes not known to the model: {unknown[:5]}.")
        return genes

    @torch.no_grad()
    def posterior(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = BaseModel._default_steps,
        seed: int = 0,
        device: str = "auto",
        recentre: bool | None = None,
        return_draws: bool = False,
    ) -> dict[str, Any]:
        """Mean and variance of ``genes`` for cells of ``adata`` (log-normalised scale), without
        writing anything.

        Parameters
        ----------
        adata, genes, indices, batch_size, n_samples, steps, seed, device, recentre
            As in :meth:`predict`.
        return_draws
            Also return the draws (``draws``: rows x ``n_samples`` x genes), e.g. for
            :func:`biodiffuse.metrics.crps`.

        Returns
        -------
        dict
            ``genes`` (list), ``obs_names`` (the selected rows), ``mean`` and ``variance``
            (rows x genes arrays); with ``return_draws``, ``draws``.

        Examples
        --------
        >>> post = model.posterior(adata_sp, genes=["Gad2"], n_samples=20, return_draws=True)
        >>> post["draws"].shape                      # (cells, 20, 1)
        """
        adata, rows = self._query(adata, indices)
        self._validate_query(adata)
        reg = self.registry
        all_genes = reg["genes"]
        hide = np.isin(all_genes, self._genes(adata, genes))
        cols = np.flatnonzero(hide)
        mu = np.asarray(reg["ref_mean"])[cols]
        sd = np.asarray(reg["ref_std"])[cols]
        batch_size = self._default_batch_size if batch_size is None else batch_size
        recentre = self._check_recentre(recentre, steps, n_samples)
        sampler = self._sampler(steps, keep_one_step=recentre)
        obs_names = [str(n) for n in adata.obs_names[rows]]

        def to_genes(draws: np.ndarray, _rows: np.ndarray) -> np.ndarray:
            return np.clip(draws[:, :, cols] * sd + mu, 0.0, None)  # log1p values are non-negative

        out = self._sample_cells(lambda r: self._query_scale(adata, hide, rows[r]), len(rows),
                                 seeds=row_seeds(seed, self._row_keys(obs_names)), sampler=sampler, n_samples=n_samples,
                                 batch_size=batch_size, device=device, to_genes=to_genes, keep_draws=bool(return_draws),
                                 recentre=recentre)
        res = {"genes": [all_genes[i] for i in cols], "obs_names": obs_names, "mean": out["mean"], "variance": out["variance"]}
        if return_draws:
            res["draws"] = out["draws"]
        return res

    def _sample_cells(self, read, n_rows: int, *, seeds, sampler, n_samples: int, batch_size: int, device: str,
                      to_genes, keep_draws: bool, recentre: bool = False) -> dict[str, np.ndarray]:
        """The shared loop (:func:`~biodiffuse.diffusion.sample_rows`) over ``n_rows`` cells whose
        model-scale values and observed genes ``read(rows)`` returns; ``to_genes`` maps the draws
        (``recentre``: centred on the mean of the one-step draws ``sampler`` keeps first)."""
        with self._on_device(device) as (net, dev):

            def run(smp: Any, reducer: Any) -> dict[str, np.ndarray]:
                return sample_rows(make_prepare(net, read), n_rows, (len(self.registry["genes"]),), seeds=seeds, sampler=smp,
                                   n_samples=n_samples, batch_size=batch_size, device=dev, reducer=reducer)

            return self._run_recentred(run, sampler, Moments(n_rows, transforms={"": to_genes}, keep_draws=keep_draws), recentre)

    def tune_sampler(
        self,
        *,
        nfe: int = 5,
        n_samples: int = 4,
        candidates: Sequence[dict[str, Any]] | None = None,
        max_cells: int = 512,
        seed: int = 0,
        device: str = "auto",
    ) -> pd.DataFrame:
        """Choose the sampler (solver and noise schedule) by the fair CRPS of draws on validation cells.

        Every candidate of :func:`~biodiffuse.diffusion.schedule_grid` at ``nfe`` network
        evaluations per draw predicts the hidden genes of the validation cells of the last
        training run (the cells early stopping held out; never test data): in reference mode
        the target genes from the known genes, within-panel a random ``1 - observed_fraction``
        of the genes (the same for every cell and candidate) from the rest. The one with the
        lowest fair CRPS per cell and gene (log-normalised scale, as :meth:`predict` returns) becomes
        the model's schedule (``init_args``, kept by :meth:`save`), and :meth:`predict` with
        ``steps`` equal to its ``steps`` then costs ``nfe`` evaluations per draw.

        The validation cells come from the training data (in reference mode, the scRNA-seq
        reference): a schedule that suits them need not suit a spatial platform with another
        shift (``docs/benchmarks.md``, osmFISH).

        Parameters
        ----------
        nfe
            Network evaluations per draw to tune for.
        n_samples
            Draws per cell (at least 2).
        candidates
            Schedules to try (dicts as :func:`~biodiffuse.diffusion.schedule_grid` returns);
            default: that grid.
        max_cells
            Score at most this many validation cells (a random subset, the same for every
            candidate).
        seed, device
            As in :meth:`predict`.

        Returns
        -------
        pandas.DataFrame
            One row per candidate: its settings, then ``crps``, ``energy_score``, ``r_p`` and
            ``coverage80`` as :func:`~biodiffuse.metrics.score_draws` gives them, best fair CRPS (``crps_fair``)
            first. The chosen row is kept in ``registry["sampler_tuning"]``.

        Raises
        ------
        ValueError
            For a model without validation cells (not trained in this session, or with
            ``train_size=1``) or bad arguments.

        Examples
        --------
        >>> model.train()
        >>> table = model.tune_sampler(nfe=5)
        >>> model.predict(adata_sp, steps=int(table.iloc[0]["steps"]))
        """
        from ..metrics import score_draws

        val = getattr(self, "_validation", None)
        self._check_tuning(n_samples, max_cells, unit="cell", have_validation=val is not None, items="cells")
        logn, x = val
        rng = np.random.default_rng(seed)
        if len(x) > max_cells:
            pick = np.sort(rng.choice(len(x), int(max_cells), replace=False))
            logn, x = logn[pick], x[pick]
        reg = self.registry
        genes = np.asarray(reg["genes"])
        if reg["mode"] == "reference":
            observed = np.isin(genes, reg["known_genes"])
        else:  # a fixed random share hidden, at least one gene on each side
            observed = rng.random(len(genes)) < self.init_args["observed_fraction"]
            observed[rng.choice(len(genes), 2, replace=False)] = [True, False]
        cols = np.flatnonzero(~observed)
        mu, sd = np.asarray(reg["ref_mean"])[cols], np.asarray(reg["ref_std"])[cols]
        shown = np.where(observed[None, :], x, 0.0).astype(np.float32)
        mask = np.broadcast_to(observed, x.shape)

        def to_genes(draws: np.ndarray, _rows: np.ndarray) -> np.ndarray:
            return np.clip(draws[:, :, cols] * sd + mu, 0.0, None)

        def score(sampler) -> dict[str, float]:
            out = self._sample_cells(lambda r: (shown[r], mask[r]), len(x), seeds=row_seeds(seed, [f"validation {i}" for i in range(len(x))]),
                                     sampler=sampler, n_samples=int(n_samples), batch_size=self._default_batch_size,
                                     device=device, to_genes=to_genes, keep_draws=True,
                                     recentre=getattr(sampler, "keeps_one_step", False))
            return score_draws(logn[:, cols], out["draws"], levels=(0.8,))

        return self._choose_sampler(score, nfe=nfe, candidates=candidates, scored_on=f"{len(x)} validation cells")

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = BaseModel._default_steps,
        seed: int = 0,
        key_added: str | None = None,
        variance_key_added: str | bool | None = None,
        overwrite: bool = False,
        device: str = "auto",
        recentre: bool | None = None,
    ) -> pd.DataFrame:
        """Predict ``genes`` for the cells of ``adata`` and write them into ``obsm``.

        Parameters
        ----------
        adata
            Spatial object (default: the one the model was set up with), matched by gene
            name; backed AnnData is read in row batches.
        genes
            Genes to predict (default: the model's target genes, or, within-panel, the
            model's genes absent from ``adata``). A requested gene that ``adata`` measures is
            hidden from the model and predicted from the others.
        indices
            Rows to predict (integer positions or a boolean mask; default all). Rows not
            selected are NaN in the written frames; repeated positions count once.
        batch_size
            Cells per batch (default 256; memory is flat in the number of cells).
        n_samples
            Draws per cell; their mean is the prediction, their variance the uncertainty.
        steps
            Sampler steps on the model's schedule (:attr:`sampler_settings`): ``2 * steps - 1``
            network evaluations per draw with Heun (the default), ``steps`` with Euler.
            ``steps=1`` returns the denoiser's output at the highest noise level, i.e. the
            model's estimate of the conditional mean: the better point prediction when the
            signal is weak (a mean of a few draws adds their spread to the error); the
            spatial benchmark averages several one-step outputs (``steps=1``).
        seed
            Each cell draws from its own random stream, seeded by ``seed`` and its
            ``obs_name``: the same seed gives the same numbers for a cell whatever
            ``batch_size`` and whatever other cells are in the query (on the same device).
        key_added
            ``obsm`` key of the prediction (default ``"SpaDiT_predicted"``); the run's
            parameters go to ``uns[key_added]``.
        variance_key_added
            ``obsm`` key of the variance (default ``f"{key_added}_variance"``, or
            ``"SpaDiT_variance"`` without ``key_added``); False writes no variance.
        overwrite
            Replace existing entries under these keys (otherwise a KeyError, nothing written).
        device
            ``"auto"`` (GPU if present) or a torch device.
        recentre
            ``steps > 1`` and ``n_samples > 1`` (a single draw is left as drawn): shift each cell's draws so that their mean is the mean of its
            one-step draws (the denoiser's estimate of the conditional mean, less noisy than the
            mean of a few draws); spread and shape stay those of the ``steps``-step draws. No
            extra network evaluation: a draw's one-step draw is the first evaluation of its solve.
            None (default): the model's setting (:attr:`recentres`; the constructor's ``recentre``).

        Returns
        -------
        The predicted DataFrame (also in ``adata.obsm[key_added]``), in the
        log1p(counts / library x 1e4) scale of the reference (library over the known genes).

        Examples
        --------
        >>> model.predict(genes=["Gad2", "Vip"], n_samples=4, steps=5)   # obsm["SpaDiT_predicted"] / ["SpaDiT_variance"]
        >>> model.predict(other_panel, steps=1)                           # another section, matched by gene name
        """
        adata, rows = self._query(adata, indices)
        recentre = self._check_recentre(recentre, steps, n_samples)
        key = self._key(key_added, "predicted")
        var_key = self._variance_key(key, key_added, variance_key_added, self._key(None, "variance"), n_samples=n_samples)
        self._check_free(adata.obsm, [key, var_key], "adata.obsm", overwrite)
        self._check_free(adata.uns, [key], "adata.uns", overwrite)
        batch_size = self._default_batch_size if batch_size is None else batch_size
        post = self.posterior(
            adata, genes=genes, indices=rows, batch_size=batch_size, n_samples=n_samples, steps=steps, seed=seed, device=device,
            recentre=recentre,
        )
        cols = pd.Index(post["genes"])
        frames = {}
        for k, values in ((key, post["mean"]), (var_key, post["variance"])):
            if k is None:
                continue
            full = np.full((adata.n_obs, len(cols)), np.nan)
            full[rows] = values
            frames[k] = pd.DataFrame(full, index=adata.obs_names.copy(), columns=cols)
        for k, frame in frames.items():
            adata.obsm[k] = frame
        self._record_run(adata, key, dict(
            genes=list(cols), n_rows=len(rows), batch_size=batch_size,
            n_samples=n_samples, steps=steps, seed=seed, variance_key_added=var_key, mode=self.registry["mode"],
            nfe_per_draw=self.network_evaluations(steps=steps), recentre=recentre,
            **self.sampler_settings,
        ))
        return frames[key]
