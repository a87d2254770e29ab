"""Trainer set-up shared by all models: devices, precision, EMA, early stopping,
checkpoints and resume, seeds (without touching the global random state), a stop on
divergence, a clean stop on Ctrl+C, progress bar and a loss history."""

from __future__ import annotations

import logging
import random
import signal
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from torch.utils.data import DataLoader, Sampler

from .._settings import settings
from .data import TensorDictDataset, make_loader
from .module import GenerativeModule

__all__ = ["EpochLine", "LossHistory", "fit", "quiet_lightning"]

logger = logging.getLogger("biodiffuse")

class LossHistory(Callback):
    """Collects the epoch-level ``train_loss`` and ``val_loss`` (index: the trainer's epoch).

    Examples
    --------
    >>> hist = bd.train.LossHistory()
    >>> bd.train.fit(module, train_tensors, val_tensors, max_epochs=50, callbacks=[hist])   # instead of the internal one
    >>> hist.frame()                                  # train_loss, val_loss per epoch
    """

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


class EpochLine(Callback):
    """One log line (``"biodiffuse"`` logger, INFO) per block of epochs: epoch, losses, seconds;
    about ``lines`` lines per run, at least one every ``interval`` seconds (a slow run is never
    silent for long), and always the last epoch.

    Parameters
    ----------
    max_epochs
        The run's epochs (sets the block length).
    lines
        About this many lines per run.
    interval
        Also write a line once this many seconds have passed since the last one.

    Examples
    --------
    >>> bd.train.fit(module, train, val, max_epochs=3000, callbacks=[bd.train.EpochLine(3000, interval=10)])
    """

    def __init__(self, max_epochs: int, lines: int = 20, interval: float = 30.0) -> None:
        self.every = max(1, -(-int(max_epochs) // int(lines)))
        self.max_epochs = int(max_epochs)
        self.interval = float(interval)
        self.start = 0.0
        self.last = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0 or not self.start:
            self.start = self.last = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        e = trainer.current_epoch + 1
        if trainer.sanity_checking or not logger.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        if e % self.every and e != self.max_epochs and not trainer.should_stop and now - self.last < self.interval:
            return
        self.last = now
        m = trainer.callback_metrics
        losses = ", ".join(f"{k} {float(m[k]):.4g}" for k in ("train_loss", "val_loss") if k in m)
        logger.info("epoch %d/%d: %s (%.1f s)", e, self.max_epochs, losses, now - self.start)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's informational messages (device banner, logger tips, "fit stopped") and
    third-party deprecation warnings during training unless ``biodiffuse.settings.verbosity``
    is ``"debug"``; warnings that concern the user's run (e.g. a checkpoint problem) still show."""
    if logger.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    names = ("lightning.pytorch", "lightning.fabric", "lightning_utilities", "pytorch_lightning")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*number of training batches.*smaller than the logging interval.*")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


#: Internal callback types that a user callback of the same (base) type replaces.
_REPLACEABLE: tuple[type, ...] = (LossHistory, EpochLine, EarlyStopping, WeightAveraging, Checkpoint)


# --- seeds ------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _local_rng(seed: int | None) -> Iterator[None]:
    """Seed Python, numpy and torch (CPU, and CUDA) inside the block and give back the caller's
    states afterwards (``seed=None``: do nothing). CUDA states are saved and restored only
    when CUDA is already initialised (forking them would initialise CUDA, which
    ``ddp_notebook`` forbids before launch)."""
    if seed is None:
        yield
        return
    py_state = random.getstate()
    np_state = np.random.get_state()
    cuda_devices = (
        list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    )
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            _seed_all(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _EpochSeed(Callback):
    """Re-seed Python / numpy / torch at the start of every epoch from ``(seed, epoch)``, so that
    epoch ``e`` draws the same noise whether the run started at epoch 0 or resumed from a
    checkpoint. Runs inside :func:`_local_rng`, so the caller's random state is untouched."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _seed_all(_epoch_seed(self.seed, trainer.current_epoch))


class _EpochShuffle(Sampler[int]):
    """Random order of ``n`` rows drawn from ``(seed, epoch)`` alone (the epoch read from the
    trainer when iteration starts), so a resumed run sees the same batches as an
    uninterrupted one. Lightning wraps it for DDP (every rank draws the same order)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.trainer: pl.Trainer | None = None

    def __iter__(self) -> Iterator[int]:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        g = torch.Generator().manual_seed(_epoch_seed(self.seed + 1, epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _identity(batch: Any) -> Any:
    return batch


# --- interrupts ---------------------------------------------------------------------------------
class _FitGuard(Callback):
    """Records what :func:`fit` needs after an interrupt: whether a KeyboardInterrupt reached
    Lightning, and whether a validation epoch was running (weight averaging swaps the
    averaged weights into the module during validation)."""

    def __init__(self) -> None:
        self.keyboard_interrupt = False
        self.in_validation = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_validation = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_validation = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.keyboard_interrupt = True


def _merge_callbacks(internal: list[Callback], user: Sequence[Callback]) -> list[Callback]:
    """Internal callbacks, less those of a type some user callback has, then the user's."""
    user = list(user)
    for c in user:
        if not isinstance(c, Callback):
            raise TypeError(f"callbacks must be lightning.pytorch Callback instances, got {type(c).__name__}.")
    taken = [base for base in _REPLACEABLE if any(isinstance(u, base) for u in user)]
    kept = [c for c in internal if not any(isinstance(c, base) for base in taken)]
    return kept + user


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
    enable_progress_bar: bool | None = None,
    seed: int | None = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    callbacks: Callback | Sequence[Callback] | None = None,
    ckpt_path: str | None = None,
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
        The total number of epochs, counting those before ``ckpt_path`` when resuming (as
        Lightning does): resuming a 3-epoch checkpoint with ``max_epochs=5`` runs epochs 3-4.
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
        Where to keep the best checkpoint by ``val_loss`` (the latest without validation)
        and ``last.ckpt`` (always, to resume from with ``ckpt_path``); ``None`` keeps none.
    enable_progress_bar
        Show Lightning's per-batch progress bar (default ``biodiffuse.settings.progress_bar``:
        off). Without it, the ``"biodiffuse"`` logger writes a line per block of epochs
        (:class:`EpochLine`; ``biodiffuse.settings.verbosity = "warning"`` silences it).
    seed
        Seeds the noise and the data order for this call only: Python's ``random``, numpy's
        global state and torch's CPU (and, when already initialised, CUDA) generators are
        saved before and restored after training. The order of epoch ``e`` and the noise
        drawn in it depend on ``(seed, e)`` alone, so a run resumed from a checkpoint follows
        the uninterrupted one. ``None``: use (and advance) the global state.
    trainer_kwargs
        Any further :class:`~lightning.pytorch.Trainer` arguments (a ``"callbacks"`` entry
        is merged like ``callbacks``).
    callbacks
        Lightning callbacks added to the internal ones (loss history, early stopping, EMA,
        checkpoint). A user callback that is a :class:`~lightning.pytorch.callbacks.EarlyStopping`,
        a weight-averaging callback (EMA / SWA), a :class:`~lightning.pytorch.callbacks.Checkpoint`
        (both internal checkpoints: best and last), a :class:`LossHistory` or an
        :class:`EpochLine` replaces the internal one(s) of that type, and only those.
    ckpt_path
        Resume from this Lightning checkpoint (e.g. ``checkpoint_dir/last.ckpt``): weights,
        optimiser, EMA and early-stopping state and the epoch counter.

    Returns
    -------
    The epoch-level ``train_loss`` / ``val_loss`` of this call (index ``epoch``: the trainer's).

    Raises
    ------
    TrainingDivergedError
        A training loss or a weight became NaN / inf. The module's weights are then whatever
        the failed step left; :meth:`BaseModel._run_training` restores the previous ones.

    Notes
    -----
    Ctrl+C (KeyboardInterrupt) during training does not escape. Lightning 2.x (2.6 checked)
    catches it in ``_call_and_handle_interrupt``, sets SIGINT to "ignore", runs the
    ``on_exception`` hooks and its teardown (which puts back the signal handlers it saw when
    it installed its own, so an interrupt during set-up leaves SIGINT ignored) and calls
    ``sys.exit(1)``. Here that ``SystemExit`` becomes a normal return: the caller's SIGINT
    handler is put back, the module keeps the weights trained so far (the EMA average when
    EMA is on, as at a normal end), the history of the completed epochs is returned, and a
    :class:`UserWarning` says where it stopped and how to resume.

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8))
    >>> edm = bd.diffusion.EDMLoss()
    >>> module = bd.train.GenerativeModule(net, lambda n, batch, g: edm(n, batch["x"], generator=g))
    >>> history = bd.train.fit(module, {"x": x[:900]}, {"x": x[900:]}, max_epochs=100, batch_size=128,
    ...                        checkpoint_dir="ckpt", accelerator="cpu")
    """
    trainer_kwargs = dict(trainer_kwargs or {})
    user_callbacks: list[Callback] = []
    for extra in (callbacks, trainer_kwargs.pop("callbacks", None)):
        if extra is None:
            continue
        user_callbacks.extend([extra] if isinstance(extra, Callback) else list(extra))

    has_val = val_tensors is not None and len(next(iter(val_tensors.values()))) > 0
    guard = _FitGuard()
    if enable_progress_bar is None:
        enable_progress_bar = settings.progress_bar
    internal: list[Callback] = [LossHistory()]
    if not enable_progress_bar:
        internal.append(EpochLine(max_epochs))
    if early_stopping and has_val:
        internal.append(EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"))
    if ema_decay is not None:
        internal.append(EMAWeightAveraging(decay=ema_decay, use_buffers=False))
    if checkpoint_dir is not None:
        # Lightning 2.6's ``save_last=True`` writes last.ckpt only when a top-k checkpoint is
        # written (i.e. when val_loss improved), so "last" would be "best": keep the latest
        # epoch with a second checkpoint named "last", overwritten every epoch.
        if has_val:
            internal.append(ModelCheckpoint(dirpath=checkpoint_dir, monitor="val_loss", mode="min", save_top_k=1))
        internal.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
            )
        )
    all_callbacks: list[Callback] = [guard] + _merge_callbacks(internal, user_callbacks)
    if seed is not None:
        all_callbacks.append(_EpochSeed(seed))
    history = next((c for c in all_callbacks if isinstance(c, LossHistory)), None)

    kwargs: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        callbacks=all_callbacks,
        logger=False,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in all_callbacks),
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=checkpoint_dir or tempfile.gettempdir(),
        log_every_n_steps=1,
    )
    kwargs.update(trainer_kwargs)
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)

    if seed is None:
        train_loader = make_loader(train_tensors, batch_size, shuffle=True)
    else:
        ds = TensorDictDataset(train_tensors)
        sampler = _EpochShuffle(len(ds), seed)
        sampler.trainer = trainer
        # a private generator: creating the loader's iterator draws a base seed from it, and
        # drawing that from the global generator would shift the noise of resumed epochs
        train_loader = DataLoader(
            ds, batch_size=min(batch_size, len(ds)), sampler=sampler, collate_fn=_identity,
            generator=torch.Generator().manual_seed(seed),
        )
    val_loader = make_loader(val_tensors, batch_size, shuffle=False) if has_val else None

    in_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None
    was_training = module.training
    interrupted = False
    try:
        with _local_rng(seed), quiet_lightning(), settings.torch_threads() as n_threads:
            logger.info(
                "biodiffuse: training on %s (%s device(s), precision %s, %d CPU thread(s): biodiffuse.settings.num_threads=%r)",
                trainer.accelerator.__class__.__name__, trainer.num_devices, trainer.precision, n_threads, settings.num_threads,
            )
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    except SystemExit as exc:
        # Lightning 2.x: KeyboardInterrupt -> on_exception hooks, teardown, sys.exit(1).
        if not (guard.keyboard_interrupt or isinstance(exc.__context__, KeyboardInterrupt)):
            raise
        interrupted = True
    except KeyboardInterrupt:
        # A Ctrl+C that Lightning did not handle (e.g. while it set up, or another version).
        interrupted = True
    finally:
        if in_main_thread and sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)

    if interrupted:
        _keep_averaged_weights(trainer, module, swapped=guard.in_validation)
        module.cpu()
        module.train(was_training)
        frame = history.frame() if history is not None else pd.DataFrame()
        if checkpoint_dir is not None:
            how = (
                f"resume with ckpt_path='{checkpoint_dir}/last.ckpt' (the last completed epoch) and the same "
                f"max_epochs={max_epochs} (it counts all epochs)"
            )
        else:
            how = (
                "calling train() again continues from these weights (history numbered on); to resume the "
                "exact run (optimiser, EMA and epoch counter) train with checkpoint_dir=... and pass "
                "ckpt_path=<checkpoint_dir>/last.ckpt"
            )
        warnings.warn(
            f"Training was interrupted (KeyboardInterrupt) at epoch {trainer.current_epoch} after "
            f"{trainer.global_step} optimiser steps; the model keeps the weights trained so far"
            f"{' (the EMA average)' if any(isinstance(c, WeightAveraging) for c in trainer.callbacks) else ''} "
            f"and the history of the {len(frame)} completed epoch(s). To continue: {how}.",
            UserWarning,
            stacklevel=2,
        )
        return frame
    return history.frame() if history is not None else pd.DataFrame()


def _keep_averaged_weights(trainer: pl.Trainer, module: pl.LightningModule, *, swapped: bool) -> None:
    """After an interrupt, put the averaged weights of a weight-averaging callback into the
    module, as its ``on_train_end`` would have (during validation they are already there)."""
    if swapped:
        return
    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
            cb._copy_average_to_current(module)
            return
