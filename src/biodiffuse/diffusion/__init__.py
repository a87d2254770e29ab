"""Generative families over a denoiser: EDM (preconditioning, loss, Heun sampler), channel
masking and the coherent consensus of several denoisers."""

from .edm import EDMLoss, EDMPrecond, heun_sampler, karras_sigmas, network_evaluations
from .ensemble import CoherentConsensus, coherent_sample
from .masking import masked_condition, random_channel_mask

__all__ = [
    "CoherentConsensus",
    "coherent_sample",
    "EDMLoss",
    "EDMPrecond",
    "heun_sampler",
    "karras_sigmas",
    "network_evaluations",
    "masked_condition",
    "random_channel_mask",
]
