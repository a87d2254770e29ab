"""Any missing modality from any others: multi-condition diffusion and Coherent Denoising.

Method (Coherent Denoising paper; see ``docs/multimodal.md`` for our choices):

* **Data.** Each registered modality of a MuData is a :class:`~biodiffuse.data.fields.ModalityField`
  (read by feature name). It is mapped to a small standardised latent by a
  :class:`~biodiffuse.data.ModalityEncoder` (PCA by default: on these patient counts it
  reconstructs held-out patients better than an autoencoder, see the benchmarks), fitted at
  the first :meth:`train` on the *training* patients that have the modality and stored with
  the model (JSON). Patients lacking a modality carry a mask, never zeros pretending to be
  data. Synthesised latents are decoded back to feature space.
* **Networks** (:mod:`biodiffuse.module.modality`). :class:`~biodiffuse.nn.MLPDenoiser`
  (time embedding re-injected at every layer; per-condition projections times the
  condition's mask).
* :class:`MultiConditionDiffusion`: one denoiser per target modality, conditioned on all
  other modalities; in training every condition is dropped with probability
  ``1 - observed_fraction`` (random modality masking), so any subset of conditions works,
  including none (unconditional generation).
* :class:`CoherentDenoising`: one single-condition denoiser per ordered pair
  (condition -> target) plus an unconditional one per target; at sampling the available
  pairs' predictions are averaged with weights ``softmax(1 / validation loss)``, pairwise
  coherence of their noise predictions is tracked per step, and incoherent samples are
  redrawn (:mod:`biodiffuse.diffusion.ensemble`).
* **Objective / sampler.** The shared EDM loss; all denoisers train together in one run of
  the shared trainer (their parameters are disjoint). Sampling goes through
  :func:`biodiffuse.diffusion.sample_rows` with one random stream per patient
  (``row_seeds(seed, obs_names)``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from ..data import write_setup_record
from ..data.fields import ModalityField
from ..data.modality import ModalityEncoder
from ..diffusion import Moments, check_count, coherent_sampler, edm_sampler, row_seeds, sample_rows
from ..module import modality as mm
from ..module.modality import ModalityObjective
from ._edm_sampling import EDMSamplerMixin, checked_sampler
from .base import BaseModel, _real

__all__ = ["MultiConditionDiffusion", "CoherentDenoising", "ModalityObjective"]

logger = logging.getLogger("biodiffuse")


class _ModalityDiffusion(EDMSamplerMixin, BaseModel):
    """Shared set-up, encoders, training data and sampling of the two modality models."""

    _model_name = "_ModalityDiffusion"
    _can_recentre = True
    _require_conditions = False
    # Patients are few: small batches, many epochs. With the network defaults (hidden 128,
    # 2 layers, dropout 0.3) chosen on one TCGA ACC fold (docs/benchmarks.md).
    _train_defaults = {
        **BaseModel._train_defaults,
        "max_epochs": 1000, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "train_size": 0.85,
        "early_stopping_patience": 300, "ema_decay": 0.99, "lr_warmup_steps": 0,
    }
    #: Patients per sampling batch (``batch_size * n_samples`` draws go through the network).
    _default_batch_size = 256

    # --- set-up ---------------------------------------------------------------------------------
    @classmethod
    def setup_mudata(cls, mdata: Any, *, modalities: Sequence[str], layers: dict[str, str] | None = None) -> None:
        """Register the modalities of ``mdata`` (writes only ``mdata.uns["biodiffuse"][model]``).

        Parameters
        ----------
        mdata
            MuData with one modality per assay; patients are ``mdata.obs_names``.
        modalities
            At least two modality names to model; each must be present for at least 3
            patients, with finite numeric values.
        layers
            Optional ``{modality: layer}`` to read instead of ``X``.

        Examples
        --------
        >>> mdata = bd.datasets.tcga_acc()
        >>> bd.models.MultiConditionDiffusion.setup_mudata(mdata, modalities=["RNASeq2GeneNorm", "gistict", "RPPAArray"])
        >>> model = bd.models.MultiConditionDiffusion(mdata)
        """
        modalities = [str(m) for m in ([modalities] if isinstance(modalities, str) else modalities)]
        if len(modalities) < 2:
            raise ValueError(f"Need at least two modalities, got {modalities}.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities repeat: {modalities}.")
        layers = {str(k): str(v) for k, v in dict(layers or {}).items()}
        unknown = [k for k in layers if k not in modalities]
        if unknown:
            raise ValueError(f"layers names modalities that are not modelled: {unknown} (modalities: {modalities}).")
        for mod in modalities:
            field = ModalityField(mod, layers.get(mod))
            field.validate(mdata)
            n = int(field.present(mdata).sum())
            if n < 3:
                raise ValueError(f"{field.where(mdata)} is present for {n} patient(s); need at least 3.")
        write_setup_record(mdata, cls._model_name, {"modalities": modalities, "layers": layers or None})

    def __init__(
        self,
        mdata: Any,
        *,
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
        solver: str = "heun",
        sigma_min: float = 0.002,
        rho: float = 7.0,
        recentre: bool = True,
    ) -> None:
        super().__init__()
        sampler = checked_sampler(solver=solver, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)
        if not 0.0 <= _real("observed_fraction", observed_fraction) <= 1.0:
            raise ValueError(f"observed_fraction must lie in [0, 1], got {observed_fraction!r}.")
        setup = self._setup_record(mdata, "setup_mudata")
        ModalityEncoder(latent_dim=latent_dim, method=encoder, seed=seed)  # checks the encoder arguments
        mods = list(setup["modalities"])
        layer_map = dict(setup.get("layers") or {})
        features, dims = {}, []
        for mod in mods:
            field = ModalityField(mod, layer_map.get(mod))
            features[mod] = field.names(mdata)
            n_present = int(field.present(mdata).sum())
            # provisional: the encoders are fitted (and the sizes fixed) at the first train()
            dims.append(max(1, min(int(latent_dim), len(features[mod]), n_present - 1)))
        self.adata = mdata
        self.init_args = dict(
            latent_dim=int(latent_dim), encoder=encoder, hidden=int(hidden), layers=int(layers), emb_dim=int(emb_dim),
            dropout=float(dropout), observed_fraction=float(observed_fraction), sigma_data=float(sigma_data),
            P_mean=float(P_mean), P_std=float(P_std), seed=int(seed), **sampler,
            recentre=self._recentre_setting(recentre, True),
        )
        self.registry = dict(
            setup=setup, modalities=mods, dims=dims, encoders={m: None for m in mods}, val_loss=None, features=features,
        )
        self.network = self._seeded_network()

    # --- to specialise ------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[str, int, list[int]]]:
        raise NotImplementedError

    def _training_fraction(self) -> float:
        return self.init_args["observed_fraction"]

    def _sampling(self, t: int, conds: list[int], zs: list[np.ndarray], present: np.ndarray, names: np.ndarray,
                  n_samples: int, steps: int, schedule: dict[str, Any], *, keep_one_step: bool = False) -> tuple[Any, Any]:
        """``(prepare, sampler)`` for :func:`~biodiffuse.diffusion.sample_rows`, the sampler
        ``steps`` steps on ``schedule`` (:attr:`sampler_settings` or a candidate of
        :meth:`tune_sampler`; ``keep_one_step``: it returns each draw's one-step draw too)."""
        raise NotImplementedError

    # --- network --------------------------------------------------------------------------------
    def _build_network(self) -> nn.ModuleDict:
        a = self.init_args
        return mm.build_network(
            self._pairs(), self.registry["dims"], hidden=a["hidden"], layers=a["layers"], emb_dim=a["emb_dim"],
            dropout=a["dropout"], sigma_data=a["sigma_data"],
        )

    def _seeded_network(self) -> nn.ModuleDict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_args["seed"])
            return self._build_network()

    def _objective(self, pairs: list[tuple[str, int, list[int]]], observed_fraction: float) -> ModalityObjective:
        a = self.init_args
        return ModalityObjective(pairs, observed_fraction, a["sigma_data"], a["P_mean"], a["P_std"], self._require_conditions)

    # --- data -----------------------------------------------------------------------------------
    def _field(self, mod: str) -> ModalityField:
        return ModalityField(mod, dict(self.registry["setup"].get("layers") or {}).get(mod))

    def _encoder(self, mod: str) -> ModalityEncoder:
        state = self.registry["encoders"].get(mod)
        if state is None:
            raise RuntimeError(f"{self._model_name}: the encoders are fitted at the first train(); call .train() first.")
        return ModalityEncoder.from_dict(state)

    @staticmethod
    def _check_mudata(mdata: Any) -> None:
        if not hasattr(mdata, "mod") or not hasattr(mdata, "obs_names"):
            raise TypeError(f"mdata must be a MuData, got {type(mdata).__name__}.")

    def _matched_names(self, mdata: Any, mod: str) -> list[str]:
        """The model's feature names of ``mod``, checked against the query's (by name)."""
        field, names = self._field(mod), self.registry["features"][mod]
        transfer = field.transfer(mdata, names)  # raises when no name is shared
        if transfer.absent:
            raise ValueError(
                f"{transfer.field} lacks {len(transfer.absent)} of the model's {len(names)} features "
                f"(e.g. {list(transfer.absent[:5])}); the modality's encoder needs all of them. Add them, or drop "
                f"the modality from the query to treat it as missing for these patients."
            )
        return names

    def _validate_query(self, mdata: Any) -> None:
        self._check_mudata(mdata)
        for mod in self.registry["modalities"]:
            if mod in mdata.mod:
                self._matched_names(mdata, mod)

    def _presence(self, mdata: Any, rows: np.ndarray) -> np.ndarray:
        """(len(rows), M) bool: which patients have which modality (absent modality: False)."""
        return np.stack([self._field(m).present(mdata, rows) for m in self.registry["modalities"]], axis=1)

    def _latents(self, mdata: Any, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        self._check_mudata(mdata)
        present = self._presence(mdata, rows)
        zs = []
        for i, (mod, d) in enumerate(zip(self.registry["modalities"], self.registry["dims"])):
            z = np.zeros((len(rows), d), dtype=np.float32)
            if mod in mdata.mod:
                names = self._matched_names(mdata, mod)
                if present[:, i].any():
                    x = self._field(mod).read(mdata, names, rows=rows[present[:, i]], dtype=np.float64)
                    z[present[:, i]] = self._encoder(mod).encode(x)
            zs.append(z)
        return zs, present

    def latents(self, mdata: Any | None = None, *, indices: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """Standardised latents per modality and the presence mask of patients of ``mdata``.

        Parameters
        ----------
        mdata
            Patients (default: the registered object); modalities and features matched by name.
        indices
            Patients to encode (positions in ``mdata.obs_names``; default all).

        Returns
        -------
        ``([z_i], present)``: one ``(n, d_i)`` float32 array per modality (0 where absent) and
        the ``(n, M)`` bool presence mask, rows in ``mdata.obs_names`` order.

        Examples
        --------
        >>> zs, present = model.latents(mdata)
        >>> [z.shape for z in zs], present.shape      # one (n, d_i) array per modality, (n, M) mask
        """
        mdata, rows = self._query(mdata, indices)
        return self._latents(mdata, rows)

    # --- training -------------------------------------------------------------------------------
    def _training_data(self, train_size: float, seed: int, **data_kwargs: Any) -> tuple[Any, dict, dict | None]:
        mdata = self.adata
        self._check_mudata(mdata)
        n = mdata.n_obs
        present = self._presence(mdata, np.arange(n))
        tr, va = self._split(n, train_size, np.random.default_rng(seed))
        pairs = self._pairs()
        empty = [key for key, t, conds in pairs if not mm.rows_of(present[tr], t, conds, self._require_conditions).any()]
        if empty:
            need = "both modalities of the pair" if self._require_conditions else "the target modality"
            raise ValueError(
                f"{self._model_name}: no training patient for the denoiser(s) {empty} (a denoiser needs patients with "
                f"{need}; {len(tr)} of {n} patients are in the training split). Model only modalities that are "
                f"measured together on some patients, raise train_size, or use MultiConditionDiffusion."
            )
        if any(state is None for state in self.registry["encoders"].values()):
            self._fit_encoders(mdata, present, tr)
        zs, _ = self._latents(mdata, np.arange(n))
        tensors = {f"z{i}": torch.from_numpy(z) for i, z in enumerate(zs)}
        tensors["present"] = torch.from_numpy(present)
        part = lambda idx: {k: v[torch.from_numpy(idx)] for k, v in tensors.items()}  # noqa: E731
        self._eval_batches = (part(tr), part(va))
        self._validation_rows = va if len(va) else None  # for tune_sampler
        return self._objective(pairs, self._training_fraction()), part(tr), part(va) if len(va) else None

    def _fit_encoders(self, mdata: Any, present: np.ndarray, tr: np.ndarray) -> None:
        """Fit one encoder per modality on the training patients that have it; rebuild the
        network (same seed) if a fitted latent size differs from the provisional one."""
        a, mods = self.init_args, self.registry["modalities"]
        encoders, dims = {}, []
        for i, mod in enumerate(mods):
            rows = tr[present[tr, i]]
            if len(rows) < 2:
                raise ValueError(
                    f"{self._field(mod).where(mdata)}: {len(rows)} training patient(s) have it; the encoder needs at "
                    f"least 2 (raise train_size)."
                )
            x = self._field(mod).read(mdata, self._matched_names(mdata, mod), rows=rows, dtype=np.float64)
            enc = ModalityEncoder(latent_dim=a["latent_dim"], method=a["encoder"], seed=a["seed"]).fit(x)
            encoders[mod] = enc.to_dict()
            dims.append(int(enc.latent_dim_))
        self.registry["encoders"] = encoders
        if dims != list(self.registry["dims"]):
            self.registry["dims"] = dims
            self.network = self._seeded_network()

    def _after_training(self) -> None:
        """Each denoiser's EDM loss on the validation patients (all conditions shown, fixed
        noise) into ``registry["val_loss"]``: Coherent Denoising's consensus weights."""
        tr_b, va_b = self._eval_batches
        batch = va_b if len(va_b["present"]) >= 2 else tr_b
        net = self.network.cpu().eval()
        self.registry["val_loss"] = {
            key: mm.denoiser_loss(self._objective([(key, t, conds)], 1.0), net, batch) for key, t, conds in self._pairs()
        }
        del self._eval_batches

    # --- sampling ---------------------------------------------------------------------------------
    def _target_index(self, target: str) -> int:
        mods = self.registry["modalities"]
        if target not in mods:
            raise ValueError(f"target {target!r} is not one of the model's modalities {mods}.")
        return mods.index(target)

    def _conditions(self, target: str, conditions: Sequence[str] | str | None) -> list[int]:
        mods = self.registry["modalities"]
        t = self._target_index(target)
        if conditions is None:
            return [i for i in range(len(mods)) if i != t]
        conditions = [conditions] if isinstance(conditions, str) else list(conditions)
        bad = [c for c in conditions if c not in mods or c == target]
        if bad:
            raise ValueError(f"conditions must be other modalities of the model {mods}; bad: {bad}.")
        return [mods.index(c) for c in conditions]

    def _batch(self, batch_size: int | None) -> int:
        return self._default_batch_size if batch_size is None else check_count(batch_size, "batch_size")

    @torch.no_grad()
    def _sample(self, mdata: Any, rows: np.ndarray, *, target: str, conditions: Any, batch_size: int | None,
                n_samples: int, steps: int, seed: int, device: str, schedule: dict[str, Any] | None = None,
                encoded: tuple[list[np.ndarray], np.ndarray] | None = None, recentre: bool = False) -> dict[str, Any]:
        """Draws of ``target`` for ``rows`` of ``mdata``; ``encoded``: their ``_latents`` when
        already computed (tune_sampler scores many schedules on the same patients); ``recentre``:
        each patient's latent draws centred on the mean of their one-step draws."""
        check_count(n_samples, "n_samples")
        recentre = self._check_recentre(recentre, steps, n_samples)
        t = self._target_index(target)
        conds = self._conditions(target, conditions)
        zs, present = self._latents(mdata, rows) if encoded is None else encoded
        names = np.asarray(mdata.obs_names)[rows]
        enc = self._encoder(target)

        def decode(draws: np.ndarray, _rows: Any = None) -> np.ndarray:
            b, k, d = draws.shape
            return enc.decode(draws.reshape(b * k, d)).reshape(b, k, -1)

        reducer = Moments(len(rows), transforms={"latent_": lambda d, r: d, "": decode}, keep_draws=True)
        with self._on_device(device) as (_, dev):
            prepare, sampler = self._sampling(t, conds, zs, present, names, int(n_samples), steps,
                                              dict(schedule or self.sampler_settings), keep_one_step=recentre)

            def run(smp: Any, red: Any) -> dict[str, np.ndarray]:
                return sample_rows(
                    prepare, len(rows), (self.registry["dims"][t],), seeds=row_seeds(seed, self._row_keys(names)),
                    sampler=smp, n_samples=n_samples, batch_size=self._batch(batch_size), device=dev, reducer=red,
                )

            out = self._run_recentred(run, sampler, reducer, recentre)
        draws = out["draws"]  # (n, n_samples, d)
        res = dict(
            latent=draws.transpose(1, 0, 2), features=decode(draws).transpose(1, 0, 2), mean=out["mean"],
            variance=out["variance"], latent_mean=out["latent_mean"], latent_variance=out["latent_variance"],
            obs_names=list(names), var_names=list(self.registry["features"][target]),
        )
        for key in ("retries", "rejected", "nfe"):
            if key in out:
                res[key] = out[key]
        return res

    @torch.no_grad()
    def tune_sampler(
        self,
        *,
        nfe: int = 5,
        n_samples: int = 4,
        candidates: Sequence[dict[str, Any]] | None = None,
        max_patients: int = 512,
        seed: int = 0,
        device: str = "auto",
    ) -> pd.DataFrame:
        """Choose the sampler (solver and noise schedule) by the fair CRPS of draws on validation patients.

        Every candidate of :func:`~biodiffuse.diffusion.schedule_grid` at ``nfe`` steps' worth
        of network evaluations per draw (``nfe`` per denoiser for a Coherent Denoising
        consensus, before redraws) synthesises every modality of the validation patients of
        the last training run (those early stopping held out; never test data) that have it,
        from all of their other modalities, exactly as :meth:`sample` would. The one with the
        lowest fair CRPS per patient and latent dimension (the standardised latents, pooled over
        the target modalities) becomes the model's schedule (``init_args``, kept by
        :meth:`save`); :meth:`sample` with ``steps`` equal to its ``steps`` then costs ``nfe``
        evaluations per draw and denoiser.

        Parameters
        ----------
        nfe
            Network evaluations per draw to tune for.
        n_samples
            Draws per patient (at least 2).
        candidates
            Schedules to try (dicts as :func:`~biodiffuse.diffusion.schedule_grid` returns);
            default: that grid.
        max_patients
            Score at most this many validation patients (a random subset, the same for every
            candidate).
        seed, device
            As in :meth:`sample`.

        Returns
        -------
        pandas.DataFrame
            One row per candidate: its settings, then ``crps``, ``energy_score`` (the mean
            over targets) and ``coverage80`` of the latents, best fair CRPS (``crps_fair``) first. The chosen row
            is kept in ``registry["sampler_tuning"]``.

        Raises
        ------
        ValueError
            For a model without validation patients (not trained in this session, or with
            ``train_size=1``), validation patients with no modality to score, or bad arguments.

        Examples
        --------
        >>> model.train()
        >>> table = model.tune_sampler(nfe=5)
        >>> model.synthesize(mdata, target="protein", steps=int(table.iloc[0]["steps"]))
        """
        from ..metrics import score_draws

        val = getattr(self, "_validation_rows", None)
        self._check_tuning(n_samples, max_patients, unit="patient", have_validation=val is not None, items="patients")
        rng = np.random.default_rng(seed)
        if len(val) > max_patients:
            val = np.sort(rng.choice(val, int(max_patients), replace=False))
        mdata, mods = self.adata, self.registry["modalities"]
        zs, present = self._latents(mdata, val)  # encoded once, for every candidate
        targets = []  # (target, rows of val with it and another modality)
        for t, mod in enumerate(mods):
            sel = present[:, t] & np.delete(present, t, axis=1).any(axis=1)
            if sel.any():
                targets.append((t, np.flatnonzero(sel)))
        if not targets:
            raise ValueError("No validation patient has a modality and another to synthesise it from; nothing to tune on.")
        sizes = np.array([len(sel) * self.registry["dims"][t] for t, sel in targets], dtype=float)

        def score(schedule: tuple[int, dict[str, Any]]) -> dict[str, float]:
            steps, settings = schedule
            settings = dict(settings)
            recentre = bool(settings.pop("keep_one_step", False))  # tuned as the model samples
            parts = []
            with self._scheduled(mdata, val, steps, settings, seed=seed, device=device, encoded=(zs, present)) as extra:
                for t, sel in targets:
                    res = self._sample(mdata, val[sel], target=mods[t], conditions=None, batch_size=None, n_samples=int(n_samples),
                                       steps=steps, seed=seed, device=device, schedule=settings, recentre=recentre,
                                       encoded=([z[sel] for z in zs], present[sel]))
                    parts.append(score_draws(zs[t][sel], res["latent"].transpose(1, 0, 2), levels=(0.8,)))
            return {
                "crps": float(np.average([p["crps"] for p in parts], weights=sizes)),
                "crps_fair": float(np.average([p["crps_fair"] for p in parts], weights=sizes)),
                "energy_score": float(np.mean([p["energy_score"] for p in parts])),
                "coverage80": float(np.average([p["coverage80"] for p in parts], weights=sizes)),
                **extra,
            }

        table = self._choose_sampler(
            score, nfe=nfe, candidates=candidates, scored_on=f"{len(val)} validation patients",
            make_sampler=lambda steps, **settings: (steps, settings),
        )
        self._after_tuning(mdata, val, seed=seed, device=device)
        return table

    @contextlib.contextmanager
    def _scheduled(self, mdata: Any, rows: np.ndarray, steps: int, settings: dict[str, Any], **kwargs: Any):
        """What a model sets for one candidate schedule while :meth:`tune_sampler` scores it;
        yields extra columns of the tuning table (none here)."""
        yield {}

    def _after_tuning(self, mdata: Any, rows: np.ndarray, **kwargs: Any) -> None:
        """Called once :meth:`tune_sampler` has set the winning schedule (nothing to do here)."""

    def sample(
        self,
        mdata: Any | None = None,
        *,
        target: str,
        conditions: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = BaseModel._default_steps,
        seed: int = 0,
        device: str = "auto",
        recentre: bool | None = None,
    ) -> dict[str, Any]:
        """Draw ``n_samples`` versions of ``target`` for patients of ``mdata`` (writes nothing).

        The target's own values are never read. Conditions absent for a patient are masked.

        Parameters
        ----------
        mdata
            Patients (default: the registered object); modalities and features matched by name
            (an absent modality is a masked condition).
        target
            Modality to synthesise.
        conditions
            Modalities to condition on (default: all other modalities). An empty list gives
            unconditional samples.
        indices
            Patients to sample (positions in ``mdata.obs_names``; default all). Repeated
            positions count once; patients come back in their order in ``mdata``
            (``obs_names`` in the result).
        batch_size
            Patients per batch (default 256; ``batch_size * n_samples`` draws at once).
        n_samples
            Draws per patient.
        steps
            Sampler steps per draw on the model's schedule (:attr:`sampler_settings`; Heun
            from ``sigma_max`` by default: ``2 * steps - 1`` network evaluations, ``steps``
            with Euler; Coherent Denoising evaluates each denoiser of the consensus).
        seed
            One random stream per patient from ``(seed, obs_name)``: the same seed gives the
            same numbers for a patient whatever ``batch_size`` and the other patients.
        device
            ``"auto"`` (GPU if present) or a torch device.
        recentre
            ``steps > 1`` and ``n_samples > 1`` (a single draw is left as drawn): shift each patient's latent draws so that their mean is the mean of
            its one-step draws (the denoiser's, or the consensus's, estimate of the conditional
            mean, less noisy than the mean of a few draws); spread and shape stay those of the
            ``steps``-step draws. No extra network evaluation: a draw's one-step draw is the
            first evaluation of its (kept) solve. None (default): the model's setting
            (:attr:`~biodiffuse.models.EDMSamplerMixin.recentres`; the constructor's ``recentre``).

        Returns
        -------
        dict with ``latent`` (n_samples, n, d) standardised latents, ``features``
        (n_samples, n, n_features) decoded to the modality's original units, ``mean`` and
        ``variance`` (n, n_features) and ``latent_mean`` / ``latent_variance`` (n, d) over the
        draws, ``obs_names`` and ``var_names``, and for Coherent Denoising the per-draw
        diagnostics ``retries`` / ``rejected`` (n, n_samples); ``nfe`` (n, n_samples): the
        network evaluations of each draw (a consensus counts each denoiser of a condition the
        patient has, per step and redraw).

        Examples
        --------
        >>> out = model.sample(mdata, target="RPPAArray", conditions=["RNASeq2GeneNorm"], n_samples=10)
        >>> out["features"].shape                     # (n_samples, n_patients, n_features)
        >>> out["mean"], out["variance"]              # per patient and feature, original units
        """
        mdata, rows = self._query(mdata, indices)
        return self._sample(mdata, rows, target=target, conditions=conditions, batch_size=batch_size,
                            n_samples=n_samples, steps=steps, seed=seed, device=device, recentre=recentre)

    def synthesize(
        self,
        mdata: Any | None = None,
        *,
        target: str,
        conditions: Sequence[str] | None = None,
        patients: str = "missing",
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        n_samples: int = 10,
        steps: int = BaseModel._default_steps,
        seed: int = 0,
        key_added: str | None = None,
        overwrite: bool = False,
        device: str = "auto",
        recentre: bool | None = None,
    ) -> AnnData:
        """Synthesise ``target`` and add it to ``mdata`` as a new modality.

        Parameters
        ----------
        mdata
            The MuData (default: the registered one).
        target
            Modality to synthesise.
        conditions
            As :meth:`sample`.
        patients
            ``"missing"``: patients lacking ``target`` (and having at least one condition);
            ``"all"``: every patient with a condition (the measured values are not used).
        indices
            Restrict to these patients (positions in ``mdata.obs_names``).
        batch_size, n_samples, steps, seed, device, recentre
            As :meth:`sample`.
        key_added
            Name of the new modality (default ``f"{target}_{model name}"``); it holds the
            mean in ``X`` (original units), ``layers["variance"]`` and ``obsm["latent"]``
            (mean latent). The run's parameters go to ``mdata.uns[key_added]`` and to the new
            modality's ``uns[key_added]``.
        overwrite
            Replace an existing modality / ``uns`` entry of that name.

        Returns
        -------
        The new modality's AnnData (also ``mdata.mod[key_added]``).

        Examples
        --------
        >>> protein = model.synthesize(mdata, target="RPPAArray")          # patients lacking RPPAArray
        >>> protein is mdata.mod["RPPAArray_MultiConditionDiffusion"]
        True
        >>> model.synthesize(mdata, target="RPPAArray", patients="all", key_added="RPPA_all")
        """
        mdata, rows = self._query(mdata, indices)
        self._check_mudata(mdata)
        t = self._target_index(target)
        if patients not in ("missing", "all"):
            raise ValueError(f"patients must be 'missing' or 'all', got {patients!r}.")
        key = f"{target}_{self._model_name}" if key_added is None else self._key(key_added, target)
        self._check_free(mdata.mod, [key], "mdata.mod", overwrite)
        self._check_free(mdata.uns, [key], "mdata.uns", overwrite)
        conds = self._conditions(target, conditions)
        self._warn_single_draw(n_samples, f"mdata.mod[{key!r}].layers['variance']", stacklevel=3)
        present = self._presence(mdata, rows)
        has_cond = present[:, conds].any(axis=1) if conds else np.ones(len(rows), bool)
        chosen = rows[has_cond & (~present[:, t] if patients == "missing" else True)]
        if len(chosen) == 0:
            raise ValueError(f"No patient to synthesise {target!r} for (patients={patients!r}).")
        recentre = self._check_recentre(recentre, steps, n_samples)
        res = self._sample(mdata, chosen, target=target, conditions=conditions, batch_size=batch_size,
                           n_samples=n_samples, steps=steps, seed=seed, device=device, recentre=recentre)
        new = AnnData(np.asarray(res["mean"], dtype=np.float32))
        new.obs_names = res["obs_names"]
        new.var_names = res["var_names"]
        new.layers["variance"] = np.asarray(res["variance"], dtype=np.float32)
        new.obsm["latent"] = np.asarray(res["latent_mean"], dtype=np.float32)
        params = dict(
            target=target, conditions=[self.registry["modalities"][c] for c in conds], patients=patients,
            n_patients=int(len(chosen)), n_samples=int(n_samples), steps=int(steps), seed=int(seed),
            batch_size=self._batch(batch_size), sampler=self.sampler_settings, recentre=recentre,
            nfe_per_draw=float(np.mean(res["nfe"])),
        )
        if "rejected" in res:
            params["rejected_fraction"] = float(np.mean(res["rejected"]))
        self._record_run(new, key, params)
        mdata.mod[key] = new
        mdata.update()
        self._record_run(mdata, key, params)
        return mdata.mod[key]


class MultiConditionDiffusion(_ModalityDiffusion):
    """One denoiser per target modality, conditioned on any subset of the others.

    Training drops each condition with probability ``1 - observed_fraction`` (random modality
    masking), so one denoiser serves every subset of conditions, the empty one included.

    Parameters
    ----------
    mdata
        A MuData set up with :meth:`setup_mudata`.
    latent_dim
        Per-modality latent size (capped at the training patients - 1, the features and, for
        PCA, the rank).
    encoder
        ``"pca"`` or ``"autoencoder"`` (:class:`~biodiffuse.data.ModalityEncoder`; fitted on
        the training patients at the first :meth:`train`).
    hidden, layers, emb_dim, dropout
        The MLP denoisers.
    observed_fraction
        Keep probability of a present condition in training.
    sigma_data, sigma_max, P_mean, P_std
        EDM settings: data scale, the sampler's first noise level and the lognormal training
        noise (as SpaDiT, the first sampler step is a noise level the network trains on).
    seed
        Initial weights and the encoders.
    solver, sigma_min, rho
        The rest of the sampler (:func:`~biodiffuse.diffusion.edm_sampler`): ODE solver
        (``"heun"``, ``"euler"`` or ``"dpm2m"``), lowest noise level and curvature of the Karras schedule.
        :meth:`~biodiffuse.models.EDMSamplerMixin.set_sampler` changes them, :meth:`tune_sampler`
        chooses them on the validation patients.
    recentre
        Whether :meth:`sample` / :meth:`synthesize` recentre multi-step draws on the mean of
        their one-step draws by default (:attr:`~biodiffuse.models.EDMSamplerMixin.recentres`;
        each call's ``recentre`` overrides it). On the TCGA BRCA patient folds it lowered both
        models' CRPS by 4 % and raised their r_p (``docs/benchmarks.md``, session 17).

    Notes
    -----
    :meth:`train` defaults (``_train_defaults``): ``max_epochs=1000``, ``batch_size=16``,
    ``lr=1e-3``, ``weight_decay=1e-4``, ``train_size=0.85`` (the rest of the patients give the
    validation loss: early stopping and Coherent Denoising's consensus weights),
    ``early_stopping_patience=300``, ``ema_decay=0.99``. Patients are few: small batches, many
    epochs. These and the network's defaults (hidden 128, 2 layers, dropout 0.3) were chosen
    on one TCGA ACC fold: the earlier 256 x 3 layers, dropout 0.1, batches of 64 overfitted
    (MultiConditionDiffusion's R^2 was negative on three of four targets; see
    ``docs/benchmarks.md``). ``train()`` raises when a denoiser has no training patient, and
    :class:`~biodiffuse.train.TrainingDivergedError` on a non-finite loss.

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
        return mm.mcd_pairs(self.registry["modalities"])

    def _sampling(self, t, conds, zs, present, names, n_samples, steps, schedule, *, keep_one_step=False):
        net = self.network[self.registry["modalities"][t]]
        return mm.mcd_prepare(net, t, conds, zs, present), edm_sampler(steps, **schedule, keep_one_step=keep_one_step)


def _check_rejection(rejection: Any) -> None:
    if not 0.0 <= _real("rejection", rejection) < 1.0:
        raise ValueError(f"rejection must lie in [0, 1), got {rejection!r}.")


class CoherentDenoising(_ModalityDiffusion):
    """An ensemble of single-condition denoisers (one per ordered modality pair) with a
    coherence-checked consensus at every reverse step.

    Parameters
    ----------
    mdata
        A MuData set up with :meth:`setup_mudata`.
    threshold
        Cosine distance between two noise predictions above which a step is incoherent (with
        ``rejection`` set, the value until :meth:`train` calibrates it).
    max_incoherent_fraction
        Reject a draw above this fraction of incoherent steps.
    max_retries
        Redraws of a rejected draw (after them the last draw is kept, flagged ``rejected``).
    rejection
        At the end of every :meth:`train`, :meth:`calibrate_threshold` sets ``threshold`` so
        that this share of first draws of the validation patients is rejected (4 draws each,
        ``steps=18`` on the model's schedule), and :meth:`tune_sampler` does so for each
        schedule it scores (keeping the winner's). ``None`` keeps ``threshold`` as given.
    **kwargs
        As :class:`MultiConditionDiffusion` (``observed_fraction`` is not used: each pair
        denoiser trains on the patients that have both of its modalities).

    Notes
    -----
    :meth:`train` defaults as :class:`MultiConditionDiffusion`. Every pair needs training
    patients with both modalities (else ``train()`` raises, naming the pairs). The consensus
    weights are ``softmax(1 / validation loss)`` over the available pairs
    (:meth:`consensus_weights`, from ``registry["val_loss"]``).

    A fixed threshold of 0.5 (the default before session 13) left 89-91 % of draws on TCGA
    BRCA still incoherent after all 10 retries (kept anyway), at 20 times the network
    evaluations of :class:`MultiConditionDiffusion`; hence the threshold is calibrated on the
    validation patients by default (``rejection=0.1``). When no validation patient has two or
    more conditions for a target (or ``train_size=1``), the threshold stays as it is and a
    warning says so.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_brca("train")
    >>> bd.models.CoherentDenoising.setup_mudata(mdata, modalities=["mrna", "mirna", "protein"])
    >>> model = bd.models.CoherentDenoising(mdata)
    >>> model.train()                                       # calibrates the threshold (rejection=0.1)
    >>> test = bd.datasets.tcga_brca("test")                # no protein measured
    >>> model.synthesize(test, target="protein")            # test.mod["protein_CoherentDenoising"]
    """

    _model_name = "CoherentDenoising"
    _require_conditions = True

    def __init__(
        self,
        mdata: Any,
        *,
        threshold: float = 0.5,
        max_incoherent_fraction: float = 0.1,
        max_retries: int = 10,
        rejection: float | None = 0.1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("observed_fraction", 1.0)
        if rejection is not None:
            _check_rejection(rejection)
        if _real("threshold", threshold) < 0:
            raise ValueError(f"threshold (a cosine distance) must be >= 0, got {threshold!r}.")
        coherent_sampler(1, max_incoherent_fraction=max_incoherent_fraction, max_retries=max_retries)  # their checks
        super().__init__(mdata, **kwargs)
        self.init_args.update(
            threshold=float(threshold), max_incoherent_fraction=float(max_incoherent_fraction), max_retries=int(max_retries),
            rejection=None if rejection is None else float(rejection),
        )

    def _after_training(self) -> None:
        """The consensus weights, then the threshold calibrated on the validation patients."""
        super()._after_training()
        rejection = self.init_args.get("rejection")
        if rejection is None or len(self.registry["modalities"]) < 3:
            return  # fixed by the user; or every consensus is a single pair, always coherent
        val = getattr(self, "_validation_rows", None)
        why = "no validation patients (train_size=1)" if val is None else self._why_not_calibrated(self._presence(self.adata, val))
        if why is not None:
            warnings.warn(f"{self._model_name}: threshold left at {self.init_args['threshold']:g}, not calibrated: {why}.", stacklevel=3)
            return
        threshold = self.calibrate_threshold(self.adata, rejection=rejection, indices=val, n_samples=4,
                                             steps=self._default_steps, device="cpu")
        logger.info("%s: threshold %.4g rejects %.0f %% of first draws of %d validation patients",
                    self._model_name, threshold, 100 * rejection, len(val))

    def _pairs(self) -> list[tuple[str, int, list[int]]]:
        return mm.coherent_pairs(self.registry["modalities"])

    def _training_fraction(self) -> float:
        return 1.0

    def consensus_weights(self, *, target: str, conditions: Sequence[str]) -> dict[str, float]:
        """``softmax(1 / validation loss)`` over the pairs ``condition -> target``.

        Parameters
        ----------
        target
            The target modality.
        conditions
            The condition modalities.

        Returns
        -------
        ``{"cond->target": weight}`` summing to 1.

        Examples
        --------
        >>> w = model.consensus_weights(target="protein", conditions=["mrna", "mirna"])
        >>> w["mrna->protein"] + w["mirna->protein"]
        1.0
        """
        return mm.consensus_weights(self.registry.get("val_loss") or {}, [mm.pair_key(c, target) for c in conditions])

    def _consensus_prepare(self, t: int, conds: list[int], zs, present, n_samples: int, threshold: float):
        mods = self.registry["modalities"]
        weights = self.consensus_weights(target=mods[t], conditions=[mods[c] for c in conds])
        keys = [mm.pair_key(mods[c], mods[t]) for c in conds]
        return mm.coherent_prepare(
            [self.network[k] for k in keys], [weights[k] for k in keys], conds, zs, present,
            n_samples=n_samples, threshold=threshold,
        )

    def _sampling(self, t, conds, zs, present, names, n_samples, steps, schedule, *, keep_one_step=False):
        a, mods = self.init_args, self.registry["modalities"]
        if not conds:
            net = self.network[mm.pair_key(mm.NONE, mods[t])]
            return mm.unconditional_prepare(net), edm_sampler(steps, **schedule, keep_one_step=keep_one_step)
        lacking = ~present[:, conds].any(axis=1)
        if lacking.any():
            raise ValueError(
                f"{int(lacking.sum())} patient(s) have none of the conditions {[mods[c] for c in conds]} "
                f"(e.g. {list(names[lacking][:5])}); pass indices= of patients that have one, or conditions=[] "
                f"for unconditional draws."
            )
        rec = self.registry.get("threshold_calibration") or {}
        if "steps" in rec and not getattr(self, "_tuning", False) and (int(rec["steps"]), dict(rec["sampler"])) != (int(steps), dict(schedule)):
            warnings.warn(
                f"{self._model_name}: the threshold {a['threshold']:.4g} was calibrated for {rec['steps']} steps of {rec['sampler']}; "
                f"sampling with {steps} steps of {dict(schedule)} rejects another share of draws than {rec['rejection']:g}. "
                f"calibrate_threshold(steps={steps}) calibrates it for these.", UserWarning, stacklevel=4,
            )
        prepare = self._consensus_prepare(t, conds, zs, present, n_samples, a["threshold"])
        sampler = coherent_sampler(
            steps, max_incoherent_fraction=a["max_incoherent_fraction"], max_retries=a["max_retries"], **schedule,
            keep_one_step=keep_one_step,
        )
        return prepare, sampler

    @torch.no_grad()
    def calibrate_threshold(
        self,
        mdata: Any | None = None,
        *,
        rejection: float = 0.1,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        n_samples: int = 4,
        steps: int = BaseModel._default_steps,
        seed: int = 0,
        device: str = "auto",
    ) -> float:
        """Set ``threshold`` so that about ``rejection`` of first draws are rejected.

        For every target, the patients of ``mdata`` with at least two of the other modalities
        (a consensus of one denoiser is always coherent) are sampled ``n_samples`` times from
        all their conditions (the first draws of :meth:`sample` with the same ``seed``,
        ``n_samples`` and ``steps``), recording each draw's largest pairwise cosine distance
        per step; a draw's critical threshold is the smallest one at which it is kept (given
        ``max_incoherent_fraction``). The threshold becomes the ``1 - rejection`` quantile of
        the critical thresholds, pooled over targets.

        Parameters
        ----------
        mdata
            Patients to calibrate on (default: the registered ones).
        rejection
            Wanted fraction of rejected first draws, in [0, 1).
        indices
            Restrict to these patients (positions in ``mdata.obs_names``).
        batch_size, n_samples, steps, seed, device
            As :meth:`sample` (use the ``steps`` you will sample with).

        Returns
        -------
        The new threshold (also in ``init_args["threshold"]``, saved with the model). The draws
        use the model's current sampler (:attr:`sampler_settings`); it and ``steps`` are kept in
        ``registry["threshold_calibration"]``, and :meth:`sample` warns when it samples with
        others (the share of rejected draws then differs). :meth:`tune_sampler` calibrates the
        threshold for every schedule it scores and keeps the winner's.

        Examples
        --------
        >>> model.train()
        >>> threshold = model.calibrate_threshold(rejection=0.1, n_samples=4, steps=18)
        >>> model.init_args["threshold"] == threshold
        True
        """
        _check_rejection(rejection)
        check_count(n_samples, "n_samples")
        mdata, rows = self._query(mdata, indices)
        schedule = self.sampler_settings
        threshold = self._calibrated(mdata, rows, rejection=rejection, steps=steps, schedule=schedule, n_samples=n_samples,
                                     seed=seed, device=device, batch_size=batch_size)
        self._set_threshold(threshold, rejection=rejection, n_patients=len(rows), steps=steps, sampler=schedule)
        return threshold

    def _calibrated(self, mdata: Any, rows: np.ndarray, *, rejection: float, steps: int, schedule: dict[str, Any], n_samples: int,
                    seed: int, device: str, batch_size: int | None = None,
                    encoded: tuple[list[np.ndarray], np.ndarray] | None = None) -> float:
        """The threshold that rejects ``rejection`` of the first draws of ``rows`` on ``schedule``
        (``encoded``: their ``_latents`` when already computed)."""
        a, mods = self.init_args, self.registry["modalities"]
        zs, present = self._latents(mdata, rows) if encoded is None else encoded
        keys = np.asarray(self._row_keys(np.asarray(mdata.obs_names)[rows]), dtype=object)
        sampler = mm.critical_sampler(steps, a["max_incoherent_fraction"], **schedule)
        critical = []
        with self._on_device(device) as (_, dev):
            for t in range(len(mods)):
                conds = [c for c in range(len(mods)) if c != t]
                sel = np.flatnonzero(present[:, conds].sum(axis=1) >= 2)
                if len(sel) == 0:
                    continue
                prepare = self._consensus_prepare(t, conds, [z[sel] for z in zs], present[sel], int(n_samples), float("inf"))
                out = sample_rows(
                    prepare, len(sel), (self.registry["dims"][t],), seeds=row_seeds(seed, keys[sel]), sampler=sampler,
                    n_samples=n_samples, batch_size=self._batch(batch_size), device=dev, reducer=Moments(len(sel)),
                )
                critical.append(out["critical"].ravel())
        if not critical:
            raise ValueError("No patient has two or more conditions for any target; nothing to calibrate on.")
        return float(np.quantile(np.concatenate(critical), 1.0 - rejection))

    def _set_threshold(self, threshold: float, *, rejection: float, n_patients: int, steps: int, sampler: dict[str, Any]) -> None:
        self.init_args["threshold"] = float(threshold)
        self.registry["threshold_calibration"] = dict(
            rejection=float(rejection), n_patients=int(n_patients), threshold=float(threshold), steps=int(steps), sampler=dict(sampler),
        )

    def _why_not_calibrated(self, present: np.ndarray) -> str | None:
        """Why the threshold of patients with ``present`` modalities is not calibrated (None: it is)."""
        if self.init_args.get("rejection") is None:
            return "rejection=None"
        if len(self.registry["modalities"]) < 3:
            return "every consensus is a single pair (two modalities)"
        if not any((np.delete(present, t, axis=1).sum(axis=1) >= 2).any() for t in range(present.shape[1])):
            return f"none of the {len(present)} validation patients has two or more conditions for a target"
        return None

    @contextlib.contextmanager
    def _scheduled(self, mdata: Any, rows: np.ndarray, steps: int, settings: dict[str, Any], *, seed: int, device: str,
                   encoded: tuple[list[np.ndarray], np.ndarray]):
        """While :meth:`tune_sampler` scores a schedule: the threshold calibrated for it (column ``threshold``)."""
        if self._why_not_calibrated(encoded[1]) is not None:
            yield {}
            return
        before = self.init_args["threshold"]
        self.init_args["threshold"] = self._calibrated(
            mdata, rows, rejection=self.init_args["rejection"], steps=steps, schedule=settings, n_samples=4, seed=seed,
            device=device, encoded=encoded,
        )
        self._tuning = True
        try:
            yield {"threshold": self.init_args["threshold"]}
        finally:
            self.init_args["threshold"] = before
            self._tuning = False

    def _after_tuning(self, mdata: Any, rows: np.ndarray, **kwargs: Any) -> None:
        best = self.registry["sampler_tuning"]
        if "threshold" in best and np.isfinite(best["threshold"]):
            self._set_threshold(best["threshold"], rejection=self.init_args["rejection"], n_patients=len(rows),
                                steps=int(best["steps"]), sampler=self.sampler_settings)

