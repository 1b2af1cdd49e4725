"""joblib's small logging helpers, which it exports at top level: Logger and PrintTime."""

from __future__ import annotations

import contextlib
import logging
import os
import pprint
import shutil
import sys
import time
from typing import Any

__all__ = ["Logger", "PrintTime", "format_time"]


def format_time(seconds: float) -> str:
    """Return ``seconds`` as a short human reading: ``"0.3s, 0.0min"``."""
    return f"{seconds:.1f}s, {seconds / 60:.1f}min"


def short_format_time(seconds: float) -> str:
    """Return ``seconds`` as ``"12.3s"`` under a minute and ``"4.5min"`` above."""
    if seconds > 60:
        return f"{seconds / 60:4.1f}min"
    return f"{seconds:5.1f}s"


class Logger:
    """Send messages about an object to :mod:`logging`, prefixed with the object's repr.

    Parameters
    ----------
    depth : int, default 3
        How deep :meth:`format` prints nested objects.
    name : str, optional
        The logger to use; ``"parajob"`` by default.
    """

    def __init__(self, depth: int = 3, name: str | None = None) -> None:
        self.depth = depth
        self._name = name or "parajob"

    def warn(self, msg: str) -> None:
        """Log ``msg`` as a warning."""
        logging.getLogger(self._name).warning("[%s]: %s", self, msg)

    def info(self, msg: str) -> None:
        """Log ``msg`` as information."""
        logging.getLogger(self._name).info("[%s]: %s", self, msg)

    def debug(self, msg: str) -> None:
        """Log ``msg`` for debugging."""
        logging.getLogger(self._name).debug("[%s]: %s", self, msg)

    def format(self, obj: Any, indent: int = 0) -> str:
        """Return a pretty-printed representation of ``obj``, cut at this logger's depth."""
        return pprint.pformat(obj, indent=indent, depth=self.depth)


class PrintTime:
    """Print messages with the time elapsed since the previous one, optionally to a log file.

    Parameters
    ----------
    logfile : str, optional
        Also append every message to this file. An existing file is rotated first (to
        ``logfile.1`` ... ``logfile.9``).
    logdir : str, optional
        Log to ``<logdir>/parajob.log``; give this or ``logfile``, not both.
    """

    def __init__(self, logfile: str | None = None, logdir: str | None = None) -> None:
        if logfile is not None and logdir is not None:
            raise ValueError(
                f"give PrintTime a logfile or a logdir, not both (got logfile={logfile!r} and "
                f"logdir={logdir!r})"
            )
        self.last_time = time.time()
        self.start_time = self.last_time
        if logdir is not None:
            logfile = os.path.join(logdir, "parajob.log")
        self.logfile = logfile
        if logfile is None:
            return
        parent = os.path.dirname(logfile)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # Logging must never break the computation it reports on, so file problems (another
        # process rotating the same file, a read-only folder) are ignored here and below.
        with contextlib.suppress(OSError):
            if os.path.exists(logfile):
                for i in range(8, 0, -1):
                    older = f"{logfile}.{i}"
                    if os.path.exists(older):
                        os.replace(older, f"{logfile}.{i + 1}")
                shutil.copy(logfile, f"{logfile}.1")
            with open(logfile, "w") as f:
                f.write(f"\nparajob log\n\n---{time.ctime(self.last_time)}---\n")

    def __call__(self, msg: str = "", total: bool = False) -> None:
        """Print ``msg`` with the time since the last call (or since creation if ``total``)."""
        now = time.time()
        if total:
            lapse = now - self.start_time
            line = f"{msg}: {lapse:.2f}s, {lapse / 60:.1f} min"
        else:
            line = f"{msg}: {format_time(now - self.last_time)}"
        print(line, file=sys.stderr)
        if self.logfile is not None:
            with contextlib.suppress(OSError), open(self.logfile, "a") as f:
                print(line, file=f)
        self.last_time = time.time()
