"""Package settings (``biodiffuse.settings``), as scvi-tools and scanpy have them: how much a
training run prints.

* ``verbosity`` (a :mod:`logging` level or its name; default ``"info"``): the level of the
  ``"biodiffuse"`` logger, which writes to stderr (one line per set of epochs while training,
  the device used, data splits). ``"warning"`` silences training; ``"debug"`` also lets
  Lightning's own messages (device banner, tips, "fit stopped") and its deprecation warnings
  through, which are hidden otherwise.
* ``progress_bar`` (default ``False``): the default of ``train(enable_progress_bar=...)``,
  Lightning's per-batch bar.
* ``num_threads`` (default ``"auto"``): torch's CPU threads while a model trains or samples
  (set for the call, put back after; the training log reports it). ``"auto"`` takes the cores
  this process may use minus the 1-minute load average of the machine (at least 1), and never
  more than torch's current setting: on a 2-core machine shared with another job one thread,
  on a quiet one two. Oversubscribed threads are the costly mistake: one MCD training took
  101 s with one thread and over 53 minutes with torch's default (two) on a busy 2-core box.
  An int fixes the count.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["settings"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (notebooks and test captures swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property wins
        pass


class _Settings:
    def __init__(self) -> None:
        self._logger = logging.getLogger("biodiffuse")
        if not any(getattr(h, "_biodiffuse", False) for h in self._logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler._biodiffuse = True  # type: ignore[attr-defined]
            self._logger.addHandler(handler)
        self._logger.propagate = False
        self.verbosity = "info"
        self.progress_bar = False
        self.num_threads = "auto"

    @property
    def verbosity(self) -> int:
        """The ``"biodiffuse"`` logger's level (set with an int or ``"debug"`` / ``"info"`` /
        ``"warning"`` / ``"error"``)."""
        return self._logger.level

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, str):
            if level.lower() not in _LEVELS:
                raise ValueError(f"verbosity must be one of {sorted(_LEVELS)} or a logging level, got {level!r}.")
            level = _LEVELS[level.lower()]
        if not isinstance(level, int) or isinstance(level, bool):
            raise ValueError(f"verbosity must be a logging level (int) or its name, got {level!r}.")
        self._logger.setLevel(level)

    @property
    def progress_bar(self) -> bool:
        """Default of ``train(enable_progress_bar=None)``."""
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        self._progress_bar = bool(value)

    @property
    def num_threads(self) -> int | str:
        """torch CPU threads for training and sampling: a positive int or ``"auto"``."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | str) -> None:
        if value == "auto":
            self._num_threads = "auto"
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"num_threads must be a positive int or 'auto', got {value!r}.")
        self._num_threads = int(value)

    def resolved_threads(self) -> int:
        """The thread count ``num_threads`` stands for now (``"auto"``: free cores, see the module)."""
        import torch

        if self._num_threads != "auto":
            return int(self._num_threads)
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        free = max(1, cores - int(math.floor(load + 0.5)))
        return max(1, min(free, torch.get_num_threads()))

    @contextmanager
    def torch_threads(self) -> Iterator[int]:
        """Set torch's CPU threads to :meth:`resolved_threads` for a block; yields the count."""
        import torch

        before = torch.get_num_threads()
        n = self.resolved_threads()
        torch.set_num_threads(n)
        try:
            yield n
        finally:
            torch.set_num_threads(before)

    def __repr__(self) -> str:
        return (
            f"biodiffuse.settings(verbosity={logging.getLevelName(self.verbosity)!r}, progress_bar={self.progress_bar}, "
            f"num_threads={self.num_threads!r})"
        )


settings = _Settings()
