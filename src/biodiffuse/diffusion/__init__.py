"""Generative families over a denoiser: EDM (preconditioning, loss, Heun sampler) and channel masking."""

from .edm import EDMLoss, EDMPrecond, heun_sampler, karras_sigmas, network_evaluations
from .masking import masked_condition, random_channel_mask

__all__ = [
    "EDMLoss",
    "EDMPrecond",
    "heun_sampler",
    "karras_sigmas",
    "network_evaluations",
    "masked_condition",
    "random_channel_mask",
]
