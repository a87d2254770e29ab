"""Any missing modality from any others: multi-condition diffusion and Coherent Denoising.

Method (Coherent Denoising paper; see ``docs/multimodal.md`` for our choices):

* **Data.** Each modality of a MuData is mapped to a small standardised latent by a
  :class:`~biodiffuse.data.ModalityEncoder` (PCA by default: on these patient counts it
  reconstructs held-out patients better than an autoencoder, see the benchmarks), fitted
  on the patients that have it. Patients lacking a modality carry a mask, never zeros
  pretending to be data. Synthesised latents are decoded back to feature space.
* **Networks.** :class:`~biodiffuse.nn.MLPDenoiser` (time embedding re-injected at every
  layer; per-condition projections times the condition's mask).
* :class:`MultiConditionDiffusion`: one denoiser per target modality, conditioned on all
  other modalities; in training every condition is dropped with probability
  ``1 - observed_fraction`` (random modality masking), so any subset of conditions works,
  including none (unconditional generation).
* :class:`CoherentDenoising`: one single-condition denoiser per ordered pair
  (condition -> target) plus an unconditional one per target; at sampling the available
  pairs' predictions are averaged with weights ``softmax(1 / validation loss)``, pairwise
  coherence of their noise predictions is tracked per step, and incoherent samples are
  redrawn (:mod:`biodiffuse.diffusion.ensemble`).
* **Objective / sampler.** The shared EDM loss and Heun sampler; all denoisers train
  together in one run of the shared trainer (their parameters are disjoint).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from ..data import read_setup_record, write_setup_record
from ..data.modality import ModalityEncoder, modality_matrix
from ..diffusion import CoherentConsensus, EDMLoss, EDMPrecond, coherent_sample, heun_sampler
from ..nn import MLPDenoiser
from .base import BaseModel, resolve_device

__all__ = ["MultiConditionDiffusion", "CoherentDenoising", "ModalityObjective"]

logger = logging.getLogger("biodiffuse")

_NONE = "none"


def _pair_key(cond: str, target: str) -> str:
    return f"{cond}->{target}"


class ModalityObjective:
    """Summed EDM losses of all denoisers of a modality model.

    Batches hold ``z{i}`` (B, d_i) latents (0 where absent) and ``present`` (B, M).
    ``pairs`` lists ``(key, target_index, condition_indices)``; a row counts for a denoiser
    when it has the target (and, with ``require_conditions``, all of the denoiser's
    conditions: single-condition denoisers of Coherent Denoising). Conditions are shown when
    present, and, with ``observed_fraction < 1``, each is dropped at random.
    """

    def __init__(
        self,
        pairs: list[tuple[str, int, list[int]]],
        observed_fraction: float,
        sigma_data: float,
        P_mean: float = 0.0,
        P_std: float = 1.5,
        require_conditions: bool = False,
    ) -> None:
        self.pairs = pairs
        self.observed_fraction = observed_fraction
        self.require_conditions = require_conditions
        self.loss = EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, network: nn.ModuleDict, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        present = batch["present"]
        total = present.new_zeros((), dtype=torch.float32)
        for key, t, conds in self.pairs:
            rows = present[:, t]
            if self.require_conditions and conds:
                rows = rows & present[:, conds].all(dim=1)
            if not bool(rows.any()):
                continue
            m = present[rows][:, conds] if conds else None
            if m is not None and self.observed_fraction < 1.0:
                keep = torch.rand(m.shape, generator=generator, device=m.device) < self.observed_fraction
                m = m & keep
            cond = ([batch[f"z{c}"][rows] for c in conds], m) if conds else None
            total = total + self.loss(network[key], batch[f"z{t}"][rows], cond, generator=generator)
        return total


class _ModalityDiffusion(BaseModel):
    """Shared set-up, encoders, training and sampling of the two modality models."""

    _model_name = "_ModalityDiffusion"
    _require_conditions = False

    @classmethod
    def setup_mudata(cls, mdata: Any, modalities: Sequence[str], layers: dict[str, str] | None = None) -> None:
        """Register the modalities of ``mdata`` (writes only ``mdata.uns["biodiffuse"][model]``).

        Parameters
        ----------
        mdata
            MuData with one modality per assay; patients are ``mdata.obs_names``.
        modalities
            At least two modality names to model.
        layers
            Optional ``{modality: layer}`` to read instead of ``X``.
        """
        modalities = list(map(str, modalities))
        if len(modalities) < 2:
            raise ValueError(f"Need at least two modalities, got {modalities}.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities repeat: {modalities}.")
        layers = dict(layers or {})
        for mod in modalities:
            x, present = modality_matrix(mdata, mod, layers.get(mod))
            if present.sum() < 3:
                raise ValueError(f"Modality {mod!r} is present for {int(present.sum())} patient(s); need at least 3.")
            if not np.isfinite(x[present]).all():
                raise ValueError(f"Modality {mod!r} has NaN or inf values among its patients.")
        write_setup_record(mdata, cls._model_name, {"modalities": modalities, "layers": layers or None})

    def __init__(
        self,
        mdata: Any,
        latent_dim: int = 32,
        encoder: str = "pca",
        hidden: int = 128,
        layers: int = 2,
        emb_dim: int = 64,
        dropout: float = 0.3,
        observed_fraction: float = 0.5,
        sigma_data: float = 1.0,
        sigma_max: float = 10.0,
        P_mean: float = 0.0,
        P_std: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        setup = read_setup_record(mdata, self._model_name)
        if setup is None:
            raise ValueError(f"Call {type(self).__name__}.setup_mudata(mdata, modalities=[...]) first.")
        mods = list(setup["modalities"])
        layer_map = dict(setup.get("layers") or {})
        encoders = {}
        for mod in mods:
            x, present = modality_matrix(mdata, mod, layer_map.get(mod))
            encoders[mod] = ModalityEncoder(latent_dim=latent_dim, method=encoder, seed=seed).fit(x[present]).to_dict()
        dims = [ModalityEncoder.from_dict(encoders[m]).latent_dim_ for m in mods]
        self.adata = mdata
        self.init_args = dict(
            latent_dim=int(latent_dim), encoder=encoder, hidden=int(hidden), layers=int(layers), emb_dim=int(emb_dim),
            dropout=float(dropout), observed_fraction=float(observed_fraction), sigma_data=float(sigma_data),
            sigma_max=float(sigma_max), P_mean=float(P_mean), P_std=float(P_std), seed=int(seed),
        )
        self.registry = dict(
            setup=setup, modalities=mods, dims=dims, encoders=encoders, val_loss=None,
            features={m: list(map(str, mdata.mod[m].var_names)) for m in mods},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._build_network()

    # --- to specialise ------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[str, int, list[int]]]:
        raise NotImplementedError

    def _build_network(self) -> nn.ModuleDict:
        a, dims = self.init_args, self.registry["dims"]
        nets = {}
        for key, t, conds in self._pairs():
            mlp = MLPDenoiser(dims[t], [dims[c] for c in conds], hidden=a["hidden"], layers=a["layers"], emb_dim=a["emb_dim"], dropout=a["dropout"])
            nets[key] = EDMPrecond(mlp, sigma_data=a["sigma_data"])
        return nn.ModuleDict(nets)

    def _training_fraction(self) -> float:
        return self.init_args["observed_fraction"]

    def _objective(self, pairs: list[tuple[str, int, list[int]]], observed_fraction: float) -> ModalityObjective:
        a = self.init_args
        return ModalityObjective(pairs, observed_fraction, a["sigma_data"], a["P_mean"], a["P_std"], self._require_conditions)

    # --- data -----------------------------------------------------------------------------------
    def _encoder(self, mod: str) -> ModalityEncoder:
        return ModalityEncoder.from_dict(self.registry["encoders"][mod])

    def _validate_query(self, mdata: Any) -> None:
        for mod in self.registry["modalities"]:
            if mod in getattr(mdata, "mod", {}):
                have = list(map(str, mdata.mod[mod].var_names))
                if have != self.registry["features"][mod]:
                    raise ValueError(f"Modality {mod!r} of the query has other features than the model's.")

    def latents(self, mdata: Any) -> tuple[list[np.ndarray], np.ndarray]:
        """Standardised latents per modality ((n, d_i) arrays, 0 where absent) and the
        (n, M) presence mask, for the patients of ``mdata`` (``mdata.obs_names`` order)."""
        self._validate_query(mdata)
        layer_map = dict(self.registry["setup"].get("layers") or {})
        zs, pres = [], []
        for mod, d in zip(self.registry["modalities"], self.registry["dims"]):
            if mod in mdata.mod:
                x, present = modality_matrix(mdata, mod, layer_map.get(mod))
            else:
                x, present = np.full((mdata.n_obs, len(self.registry["features"][mod])), np.nan), np.zeros(mdata.n_obs, bool)
            z = np.zeros((mdata.n_obs, d), dtype=np.float32)
            if present.any():
                z[present] = self._encoder(mod).encode(x[present])
            zs.append(z)
            pres.append(present)
        return zs, np.stack(pres, axis=1)

    # --- training -------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 1000,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        train_size: float = 0.85,
        early_stopping: bool = True,
        early_stopping_patience: int = 300,
        ema_decay: float | None = 0.99,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        seed: int = 0,
        enable_progress_bar: bool = True,
        **trainer_kwargs: Any,
    ) -> pd.DataFrame:
        """Train every denoiser of the model at once on the registered patients.

        Parameters
        ----------
        max_epochs, batch_size, lr, weight_decay
            Optimisation (patients are few: small batches, many epochs). The defaults, with
            the network's (hidden 128, 2 layers, dropout 0.3), were chosen on one TCGA ACC fold:
            the earlier 256 x 3 layers, dropout 0.1, batches of 64 overfitted
            (MultiConditionDiffusion's R^2 was negative on three of four targets; see
            ``docs/benchmarks.md``).
        train_size
            Fraction of patients for training; the rest give the validation loss (early
            stopping and, for Coherent Denoising, the consensus weights).
        early_stopping, early_stopping_patience, ema_decay
            As :meth:`biodiffuse.models.MCD.train`.
        accelerator, devices
            Passed to Lightning (GPU when present).
        seed
            Seeds the split and the training noise.
        enable_progress_bar
            Lightning's progress bar.
        **trainer_kwargs
            More :class:`lightning.pytorch.Trainer` arguments.
        """
        zs, present = self.latents(self.adata)
        tensors = {f"z{i}": torch.from_numpy(z) for i, z in enumerate(zs)}
        tensors["present"] = torch.from_numpy(present)
        tr, va = self._split(len(present), train_size, np.random.default_rng(seed))
        part = lambda idx: {k: v[torch.from_numpy(idx)] for k, v in tensors.items()}  # noqa: E731
        objective = self._objective(self._pairs(), self._training_fraction())
        history = self._run_training(
            objective, part(tr), part(va) if len(va) else None, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, max_epochs=max_epochs, early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience, ema_decay=ema_decay, accelerator=accelerator,
            devices=devices, enable_progress_bar=enable_progress_bar, seed=seed, trainer_kwargs=trainer_kwargs,
        )
        self.registry["val_loss"] = self._denoiser_losses(part(va) if len(va) >= 2 else part(tr))
        return history

    @torch.no_grad()
    def _denoiser_losses(self, batch: dict[str, torch.Tensor], repeats: int = 16) -> dict[str, float]:
        """Each denoiser's EDM loss on ``batch`` with fixed noise (all conditions shown)."""
        out = {}
        net = self.network.cpu().eval()
        for key, t, conds in self._pairs():
            obj = self._objective([(key, t, conds)], 1.0)
            gen = torch.Generator().manual_seed(0)
            vals = [float(obj(net, batch, gen)) for _ in range(repeats)]
            out[key] = float(np.mean(vals)) if any(v > 0 for v in vals) else float("nan")
        return out

    # --- sampling ---------------------------------------------------------------------------------
    def _conditions(self, target: str, conditions: Sequence[str] | None) -> list[int]:
        mods = self.registry["modalities"]
        if target not in mods:
            raise ValueError(f"target {target!r} is not one of the model's modalities {mods}.")
        if conditions is None:
            return [i for i, m in enumerate(mods) if m != target]
        bad = [c for c in conditions if c not in mods or c == target]
        if bad:
            raise ValueError(f"conditions must be other modalities of the model; bad: {bad}.")
        return [mods.index(c) for c in conditions]

    def _sample_latents(self, t: int, conds: list[int], zs, present, n_samples, steps, seed, dev) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        target: str,
        mdata: Any | None = None,
        conditions: Sequence[str] | None = None,
        n_samples: int = 10,
        steps: int = 18,
        indices: Sequence[int] | None = None,
        seed: int = 0,
        device: str = "auto",
    ) -> dict[str, Any]:
        """Draw ``n_samples`` versions of ``target`` for patients of ``mdata``.

        The target's own values are never read. Conditions absent for a patient are masked.

        Parameters
        ----------
        target
            Modality to synthesise.
        mdata
            Patients (default: the registered object); matched by modality and feature names.
        conditions
            Modalities to condition on (default: all other modalities). An empty list gives
            unconditional samples.
        n_samples
            Draws per patient.
        steps
            Heun steps per draw.
        indices
            Subset of patients (positions in ``mdata.obs_names``).
        seed
            Same seed, same numbers (on the same device).
        device
            ``"auto"`` (GPU if present) or a torch device.

        Returns
        -------
        dict with ``latent`` (n_samples, n, d) standardised latents, ``features``
        (n_samples, n, n_features) decoded to the modality's original units, ``mean`` and
        ``variance`` (n, n_features) over the draws, ``obs_names`` and ``var_names``, and
        model-specific diagnostics (``retries`` / ``rejected`` for Coherent Denoising).
        """
        self._require_trained()
        mdata = self.adata if mdata is None else mdata
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        t = self.registry["modalities"].index(self._check_target(target))
        conds = self._conditions(target, conditions)
        zs, present = self.latents(mdata)
        obs_names = np.asarray(mdata.obs_names)
        if indices is not None:
            idx = np.asarray(indices)
            zs, present, obs_names = [z[idx] for z in zs], present[idx], obs_names[idx]
        dev = resolve_device(device)
        lat, diag = self._sample_latents(t, conds, zs, present, n_samples, steps, seed, dev)
        self.network.cpu()
        enc = self._encoder(target)
        k, n, d = lat.shape
        feats = enc.decode(lat.reshape(k * n, d)).reshape(k, n, -1)
        out = dict(latent=lat, features=feats, mean=feats.mean(axis=0), variance=feats.var(axis=0),
                   obs_names=list(obs_names), var_names=self.registry["features"][target])
        out.update(diag)
        return out

    def _check_target(self, target: str) -> str:
        if target not in self.registry["modalities"]:
            raise ValueError(f"target {target!r} is not one of the model's modalities {self.registry['modalities']}.")
        return target

    def synthesize(
        self,
        mdata: Any | None = None,
        target: str | None = None,
        n_samples: int = 10,
        steps: int = 18,
        conditions: Sequence[str] | None = None,
        patients: str = "missing",
        key_added: str | None = None,
        overwrite: bool = False,
        seed: int = 0,
        device: str = "auto",
    ) -> AnnData:
        """Synthesise ``target`` and add it to ``mdata`` as a new modality.

        Parameters
        ----------
        mdata
            The MuData (default: the registered one).
        target
            Modality to synthesise.
        n_samples, steps, conditions, seed, device
            As :meth:`sample`.
        patients
            ``"missing"``: patients lacking ``target`` (and having at least one condition);
            ``"all"``: every patient with a condition (the measured values are not used).
        key_added
            Name of the new modality (default ``f"{target}_{model name}"``); it holds the
            mean in ``X`` (original units), ``layers["variance"]`` and ``obsm["latent"]``.
        overwrite
            Replace an existing modality of that name.

        Returns
        -------
        The new modality's AnnData (also ``mdata.mod[key_added]``).
        """
        mdata = self.adata if mdata is None else mdata
        if target is None:
            raise ValueError("Pass target= (the modality to synthesise).")
        t = self.registry["modalities"].index(self._check_target(target))
        key = key_added or f"{target}_{self._model_name}"
        if key in mdata.mod and not overwrite:
            raise KeyError(f"mdata.mod[{key!r}] exists; pass overwrite=True or another key_added.")
        if patients not in ("missing", "all"):
            raise ValueError(f"patients must be 'missing' or 'all', got {patients!r}.")
        _, present = self.latents(mdata)
        conds = self._conditions(target, conditions)
        has_cond = present[:, conds].any(axis=1) if conds else np.ones(len(present), bool)
        chosen = np.flatnonzero(has_cond & (~present[:, t] if patients == "missing" else True))
        if len(chosen) == 0:
            raise ValueError(f"No patient to synthesise {target!r} for.")
        res = self.sample(target, mdata, conditions, n_samples, steps, chosen, seed, device)
        new = AnnData(np.asarray(res["mean"], dtype=np.float32))
        new.obs_names = res["obs_names"]
        new.var_names = res["var_names"]
        new.layers["variance"] = np.asarray(res["variance"], dtype=np.float32)
        new.obsm["latent"] = res["latent"].mean(axis=0)
        new.uns["biodiffuse"] = {"model": self._model_name, "target": target, "n_samples": int(n_samples), "steps": int(steps)}
        mdata.mod[key] = new
        mdata.update()
        return new


