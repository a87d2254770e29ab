"""Training shared by all models: the Lightning module, the trainer set-up, in-memory data."""

from .data import TensorDictDataset, make_loader
from .module import GenerativeModule, TrainingDivergedError
from .trainer import EpochLine, LossHistory, fit

__all__ = ["TensorDictDataset", "make_loader", "GenerativeModule", "TrainingDivergedError", "EpochLine", "LossHistory", "fit"]
