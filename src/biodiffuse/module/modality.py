"""The modality models' maths without AnnData: networks, objective, conditions, consensus
weights and the ``prepare`` functions of the shared sampling loop.

* **Networks** (:func:`build_network`): one EDM-preconditioned :class:`~biodiffuse.nn.MLPDenoiser`
  per *denoiser key*. Multi-condition diffusion has one per target modality, conditioned on
  all others (:func:`mcd_pairs`); Coherent Denoising one per ordered pair ``"c->t"`` plus an
  unconditional ``"none->t"`` per target (:func:`coherent_pairs`). Each denoiser is a
  ``(key, target index, condition indices)`` triple.
* **Objective** (:class:`ModalityObjective`): the summed EDM losses of all denoisers; batches
  hold ``z{i}`` latents (0 where absent) and the ``present`` mask.
* **Conditions**: a denoiser's condition is ``([z_c for c in its conditions], mask)``; an
  absent modality contributes its mask bit 0, never a value (:func:`condition`).
* **Sampling**: :func:`mcd_prepare` / :func:`unconditional_prepare` (for
  :func:`~biodiffuse.diffusion.edm_sampler`) and :func:`coherent_prepare` (the batch's
  denoiser is the consensus factory of :func:`~biodiffuse.diffusion.coherent_sampler`);
  :func:`critical_sampler` records each draw's critical coherence threshold.
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..diffusion import Batch, CoherentConsensus, EDMLoss, EDMPrecond, check_count, heun_sampler
from ..nn import MLPDenoiser

__all__ = [
    "NONE",
    "pair_key",
    "mcd_pairs",
    "coherent_pairs",
    "build_network",
    "rows_of",
    "ModalityObjective",
    "condition",
    "denoiser_loss",
    "consensus_weights",
    "mcd_prepare",
    "unconditional_prepare",
    "coherent_prepare",
    "critical_sampler",
]

NONE = "none"
Pair = tuple[str, int, list[int]]


def pair_key(cond: str, target: str) -> str:
    """Key of a single-condition denoiser, ``"cond->target"`` (``cond="none"``: unconditional)."""
    return f"{cond}->{target}"


def mcd_pairs(modalities: Sequence[str]) -> list[Pair]:
    """One denoiser per target, conditioned on every other modality (key: the target's name)."""
    m = len(modalities)
    return [(modalities[t], t, [c for c in range(m) if c != t]) for t in range(m)]


def coherent_pairs(modalities: Sequence[str]) -> list[Pair]:
    """One single-condition denoiser per ordered pair, then one unconditional per target."""
    pairs = [(pair_key(modalities[c], modalities[t]), t, [c]) for t, c in itertools.permutations(range(len(modalities)), 2)]
    return pairs + [(pair_key(NONE, m), t, []) for t, m in enumerate(modalities)]


def build_network(
    pairs: Sequence[Pair], dims: Sequence[int], *, hidden: int, layers: int, emb_dim: int, dropout: float, sigma_data: float
) -> nn.ModuleDict:
    """``ModuleDict`` key -> ``EDMPrecond(MLPDenoiser(d_t, [d_c ...]))`` (the saved models' layout)."""
    nets = {}
    for key, t, conds in pairs:
        mlp = MLPDenoiser(dims[t], [dims[c] for c in conds], hidden=hidden, layers=layers, emb_dim=emb_dim, dropout=dropout)
        nets[key] = EDMPrecond(mlp, sigma_data=sigma_data)
    return nn.ModuleDict(nets)


def rows_of(present: torch.Tensor | np.ndarray, t: int, conds: Sequence[int], require_conditions: bool):
    """Rows a denoiser trains on: those with the target (and, with ``require_conditions``,
    with all of its conditions)."""
    rows = present[:, t]
    if require_conditions and conds:
        rows = rows & present[:, list(conds)].all(1)
    return rows


class ModalityObjective:
    """Summed EDM losses of all denoisers of a modality model.

    Batches hold ``z{i}`` (B, d_i) latents (0 where absent) and ``present`` (B, M). A row
    counts for a denoiser when it has the target (and, with ``require_conditions``, all of
    the denoiser's conditions: Coherent Denoising's single-condition denoisers). Conditions
    are shown when present and, with ``observed_fraction < 1``, each is dropped at random
    (random modality masking).

    Parameters
    ----------
    pairs
        ``(key, target index, condition indices)`` per denoiser.
    observed_fraction
        Probability of keeping a present condition in training.
    sigma_data, P_mean, P_std
        EDM loss settings.
    require_conditions
        Train a denoiser only on rows that have all of its conditions.
    """

    def __init__(
        self,
        pairs: list[Pair],
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
            rows = rows_of(present, t, conds, self.require_conditions)
            if not bool(rows.any()):
                continue
            m = present[rows][:, conds] if conds else None
            if m is not None and self.observed_fraction < 1.0:
                keep = torch.rand(m.shape, generator=generator, device=m.device) < self.observed_fraction
                m = m & keep
            cond = ([batch[f"z{c}"][rows] for c in conds], m) if conds else None
            total = total + self.loss(network[key], batch[f"z{t}"][rows], cond, generator=generator)
        return total


@torch.no_grad()
def denoiser_loss(objective: ModalityObjective, network: nn.ModuleDict, batch: dict[str, torch.Tensor], repeats: int = 16) -> float:
    """Mean loss of ``objective`` on ``batch`` over ``repeats`` fixed noise draws (NaN when no
    row counts for it)."""
    gen = torch.Generator().manual_seed(0)
    vals = [float(objective(network, batch, gen)) for _ in range(repeats)]
    return float(np.mean(vals)) if any(v > 0 for v in vals) else float("nan")


def consensus_weights(val_loss: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
    """``softmax(1 / validation loss)`` over ``keys`` (a non-finite or non-positive loss counts
    as ``1 / loss = 0``)."""
    inv = np.array([1.0 / val_loss[k] if np.isfinite(val_loss.get(k, np.nan)) and val_loss[k] > 0 else 0.0 for k in keys])
    if not len(inv):
        return {}
    w = np.exp(inv - inv.max())
    return dict(zip(keys, (w / w.sum()).tolist()))


def condition(zs: Sequence[torch.Tensor], mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A denoiser's condition: the condition latents and the (B, K) mask of those present."""
    return list(zs), mask


def _rows(arr: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr[rows])).to(device)


def mcd_prepare(
    denoiser: nn.Module, t: int, conds: Sequence[int], zs: Sequence[np.ndarray], present: np.ndarray
) -> Callable[[np.ndarray, torch.device], Batch]:
    """``prepare`` for multi-condition diffusion of target ``t``: the denoiser sees every other
    modality, masked unless it is among ``conds`` and present for the row.

    ``zs`` are the (n, d_i) float32 latents and ``present`` the (n, M) mask of the query rows.
    """
    others = [c for c in range(len(zs)) if c != t]
    mask = np.zeros((len(present), len(others)), dtype=bool)
    for j, c in enumerate(others):
        mask[:, j] = present[:, c] & (c in conds)

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        return Batch(denoiser, condition([_rows(zs[c], rows, device) for c in others], _rows(mask, rows, device)))

    return prepare


def unconditional_prepare(denoiser: nn.Module) -> Callable[[np.ndarray, torch.device], Batch]:
    """``prepare`` of an unconditional denoiser."""

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        return Batch(denoiser, None)

    return prepare


def coherent_prepare(
    denoisers: Sequence[nn.Module],
    weights: Sequence[float],
    conds: Sequence[int],
    zs: Sequence[np.ndarray],
    present: np.ndarray,
    *,
    n_samples: int,
    threshold: float,
) -> Callable[[np.ndarray, torch.device], Batch]:
    """``prepare`` for Coherent Denoising: the batch's denoiser is a factory of
    :class:`~biodiffuse.diffusion.CoherentConsensus` over the pairs ``conds[k] -> target``
    (``denoisers[k]``, weight ``weights[k]``) for given draws of the batch (draw ``j`` belongs
    to the batch's row ``j // n_samples``). A pair applies to a row when its condition is
    present; every row needs one."""
    avail_all = present[:, list(conds)]
    if not avail_all.any(axis=1).all():
        raise ValueError("Every row needs at least one present condition.")

    def prepare(rows: np.ndarray, device: torch.device) -> Batch:
        zc = [_rows(zs[c], rows, device) for c in conds]
        avail = _rows(avail_all, rows, device)
        w = torch.tensor(list(weights), dtype=torch.float32, device=device)

        def make(draws: torch.Tensor) -> CoherentConsensus:
            owner = draws.to(device) // n_samples
            ones = torch.ones((len(owner), 1), device=device)
            conds_r = [condition([z[owner]], ones) for z in zc]
            return CoherentConsensus(list(denoisers), conds_r, w, avail[owner], threshold=threshold)

        return Batch(make, None)

    return prepare


def critical_sampler(steps: int, max_incoherent_fraction: float, **schedule: object) -> Callable:
    """A loop sampler for calibration: one pass of the consensus (no redraws) per draw, on the
    schedule ``schedule`` (``solver``, ``sigma_max``, ``sigma_min``, ``rho`` of
    :func:`~biodiffuse.diffusion.heun_sampler`), with diagnostic ``critical``: the smallest
    threshold at which the draw is kept
    (:meth:`~biodiffuse.diffusion.CoherentConsensus.critical_threshold`)."""
    check_count(steps)

    def sampler(make: Callable, latents: torch.Tensor, cond: object, redraw: Callable) -> tuple[torch.Tensor, dict]:
        consensus = make(torch.arange(latents.shape[0]))
        x = heun_sampler(consensus, latents, None, steps=int(steps), **schedule)
        return x, {"critical": consensus.critical_threshold(max_incoherent_fraction)}

    return sampler
