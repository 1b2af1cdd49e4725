"""Task functions for the shared-memory tests (importable by workers)."""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Holder:
    """A dataclass with an array inside."""

    name: str
    data: Any


class Plain:
    """An object with an array attribute."""

    def __init__(self, data: Any) -> None:
        self.data = data


def describe(a: Any) -> tuple[str, bool, bool, float]:
    """Return (type name, shared through a mapping?, writeable?, sum)."""
    base = a
    mapped = False
    while base is not None:
        if isinstance(base, mmap.mmap):
            mapped = True
            break
        base = getattr(base, "base", None)
    return type(a).__name__, mapped, bool(a.flags.writeable), float(np.asarray(a).sum())


def describe_nested(obj: Any) -> list[tuple[str, bool, bool, float]]:
    """Describe every array inside a list / dict / dataclass / object."""
    return [
        describe(obj["list"][0]),
        describe(obj["dict"]["x"]),
        describe(obj["dataclass"].data),
        describe(obj["object"].data),
    ]


def same_layout(a: Any) -> tuple[tuple[int, ...], bool, bool, Any]:
    """Return shape, C and F flags and a copy of the values."""
    return a.shape, bool(a.flags.c_contiguous), bool(a.flags.f_contiguous), np.array(a)


def try_write(a: Any) -> str:
    """Write into the array; report what happened."""
    try:
        a[0] = -1.0
    except ValueError as exc:
        return f"refused: {exc}"
    return "written"


def fill_row(out: Any, i: int) -> int:
    """Write row i of a shared output array."""
    out[i, :] = i
    return i


def full(n: int, value: float) -> Any:
    """Return a new array of n float64 values."""
    return np.full(n, value)


def full_f(shape: tuple[int, int]) -> Any:
    """Return a Fortran-ordered array."""
    return np.asfortranarray(np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape))


def matrix(n: int) -> Any:
    """Return an np.matrix subclass instance."""
    return np.asmatrix(np.ones((n, n)))


def fail(a: Any) -> None:
    """Raise after touching the array."""
    raise RuntimeError(f"failed on {a.shape}")


def wait_for_file(a: Any, path: str) -> float:
    """Signal start by creating path + '.started', then wait (bounded) for path to exist."""
    with open(path + ".started", "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return float(a[0])


def masked_sum(a: Any) -> tuple[str, float, int]:
    """Return the type name, the masked sum and the number of masked values."""
    return type(a).__name__, float(a.sum()), int(np.ma.count_masked(a))


def where(a: Any) -> tuple[float, int]:
    """Return (a[0], inode of the file mapped where the array's data lies)."""
    at = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= at < hi:
                return float(a[0]), int(fields[4])
    raise AssertionError("the array's data is in no mapping")


def write_first(a: Any, value: float) -> float:
    """Write ``value`` into a[0] (a writeable or copy-on-write mapping) and read it back."""
    a[0] = value
    return float(a[0])


def pid_and_sum(a: Any) -> tuple[int, float]:
    """Read the whole array; return (worker pid, sum)."""
    return os.getpid(), float(a.sum())


def make_writeable(a: Any) -> str:
    """Try to turn a read-only argument writeable; report what numpy said."""
    try:
        a.flags.writeable = True
    except ValueError as exc:
        return f"refused: {exc}"
    return "allowed"


def max_at(a: Any, index: Any) -> float:
    """Return the largest of ``a[index]``."""
    return float(np.asarray(a)[index].max())


_kept_alive: list[Any] = []


def write_and_keep(a: Any, value: float) -> float:
    """Write ``value`` into a[0] and keep the array alive in this worker; return the old a[0]."""
    old = float(a[0])
    a[0] = value
    _kept_alive.append(a)
    return old


def keep_in_state(a: Any) -> bool:
    """Keep the argument in this worker's state, for a later call."""
    from parajob.process_pool import worker_state

    worker_state()["kept"] = a
    return True


def sum_kept() -> float | None:
    """Sum the array an earlier call kept in this worker (None if it kept none here)."""
    from parajob.process_pool import worker_state

    kept = worker_state().get("kept")
    return None if kept is None else float(kept.sum())


def forget_kept() -> None:
    """Drop the array kept in this worker's state."""
    from parajob.process_pool import worker_state

    worker_state().pop("kept", None)


def wait_in_worker_1(gate: str) -> None:
    """An initializer that keeps worker 1 busy until ``gate`` exists (at most 60 s)."""
    from parajob.process_pool import worker_id

    if worker_id() == 1:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)


def first(a: Any, padding: bytes) -> float:
    """Return a[0] (``padding`` only makes the task's message large)."""
    return float(a[0])
