"""The one warm pool of this process: created on first use, reused, stopped at exit."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from parajob.errors import InvalidParameterError
from parajob.process_pool._cpu import cpu_count
from parajob.process_pool._pool import ProcessPool

__all__ = ["get_executor", "shutdown_executor"]

_lock = threading.Lock()
_executor: ProcessPool | None = None
# Pools replaced while they may still run work submitted earlier; stopped by
# shutdown_executor() and at exit.
_retired: list[ProcessPool] = []


def get_executor(
    max_workers: int | None = None,
    *,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    idle_timeout: float | None = 300.0,
    max_tasks_per_child: int | None = None,
    max_rss: int | None = None,
    reuse: bool = True,
    start_method: str | None = None,
    inner_max_num_threads: int | None = None,
) -> ProcessPool:
    """Return this process's shared, warm :class:`ProcessPool`, creating it when needed.

    The pool is kept between calls so its workers are already running the next time. It is
    resized when ``max_workers`` differs, and rebuilt (the old one finishes its work in the
    background) when ``initializer``, ``initargs``, ``max_tasks_per_child``, ``max_rss`` or
    ``start_method`` differ, when it broke, or when ``reuse=False``. It is stopped by
    :func:`shutdown_executor`, after ``idle_timeout`` seconds without work (its workers
    exit; the next call starts new ones), and at interpreter exit.

    Parameters
    ----------
    max_workers : int, optional
        Number of workers; default :func:`cpu_count`.
    initializer, initargs, idle_timeout, max_tasks_per_child, max_rss, start_method,
    inner_max_num_threads
        As for :class:`ProcessPool`.
    reuse : bool, default True
        ``False`` replaces the shared pool with a fresh one even if its settings match.

    Returns
    -------
    ProcessPool

    Examples
    --------
    >>> from parajob.process_pool import get_executor, shutdown_executor
    >>> pool = get_executor(2)
    >>> pool.submit(pow, 2, 10).result(timeout=60)
    1024
    >>> shutdown_executor()
    """
    global _executor
    n = cpu_count() if max_workers is None else max_workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(
            f"max_workers must be a positive int or None, got {max_workers!r}; "
            "use None for one worker per CPU"
        )
    with _lock:
        pool = _executor
        if pool is not None and (
            not reuse
            or pool.closed
            or not pool.matches(initializer, initargs)
            or pool._max_tasks != max_tasks_per_child
            or pool._max_rss != max_rss
            or pool._inner_threads != inner_max_num_threads
            or (start_method is not None and pool.start_method != start_method)
        ):
            pool.shutdown(wait=False)
            _retired[:] = [p for p in _retired if p.running()]
            _retired.append(pool)
            _executor = pool = None
        if pool is None:
            pool = ProcessPool(
                n,
                initializer=initializer,
                initargs=initargs,
                idle_timeout=idle_timeout,
                max_tasks_per_child=max_tasks_per_child,
                max_rss=max_rss,
                start_method=start_method,
                inner_max_num_threads=inner_max_num_threads,
            )
            _executor = pool
        else:
            if pool.max_workers != n:
                pool.resize(n)
            pool.set_idle_timeout(idle_timeout)
        return pool


def forget_after_fork() -> None:
    """Drop the parent's pools in a forked child (called by the pool's at-fork hook)."""
    global _executor, _lock
    _lock = threading.Lock()
    _executor = None
    _retired.clear()


def shutdown_executor(wait: bool = True, *, kill_workers: bool = False) -> None:
    """Stop the shared pool (and any it replaced); the next :func:`get_executor` starts anew.

    Parameters
    ----------
    wait : bool, default True
        Return when the workers have exited.
    kill_workers : bool, default False
        Kill the workers instead of letting them finish the submitted work.

    Shared copies of arrays kept from earlier Parallel calls are freed as well (see
    :func:`free_shared_arrays`).
    """
    global _executor
    with _lock:
        pools = [p for p in (_executor, *_retired) if p is not None]
        _executor = None
        _retired.clear()
    for pool in pools:
        pool.shutdown(wait=wait, cancel_futures=kill_workers, kill_workers=kill_workers)
    if "parajob.process_pool._sharer" in sys.modules:
        # Copies of arrays kept for later calls go with the pool they were made for.
        sys.modules["parajob.process_pool._sharer"].free_shared_arrays()
