"""The processes backend: batches run on parajob's own warm process pool.

Each batch goes to the pool as one message of calls (``ProcessPool.submit_batch``), so a worker
that dies is reported with the exact task it was running, and ``task_timeout`` kills only the
late task's worker. The pool is shared and stays warm between calls; this backend never shuts
it down (``parajob.process_pool.shutdown_executor`` does).

Large numpy arrays travel through shared memory: each call gets an ``ArraySharer`` (from
``start_call`` to ``stop_call``) that batches are pickled with, following the call's
``max_nbytes``, ``mmap_mode`` and ``temp_folder`` (see ``docs/sharedmem.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._budget import (
    effective_n_jobs_within_budget,
)
from parajob.parallel._tasks import Batch, BatchResult, TaskError
from parajob.parallel.backends._pooled import worker_setup


class ProcessesBackend(ParallelBackendBase):
    """Run batches in worker processes of parajob's pool (joblib's ``"loky"`` answers here).

    Workers are started with the ``forkserver`` method (safe when the caller has threads),
    stay warm between calls, and are replaced when they die; lambdas, closures and
    ``__main__`` functions are sent with cloudpickle.
    """

    # The pool stops a late batch's worker, which serves both task_timeout and the call's
    # timeout (measured from when the batch starts, not from when it was queued).
    supports_task_timeout = True
    supports_inner_max_num_threads = True
    supports_initializer = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **pool_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        # max_tasks_per_child, max_rss, idle_timeout, start_method: passed to the pool.
        self.pool_options = pool_options
        self._pool: Any = None
        self._n_jobs = 1
        self._submitted: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._sharer: Any = None  # the current call's ArraySharer, or None

    def effective_n_jobs(self, n_jobs: int) -> int:
        return effective_n_jobs_within_budget(n_jobs)

    def _prepare_workers(self, n: int) -> None:
        from parajob.process_pool import get_executor

        initializer, initargs = worker_setup(self.parallel)
        self._n_jobs = n
        self._pool = get_executor(
            n,
            initializer=initializer,
            initargs=initargs,
            inner_max_num_threads=self.inner_max_num_threads,
            **self.pool_options,
        )

    def start_call(self) -> None:
        from parajob.process_pool._sharer import call_sharer

        self._close_sharer()
        self._sharer = call_sharer(
            getattr(self.parallel, "_max_nbytes", None),
            getattr(self.parallel, "mmap_mode", "r"),
            getattr(self.parallel, "temp_folder", None),
        )

    def stop_call(self) -> None:
        self._close_sharer()

    def _close_sharer(self) -> None:
        sharer, self._sharer = self._sharer, None
        if sharer is not None:
            sharer.close()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        if not isinstance(func, Batch):
            raise TypeError(f"the processes backend runs Parallel batches, got {func!r}")
        if self._pool is None or self._pool.closed:
            # Never configured, or the shared pool was replaced meanwhile (get_executor with
            # other settings, shutdown_executor): take the current shared pool.
            self.configure(n_jobs=self._n_jobs, parallel=self.parallel)
        task_timeout = getattr(self.parallel, "task_timeout", None)
        call_timeout = getattr(self.parallel, "timeout", None)
        first = func.first_index

        def done(future: Future[Any]) -> None:
            with self._lock:
                self._submitted.discard(future)
            if callback is not None:
                callback(future)

        # The pool enforces both limits from when the batch starts running: the call's
        # timeout (which then stops the whole call) and task_timeout (which fails the task).
        # timeout is per batch (joblib's meaning), task_timeout per task.
        limits = [
            t
            for t in (call_timeout, None if task_timeout is None else task_timeout * len(func))
            if t is not None
        ]
        from parajob.process_pool._sharer import submit_sharing

        future = submit_sharing(
            self._sharer,
            lambda: self._pool.submit_batch(
                func.tasks,
                indices=range(first, first + len(func.tasks)),
                task_timeout=min(limits) if limits else None,
                stop_on_error=func.stop_on_error,
            ),
        )
        with self._lock:
            if not future.done():
                self._submitted.add(future)
        # Registered after the bookkeeping so that `done` never races with it.
        future.add_done_callback(done)
        return future

    def retrieve_result_callback(self, out: Any) -> BatchResult:
        result = out.result()
        errors = result.errors
        return BatchResult(
            result.values,
            {pos: TaskError(exc, None) for pos, exc in errors.items()} if errors else None,
            result.duration,
        )

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._lock:
            futures = list(self._submitted)
            self._submitted.clear()
        if futures and self._pool is not None:
            self._pool.cancel(futures, kill_running=True)

    def terminate(self) -> None:
        # The shared pool stays warm for the next call; only forget it here.
        self._close_sharer()
        self._pool = None
