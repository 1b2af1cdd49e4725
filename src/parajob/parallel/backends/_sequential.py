"""The sequential backend: every batch runs at once in the caller's thread, with no pickling."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parajob.errors import InvalidParameterError
from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel.backends._pooled import worker_setup


class SequentialBackend(ParallelBackendBase):
    """Run batches one after the other in the calling thread.

    Used for ``n_jobs=1``, for ``backend="sequential"``, and for nested calls that have no CPU
    left in their budget. Arguments and results are never pickled.
    """

    uses_threads = True
    supports_sharedmem = True
    supports_initializer = True

    def effective_n_jobs(self, n_jobs: int) -> int:
        if n_jobs == 0:
            raise InvalidParameterError(
                "n_jobs must be a non-zero int, got 0; use 1 for sequential or -1 for all CPUs"
            )
        return 1

    def _prepare_workers(self, n: int) -> None:
        initializer, initargs = worker_setup(self.parallel)
        if initializer is not None:
            initializer(*initargs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        future: Future[Any] = Future()
        try:
            future.set_result(func())
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        if callback is not None:
            callback(future)
        return future
