"""The processes backend: batches run on parajob's own warm process pool.

Each batch goes to the pool as one message of calls (``ProcessPool.submit_batch``), so a worker
that dies is reported with the exact task it was running, and ``task_timeout`` kills only the
late task's worker. The pool is shared and stays warm between calls; this backend never shuts
it down (``parajob.process_pool.shutdown_executor`` does).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._budget import (
    BUDGET_ENV,
    effective_n_jobs_within_budget,
    share_of_budget,
)
from parajob.parallel._tasks import Batch, BatchResult, TaskError
from parajob.parallel.backends._pooled import worker_setup


def _start_worker(budget: int, initializer: Any, initargs: tuple[Any, ...]) -> None:
    """Pool initializer: record the worker's CPU budget, then run the user's initializer."""
    os.environ[BUDGET_ENV] = str(budget)
    if initializer is not None:
        initializer(*initargs)


class ProcessesBackend(ParallelBackendBase):
    """Run batches in worker processes of parajob's pool (joblib's ``"loky"`` answers here).

    Workers are started with the ``forkserver`` method (safe when the caller has threads),
    stay warm between calls, and are replaced when they die; lambdas, closures and
    ``__main__`` functions are sent with cloudpickle.
    """

    supports_task_timeout = True
    supports_initializer = True

    def __init__(self, nesting_level: int | None = None, **pool_options: Any) -> None:
        super().__init__(nesting_level=nesting_level)
        # max_tasks_per_child, max_rss, idle_timeout, start_method: passed to the pool.
        self.pool_options = pool_options
        self._pool: Any = None
        self._n_jobs = 1
        self._submitted: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def effective_n_jobs(self, n_jobs: int) -> int:
        return effective_n_jobs_within_budget(n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        from parajob.process_pool import get_executor

        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        initializer, initargs = worker_setup(parallel)
        self._n_jobs = n
        self._pool = get_executor(
            n,
            initializer=_start_worker,
            initargs=(share_of_budget(n), initializer, initargs),
            **self.pool_options,
        )
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        if not isinstance(func, Batch):
            raise TypeError(f"the processes backend runs Parallel batches, got {func!r}")
        if self._pool is None or self._pool.closed:
            # Never configured, or the shared pool was replaced meanwhile (get_executor with
            # other settings, shutdown_executor): take the current shared pool.
            self.configure(n_jobs=self._n_jobs, parallel=self.parallel)
        task_timeout = getattr(self.parallel, "task_timeout", None)
        first = func.first_index

        def done(future: Future[Any]) -> None:
            with self._lock:
                self._submitted.discard(future)
            if callback is not None:
                callback(future)

        future = self._pool.submit_batch(
            func.tasks,
            indices=range(first, first + len(func.tasks)),
            task_timeout=None if task_timeout is None else task_timeout * len(func.tasks),
            stop_on_error=func.stop_on_error,
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
        self._pool = None

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        return ProcessesBackend(nesting_level=(self.nesting_level or 0) + 1), None
