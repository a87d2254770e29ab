"""Package settings (``biodiffuse.settings``), as scvi-tools and scanpy have them: how much a
training run prints.

* ``verbosity`` (a :mod:`logging` level or its name; default ``"info"``): the level of the
  ``"biodiffuse"`` logger, which writes to stderr (one line per set of epochs while training,
  the device used, data splits). ``"warning"`` silences training; ``"debug"`` also lets
  Lightning's own messages (device banner, tips, "fit stopped") and its deprecation warnings
  through, which are hidden otherwise.
* ``progress_bar`` (default ``False``): the default of ``train(enable_progress_bar=...)``,
  Lightning's per-batch bar.
"""

from __future__ import annotations

import logging
import sys

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

    def __repr__(self) -> str:
        return f"biodiffuse.settings(verbosity={logging.getLevelName(self.verbosity)!r}, progress_bar={self.progress_bar})"


settings = _Settings()
