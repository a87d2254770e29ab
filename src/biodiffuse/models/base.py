"""What every biodiffuse model shares: registry on the model, training through the shared
trainer, device choice, and versioned save / load that never executes code from the files."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from ..diffusion import check_count
from ..train import GenerativeModule, fit

__all__ = ["BaseModel", "SAVE_FORMAT_VERSION"]

logger = logging.getLogger("biodiffuse")

#: Format 2 (2026-12-03): ``model.pt`` may also hold the model's fitted arrays (keys prefixed
#: ``__fitted_arrays__.``, e.g. a kernel residual base); format 1 files load unchanged.
SAVE_FORMAT_VERSION = 2
_WEIGHTS = "model.pt"
_META = "model.json"
_ARRAYS = "__fitted_arrays__."  # prefix of fitted arrays' keys in model.pt


def _real(name: str, value: Any) -> float:
    """``value`` as a float, after a clear error unless it is a finite real number (bools and
    strings are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` / None -> CUDA if available, else CPU; a clear error for a device that is not
    one, or a CUDA device on a machine without CUDA."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>' (a torch device), got {device!r}.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch finds no CUDA device here; use device='auto' or 'cpu'.")
    return dev


class BaseModel:
    """Base of the user-facing models.

    Subclasses set ``registry`` (JSON-serialisable: setup arguments, channel names, fitted
    normaliser state) and ``init_args`` and implement :meth:`_build_network` from them, so
    that a saved model is rebuilt from its JSON alone.

    Examples
    --------
    >>> bd.models.MCD.setup_anndata(adata, protein_obsm_key="protein_expression")
    >>> model = bd.models.MCD(adata)                 # every model is a BaseModel
    >>> history = model.train(max_epochs=100)        # losses per epoch, also model.history
    >>> model.save("models/mcd_pbmc", overwrite=True)
    """

    _model_name: str = "BaseModel"

    def __init__(self) -> None:
        self.adata: AnnData | None = None
        self.registry: dict[str, Any] = {}
        self.init_args: dict[str, Any] = {}
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained: bool = False
        self.network: nn.Module | None = None
        #: Fitted arrays too large for the JSON registry (e.g. a kernel base's training points),
        #: saved in ``model.pt`` beside the weights (keys prefixed ``__fitted_arrays__.``).
        self.fitted_arrays: dict[str, np.ndarray] = {}

    # --- to implement -------------------------------------------------------------------
    #: Defaults of :meth:`train` for this model (``None`` arguments take these). Keys:
    #: ``batch_size``, ``lr``, ``weight_decay``, ``train_size``, ``max_epochs`` (an int, or
    #: None for "about ``steps`` optimiser steps within ``epochs``"), ``steps``, ``epochs``,
    #: ``early_stopping_patience`` (None: a tenth of the epochs, at least ``min_patience``),
    #: ``min_patience``, ``ema_decay``.
    _train_defaults: dict[str, Any] = dict(
        batch_size=256, lr=1e-3, weight_decay=1e-4, train_size=0.9, max_epochs=None, steps=6000,
        epochs=(100, 3000), early_stopping_patience=None, min_patience=20, ema_decay="auto", lr_warmup_steps=0,
    )
    #: Extra keyword arguments of :meth:`train` that :meth:`_training_data` takes (e.g. MCD's
    #: ``holdout``); every other extra keyword goes to :class:`lightning.pytorch.Trainer`.
    _data_kwargs: tuple[str, ...] = ()
    #: Default ``steps`` of the task verbs (EDM Heun steps; ``2 * steps - 1`` evaluations).
    _default_steps: int = 18

    def _build_network(self) -> nn.Module:
        raise NotImplementedError

    def _training_defaults(self) -> dict[str, Any]:
        """The :meth:`train` defaults for this instance (``_train_defaults``; a model whose
        modes train differently, e.g. MCD on tables and on images, overrides this)."""
        return self._train_defaults

    def _validate_query(self, adata: Any) -> None:
        raise NotImplementedError

    def _training_data(
        self, train_size: float, seed: int, **data_kwargs: Any
    ) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Fit what must be fitted on the training rows (normalisers, PCA, ...) the first time,
        and return ``(objective, train_tensors, val_tensors)``."""
        raise NotImplementedError

    def _after_training(self) -> None:
        """Hook run after a successful :meth:`train` (e.g. per-denoiser validation losses)."""

    # --- one train() for every model ---------------------------------------------------------
    def train(
        self,
        *,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        train_size: float | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        ema_decay: float | str | None = "default",
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        precision: str | int = "32-true",
        seed: int = 0,
        callbacks: Sequence[Any] | None = None,
        ckpt_path: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
        enable_progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Train on the registered object; returns this call's losses (also appended to
        ``self.history``, epochs numbered on from earlier calls).

        Parameters
        ----------
        max_epochs
            Upper bound on epochs (model default when None: see the model's docstring).
        batch_size, lr, weight_decay
            Rows per batch and AdamW settings (model defaults when None).
        train_size
            Fraction of rows for training; the rest is the validation split (early stopping).
            Fitted transforms (normalisers, PCA) see the training rows only.
        early_stopping, early_stopping_patience
            Stop when the validation loss has not improved for this many epochs (default: a
            tenth of ``max_epochs``, at least the model's minimum).
        ema_decay
            Exponential moving average of the weights, used for validation and kept at the
            end; ``"auto"`` averages over about the last tenth of the optimiser steps
            (decay between 0.9 and 0.999); None switches it off. ``"default"``: the model's.
        accelerator, devices, strategy, precision
            Passed to Lightning: ``"auto"`` trains on a GPU when there is one;
            ``strategy="ddp"`` for several GPUs from a script, ``"ddp_notebook"`` in notebooks;
            ``precision="bf16-mixed"`` for mixed precision.
        seed
            Seeds the split, the noise and the data order, without touching the global
            random state.
        callbacks
            Lightning callbacks, added to the internal ones (history, EMA, early stopping,
            checkpoints); one of the same type as an internal one replaces it.
        ckpt_path
            Resume from this Lightning checkpoint (e.g. ``checkpoint_dir / "last.ckpt"``);
            ``max_epochs`` counts the epochs before the checkpoint too.
        checkpoint_dir
            Keep the best (by validation loss) and the last checkpoint there.
        enable_progress_bar
            Lightning's per-batch progress bar (default ``biodiffuse.settings.progress_bar``,
            off: a log line per block of epochs instead, see ``biodiffuse.settings.verbosity``).
        **kwargs
            The model's data options (see its docstring), then any further
            :class:`lightning.pytorch.Trainer` arguments.

        Examples
        --------
        >>> model = bd.models.MCD(adata)
        >>> history = model.train(max_epochs=200, batch_size=128, lr=5e-4)
        >>> model.train(max_epochs=50, accelerator="gpu", precision="bf16-mixed")   # more epochs, on a GPU
        >>> model.history.tail()
        """
        if self.adata is None:
            raise RuntimeError(
                f"No data attached to this {self._model_name}; pass it to {self._model_name}(...) "
                f"or {self._model_name}.load(..., adata)."
            )
        d = self._training_defaults()
        batch_size = check_count(d["batch_size"] if batch_size is None else batch_size, "batch_size")
        for name, value in (("max_epochs", max_epochs), ("early_stopping_patience", early_stopping_patience)):
            if value is not None:
                check_count(value, name)
        lr = _real("lr", d["lr"] if lr is None else lr)
        weight_decay = _real("weight_decay", d["weight_decay"] if weight_decay is None else weight_decay)
        train_size = _real("train_size", d["train_size"] if train_size is None else train_size)
        if lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {lr}.")
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size}.")
        data_kwargs = {k: kwargs.pop(k) for k in self._data_kwargs if k in kwargs}
        objective, train_t, val_t = self._training_data(train_size, seed, **data_kwargs)
        n_train = len(next(iter(train_t.values())))
        if max_epochs is None:
            max_epochs = d["max_epochs"]
        if early_stopping_patience is None:
            early_stopping_patience = d["early_stopping_patience"]
        if ema_decay == "default":
            ema_decay = d["ema_decay"]
        plan = dict(steps=d["steps"], epochs=tuple(d["epochs"]), min_patience=d["min_patience"])
        max_epochs, patience, ema = self._schedule(max_epochs, early_stopping_patience, ema_decay, n_train, batch_size, **plan)
        self.registry["training_plan"] = dict(  # what this call ran, and what the defaults choose for these data
            n_train=int(n_train), batch_size=batch_size, steps_per_epoch=max(1, math.ceil(n_train / batch_size)),
            max_epochs=int(max_epochs), patience=None if patience is None else int(patience),
            default_max_epochs=int(self._schedule(d["max_epochs"], None, "auto", n_train, batch_size, **plan)[0]),
        )
        history = self._run_training(
            objective, train_t, val_t if val_t and len(next(iter(val_t.values()))) else None,
            lr=lr, weight_decay=weight_decay, lr_warmup_steps=d.get("lr_warmup_steps", 0),
            max_epochs=max_epochs, batch_size=batch_size, early_stopping=early_stopping,
            early_stopping_patience=patience, ema_decay=ema, accelerator=accelerator, devices=devices,
            strategy=strategy, precision=precision, checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
            ckpt_path=None if ckpt_path is None else str(ckpt_path), callbacks=callbacks,
            enable_progress_bar=enable_progress_bar, seed=seed, trainer_kwargs=kwargs,
        )
        self._after_training()
        return history

    # --- set-up ---------------------------------------------------------------------------------
    @classmethod
    def _setup_record(cls, obj: Any, setup_method: str = "setup_anndata") -> dict[str, Any]:
        """The set-up record of ``obj`` for this model; the same clear error for every model
        when the object was never set up."""
        from ..data.registry import read_setup_record

        record = read_setup_record(obj, cls._model_name)
        if record is None:
            raise ValueError(
                f"This {type(obj).__name__} was not set up for {cls._model_name}; call "
                f"{cls._model_name}.{setup_method}(...) on it first."
            )
        return record

    # --- what every task verb shares -----------------------------------------------------------
    def _query(self, adata: Any, indices: Sequence[int] | np.ndarray | None) -> tuple[Any, np.ndarray]:
        """The object to read (default: the attached one) and the row positions to use: sorted,
        without repeats, whatever order ``indices`` (positions, negative allowed, or a boolean
        mask) gives them in."""
        self._require_trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError(f"Pass the data to {self._model_name} (no object is attached to this model).")
        n = adata.n_obs
        if indices is None:
            return adata, np.arange(n)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ValueError(f"A boolean indices mask needs {n} entries, got {idx.shape}.")
            if not idx.any():
                raise ValueError("indices selects no row.")
            return adata, np.flatnonzero(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError("indices must be a 1-D array of integer positions or a boolean mask.")
        if len(idx) == 0:
            raise ValueError("indices selects no row.")
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"indices out of range for {n} rows.")
        return adata, np.sort(np.unique(np.where(idx < 0, idx + n, idx)))

    @staticmethod
    def _variance_key(
        key: str, key_added: str | None, variance_key_added: str | bool | None, default: str, *, n_samples: Any = None
    ) -> str | None:
        """Where a verb writes the variance beside the mean it writes at ``key``: None with
        ``variance_key_added=False``; ``default`` (or ``f"{key_added}_variance"``) with None /
        True; else the name given, which must differ from ``key``. With ``n_samples=1`` a
        variance to be written is 0 (one draw has no spread): a warning says so."""
        if variance_key_added is False:
            return None
        if variance_key_added is None or variance_key_added is True:
            vkey = default if key_added is None else f"{key_added}_variance"
        elif not isinstance(variance_key_added, str) or not variance_key_added:
            raise ValueError(f"variance_key_added must be a non-empty string, None or False, got {variance_key_added!r}.")
        else:
            vkey = variance_key_added
        if vkey == key:
            raise ValueError(f"key_added and variance_key_added are both {key!r}: the variance would overwrite the mean.")
        BaseModel._warn_single_draw(n_samples, repr(vkey), "or pass variance_key_added=False")
        return vkey

    @staticmethod
    def _warn_single_draw(n_samples: Any, where: str, alternative: str = "", stacklevel: int = 4) -> None:
        """Warn that a variance written from ``n_samples=1`` draw is 0, not an uncertainty."""
        if n_samples is not None and not isinstance(n_samples, bool) and n_samples == 1:
            warnings.warn(
                f"n_samples=1: the variance written to {where} is 0 (one draw has no spread), not an uncertainty; "
                f"draw n_samples >= 2 for one{', ' + alternative if alternative else ''}.",
                stacklevel=stacklevel,
            )

    def _key(self, key_added: str | None, what: str) -> str:
        """``key_added`` or the default ``f"{model name}_{what}"``."""
        if key_added is None:
            return f"{self._model_name}_{what}"
        if not isinstance(key_added, str) or not key_added:
            raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
        return key_added

    @staticmethod
    def _check_free(store: Any, keys: Sequence[str | None], where: str, overwrite: bool) -> None:
        """Raise unless every key is absent from ``store`` (or ``overwrite``)."""
        for key in keys:
            if key is not None and key in store and not overwrite:
                raise KeyError(f"{where}[{key!r}] exists; pass overwrite=True or another key_added.")

    def _record_run(self, adata: Any, key: str, params: dict[str, Any]) -> None:
        """Parameters of a run into ``uns[key]`` (AnnData / MuData) or ``attrs[key]`` (SpatialData),
        as scanpy does."""
        record = {"model": self._model_name, **{k: v for k, v in params.items() if v is not None}}
        record = json.loads(json.dumps(record, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
        store = adata.attrs if hasattr(adata, "images") and hasattr(adata, "attrs") else adata.uns
        store[key] = record

    @contextlib.contextmanager
    def _on_device(self, device: str | torch.device | None, *, evaluate: bool = True) -> Iterator[tuple[nn.Module, torch.device]]:
        """``with self._on_device(device) as (net, dev):`` the network on ``dev`` (``"auto"``:
        the GPU when there), in eval mode unless ``evaluate=False``; back on the CPU afterwards,
        also after an error, so that a model never holds GPU memory between calls."""
        dev = resolve_device(device)
        net = self.network.to(dev)
        if evaluate:
            net.eval()
        try:
            yield net, dev
        finally:
            self.network.cpu()

    @staticmethod
    def _row_keys(names: Sequence[Any]) -> list[str]:
        """Stable per-row keys for :func:`~biodiffuse.diffusion.row_seeds` (obs names)."""
        return [str(n) for n in names]

    # --- shared --------------------------------------------------------------------------
    def _run_training(
        self,
        objective: Any,
        train_tensors: dict[str, torch.Tensor],
        val_tensors: dict[str, torch.Tensor] | None,
        *,
        lr: float,
        weight_decay: float,
        lr_warmup_steps: int = 0,
        **fit_kwargs: Any,
    ) -> pd.DataFrame:
        """Train ``self.network`` on ``objective`` with :func:`biodiffuse.train.fit` and return
        this call's history (also appended to ``self.history``, epochs numbered on after
        earlier calls; a resumed run that already continues the numbering keeps it).

        If training fails (e.g. :class:`~biodiffuse.train.TrainingDivergedError` on a NaN
        loss), the weights are restored to what they were before this call, ``history`` and
        ``is_trained`` are left as they were, and the error propagates. A Ctrl+C keeps the
        weights trained so far (``fit`` warns and returns the completed epochs).
        """
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}
        module = GenerativeModule(
            self.network, objective, lr=lr, weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps
        )
        try:
            history = fit(module, train_tensors, val_tensors, **fit_kwargs)
        except BaseException:
            self.network.cpu()
            self.network.load_state_dict(snapshot)
            raise
        self.network.cpu()
        if len(self.history) and len(history):
            offset = max(0, int(self.history.index.max()) + 1 - int(history.index.min()))
            history = history.set_axis(history.index + offset, axis=0)
            history.index.name = "epoch"
        if len(history):
            self.history = pd.concat([self.history, history]) if len(self.history) else history
        self.is_trained = True
        return history

    @staticmethod
    def _split(n: int, train_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sorted training and validation row indices: a random ``ceil(train_size * n)``
        (at least 2) rows for training, the rest for validation."""
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size}.")
        perm = rng.permutation(n)
        n_train = max(2, int(math.ceil(train_size * n)))
        return np.sort(perm[:n_train]), np.sort(perm[n_train:])

    @staticmethod
    def _schedule(
        max_epochs: int | None,
        patience: int | None,
        ema_decay: float | str | None,
        n_train: int,
        batch_size: int,
        steps: int,
        epochs: tuple[int, int],
        min_patience: int,
    ) -> tuple[int, int, float | None]:
        """Default training length: about ``steps`` optimiser steps (epochs clipped to
        ``epochs``), patience a tenth of the epochs (at least ``min_patience``), and with
        ``ema_decay="auto"`` an EMA over about the last tenth of the steps (0.9-0.999)."""
        steps_per_epoch = max(1, math.ceil(n_train / batch_size))
        if max_epochs is None:
            max_epochs = int(np.clip(round(steps / steps_per_epoch), *epochs))
        if patience is None:
            patience = max(min_patience, max_epochs // 10)
        if ema_decay == "auto":
            ema_decay = float(np.clip(1.0 - 10.0 / (max_epochs * steps_per_epoch), 0.9, 0.999))
        return max_epochs, patience, ema_decay

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError(f"{self._model_name} is not trained yet; call .train() first.")

    def save(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Save weights (``model.pt``, a plain tensor state dict, with the model's
        :attr:`fitted_arrays`) and ``model.json`` (format version, init arguments, registry,
        history).

        Parameters
        ----------
        dir_path
            Folder to create.
        overwrite
            Replace existing files in ``dir_path``.

        Examples
        --------
        >>> model.train()
        >>> model.save("models/mcd_pbmc")                 # model.pt + model.json
        >>> model.save("models/mcd_pbmc", overwrite=True)
        """
        path = Path(dir_path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        from .. import __version__

        meta = {
            "format_version": SAVE_FORMAT_VERSION,
            "biodiffuse_version": __version__,
            "model": self._model_name,
            "init_args": self.init_args,
            "registry": self.registry,
            "is_trained": self.is_trained,
            "history": json.loads(self.history.to_json(orient="split")) if len(self.history) else None,
        }
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        state.update({_ARRAYS + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.fitted_arrays.items()})
        torch.save(state, path / _WEIGHTS)
        (path / _META).write_text(json.dumps(meta, indent=1))

    @classmethod
    def _read_meta(cls, path: Path) -> dict[str, Any]:
        """``model.json`` checked field by field, with errors that say which file and what."""
        try:
            meta = json.loads((path / _META).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path / _META} is not valid JSON ({err}); the saved model is damaged.") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path / _META} does not hold a JSON object; the saved model is damaged.")
        version = meta.get("format_version")
        if not isinstance(version, int) or not 1 <= version <= SAVE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has save format {version!r}; this biodiffuse reads formats 1 to {SAVE_FORMAT_VERSION}."
            )
        if meta.get("model") != cls._model_name:
            raise ValueError(f"{path} holds a {meta.get('model')!r} model, not {cls._model_name!r}.")
        for key, kind in (("init_args", dict), ("registry", dict), ("is_trained", bool)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{path / _META}: {key!r} is missing or not a {kind.__name__}; the saved model is damaged.")
        return meta

    @classmethod
    def load(cls, dir_path: str | Path, adata: Any | None = None, *, device: str = "cpu") -> "BaseModel":
        """Load a model saved with :meth:`save`.

        Weights are read with ``torch.load(weights_only=True)``: no code from the file runs.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Optional object to attach; validated against the registry (by channel name).
        device
            Where to put the weights.

        Examples
        --------
        >>> model = bd.models.MCD.load("models/mcd_pbmc", adata_query)
        >>> model.impute(adata_query)
        >>> model = bd.models.GeneFlow.load("models/geneflow", sdata, device="cuda")
        """
        path = Path(dir_path)
        if not (path / _META).exists() or not (path / _WEIGHTS).exists():
            raise FileNotFoundError(f"{path} does not hold {_META} and {_WEIGHTS}.")
        meta = cls._read_meta(path)
        obj = cls.__new__(cls)
        BaseModel.__init__(obj)
        obj.init_args = meta["init_args"]
        obj.registry = meta["registry"]
        obj.is_trained = bool(meta["is_trained"])
        if meta.get("history"):
            h = meta["history"]
            obj.history = pd.DataFrame(h["data"], index=h["index"], columns=h["columns"])
            obj.history.index.name = "epoch"
        try:
            obj.network = obj._build_network()
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path / _META}: cannot rebuild the network from init_args / registry ({err!r}).") from None
        try:
            state = torch.load(path / _WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
            raise ValueError(f"{path / _WEIGHTS} cannot be read as a tensor state dict ({type(err).__name__}: {err}).") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path / _WEIGHTS} does not hold a state dict.")
        obj.fitted_arrays = {k[len(_ARRAYS) :]: state.pop(k).numpy() for k in list(state) if str(k).startswith(_ARRAYS)}
        try:
            obj.network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path / _WEIGHTS} does not match the network described in {_META}: {err}") from None
        obj.network.to(device)
        if adata is not None:
            obj._validate_query(adata)
            obj.adata = adata
        return obj

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.network.parameters()) if self.network is not None else 0
        status = "trained" if self.is_trained else "not trained"
        return f"{self._model_name}({status}, {n:,} parameters)"
