"""The Lightning module shared by every biodiffuse model.

A model file supplies a network and an *objective*: a picklable callable
``objective(network, batch, generator) -> loss``. This module only optimises it, logs
``train_loss`` / ``val_loss`` and makes validation deterministic (fixed noise per batch),
so that early stopping compares like with like across epochs.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import nn

__all__ = ["GenerativeModule"]


class GenerativeModule(pl.LightningModule):
    """Optimise ``objective(network, batch, generator)``.

    Parameters
    ----------
    network
        The module that holds all trainable weights (e.g. an ``EDMPrecond``).
    objective
        Callable returning a scalar loss for a batch (dict of tensors).
    lr
        Adam learning rate.
    weight_decay
        AdamW weight decay (0 gives Adam).
    lr_warmup_steps
        Linear warm-up of the learning rate.
    val_repeats
        Noise draws per validation batch (averaged) to make the validation loss less noisy.
    """

    def __init__(
        self,
        network: nn.Module,
        objective: Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator | None], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        val_repeats: int = 4,
    ) -> None:
        super().__init__()
        self.network = network
        self.objective = objective
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_warmup_steps = lr_warmup_steps
        self.val_repeats = val_repeats

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.objective(self.network, batch, None)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._bs(batch))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(12345 + batch_idx)
        loss = torch.stack([self.objective(self.network, batch, gen) for _ in range(self.val_repeats)]).mean()
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=self._bs(batch))
        return loss

    @staticmethod
    def _bs(batch: dict[str, torch.Tensor]) -> int:
        return len(next(iter(batch.values())))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_warmup_steps <= 0:
            return opt
        warm = self.lr_warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
