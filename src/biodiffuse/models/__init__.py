"""User-facing models, one file each."""

from .base import BaseModel
from .mcd import MCD

__all__ = ["BaseModel", "MCD"]
