"""Network building blocks: embeddings, residual blocks, channel attention, the MCD UNet."""

from .attention import ChannelAttention, OutputRecalibration, SpatialAttention, SqueezeExcitation
from .blocks import Downsample, ResBlock, UNetBlock, Upsample
from .embeddings import NoiseEmbedding, PositionalEmbedding
from .unet import ConditionEncoder, MCDUNet

__all__ = [
    "ChannelAttention",
    "OutputRecalibration",
    "SpatialAttention",
    "SqueezeExcitation",
    "Downsample",
    "ResBlock",
    "UNetBlock",
    "Upsample",
    "NoiseEmbedding",
    "PositionalEmbedding",
    "ConditionEncoder",
    "MCDUNet",
]
