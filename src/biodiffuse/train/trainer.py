"""Trainer set-up shared by all models: devices, precision, EMA, early stopping,
checkpoints, seeds, progress bar and a loss history."""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Mapping

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, ModelCheckpoint

from .data import make_loader
from .module import GenerativeModule

__all__ = ["fit", "LossHistory"]

logger = logging.getLogger("biodiffuse")


class LossHistory(Callback):
    """Collects the epoch-level ``train_loss`` and ``val_loss``."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def _put(self, trainer: pl.Trainer, key: str) -> None:
        if trainer.sanity_checking or key not in trainer.callback_metrics:
            return
        self.rows.setdefault(trainer.current_epoch, {})[key] = float(trainer.callback_metrics[key])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._put(trainer, "train_loss")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._put(trainer, "val_loss")

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame.from_dict(self.rows, orient="index")
        df.index.name = "epoch"
        return df.sort_index()


def fit(
    module: GenerativeModule,
    train_tensors: Mapping[str, torch.Tensor],
    val_tensors: Mapping[str, torch.Tensor] | None,
    *,
    max_epochs: int,
    batch_size: int = 256,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    precision: str | int = "32-true",
    early_stopping: bool = True,
    early_stopping_patience: int = 50,
    ema_decay: float | None = 0.999,
    checkpoint_dir: str | None = None,
    enable_progress_bar: bool = True,
    seed: int | None = 0,
    trainer_kwargs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Train ``module`` with Lightning and return the per-epoch loss history.

    Parameters
    ----------
    module
        The Lightning module (network + objective).
    train_tensors, val_tensors
        Aligned tensors per field; ``val_tensors=None`` trains without validation (and
        without early stopping).
    max_epochs
        Upper bound on epochs.
    batch_size
        Rows per batch.
    accelerator, devices, strategy, precision
        Passed to :class:`lightning.pytorch.Trainer` (``"auto"`` picks a GPU when present;
        ``strategy="ddp"`` for several GPUs from a script, ``"ddp_notebook"`` in notebooks;
        ``precision="bf16-mixed"`` or ``"16-mixed"`` for mixed precision).
    early_stopping, early_stopping_patience
        Stop when ``val_loss`` has not improved for this many epochs.
    ema_decay
        Exponential moving average of the weights (used for validation and kept at the end);
        ``None`` disables it.
    checkpoint_dir
        Where to keep the best checkpoint by ``val_loss``; ``None`` keeps none.
    enable_progress_bar
        Show Lightning's progress bar.
    seed
        Seeds Python, numpy and torch before training (``None``: leave them).
    trainer_kwargs
        Any further :class:`~lightning.pytorch.Trainer` arguments.
    """
    if seed is not None:
        pl.seed_everything(seed, workers=True, verbose=False)
    history = LossHistory()
    callbacks: list[Callback] = [history]
    has_val = val_tensors is not None and len(next(iter(val_tensors.values()))) > 0
    if early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"))
    if ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=ema_decay, use_buffers=False))
    if checkpoint_dir is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=checkpoint_dir, monitor="val_loss" if has_val else None, save_top_k=1)
        )
    kwargs: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=checkpoint_dir is not None,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=checkpoint_dir or tempfile.gettempdir(),
        log_every_n_steps=1,
    )
    kwargs.update(trainer_kwargs or {})
    trainer = pl.Trainer(**kwargs)
    logger.info("biodiffuse: training on %s (%s device(s))", trainer.accelerator.__class__.__name__, trainer.num_devices)
    train_loader = make_loader(train_tensors, batch_size, shuffle=True)
    val_loader = make_loader(val_tensors, batch_size, shuffle=False) if has_val else None
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    return history.frame()
