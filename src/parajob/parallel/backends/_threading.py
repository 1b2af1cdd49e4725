"""The threading backend: batches run on a pool of threads in the calling process."""

from __future__ import annotations

import itertools
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parajob.parallel._budget import set_thread_worker_id, share_of_budget
from parajob.parallel.backends._pooled import PooledBackend

_pool_ids = itertools.count()

_Work = tuple["Future[Any]", Callable[[], Any]]


class _ThreadPool:
    """A fixed set of daemon worker threads fed from one queue.

    Daemon threads (unlike ``concurrent.futures.ThreadPoolExecutor``'s, which the interpreter
    joins at exit) let a program that was interrupted with Ctrl-C exit at once even while an
    abandoned task is still running in a worker.
    """

    def __init__(self, n: int, initializer: Callable[[int], None], name: str) -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._work, args=(i, initializer), name=f"{name}-{i}", daemon=True
            )
            for i in range(n)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, index: int, initializer: Callable[[int], None]) -> None:
        if hasattr(signal, "pthread_sigmask"):
            # Leave Ctrl-C to the main thread, where Python handles it, so that it wakes up
            # at once instead of at its next timed check.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        init_error: BaseException | None = None
        try:
            initializer(index)
        except BaseException as exc:
            init_error = exc
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            if init_error is not None:
                future.set_exception(init_error)
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn))
        return future

    def shutdown(self) -> None:
        """Cancel the work not started and let every thread end after its current task."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


class ThreadingBackend(PooledBackend):
    """Run batches on threads of the calling process.

    Threads share the caller's memory (``require="sharedmem"`` picks this backend) and cost
    little to start, so this backend suits code that releases the GIL (numpy, I/O). A running
    task cannot be stopped: on cancellation, Ctrl-C or ``task_timeout``, the tasks not yet
    started are skipped and the running ones finish in the background, their results dropped.
    """

    uses_threads = True
    supports_sharedmem = True

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._cancel = threading.Event()

    def start_call(self) -> None:
        # A fresh event per call: the last call may have been cancelled, and a pool kept
        # in a `with Parallel(...)` block outlives it.
        self._cancel = threading.Event()

    def _start_pool(self, n: int, initializer: Any, initargs: tuple[Any, ...]) -> _ThreadPool:
        budget = share_of_budget(n)

        def start_thread(index: int) -> None:
            set_thread_worker_id(index, budget)
            if initializer is not None:
                initializer(*initargs)

        return _ThreadPool(n, start_thread, f"parajob-thread-{next(_pool_ids)}")

    def _stop_pool(self, pool: _ThreadPool) -> None:
        self._cancel.set()
        pool.shutdown()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        if self._pool is None:
            self.configure(n_jobs=1, parallel=self.parallel)
        if hasattr(func, "cancel_event"):
            func.cancel_event = self._cancel
        future = self._pool.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self._cancel.set()
        if not ensure_ready:
            self.terminate()
