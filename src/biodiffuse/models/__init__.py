"""User-facing models, one file each."""

from .base import BaseModel
from .mcd import MCD
from .multimodal import CoherentDenoising, MultiConditionDiffusion
from .spadit import SpaDiT

__all__ = ["BaseModel", "CoherentDenoising", "MCD", "MultiConditionDiffusion", "SpaDiT"]
