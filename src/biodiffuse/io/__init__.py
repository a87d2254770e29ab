"""Readers for imaging data: multiplexed channel TIFFs (MIBI, IMC, CODEX) into SpatialData."""

from .channels import aggregate_by_labels, read_channel_tiffs

__all__ = ["aggregate_by_labels", "read_channel_tiffs"]
