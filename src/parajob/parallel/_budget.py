"""One CPU budget across nesting levels.

The rule: a top-level call may use every CPU (``cpu_count()``, or what an explicit ``n_jobs``
asks). Each of its workers gets an equal share of that budget, ``max(budget // n_workers, 1)``,
and a Parallel call made inside a worker resolves ``n_jobs`` against its share and never gets
more workers than the share. So two levels of nesting never run more than ``cpu_count()`` busy
workers (and a share of 1 makes the inner call sequential).

Thread workers keep their share in a thread-local; process workers get it through the
``PARAJOB_CPU_BUDGET`` environment variable set when the worker starts.
"""

from __future__ import annotations

import os
import threading

from parajob.errors import InvalidParameterError
from parajob.process_pool._cpu import CPU_SHARE_ENV

__all__ = [
    "BUDGET_ENV",
    "cpu_budget",
    "effective_n_jobs_within_budget",
    "in_worker",
    "set_thread_worker_id",
    "share_of_budget",
    "thread_worker_id",
]

BUDGET_ENV = CPU_SHARE_ENV

_local = threading.local()


def set_thread_worker_id(worker_id: int, budget: int) -> None:
    """Mark the current thread as worker ``worker_id`` of a threading pool with ``budget`` CPUs."""
    _local.worker_id = worker_id
    _local.budget = budget


def thread_worker_id() -> int | None:
    """The id of the current thread within its threading pool, or None outside one."""
    return getattr(_local, "worker_id", None)


def in_worker() -> bool:
    """True inside a worker thread or worker process of a parajob call."""
    return thread_worker_id() is not None or BUDGET_ENV in os.environ


def cpu_budget() -> int:
    """The number of CPUs that a Parallel call made here may use."""
    budget = getattr(_local, "budget", None)
    if budget is not None:
        return int(budget)
    env = os.environ.get(BUDGET_ENV)
    if env is not None:
        try:
            return max(int(env), 1)
        except ValueError:
            pass
    from parajob.process_pool import cpu_count

    return cpu_count()


def share_of_budget(n_workers: int) -> int:
    """The budget each of ``n_workers`` workers started here gets."""
    return max(cpu_budget() // max(n_workers, 1), 1)


def effective_n_jobs_within_budget(n_jobs: int | None) -> int:
    """Resolve ``n_jobs`` (negative counts from the budget) and cap it inside workers."""
    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise InvalidParameterError(
            "n_jobs must be a non-zero int, got 0; use 1 for sequential or -1 for all CPUs"
        )
    budget = cpu_budget()
    n = max(budget + 1 + n_jobs, 1) if n_jobs < 0 else n_jobs
    if in_worker():
        n = min(n, budget)
    return n
