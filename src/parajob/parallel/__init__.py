"""Parallel loops: ``Parallel``, ``delayed``, ``parallel_config`` and the backend contract."""

from __future__ import annotations

from parajob.parallel._backend import ParallelBackendBase, register_parallel_backend
from parajob.parallel._budget import effective_n_jobs_within_budget, thread_worker_id
from parajob.parallel._config import parallel_backend, parallel_config, resolve
from parajob.parallel._parallel import Parallel
from parajob.parallel._tasks import delayed, wrap_non_picklable_objects

__all__ = [
    "Parallel",
    "ParallelBackendBase",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
    "worker_id",
    "wrap_non_picklable_objects",
]


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """Return how many workers ``Parallel(n_jobs=n_jobs)`` would get here and now.

    Negative values count from the CPUs available (``-1``: all); ``None`` means the active
    :class:`parallel_config`'s ``n_jobs``, else 1. Inside a worker, the result never exceeds
    that worker's share of the CPUs (see the Parallel guide on nesting).
    """
    if n_jobs is None:
        n_jobs = resolve("n_jobs")
    backend = resolve("backend")
    if backend is not None:
        return int(backend.effective_n_jobs(n_jobs if n_jobs is not None else 1))
    return effective_n_jobs_within_budget(n_jobs)


def worker_id() -> int | None:
    """The id (0 to n_jobs - 1) of the worker running the current task, or None outside one.

    .. versionadded:: 0.1
    """
    tid = thread_worker_id()
    if tid is not None:
        return tid
    from parajob.process_pool import worker_id as process_worker_id

    return process_worker_id()
