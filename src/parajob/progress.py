"""Progress reporters for :class:`~parajob.Parallel`: a built-in text bar, tqdm, rich, callbacks.

A reporter receives three events from the caller's thread: ``start(total)`` once (``total``
is None when the input's length is unknown), ``advance(n)`` each time ``n`` more tasks have
finished, and ``finish()`` once, also when the call fails or is interrupted. Reporters count
tasks, never batches.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = [
    "CallbackProgress",
    "ProgressReporter",
    "RichProgress",
    "TextProgress",
    "TqdmProgress",
    "make_reporter",
]


class ProgressReporter:
    """Base class of progress reporters; every hook is optional and does nothing by default.

    Subclass it and override the hooks you need. Hooks run in the thread that called
    ``Parallel``; keep them quick.
    """

    def start(self, total: int | None) -> None:
        """Called once before the first task is dispatched; ``total`` may be None."""

    def advance(self, n: int) -> None:
        """Called when ``n`` more tasks have finished (successfully or not)."""

    def finish(self) -> None:
        """Called once when the call ends, however it ends."""


class CallbackProgress(ProgressReporter):
    """Forward progress to ``callback(done, total)`` after each batch of finished tasks."""

    def __init__(self, callback: Callable[[int, int | None], Any]) -> None:
        self.callback = callback
        self.total: int | None = None
        self.done = 0

    def start(self, total: int | None) -> None:
        self.total = total
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        self.callback(self.done, self.total)


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


class TextProgress(ProgressReporter):
    """A dependency-free progress bar written to a terminal stream (stderr by default).

    It redraws at most ``refresh_per_second`` times a second, so it costs next to nothing
    even for hundreds of thousands of tiny tasks.
    """

    def __init__(
        self, stream: TextIO | None = None, width: int = 30, refresh_per_second: float = 10.0
    ) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = 1.0 / refresh_per_second
        self.total: int | None = None
        self.done = 0
        self._start = 0.0
        self._last_draw = 0.0

    def start(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self._start = self._last_draw = time.perf_counter()
        self._draw(time.perf_counter())

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval:
            self._draw(now)

    def finish(self) -> None:
        self._draw(time.perf_counter())
        self._out().write("\n")
        self._out().flush()

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def render(self, now: float) -> str:
        """The bar's text at time ``now`` (without the carriage return)."""
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            return (
                f"{frac:4.0%} |{bar}| {self.done}/{self.total} tasks "
                f"[{_format_seconds(elapsed)}<{_format_seconds(eta)}, {rate:,.1f} tasks/s]"
            )
        return f"{self.done} tasks [{_format_seconds(elapsed)}, {rate:,.1f} tasks/s]"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        out = self._out()
        out.write("\r" + self.render(now))
        out.flush()


class TqdmProgress(ProgressReporter):
    """A tqdm progress bar (``pip install 'parajob[progress]'``)."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            from parajob.errors import MissingDependencyError

            raise MissingDependencyError(
                "progress='tqdm' needs the tqdm package: pip install 'parajob[progress]'"
            ) from None
        self.kwargs = {"unit": "task", **tqdm_kwargs}
        self.bar: Any = None

    def start(self, total: int | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, **self.kwargs)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RichProgress(ProgressReporter):
    """A rich progress bar (``pip install 'parajob[rich]'``)."""

    def __init__(self, description: str = "tasks") -> None:
        try:
            import rich  # noqa: F401
        except ImportError:
            from parajob.errors import MissingDependencyError

            raise MissingDependencyError(
                "progress='rich' needs the rich package: pip install 'parajob[rich]'"
            ) from None
        self.description = description
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int | None) -> None:
        from rich.progress import Progress

        self.progress = Progress()
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(progress: Any) -> ProgressReporter | None:
    """Turn a ``progress=`` setting into a reporter (None when progress is off)."""
    if progress is None or progress is False:
        return None
    if isinstance(progress, ProgressReporter):
        return progress
    if progress is True:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            return TextProgress()
        return TqdmProgress()
    if progress == "tqdm":
        return TqdmProgress()
    if progress == "rich":
        return RichProgress()
    if progress == "text":
        return TextProgress()
    if callable(progress):
        return CallbackProgress(progress)
    raise ValueError(
        f"progress must be True, False, 'tqdm', 'rich', 'text', a callable or a "
        f"ProgressReporter, got {progress!r}"
    )
