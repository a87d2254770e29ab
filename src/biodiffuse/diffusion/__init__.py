"""Generative families over a denoiser: EDM (preconditioning, loss, Heun sampler), channel
masking, the coherent consensus of several denoisers, and the one batched posterior loop
(:func:`sample_rows`) every model samples through."""

from .edm import SOLVERS, EDMLoss, EDMPrecond, check_count, heun_sampler, karras_sigmas, network_evaluations
from .ensemble import CoherentConsensus, coherent_sample, coherent_sampler
from .flow import FLOW_METHODS, FlowLoss, flow_evaluations, flow_sampler, flow_solve
from .masking import masked_condition, random_channel_mask
from .tuning import choose_schedule, schedule_grid
from .samplers import FAMILIES, evaluations_for, sampler_for
from .posterior import Batch, FixedChunks, Moments, Recentred, RowNoise, edm_sampler, point_sampler, row_seeds, sample_rows

__all__ = [
    "Batch",
    "FixedChunks",
    "Moments",
    "Recentred",
    "RowNoise",
    "edm_sampler",
    "point_sampler",
    "row_seeds",
    "sample_rows",
    "FAMILIES",
    "sampler_for",
    "evaluations_for",
    "choose_schedule",
    "schedule_grid",
    "CoherentConsensus",
    "coherent_sample",
    "coherent_sampler",
    "EDMLoss",
    "EDMPrecond",
    "check_count",
    "heun_sampler",
    "karras_sigmas",
    "network_evaluations",
    "SOLVERS",
    "masked_condition",
    "random_channel_mask",
    "FLOW_METHODS",
    "FlowLoss",
    "flow_evaluations",
    "flow_sampler",
    "flow_solve",
]