class MultiConditionDiffusion(_ModalityDiffusion):
    """One denoiser per target modality, conditioned on any subset of the others.

    Training drops each condition with probability ``1 - observed_fraction`` (random modality
    masking), so one denoiser serves every subset of conditions, the empty one included.
    See :class:`_ModalityDiffusion` parameters: ``latent_dim`` (per-modality latent size),
    ``encoder`` (``"pca"`` or ``"autoencoder"``), ``hidden`` / ``layers`` / ``emb_dim`` /
    ``dropout`` (the MLP), ``observed_fraction`` (keep probability of a condition),
    ``sigma_data``, ``sigma_max`` / ``P_mean`` / ``P_std`` (sampler start and lognormal training
    noise; as SpaDiT, the first sampler step is a noise level the network trains on), ``seed``.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_acc()
    >>> bd.models.MultiConditionDiffusion.setup_mudata(mdata, modalities=["RNASeq2GeneNorm", "gistict", "RPPAArray"])
    >>> model = bd.models.MultiConditionDiffusion(mdata)
    >>> model.train()
    >>> model.synthesize(mdata, target="RPPAArray")  # mdata.mod["RPPAArray_MultiConditionDiffusion"]
    """

    _model_name = "MultiConditionDiffusion"

    def _pairs(self) -> list[tuple[str, int, list[int]]]:
        mods = self.registry["modalities"]
        return [(m, t, [c for c in range(len(mods)) if c != t]) for t, m in enumerate(mods)]

    def _sample_latents(self, t, conds, zs, present, n_samples, steps, seed, dev):
        mods = self.registry["modalities"]
        others = [c for c in range(len(mods)) if c != t]
        net = self.network[mods[t]].to(dev).eval()
        n = len(present)
        m = np.zeros((n, len(others)), dtype=bool)
        for j, c in enumerate(others):
            m[:, j] = present[:, c] & (c in conds)
        cs = [torch.from_numpy(np.repeat(zs[c], n_samples, axis=0)).to(dev) for c in others]
        mt = torch.from_numpy(np.repeat(m, n_samples, axis=0)).to(dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        lat = torch.randn((n * n_samples, self.registry["dims"][t]), generator=gen, device=dev)
        x = heun_sampler(net, lat, (cs, mt), steps=int(steps), sigma_max=self.init_args["sigma_max"])
        return x.reshape(n, n_samples, -1).transpose(0, 1).double().cpu().numpy(), {}


class CoherentDenoising(_ModalityDiffusion):
    """An ensemble of single-condition denoisers (one per ordered modality pair) with a
    coherence-checked consensus at every reverse step.

    Parameters beyond :class:`MultiConditionDiffusion`'s: ``threshold`` (cosine distance
    between two noise predictions above which a step is incoherent), ``max_incoherent_fraction``
    (reject a sample above this fraction of incoherent steps) and ``max_retries``.

    With the default threshold (0.5), 91 % of draws on TCGA BRCA were still incoherent after
    all 10 retries (and kept anyway); :meth:`calibrate_threshold` after training sets it so
    that a chosen share (default 10 %) of first draws is rejected.
    """

    _model_name = "CoherentDenoising"
    _require_conditions = True

    def __init__(self, mdata: Any, threshold: float = 0.5, max_incoherent_fraction: float = 0.1, max_retries: int = 10, **kwargs: Any) -> None:
        kwargs.setdefault("observed_fraction", 1.0)
        super().__init__(mdata, **kwargs)
        self.init_args.update(threshold=float(threshold), max_incoherent_fraction=float(max_incoherent_fraction), max_retries=int(max_retries))

    def _pairs(self) -> list[tuple[str, int, list[int]]]:
        mods = self.registry["modalities"]
        pairs = [(_pair_key(mods[c], mods[t]), t, [c]) for t, c in itertools.permutations(range(len(mods)), 2)]
        return pairs + [(_pair_key(_NONE, m), t, []) for t, m in enumerate(mods)]

    def _training_fraction(self) -> float:
        return 1.0

    def consensus_weights(self, target: str, conditions: Sequence[str]) -> dict[str, float]:
        """``softmax(1 / validation loss)`` over the pairs ``condition -> target``."""
        val = self.registry.get("val_loss") or {}
        keys = [_pair_key(c, target) for c in conditions]
        inv = np.array([1.0 / val[k] if np.isfinite(val.get(k, np.nan)) and val[k] > 0 else 0.0 for k in keys])
        w = np.exp(inv - inv.max()) if len(inv) else inv
        return dict(zip(keys, (w / w.sum()).tolist())) if len(w) else {}

    def _consensus_maker(self, t: int, conds: list[int], zs, present, n_samples: int, dev, threshold: float):
        """A factory of :class:`CoherentConsensus` over the pairs ``conds -> t`` for rows of the
        ``n * n_samples`` draws (patient-major)."""
        mods = self.registry["modalities"]
        weights = self.consensus_weights(mods[t], [mods[c] for c in conds])
        w = torch.tensor([weights[_pair_key(mods[c], mods[t])] for c in conds], device=dev)
        dens = [self.network[_pair_key(mods[c], mods[t])].to(dev).eval() for c in conds]
        rep = lambda arr: torch.from_numpy(np.repeat(arr, n_samples, axis=0)).to(dev)  # noqa: E731
        zc = [rep(zs[c]) for c in conds]
        avail_all = rep(present[:, conds])

        def make(rows: torch.Tensor) -> CoherentConsensus:
            r = rows.to(dev)
            conds_r = [([z[r]], torch.ones((len(r), 1), device=dev)) for z in zc]
            return CoherentConsensus(dens, conds_r, w, avail_all[r], threshold=threshold)

        return make

    @torch.no_grad()
    def calibrate_threshold(
        self, mdata: Any | None = None, rejection: float = 0.1, n_samples: int = 4, steps: int = 8, seed: int = 0, device: str = "auto"
    ) -> float:
        """Set ``threshold`` so that about ``rejection`` of first draws are rejected.

        For every target, the patients of ``mdata`` with at least two of the other modalities
        (a consensus of one denoiser is always coherent) are sampled ``n_samples`` times from
        all their conditions, recording each draw's largest pairwise cosine distance per
        step; a draw's critical threshold is the smallest one at which it is kept (given
        ``max_incoherent_fraction``). The threshold becomes the ``1 - rejection`` quantile of
        the critical thresholds, pooled over targets.

        Parameters
        ----------
        mdata
            Patients to calibrate on (default: the registered ones).
        rejection
            Wanted fraction of rejected first draws, in [0, 1).
        n_samples, steps, seed, device
            As :meth:`sample` (use the ``steps`` you will sample with).

        Returns
        -------
        The new threshold (also in ``init_args["threshold"]``, saved with the model).
        """
        self._require_trained()
        if not 0.0 <= rejection < 1.0:
            raise ValueError(f"rejection must lie in [0, 1), got {rejection}.")
        mdata = self.adata if mdata is None else mdata
        a, mods = self.init_args, self.registry["modalities"]
        zs, present = self.latents(mdata)
        dev = resolve_device(device)
        critical = []
        for t in range(len(mods)):
            conds = [c for c in range(len(mods)) if c != t]
            rows = np.flatnonzero(present[:, conds].sum(axis=1) >= 2)
            if len(rows) == 0:
                continue
            make = self._consensus_maker(t, conds, [z[rows] for z in zs], present[rows], n_samples, dev, float("inf"))
            consensus = make(torch.arange(len(rows) * n_samples))
            gen = torch.Generator(device=dev).manual_seed(seed)
            latents = torch.randn((len(rows) * n_samples, self.registry["dims"][t]), generator=gen, device=dev)
            heun_sampler(consensus, latents, None, steps=int(steps), sigma_max=a["sigma_max"])
            critical.append(consensus.critical_threshold(a["max_incoherent_fraction"]).cpu().numpy())
        self.network.cpu()
        if not critical:
            raise ValueError("No patient has two or more conditions for any target; nothing to calibrate on.")
        threshold = float(np.quantile(np.concatenate(critical), 1.0 - rejection))
        self.init_args["threshold"] = threshold
        return threshold

    def _sample_latents(self, t, conds, zs, present, n_samples, steps, seed, dev):
        mods = self.registry["modalities"]
        a = self.init_args
        n, d = len(present), self.registry["dims"][t]
        gen = torch.Generator(device=dev).manual_seed(seed)
        rep = lambda arr: torch.from_numpy(np.repeat(arr, n_samples, axis=0)).to(dev)  # noqa: E731
        avail_all = rep(present[:, conds]) if conds else None
        if not conds or not bool(avail_all.any(dim=1).all()):
            if conds:
                raise ValueError("Some patients have none of the conditions; pass indices of patients that have one.")
            net = self.network[_pair_key(_NONE, mods[t])].to(dev).eval()
            x = heun_sampler(net, torch.randn((n * n_samples, d), generator=gen, device=dev), None, steps=int(steps), sigma_max=a["sigma_max"])
            return x.reshape(n, n_samples, -1).transpose(0, 1).double().cpu().numpy(), {}
        make = self._consensus_maker(t, conds, zs, present, n_samples, dev, a["threshold"])
        x, retries, rejected = coherent_sample(
            make, lambda k: torch.randn((k, d), generator=gen, device=dev), n * n_samples, steps=int(steps),
            max_incoherent_fraction=a["max_incoherent_fraction"], max_retries=a["max_retries"], sigma_max=a["sigma_max"],
        )
        lat = x.reshape(n, n_samples, -1).transpose(0, 1).double().cpu().numpy()
        return lat, {"retries": retries.reshape(n, n_samples).numpy(), "rejected": rejected.reshape(n, n_samples).numpy()}
