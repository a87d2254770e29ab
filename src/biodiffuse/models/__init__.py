"""User-facing models, one file each."""

from ._edm_sampling import EDMSamplerMixin
from .base import BaseModel
from .geneflow import GeneFlow
from .mcd import MCD
from .multimodal import CoherentDenoising, MultiConditionDiffusion
from .spadit import SpaDiT
from .staindiffuser import StainDiffuser

__all__ = ["BaseModel", "CoherentDenoising", "EDMSamplerMixin", "GeneFlow", "MCD", "MultiConditionDiffusion", "SpaDiT", "StainDiffuser"]
