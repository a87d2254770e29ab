"""The Lightning module shared by every biodiffuse model.

A model file supplies a network and an *objective*: a picklable callable
``objective(network, batch, generator) -> loss``. This module only optimises it, logs
``train_loss`` / ``val_loss``, makes validation deterministic (fixed noise per batch), so
that early stopping compares like with like across epochs, and stops a diverged run with
:class:`TrainingDivergedError` instead of training on NaN.

**Adversarial objectives** (pix2pix) use the same module: an objective with an ``adversary``
(an ``nn.Module``, e.g. :class:`~biodiffuse.nn.PatchDiscriminator`) and a method
``adversarial_losses(network, batch, generator) -> (generator_loss, adversary_loss)`` is
optimised by alternating steps, the network's then the adversary's, each with its own Adam
(betas 0.5, 0.999, as pix2pix) on one forward pass per batch; ``objective(network, batch,
generator)`` itself is then the validation loss (e.g. L1 to the real image). The adversary is
part of this module (moved to the device, checked for finite weights) but not of the model's
saved network.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import nn

__all__ = ["GenerativeModule", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights.

    Attributes ``epoch``, ``step`` (optimiser steps taken when it was detected) and ``loss``
    (the training loss of that batch) locate it.

    Parameters
    ----------
    message
        The error message.
    epoch, step, loss
        Where it happened: the epoch, the optimiser steps taken and the batch's training loss.

    Examples
    --------
    >>> try:
    ...     model.train(lr=10.0)
    ... except bd.train.TrainingDivergedError as err:
    ...     print(err.epoch, err.step, err.loss)
    """

    def __init__(self, message: str, *, epoch: int, step: int, loss: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss


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
    check_finite
        After every training batch, check that the loss and all weights are finite and raise
        :class:`TrainingDivergedError` if not (one host synchronisation per step; under DDP
        the decision is shared by all ranks, so they stop together).

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8))
    >>> edm = bd.diffusion.EDMLoss()
    >>> module = bd.train.GenerativeModule(net, lambda n, batch, g: edm(n, batch["x"], generator=g), lr=1e-3)
    >>> history = bd.train.fit(module, {"x": x_train}, {"x": x_val}, max_epochs=100)
    """

    def __init__(
        self,
        network: nn.Module,
        objective: Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator | None], torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        val_repeats: int = 4,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.network = network
        self.objective = objective
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_warmup_steps = lr_warmup_steps
        self.val_repeats = val_repeats
        self.check_finite = check_finite
        self._last_loss: torch.Tensor | None = None
        adversary = getattr(objective, "adversary", None)
        if adversary is not None and not isinstance(adversary, nn.Module):
            raise TypeError(f"objective.adversary must be an nn.Module, got {type(adversary).__name__}.")
        self.adversary = adversary
        self.automatic_optimization = adversary is None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.adversary is not None:
            loss = self._adversarial_step(batch)
        else:
            loss = self.objective(self.network, batch, None)
        self._last_loss = loss.detach()
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._bs(batch))
        return loss

    def _adversarial_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One step of the network, then one of the adversary. The adversary's loss reads the
        generated images detached, so the network's step (which changes only the network's
        weights) leaves its graph valid."""
        opt_net, opt_adv = self.optimizers()
        net_loss, adv_loss = self.objective.adversarial_losses(self.network, batch, None)
        opt_net.zero_grad()
        self.manual_backward(net_loss)
        opt_net.step()
        opt_adv.zero_grad()  # drops the adversary gradients of the network's loss
        self.manual_backward(adv_loss)
        opt_adv.step()
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers is not None else []:
            sched.step()
        self.log("adversary_loss", adv_loss.detach(), on_step=False, on_epoch=True, batch_size=self._bs(batch))
        return net_loss.detach()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Runs after the optimiser step: one check (one sync) covers a non-finite loss of this
        # batch and weights that the step made non-finite.
        if not self.check_finite or self._last_loss is None:
            return
        loss = self._last_loss
        self._last_loss = None
        flags = [torch.isfinite(loss).all()] + [torch.isfinite(p).all() for p in self.parameters()]
        ok = bool(torch.stack(flags).all())
        trainer = self._trainer
        if trainer is not None:
            ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
        if ok:
            return
        loss_value = float(loss.float().mean()) if loss.numel() else float("nan")
        epoch = trainer.current_epoch if trainer is not None else -1
        step = trainer.global_step if trainer is not None else -1
        if not torch.isfinite(loss).all():
            what = f"the training loss is {loss_value}"
        else:
            what = f"the weights became non-finite after the optimiser step (training loss {loss_value})"
        raise TrainingDivergedError(
            f"Training diverged at epoch {epoch}, step {step} (batch {batch_idx} of the epoch): {what}. "
            f"Try a lower learning rate (lr={self.lr:g} now), check the input for extreme values "
            "(NaN, inf or very large numbers), or train in full precision with precision=\"32-true\".",
            epoch=epoch, step=step, loss=loss_value,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(12345 + batch_idx)
        loss = torch.stack([self.objective(self.network, batch, gen) for _ in range(self.val_repeats)]).mean()
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=self._bs(batch))
        return loss

    def on_validation_epoch_end(self) -> None:
        """A non-finite validation loss (finite weights whose outputs overflow, e.g. after a
        huge learning rate) is a divergence too: raise instead of letting early stopping end
        the run quietly with a broken model."""
        trainer = self._trainer
        if not self.check_finite or trainer is None or trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val_loss")
        if val is None or bool(torch.isfinite(val).all()):
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        raise TrainingDivergedError(
            f"Training diverged at epoch {epoch}, step {step}: the validation loss is {float(val)} "
            f"although the weights are finite (the network's outputs overflow). Try a lower learning "
            f"rate (lr={self.lr:g} now), check the input for extreme values (NaN, inf or very large "
            "numbers), or train in full precision with precision=\"32-true\".",
            epoch=epoch, step=step, loss=float(val),
        )

    @staticmethod
    def _bs(batch: dict[str, torch.Tensor]) -> int:
        return len(next(iter(batch.values())))

    def configure_optimizers(self) -> Any:
        warm = self.lr_warmup_steps

        def warmup(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))

        if self.adversary is not None:
            opts = [_adamw(m, lr=self.lr, weight_decay=self.weight_decay, betas=(0.5, 0.999)) for m in (self.network, self.adversary)]
            return (opts, [warmup(o) for o in opts]) if warm > 0 else opts
        opt = _adamw(self.network, lr=self.lr, weight_decay=self.weight_decay)
        if warm <= 0:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup(opt), "interval": "step"}}


def _adamw(module: nn.Module, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW over ``module``'s parameters, with the fused kernel where torch has one (float
    parameters on CPU or CUDA): one update for all tensors instead of a loop over them, the
    same step. On MCD's table network it saved 10-30 % of a training step on CPU
    (``benchmarks/mcd_speed.py``)."""
    params = list(module.parameters())
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused, **kwargs)
