"""ProcessPool: a reusable pool of worker processes that survives its workers' failures.

The public face; the state machine is in ``_core``, the manager thread in ``_manager``.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from parajob.errors import (
    InvalidParameterError,
    TaskPicklingError,
)
from parajob.process_pool import _messages as m
from parajob.process_pool import _sharer
from parajob.process_pool._core import preload_forkserver
from parajob.process_pool._cpu import cpu_count
from parajob.process_pool._manager import Manager
from parajob.process_pool._state import (
    BROKEN,
    OPEN,
    BatchResult,
    Call,
    Resolution,
    Run,
    Work,
    check_timeout,
    resolve,
    set_future,
    wake,
)

__all__ = ["BatchResult", "Call", "ProcessPool"]

_first = operator.itemgetter(0)
_arguments = operator.itemgetter(1)
_keywords = operator.itemgetter(2)


def _check_calls(calls: list[Any]) -> tuple[Any, bool]:
    """Check that each call is ``(fn, args, kwargs)``; return (the function, all share it).

    This is the hot path for many tiny tasks, so the usual case is checked with C-level
    passes (``map`` over builtins) and only an unusual batch is looked at call by call.
    """
    try:
        if set(map(type, calls)) <= {tuple} and set(map(len, calls)) <= {3}:
            functions = set(map(_first, calls))
            if all(callable(f) for f in functions):
                fn = next(iter(functions)) if len(functions) == 1 else None
                return fn, fn is not None and not any(map(_keywords, calls))
    except TypeError:  # an unhashable callable: check one by one below
        pass
    for call in calls:
        if not (isinstance(call, tuple) and len(call) == 3 and callable(call[0])):
            raise InvalidParameterError(
                f"each call must be a (fn, args, kwargs) tuple with a callable fn, got "
                f"{call!r:.200}"
            )
    return None, False


class ProcessPool(Manager):
    """Run functions in worker processes; survive crashes, time out tasks, stay warm.

    A ``concurrent.futures``-style executor (``submit``, ``map``, ``shutdown``, context
    manager) with what parallel loops need on top: batches of calls sent as one message with
    per-call results and errors, a time limit per task, cancellation that can stop running
    work, and workers that are replaced when they die. Usually obtained through
    :func:`get_executor`, which keeps one warm pool per process.

    Parameters
    ----------
    max_workers : int, optional
        Number of worker processes; default :func:`cpu_count`.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each worker when it starts (also in
        replacement workers). It may fill :func:`worker_state`. If it raises, the pool breaks
        and every pending task fails with :class:`~parajob.errors.WorkerStartError`.
    initargs : tuple
        Arguments of ``initializer``.
    idle_timeout : float or None, default 300
        Seconds without work after which the workers exit. The pool stays usable: the next
        submission starts new workers. ``None`` keeps them forever.
    max_tasks_per_child : int, optional
        A worker exits and is replaced after this many submissions (a batch or a ``map``
        chunk counts as one), between tasks; no task fails because of it.
    max_rss : int, optional
        Ceiling in bytes on a worker's own resident memory (resident minus shared pages,
        such as shared arrays and mapped files), checked after each submission; a worker
        above it is replaced between tasks. Read with psutil when installed, ``/proc``
        otherwise.
    start_method : {"forkserver", "spawn", "fork"}, optional
        Default ``"forkserver"`` where available (safe when the parent has threads), else
        ``"spawn"``.
    prefetch : bool, default True
        Queue one small task behind the running one on each worker, so workers never wait
        for the parent between tasks.
    inner_max_num_threads : int, optional
        Native threads (OpenMP, BLAS, ...) each worker may use; it sets ``OMP_NUM_THREADS``
        and friends in the workers, over any value the parent has. Default: the parent's
        value where set, else ``cpu_count() // max_workers``.

    Examples
    --------
    >>> from parajob.process_pool import ProcessPool
    >>> with ProcessPool(2) as pool:
    ...     list(pool.map(abs, [-1, -2, 3]))
    [1, 2, 3]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        idle_timeout: float | None = 300.0,
        max_tasks_per_child: int | None = None,
        max_rss: int | None = None,
        start_method: str | None = None,
        prefetch: bool = True,
        inner_max_num_threads: int | None = None,
    ) -> None:
        n = cpu_count() if max_workers is None else max_workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidParameterError(
                f"max_workers must be a positive int or None, got {max_workers!r}; "
                "use None for one worker per CPU"
            )
        if initializer is not None and not callable(initializer):
            raise InvalidParameterError(
                f"initializer must be callable or None, got {initializer!r}"
            )
        if not isinstance(initargs, tuple):
            raise InvalidParameterError(
                f"initargs must be a tuple, got {type(initargs).__name__}; write (x,) for one"
            )
        for name, value in (
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_rss", max_rss),
            ("inner_max_num_threads", inner_max_num_threads),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidParameterError(
                    f"{name} must be a positive int or None, got {value!r}; use None for no limit"
                )
        if idle_timeout is not None and not idle_timeout > 0:
            raise InvalidParameterError(
                f"idle_timeout must be a positive number of seconds or None, got "
                f"{idle_timeout!r}; use None to keep the workers forever"
            )
        methods = mp.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in methods:
            raise InvalidParameterError(
                f"start_method {start_method!r} is not available here; choose from {methods}"
            )
        self._ctx = mp.get_context(start_method)
        self._start_method = start_method
        if start_method == "forkserver":
            preload_forkserver(self._ctx)
        self._max_workers = n
        self._initializer = initializer
        self._initargs = initargs
        self._init_blob: bytes | None = None
        if initializer is not None:
            import cloudpickle

            self._init_blob = cloudpickle.dumps((initializer, initargs), protocol=m.PROTOCOL)
        self._idle_timeout = idle_timeout
        self._max_tasks = max_tasks_per_child
        self._max_rss = max_rss
        self._inner_threads = inner_max_num_threads
        self._prefetch = prefetch
        self._lock = threading.Lock()
        self._pending: deque[Work] = deque()
        self._run: Run | None = None
        self._runs: list[Run] = []  # runs whose thread may still be reaping
        self._state = OPEN
        self._broken_message = ""
        self._ids = itertools.count(1)
        self._submissions = itertools.count(0)
        self._warning_registry: dict[Any, Any] = {}
        self._forget_outbox: deque[int] = deque()
        _sharer.watch_pool(self)

    @property
    def max_workers(self) -> int:
        """Number of worker processes the pool keeps."""
        return self._max_workers

    @property
    def start_method(self) -> str:
        """The multiprocessing start method of the workers."""
        return self._start_method

    @property
    def broken(self) -> bool:
        """True when workers could not start; the pool refuses new work."""
        return self._state == BROKEN

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` was called (or the pool broke)."""
        return self._state != OPEN

    def running(self) -> bool:
        """Return True while a manager thread of this pool is alive (workers may exist)."""
        with self._lock:
            return any(r.thread is not None and r.thread.is_alive() for r in self._runs)

    def pids(self) -> list[int]:
        """Return the pids of the live workers, by worker id (empty when dormant)."""
        with self._lock:
            run = self._run
            if run is None:
                return []
            return [w.pid for w in sorted(run.workers, key=lambda w: w.slot) if w.active]

    def matches(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> bool:
        """Return True if this pool was built with this initializer and these initargs."""
        if initializer is not self._initializer:
            return False
        if initargs is self._initargs:
            return True
        try:
            return bool(initargs == self._initargs)
        except Exception:  # e.g. numpy arrays: == is elementwise
            return False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; return a Future of its result.

        An argument that cannot be pickled does not raise here: the future fails with
        :class:`~parajob.errors.TaskPicklingError` and the pool carries on.
        """
        index = next(self._submissions)
        return self._submit(fn, None, [args], kwargs or None, (index,), None, True)

    def submit_batch(
        self,
        calls: Sequence[Call],
        *,
        indices: Sequence[int] | None = None,
        task_timeout: float | None = None,
        stop_on_error: bool = False,
        callback: Callable[[Future[BatchResult]], Any] | None = None,
    ) -> Future[BatchResult]:
        """Run a batch of calls in one worker, sent as one message; return a Future.

        Parameters
        ----------
        calls : sequence of (fn, args, kwargs)
            The calls, run in order.
        indices : sequence of int, optional
            The task number of each call, used in error messages; default ``0..len-1``.
        task_timeout : float, optional
            Seconds the whole batch may run. When it runs longer, its worker is killed and
            replaced and the future fails with :class:`~parajob.errors.TaskTimeoutError`
            naming the call that was running; other work is not affected.
        stop_on_error : bool, default False
            Skip the rest of the batch after a call raises.
        callback : callable, optional
            Called with the future when it is done (in the pool's thread; keep it short).

        Returns
        -------
        Future of BatchResult
            ``values`` and per-call ``errors`` (keyed by position in the batch), each error
            re-raisable with its original type and the worker traceback as ``__cause__``.
            The future itself fails only when the batch as a whole failed: its worker died
            (:class:`~parajob.errors.TerminatedWorkerError`), it timed out, or it could not
            be pickled or unpickled (:class:`~parajob.errors.TaskPicklingError`).
        """
        calls = list(calls)
        if indices is None:
            idx: Sequence[int] = range(len(calls))
        else:
            idx = indices if isinstance(indices, range) else list(indices)
            if len(idx) != len(calls):
                raise InvalidParameterError(
                    f"indices has {len(idx)} entries for {len(calls)} calls; give one index "
                    "per call or none"
                )
        check_timeout(task_timeout)
        # The common case (one function, positional arguments only) is sent as the function
        # once plus a list of arguments, as map() does: much less to pickle.
        fn, uniform = _check_calls(calls)
        if calls and uniform and isinstance(idx, range) and idx.step == 1:
            items = list(map(_arguments, calls))
            return self._submit(
                fn, None, items, None, idx, task_timeout, False, stop_on_error, callback
            )
        return self._submit(
            None, calls, None, None, idx, task_timeout, False, stop_on_error, callback
        )

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
        task_timeout: float | None = None,
    ) -> Iterator[Any]:
        """Return an iterator of ``fn(*args)`` over the zipped ``iterables``, in order.

        The inputs are cut into chunks sent as one message each; ``chunksize="auto"`` makes
        four chunks per worker, enough to balance load while keeping per-message costs low.
        The first error is raised when iteration reaches it, and the work not yet started is
        cancelled. Ctrl-C while waiting also stops the running chunks (their workers are
        killed and replaced).

        Parameters
        ----------
        timeout : float, optional
            Seconds from this call after which ``next()`` raises ``TimeoutError``.
        chunksize : int or "auto"
        task_timeout : float, optional
            Time limit of each chunk, as in :meth:`submit_batch`.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable of arguments")
        check_timeout(timeout, "timeout")
        check_timeout(task_timeout)
        # One iterable: send the values themselves and call fn(x); tuples per call would
        # cost more to build, pickle and unpack than the calls of trivial tasks.
        star = len(iterables) > 1
        if star:
            items: list[Any] = list(zip(*iterables))  # noqa: B905 - shortest input wins
        else:
            items = list(iterables[0])
        if chunksize == "auto":
            size = max(1, math.ceil(len(items) / (4 * self._max_workers)))
        elif isinstance(chunksize, int) and not isinstance(chunksize, bool) and chunksize >= 1:
            size = chunksize
        else:
            raise InvalidParameterError(
                f"chunksize must be a positive int or 'auto', got {chunksize!r}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [
            self._submit(
                fn,
                None,
                items[i : i + size],
                None,
                range(i, min(i + size, len(items))),
                task_timeout,
                False,
                True,
                star=star,
            )
            for i in range(0, len(items), size)
        ]
        return self._iterate(futures, deadline)

    def _iterate(self, futures: list[Future[Any]], deadline: float | None) -> Iterator[Any]:
        try:
            for future in futures:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                result = future.result(remaining)
                if result.errors:
                    first = min(result.errors)
                    yield from result.values[:first]
                    raise result.errors[first]
                yield from result.values
        except KeyboardInterrupt:
            self.cancel(futures, kill_running=True)
            raise
        except BaseException:
            self.cancel(futures)
            raise

    def _submit(
        self,
        fn: Any,
        calls: list[Call] | None,
        items: list[Any] | None,
        kwargs: dict[str, Any] | None,
        indices: Sequence[int],
        timeout: float | None,
        single: bool,
        stop_on_error: bool = True,
        callback: Callable[[Future[Any]], Any] | None = None,
        *,
        star: bool = True,
    ) -> Future[Any]:
        future: Future[Any] = Future()
        if callback is not None:
            future.add_done_callback(callback)
        if self._state != OPEN:
            raise self._closed_error()
        if self._run is None:
            # Start the workers first: the forkserver and worker start-up then overlap with
            # pickling this work (and importing cloudpickle for it) on the first call.
            with self._lock:
                if self._state == OPEN and self._run is None:
                    self._start_run_locked()
        task_id = next(self._ids)
        if calls is None and kwargs is not None:
            # submit(fn, *args, **kwargs): a batch of one call with keywords
            assert items is not None
            calls = [(fn, items[0], kwargs)]
            fn = None
        if fn is not None:
            body_obj: Any = (fn, star, items, stop_on_error, indices[0] if indices else 0, None)
            functions: Sequence[Any] = (fn,)
        else:
            assert calls is not None
            plain_idx = isinstance(indices, range) and indices.step == 1
            body_obj = (
                None,
                True,
                calls,
                stop_on_error,
                indices[0] if plain_idx and indices else 0,
                None if plain_idx else list(indices),
            )
            functions = list({id(c[0]): c[0] for c in calls}.values())
        work = Work(future, b"", task_id, fn, calls, indices, timeout, single)
        try:
            body = m.dumps_payload(body_obj, functions)
        except Exception as exc:
            if calls is None and not star:
                items = [(x,) for x in items or ()]
            set_future(future, False, self._pickling_error(work, calls, fn, items, exc))
            return future
        work.frame = m.frame(m.K_TASK, task_id, body)
        to_resolve: list[Resolution] = []
        with self._lock:
            if self._state != OPEN:
                raise self._closed_error()
            run = self._run if self._run is not None else self._start_run_locked()
            self._pending.append(work)
            self._dispatch_locked(run, to_resolve)
            if (
                timeout is not None
                and work.head_since
                and work.head_since + timeout < run.next_wake
            ):
                wake(run)  # the manager must wake up earlier for this deadline
        resolve(to_resolve)
        return future

    def _pickling_error(
        self,
        work: Work,
        calls: list[Call] | None,
        fn: Any,
        items: list[tuple[Any, ...]] | None,
        exc: Exception,
    ) -> TaskPicklingError:
        triples: list[Call] = calls if calls is not None else [(fn, a, {}) for a in (items or [])]
        found = m.find_unpicklable(triples)
        if found is None:
            where, detail, pos = "it", f"{type(exc).__name__}: {exc}", 0
        else:
            pos, what, cause = found
            where, detail = what, f"{type(cause).__name__}: {cause}"
            exc = cause  # type: ignore[assignment]
        err = TaskPicklingError(
            f"{work.label(pos)} could not be sent to a worker: {where} cannot be pickled "
            f"({detail}); pass picklable values (plain data, module-level functions), or "
            "create the object inside the task"
        )
        err.__cause__ = exc
        return err

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True, kill_workers=exc_info[0] is KeyboardInterrupt)

    def resize(self, max_workers: int) -> None:
        """Change the number of workers; extra workers exit after their current work."""
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise InvalidParameterError(f"max_workers must be a positive int, got {max_workers!r}")
        with self._lock:
            self._max_workers = max_workers
            run = self._run
            if run is not None:
                for w in run.workers:
                    if w.slot >= max_workers and w.active:
                        w.retiring = True
                        self._exit_if_idle_locked(w)
                wake(run)

    def set_idle_timeout(self, idle_timeout: float | None) -> None:
        """Change the idle timeout (seconds, or None for never); applies from now on."""
        if idle_timeout is not None and not idle_timeout > 0:
            raise InvalidParameterError(
                f"idle_timeout must be a positive number of seconds or None, got "
                f"{idle_timeout!r}; use None to keep the workers forever"
            )
        with self._lock:
            if idle_timeout == self._idle_timeout:
                return
            self._idle_timeout = idle_timeout
            if self._run is not None:
                wake(self._run)
