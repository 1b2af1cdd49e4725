"""The pool's bookkeeping: work items, worker handles, runs, and how outcomes are delivered."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from parajob.errors import (
    InvalidParameterError,
)
from parajob.process_pool import _messages as m
from parajob.process_pool._worker import (
    EXIT_PARENT_GONE,
)

__all__ = ["BatchResult", "Call", "Resolution", "Run", "Work", "WorkerHandle"]

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

# Frames up to this size may queue behind a running task: two of them always fit in a pipe
# buffer (64 KiB on Linux), so such a write never blocks.
PREFETCH_BYTES = 16 * 1024
# A worker that dies before it is ready this many times in a row means the workers cannot
# start at all (main module fails to import, ...): break the pool instead of looping.
MAX_START_FAILURES = 3
# A task whose worker keeps dying *before* the task starts is not retried forever.
MAX_REQUEUES = 3
# How long a worker told to exit may take before it is killed.
EXIT_GRACE = 5.0

OPEN, CLOSING, CLOSED, BROKEN = "open", "closing", "closed", "broken"

_log = logging.getLogger("parajob.process_pool")


class BatchResult(NamedTuple):
    """The outcome of a batch: ``values[i]`` is call ``i``'s result, ``errors[i]`` its error.

    A failed call has ``None`` in ``values``. With ``stop_on_error=True``, ``values`` stops
    after the first failed call. ``duration`` is the seconds the worker spent running the
    calls (not waiting in queues), for callers that size their batches from it.
    """

    values: list[Any]
    errors: dict[int, BaseException]
    duration: float = 0.0


@dataclass(eq=False)
class Work:
    future: Future[Any]
    frame: bytes
    task_id: int
    fn: Any  # the single function, or None for a mixed batch (see ``calls``)
    calls: Sequence[Call] | None
    indices: Sequence[int]
    timeout: float | None
    single: bool
    started: bool = False
    cancelled: bool = False
    requeues: int = 0
    head_since: float = 0.0

    @property
    def small(self) -> bool:
        return len(self.frame) <= PREFETCH_BYTES

    def fn_at(self, pos: int) -> Any:
        if self.fn is not None or self.calls is None:
            return self.fn
        return self.calls[pos][0] if 0 <= pos < len(self.calls) else self.calls[0][0]

    def label(self, pos: int = 0, count: int = 1) -> str:
        """Name the call at ``pos`` (or the ``count`` calls from there) for a message."""
        pos = pos if 0 <= pos < len(self.indices) else 0
        index = self.indices[pos] if len(self.indices) else self.task_id
        name = m.callable_name(self.fn_at(pos))
        last = min(pos + count, len(self.indices)) - 1
        if count > 1 and last > pos:
            return f"one of tasks {index}..{self.indices[last]} ({name})"
        return f"task {index} ({name})"


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    process: Any
    conn: Connection
    # shared int64[3]: call position (-2 loading, -1 idle), task id, calls in the block
    status: Any
    pid: int
    inflight: deque[Work] = field(default_factory=deque)
    ready: bool = False
    retiring: bool = False
    exit_sent: bool = False
    eof: bool = False  # its pipe reported end of file: it is exiting
    stopping: str | None = None  # why the pool killed it (timeout, cancel, shutdown)
    sent: int = 0
    # Ids of kept shared copies the parent freed, sent (K_FORGET) once the worker is idle.
    forget: list[int] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not (self.retiring or self.stopping or self.exit_sent or self.eof)


Resolution = tuple[Future[Any], bool, Any]


@dataclass(eq=False)
class Run:
    wake_r: int
    wake_w: int
    alive_r: Connection
    alive_w: Connection
    workers: list[WorkerHandle] = field(default_factory=list)
    thread: threading.Thread | None = None
    next_wake: float = math.inf
    start_failures: int = 0
    version: int = 0  # bumped whenever the set of pipes to watch changes
    deadlines: bool = False  # some running task has a time limit
    # Outcomes the manager thread collected, delivered (outside the lock) before it waits.
    resolutions: list[Resolution] = field(default_factory=list)
    idle_since: float = field(default_factory=time.monotonic)
    # Re-entrant: a garbage collection inside wake() can free an array whose kept shared copy
    # then wakes this run again (forget_copies), in the same thread.
    wake_lock: threading.RLock = field(default_factory=threading.RLock)
    wake_closed: bool = False


def set_future(future: Future[Any], ok: bool, value: Any) -> None:
    try:
        if ok:
            future.set_result(value)
        elif isinstance(value, CancelledError) and future.cancel():
            return
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass  # cancelled by its owner meanwhile


def resolve(items: list[Resolution]) -> None:
    for future, ok, value in items:
        set_future(future, ok, value)


def describe_exit(exitcode: int | None) -> tuple[str, str]:
    if exitcode is None:
        return "exit status unknown", "the cause is unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            cause = (
                "the OS usually does this when memory runs out (look for the OOM killer in "
                "`dmesg`), or another process killed it"
            )
        elif name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE"):
            cause = "a crash in native code (a C extension, ctypes, or a bug in a library)"
        elif name == "SIGABRT":
            cause = "native code aborted (a failed assertion or abort() in a C library)"
        else:
            cause = f"something outside the pool sent it {name}"
        return f"killed by {name}", cause
    if exitcode == EXIT_PARENT_GONE:
        return f"exit code {exitcode}", "it lost its connection to the parent process"
    return (
        f"exit code {exitcode}",
        "the task or a library it uses ended the process (os._exit(), or exit() in native code)",
    )


def wake(run: Run) -> None:
    """Wake the run's manager thread; safe from any thread, re-entrantly, without the pool lock.

    The pipe is written under the run's own small lock, and never after the run closed it:
    its descriptor number may belong to another file by then.
    """
    with run.wake_lock:
        if run.wake_closed:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(run.wake_w, b"\0")


def close_wake_pipe(run: Run) -> None:
    with run.wake_lock:
        run.wake_closed = True
        for fd in (run.wake_r, run.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def check_timeout(value: float | None, name: str = "task_timeout") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidParameterError(
            f"{name} must be a positive number of seconds or None, got {value!r}"
        )
