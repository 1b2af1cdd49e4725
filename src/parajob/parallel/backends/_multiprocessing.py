"""The multiprocessing backend: the standard library's ``multiprocessing.Pool``.

Kept for code that asks for joblib's ``backend="multiprocessing"``. The ``"processes"`` backend
is faster and sturdier (a worker that dies there fails its task with a clear error; the standard
library's pool cannot tell which task was lost, so use ``timeout=`` with this backend).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._budget import BUDGET_ENV, effective_n_jobs_within_budget, share_of_budget


def _run_pickled(payload: bytes) -> Any:
    return pickle.loads(payload)()


def _start_worker(budget: int, initializer: Any, initargs: tuple[Any, ...]) -> None:
    os.environ[BUDGET_ENV] = str(budget)
    if initializer is not None:
        initializer(*initargs)


class MultiprocessingBackend(ParallelBackendBase):
    """Run batches on a ``multiprocessing.Pool`` (spawned with the "forkserver" method)."""

    supports_initializer = True

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._pool: Any = None
        self._key: Any = None

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
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        initializer = getattr(parallel, "_initializer", None)
        initargs = getattr(parallel, "_initargs", ())
        key = (n, initializer, initargs)
        if self._pool is None or key != self._key:
            self.terminate()
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ctx.Pool(
                n, initializer=_start_worker, initargs=(share_of_budget(n), initializer, initargs)
            )
            self._key = key
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        import cloudpickle

        future: Future[Any] = Future()
        # Marked running at once: the standard pool cannot cancel a queued task, so the
        # future must not claim it can (abort_everything terminates the pool instead).
        future.set_running_or_notify_cancel()
        if callback is not None:
            future.add_done_callback(callback)
        payload = cloudpickle.dumps(func)
        self._pool.apply_async(
            _run_pickled,
            (payload,),
            callback=future.set_result,
            error_callback=future.set_exception,
        )
        return future

    def abort_everything(self, ensure_ready: bool = True) -> None:
        key = self._key
        self.terminate()
        if ensure_ready and key is not None:
            self.configure(n_jobs=key[0], parallel=self.parallel)

    def terminate(self) -> None:
        pool, self._pool = self._pool, None
        self._key = None
        if pool is not None:
            pool.terminate()
            pool.join()
