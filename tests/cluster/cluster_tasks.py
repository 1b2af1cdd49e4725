"""Task functions for the cluster tests, importable by dask and Ray worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class ClusterTaskError(ValueError):
    """Raised by :func:`fail_on`; its arguments must come back intact."""


def square(x: int) -> int:
    return x * x


def pid_of(x: int) -> tuple[int, int]:
    return x, os.getpid()


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ClusterTaskError("bad input", x)
    return x


def exit_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(7)
    return x


def wait_for_file(x: int, folder: str, timeout: float = 30.0) -> int:
    """Record that task ``x`` started, then wait (bounded) until ``folder/release`` exists."""
    Path(folder, f"started-{x}").touch()
    release = Path(folder, "release")
    deadline = time.monotonic() + timeout
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


def fail_first(x: int, folder: str) -> int:
    """Raise the first time, succeed afterwards (a marker file remembers)."""
    try:
        fd = os.open(Path(folder, f"tried-{x}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.close(fd)
    raise ClusterTaskError("first attempt fails", x)


def scattered_keys(array: Any, i: int) -> tuple[float, list[str]]:
    """Return ``array[i]`` and the keys of the data the dask worker holds for arrays."""
    from distributed import get_worker

    worker = get_worker()
    keys = sorted(str(k) for k in worker.data if str(k).startswith("ndarray-"))
    return float(array[i]), keys


def plasma_address(array: Any, i: int) -> tuple[float, int, int, bool]:
    """Return ``array[i]``, this worker's pid, the array's address and whether it is writable."""
    return float(array[i]), os.getpid(), int(array.ctypes.data), bool(array.flags.writeable)


def inner_sum(n: int) -> tuple[int, list[int]]:
    """Run a nested Parallel call; return its sum and the pids that ran its tasks."""
    from parajob import Parallel, delayed

    out = Parallel(n_jobs=2)(delayed(pid_of)(j) for j in range(n))
    return sum(x for x, _ in out), sorted({pid for _, pid in out})


_init_count = [0]


def count_init(folder: str) -> None:
    """An initializer: record one line per run in this process."""
    _init_count[0] += 1
    Path(folder, f"init-{os.getpid()}-{_init_count[0]}").touch()


def computations(folder: str) -> int:
    return len(list(Path(folder).glob("computed-*")))


def cached_body(key: int, folder: str) -> int:
    """The body of the cached function: leaves one marker file per real computation."""
    Path(folder, f"computed-{key}-{os.getpid()}-{time.monotonic_ns()}").touch()
    # Long enough that the tasks for one key overlap in time on different workers.
    time.sleep(0.2)
    return key * 10


def run_cached(location: str, key: int, folder: str) -> tuple[int, int]:
    """Call the cached function on the shared cache; return its value and this pid."""
    from parajob import Memory

    memory = Memory(location, verbose=0)
    return memory.cache(cached_body, ignore=["folder"])(key, folder), os.getpid()
