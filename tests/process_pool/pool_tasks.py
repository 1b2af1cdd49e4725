"""Task functions for the pool tests; a module of its own so workers import it by name."""

from __future__ import annotations

import ctypes
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from parajob.process_pool import worker_id, worker_state

WAIT = 30.0  # upper bound of any wait inside a task; tests never get near it


def identity(x: Any) -> Any:
    return x


def add(x: int, y: int = 0) -> int:
    return x + y


def pid() -> int:
    return os.getpid()


def wait_for(path: Path, timeout: float = WAIT) -> bool:
    """Return True once ``path`` exists, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def announce_and_block(directory: str, name: str = "started") -> int:
    """Write this worker's pid to ``directory/name`` and block until ``directory/release``."""
    d = Path(directory)
    tmp = d / f".{name}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    tmp.rename(d / name)
    wait_for(d / "release")
    return os.getpid()


def segfault() -> None:
    ctypes.string_at(0)


def hard_exit(code: int) -> None:
    os._exit(code)


def fail(message: str) -> None:
    raise ValueError(message, 42)


class LoadBomb:
    """Pickles fine; raises when the worker unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ("cannot load me",))


def _explode(message: str) -> None:
    raise ValueError(message)


class DumpBomb:
    """Raises while being pickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise RuntimeError("refusing to be pickled")


def return_dump_bomb() -> DumpBomb:
    return DumpBomb()


def return_unpicklable() -> Any:
    import threading

    return threading.Lock()


class StubbornError(Exception):
    """Pickles, but cannot be rebuilt: its __init__ needs two arguments."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)
        self.b = b


def raise_stubborn() -> None:
    raise StubbornError(1, 2)


def my_worker_id() -> int | None:
    return worker_id()


def count_in_state() -> tuple[int, int]:
    state = worker_state()
    state["n"] = state.get("n", 0) + 1
    return os.getpid(), state["n"]


def fill_state(value: Any) -> None:
    worker_state()["init"] = value


def read_state(_: object = None) -> Any:
    return worker_state().get("init")


def failing_initializer() -> None:
    raise RuntimeError("initializer is broken")


def rendezvous(directory: str, parties: int) -> int | None:
    """Mark this worker present, wait until ``parties`` workers are, return worker_id()."""
    d = Path(directory)
    (d / f"here.{os.getpid()}").write_text("")
    deadline = time.monotonic() + WAIT
    while len(list(d.glob("here.*"))) < parties and time.monotonic() < deadline:
        time.sleep(0.005)
    return worker_id()


def log_something(name: str, message: str) -> int:
    logging.getLogger(name).warning("%s from %s", message, "worker")
    return os.getpid()


def warn_something(message: str) -> int:
    warnings.warn(message, RuntimeWarning, stacklevel=1)
    return os.getpid()


def env(name: str) -> str | None:
    return os.environ.get(name)


def grow_memory(nbytes: int) -> int:
    worker_state()["ballast"] = bytearray(nbytes)
    return os.getpid()


def nested_pool_sum(n: int) -> int:
    from parajob.process_pool import get_executor

    pool = get_executor(1)
    return sum(pool.map(identity, range(n)))


def segfault_at(x: int, at: int) -> int:
    if x == at:
        ctypes.string_at(0)
    return x
