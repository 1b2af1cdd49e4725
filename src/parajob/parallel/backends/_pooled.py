"""The shared shape of backends that keep their own pool of workers between calls."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._budget import effective_n_jobs_within_budget


def worker_setup(parallel: Any) -> tuple[Any, tuple[Any, ...]]:
    """The ``initializer`` and ``initargs`` that a Parallel object asks its workers to run."""
    return getattr(parallel, "_initializer", None), getattr(parallel, "_initargs", ())


class PooledBackend(ParallelBackendBase):
    """A backend whose pool is kept between calls and rebuilt when n_jobs or setup change.

    Subclasses implement :meth:`_start_pool` and :meth:`_stop_pool`.
    """

    supports_initializer = True

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._pool: Any = None
        self._key: Any = None

    def effective_n_jobs(self, n_jobs: int) -> int:
        return effective_n_jobs_within_budget(n_jobs)

    def _prepare_workers(self, n: int) -> None:
        initializer, initargs = worker_setup(self.parallel)
        key = (n, initializer, initargs)
        if self._pool is None or key != self._key:
            self.terminate()
            self._pool = self._start_pool(n, initializer, initargs)
            self._key = key

    def terminate(self) -> None:
        pool, self._pool = self._pool, None
        self._key = None
        if pool is not None:
            self._stop_pool(pool)

    @abstractmethod
    def _start_pool(self, n: int, initializer: Any, initargs: tuple[Any, ...]) -> Any:
        """Start ``n`` workers that each run ``initializer(*initargs)`` first."""

    @abstractmethod
    def _stop_pool(self, pool: Any) -> None:
        """Stop the workers of ``pool``."""
