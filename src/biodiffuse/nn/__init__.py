"""Network building blocks: embeddings, residual blocks, channel attention, the MCD UNet."""

from .attention import ChannelAttention, OutputRecalibration, SpatialAttention, SqueezeExcitation
from .dit import DiTBlock, GeneDiT, ReferenceAttention
from .blocks import Downsample, ResBlock, UNetBlock, Upsample
from .conv import Conv2d
from .paths import fast_paths, fast_paths_enabled
from .mlp import MLPDenoiser
from .patchgan import PatchDiscriminator
from .embeddings import NoiseEmbedding, PositionalEmbedding
from .image_unet import ConditionalImageUNet
from .rna_encoder import RNAEncoder
from .unet import ConditionEncoder, MCDUNet

__all__ = [
    "ChannelAttention",
    "Conv2d",
    "fast_paths",
    "fast_paths_enabled",
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
    "DiTBlock",
    "GeneDiT",
    "MLPDenoiser",
    "PatchDiscriminator",
    "ReferenceAttention",
    "MCDUNet",
    "ConditionalImageUNet",
    "RNAEncoder",
]
