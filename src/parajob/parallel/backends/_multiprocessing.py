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

from parajob.parallel._budget import BUDGET_ENV, share_of_budget
from parajob.parallel.backends._pooled import PooledBackend


def _run_pickled(payload: bytes) -> Any:
    return pickle.loads(payload)()


def _start_worker(budget: int, initializer: Any, initargs: tuple[Any, ...]) -> None:
    os.environ[BUDGET_ENV] = str(budget)
    if initializer is not None:
        initializer(*initargs)


class MultiprocessingBackend(PooledBackend):
    """Run batches on a ``multiprocessing.Pool`` (spawned with the "forkserver" method)."""

    def _start_pool(self, n: int, initializer: Any, initargs: tuple[Any, ...]) -> Any:
        ctx = multiprocessing.get_context("forkserver")
        return ctx.Pool(
            n, initializer=_start_worker, initargs=(share_of_budget(n), initializer, initargs)
        )

    def _stop_pool(self, pool: Any) -> None:
        pool.terminate()
        pool.join()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        import cloudpickle

        if self._pool is None:
            self.configure(n_jobs=1, parallel=self.parallel)
        future: Future[Any] = Future()
        # Marked running at once: the standard pool cannot cancel a queued task, so the
        # future must not claim it can (abort_everything terminates the pool instead).
        future.set_running_or_notify_cancel()
        if callback is not None:
            future.add_done_callback(callback)
        self._pool.apply_async(
            _run_pickled,
            (cloudpickle.dumps(func),),
            callback=future.set_result,
            error_callback=future.set_exception,
        )
        return future

    def abort_everything(self, ensure_ready: bool = True) -> None:
        key = self._key
        self.terminate()
        if ensure_ready and key is not None:
            self.configure(n_jobs=key[0], parallel=self.parallel)
