"""What every biodiffuse model shares: registry on the model, training through the shared
trainer, device choice, and versioned save / load that never executes code from the files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from ..train import GenerativeModule, fit

__all__ = ["BaseModel", "SAVE_FORMAT_VERSION"]

logger = logging.getLogger("biodiffuse")

SAVE_FORMAT_VERSION = 1
_WEIGHTS = "model.pt"
_META = "model.json"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` / None -> CUDA if available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class BaseModel:
    """Base of the user-facing models.

    Subclasses set ``registry`` (JSON-serialisable: setup arguments, channel names, fitted
    normaliser state) and ``init_args`` and implement :meth:`_build_network` from them, so
    that a saved model is rebuilt from its JSON alone.
    """

    _model_name: str = "BaseModel"

    def __init__(self) -> None:
        self.adata: AnnData | None = None
        self.registry: dict[str, Any] = {}
        self.init_args: dict[str, Any] = {}
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained: bool = False
        self.network: nn.Module | None = None

    # --- to implement -------------------------------------------------------------------
    def _build_network(self) -> nn.Module:
        raise NotImplementedError

    def _validate_query(self, adata: AnnData) -> None:
        raise NotImplementedError

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
        module = GenerativeModule(
            self.network, objective, lr=lr, weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps
        )
        history = fit(module, train_tensors, val_tensors, **fit_kwargs)
        self.network.cpu()
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

    def save(self, dir_path: str | Path, overwrite: bool = False) -> None:
        """Save weights (``model.pt``, a plain tensor state dict) and ``model.json``
        (format version, init arguments, registry, history).

        Parameters
        ----------
        dir_path
            Folder to create.
        overwrite
            Replace existing files in ``dir_path``.
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
        torch.save(state, path / _WEIGHTS)
        (path / _META).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, dir_path: str | Path, adata: AnnData | None = None, device: str = "cpu") -> "BaseModel":
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
        """
        path = Path(dir_path)
        if not (path / _META).exists() or not (path / _WEIGHTS).exists():
            raise FileNotFoundError(f"{path} does not hold {_META} and {_WEIGHTS}.")
        meta = json.loads((path / _META).read_text())
        version = meta.get("format_version")
        if version is None or version > SAVE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has save format {version!r}; this biodiffuse reads formats <= {SAVE_FORMAT_VERSION}."
            )
        if meta.get("model") != cls._model_name:
            raise ValueError(f"{path} holds a {meta.get('model')!r} model, not {cls._model_name!r}.")
        obj = cls.__new__(cls)
        BaseModel.__init__(obj)
        obj.init_args = meta["init_args"]
        obj.registry = meta["registry"]
        obj.is_trained = bool(meta["is_trained"])
        if meta.get("history"):
            h = meta["history"]
            obj.history = pd.DataFrame(h["data"], index=h["index"], columns=h["columns"])
            obj.history.index.name = "epoch"
        obj.network = obj._build_network()
        state = torch.load(path / _WEIGHTS, map_location="cpu", weights_only=True)
        obj.network.load_state_dict(state)
        obj.network.to(device)
        if adata is not None:
            obj._validate_query(adata)
            obj.adata = adata
        return obj

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.network.parameters()) if self.network is not None else 0
        status = "trained" if self.is_trained else "not trained"
        return f"{self._model_name}({status}, {n:,} parameters)"
