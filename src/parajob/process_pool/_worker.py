"""The worker process: its start-up, its task loop, and what task code can ask of it.

This module is preloaded in the forkserver, so it stays light: no numpy, no psutil at import.

A worker has two threads:

* the main thread reads one task frame at a time from its pipe, runs the calls, and writes
  the result frame back;
* a daemon watchdog thread blocks on a pipe whose write end only the parent holds. When the
  parent dies, for any reason, the read returns EOF and the watchdog ends the process with
  ``os._exit`` even if the main thread is deep inside a task.

Writes to the pipe (results, forwarded log records and warnings, which may come from any
thread of the task) go through one lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import starmap
from multiprocessing.connection import Connection
from typing import Any

from parajob.errors import SharedMemoryError
from parajob.process_pool import _mapping, _results, _shm
from parajob.process_pool import _messages as m

__all__ = ["worker_id", "worker_state"]

_worker_id: int | None = None
_state: dict[str, Any] = {}

# Exit codes the pool recognizes: the parent is gone (watchdog), the initializer failed.
EXIT_PARENT_GONE = 75
EXIT_INIT_FAILED = 76


def worker_id() -> int | None:
    """Return this worker's number, 0 to n-1, or None outside a pool worker.

    A replacement worker (after a crash, a timeout or ``max_tasks_per_child``) takes the
    number of the worker it replaces.

    Examples
    --------
    >>> from parajob.process_pool import worker_id
    >>> worker_id() is None  # in the parent process
    True
    """
    return _worker_id


def worker_state() -> dict[str, Any]:
    """Return a dict that lives as long as this worker process, for task code to keep things in.

    The pool's ``initializer`` can fill it (open a connection, load a model) and every task
    that runs on the same worker sees it. In the parent process it is a dict of the parent's
    own, so code that uses it also runs sequentially.
    """
    return _state


class ChildName(str):
    """A process name that also carries the worker's environment across the start.

    multiprocessing imports the user's main module in a new worker *before* it unpickles the
    process object, and that import may load numpy, which reads its thread-count variables
    once, at load. The preparation data that comes before it holds the process name, so the
    name is the one value that reaches the child early enough: unpickling it applies the
    environment (thread caps, the parent's current variables) and ignores SIGINT.
    """

    env: dict[str, str]

    def __new__(cls, name: str, env: dict[str, str]) -> ChildName:
        self = super().__new__(cls, name)
        self.env = env
        return self

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_enter_worker_env, (str(self), self.env))


def _enter_worker_env(name: str, env: dict[str, str]) -> str:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    os.environ.update(env)
    return name


@dataclass
class WorkerConfig:
    """What a worker needs to know at start; sent once, with the process object."""

    worker_id: int
    initializer: bytes | None = None  # cloudpickled (initializer, initargs)
    root_level: int = logging.WARNING
    log_levels: dict[str, int] = field(default_factory=dict)
    max_tasks: int | None = None
    max_rss: int | None = None
    kill_with_forkserver: bool = False


class _Channel:
    """The worker's end of its pipe, safe to write from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(data)

    def send_with_fds(self, data: bytes, fds: list[int]) -> None:
        # One lock for both: a log record written between them would come first and the
        # manager would read it where it expects the descriptors.
        with self.lock:
            self.conn.send_bytes(data)
            if fds:
                _results.send_fds(self.conn, fds)


class _ForwardLogs(logging.Handler):
    """Send every record to the parent, which hands it to its own logger of the same name."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = dict(record.__dict__)
            # Format now: the arguments and the exception may not pickle, the text does.
            data["msg"] = record.getMessage()
            data["args"] = None
            if record.exc_info:
                data["exc_text"] = data.get("exc_text") or logging.Formatter().formatException(
                    record.exc_info
                )
            data["exc_info"] = None
            try:
                body = pickle.dumps(data, protocol=m.PROTOCOL)
            except Exception:
                body = pickle.dumps({k: _plain(v) for k, v in data.items()}, protocol=m.PROTOCOL)
            self.channel.send(m.frame(m.K_LOG, 0, body))
        except Exception:
            self.handleError(record)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _forward_warnings(channel: _Channel) -> None:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        module = category.__module__
        body = pickle.dumps(
            (str(message), module, category.__qualname__, filename, lineno),
            protocol=m.PROTOCOL,
        )
        try:
            channel.send(m.frame(m.K_WARNING, 0, body))
        except OSError:
            pass  # the parent is gone; the watchdog ends this process

    warnings.showwarning = show


def _watch_parent(conn: Connection) -> None:
    try:
        conn.recv_bytes()
    except BaseException:
        pass
    # EOF, or anything at all: the parent closed its end, so it is gone or shutting down.
    os._exit(EXIT_PARENT_GONE)


def _die_with_forkserver() -> None:
    # The forkserver exits when our parent dies; a kernel-delivered SIGKILL then ends this
    # worker even if a C extension holds the GIL and the watchdog thread cannot run.
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:
        return


def _rss_reader() -> Any:
    """How much memory this worker holds on its own: resident memory minus shared pages.

    Pages shared with other processes (the parent's shared arrays, kept mapped between tasks;
    mapped files) are not the worker's growth, and replacing the worker would not free them.
    """
    try:
        import psutil

        proc = psutil.Process()

        def from_psutil() -> int:
            info = proc.memory_info()
            return int(info.rss - getattr(info, "shared", 0))

        return from_psutil
    except ImportError:
        pass
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def from_statm() -> int:
        with open("/proc/self/statm", "rb") as fh:
            fields = fh.read().split()
        return (int(fields[1]) - int(fields[2])) * page

    return from_statm


def _task_label(fn: Any, index: int) -> str:
    return f"task {index} ({m.callable_name(fn)})"


def _dump_result(
    values: list[Any],
    errors: dict[int, tuple[BaseException, str]] | None,
    fn_at: Any,
    index_at: Any,
    duration: float = 0.0,
    share: _shm.ShareSettings | None = None,
) -> tuple[bytes, list[int]]:
    """Pickle a batch's outcome; return it and the descriptors of its shared arrays."""
    if errors:
        # An exception may pickle yet fail to rebuild in the parent (a custom __init__):
        # check each one now, while its type, message and traceback are at hand.
        for pos, (exc, tb_text) in list(errors.items()):
            label = _task_label(fn_at(pos), index_at(pos))
            errors[pos] = m.picklable_exception(exc, tb_text, label)
    for by_value in (False, True):
        try:
            return _dumps_outcome((values, errors, duration), share, by_value)
        except Exception:
            pass
    # Something does not pickle (or a shared array found no room): find it, replace it by an
    # error that says so, keep the rest.
    errors = dict(errors or {})
    for pos, value in enumerate(values):
        if pos in errors:
            continue
        try:
            _, fds = _dumps_outcome(value, share, True)
            _results.close_fds(fds)
        except Exception as exc:
            values[pos] = None
            label = _task_label(fn_at(pos), index_at(pos))
            if isinstance(exc, SharedMemoryError):
                error: BaseException = SharedMemoryError(
                    f"the result of {label} could not be sent back: {exc}"
                )
            else:
                error = m.result_unpicklable_error(label, exc)
            errors[pos] = (error, m.format_exception(exc))
    for pos, (error, tb_text) in list(errors.items()):
        errors[pos] = m.picklable_exception(error, tb_text, _task_label(fn_at(pos), index_at(pos)))
    return _dumps_outcome((values, errors, duration), share, True)


def _dumps_outcome(
    outcome: Any, share: _shm.ShareSettings | None, by_value: bool
) -> tuple[bytes, list[int]]:
    if share is not None:
        return _results.dumps_result(outcome, share, by_value)
    if by_value:
        return m._cloudpickle_dumps(outcome), []
    return pickle.dumps(outcome, protocol=m.PROTOCOL), []


def _run_initializer(config: WorkerConfig, channel: _Channel) -> None:
    if config.initializer is None:
        return
    try:
        initializer, initargs = pickle.loads(config.initializer)
        initializer(*initargs)
    except BaseException as exc:
        tb_text = m.format_exception(exc)
        description = f"{type(exc).__name__}: {exc}"
        body = pickle.dumps((description, tb_text), protocol=m.PROTOCOL)
        try:
            channel.send(m.frame(m.K_INIT_FAILED, 0, body))
        finally:
            os._exit(EXIT_INIT_FAILED)


def worker_main(
    conn: Connection, parent_alive: Connection, status: Any, config: WorkerConfig
) -> None:
    """Run a worker: start-up, then tasks until told to exit or the parent is gone."""
    global _worker_id
    _worker_id = config.worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.kill_with_forkserver:
        _die_with_forkserver()
    threading.Thread(
        target=_watch_parent, args=(parent_alive,), name="parajob-watchdog", daemon=True
    ).start()
    channel = _Channel(conn)

    root = logging.getLogger()
    # Only the forwarding handler: records are printed once, by the parent's handlers.
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ForwardLogs(channel))
    root.setLevel(config.root_level)
    for name, level in config.log_levels.items():
        logging.getLogger(name).setLevel(level)
    _forward_warnings(channel)

    _run_initializer(config, channel)
    channel.send(m.frame(m.K_READY, os.getpid()))
    _serve(conn, channel, status, config)
    # Told to exit. A pool that tasks started inside this worker (nested parallelism) is
    # stopped first; then leave without multiprocessing's exit hooks, which would join such
    # grandchildren and could wait on them forever.
    shared = sys.modules.get("parajob.process_pool._shared")
    if shared is not None:
        with contextlib.suppress(Exception):
            shared.shutdown_executor(kill_workers=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _serve(conn: Connection, channel: _Channel, status: Any, config: WorkerConfig) -> None:
    header = m.HEADER
    hsize = header.size
    rss = _rss_reader() if config.max_rss else None
    done = 0
    retiring = False
    while True:
        try:
            buf = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(EXIT_PARENT_GONE)
        kind, _, task_id = header.unpack_from(buf)
        if kind == m.K_EXIT:
            return
        if kind == m.K_FORGET:
            _mapping.forget_copies(memoryview(buf)[hsize:])
            continue
        status[1] = task_id
        status[2] = 1
        status[0] = -2  # loading the task
        try:
            payload = pickle.loads(memoryview(buf)[hsize:])
            fn, star, items, stop_on_error, base, indices = payload[:6]
            # A Parallel call that shares arrays sends its settings as a seventh item.
            share = payload[6] if len(payload) > 6 else None
            del payload
        except BaseException as exc:
            status[0] = -1
            body = pickle.dumps(
                (f"{type(exc).__name__}: {exc}", m.format_exception(exc)), protocol=m.PROTOCOL
            )
            channel.send(m.frame(m.K_TASK_FAILED, task_id, body))
            continue
        del buf
        if fn is None:
            runner: Callable[[Iterable[Any]], Iterator[Any]] = partial(map, _apply)
        elif star:
            runner = partial(starmap, fn)
        else:
            runner = partial(map, fn)
        started = time.perf_counter()
        values, errors = _run_calls(runner, items, status, stop_on_error)
        # Compute time as the worker saw it: what the caller's batch sizing needs.
        duration = time.perf_counter() - started
        status[0] = -1

        def fn_at(p: int, fn: Any = fn, items: Any = items) -> Any:
            return fn if fn is not None else items[p][0]

        def index_at(p: int, base: int = base, indices: Any = indices) -> int:
            return indices[p] if indices is not None else base + p

        body, fds = _dump_result(values, errors, fn_at, index_at, duration, share)
        if errors:
            _drop_tracebacks(errors)
        # Drop every reference to the task's data now (the helpers hold the items): shared
        # arrays are unmapped here, not when the next task arrives.
        del values, errors, items, fn, fn_at, index_at
        done += 1
        if not retiring:
            over_count = config.max_tasks is not None and done >= config.max_tasks
            over_rss = rss is not None and config.max_rss is not None and rss() > config.max_rss
            retiring = over_count or over_rss
        flags = (m.F_RETIRE if retiring else 0) | (m.F_FDS if fds else 0)
        try:
            channel.send_with_fds(m.frame(m.K_RESULT, task_id, body, flags), fds)
        finally:
            # The parent holds its own copies of the descriptors now (or never will).
            _results.close_fds(fds)


def _drop_tracebacks(errors: dict[int, tuple[BaseException, str]]) -> None:
    # A traceback holds the failed call's frames, and with them its arguments (shared arrays
    # among them) in a reference cycle that only the garbage collector would break. The text
    # was sent; drop the frames so the arguments go now.
    for exc, _ in errors.values():
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.__traceback__ = None
            current = current.__cause__ or current.__context__


# Calls run in blocks: the block's first position and size go to shared memory so the parent
# can name the call that was running if the worker dies. Writing that for every call would
# double the cost of trivial calls, so blocks grow while calls are fast (a crash is then
# pinned on a few calls) and drop back to one call when calls are slow (pinned exactly).
_FAST_CALL = 20e-6
_MAX_BLOCK = 256


def _apply(call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    return call[0](*call[1], **call[2])


def _run_calls(
    runner: Callable[[Iterable[Any]], Iterator[Any]],
    items: Sequence[Any],
    status: Any,
    stop_on_error: bool,
) -> tuple[list[Any], dict[int, tuple[BaseException, str]] | None]:
    values: list[Any] = []
    errors: dict[int, tuple[BaseException, str]] | None = None
    n = len(items)
    pos = 0
    block = 1
    clock = time.perf_counter
    while pos < n:
        end = min(pos + block, n)
        status[2] = end - pos
        status[0] = pos
        started = clock()
        try:
            # list.extend keeps the results produced before a call raises, so
            # len(values) is the position of the failed call.
            values.extend(runner(items[pos:end]))
        except BaseException as exc:
            failed = len(values)
            if errors is None:
                errors = {}
            errors[failed] = (exc, m.format_exception(exc))
            values.append(None)
            pos = failed + 1
            block = 1
            if stop_on_error:
                break
            continue
        fast = clock() - started < _FAST_CALL * (end - pos)
        block = min(block * 2, _MAX_BLOCK) if fast else 1
        pos = end
    return values, errors
