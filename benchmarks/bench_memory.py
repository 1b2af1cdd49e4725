"""Memory: cache hits (small and 100 MB arguments), a 100 MB miss + store, reduce_size.

Targets (issue 6), as ratios on this machine:

- hit with small scalar arguments: parajob <= 0.25x joblib;
- hit with a 100 MB array argument: parajob <= 0.06x joblib (joblib's time is md5 of the
  array; parajob hashes with xxh3);
- miss + store of a 100 MB array result: parajob <= 1.5x a raw ``parajob.dump`` of it;
- reduce_size on 2,000 entries (evicting half): parajob <= 0.15x joblib.

The raw baselines show the floor: a key digest plus one file read; a digest of the array plus
a read; a plain dump; a walk that stats every entry.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from _harness import Case, Measured, Target

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"
HIT_CALLS = 200 if QUICK else 2_000
BIG_BYTES = (10 if QUICK else 100) * 2**20
N_ENTRIES = 200 if QUICK else 2_000


def _tmp() -> str:
    return tempfile.mkdtemp(prefix="bench-memory-")


def _memories(folder: str) -> tuple[Any, Any]:
    import joblib

    import parajob.memory

    return (
        parajob.memory.Memory(os.path.join(folder, "pj"), verbose=0),
        joblib.Memory(os.path.join(folder, "jl"), verbose=0),
    )


def _add(x: int, y: float) -> float:
    return x + y


def _array_sum(arr: Any) -> float:
    return float(arr[:10].sum())


class _Folder:
    """A temporary folder made at setup and removed at teardown."""

    def __init__(self) -> None:
        self.path = ""

    def setup(self) -> None:
        self.path = _tmp()

    def teardown(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _hit_small() -> Case:
    folder = _Folder()
    state: dict[str, Any] = {}

    def setup() -> None:
        folder.setup()
        pj, jl = _memories(folder.path)
        state["pj"], state["jl"] = pj.cache(_add), jl.cache(_add)
        state["pj"](1, 2.0)
        state["jl"](1, 2.0)
        raw_path = os.path.join(folder.path, "raw.pkl")
        with open(raw_path, "wb") as f:
            pickle.dump(3.0, f)
        state["raw_path"] = raw_path

    def loop(fn: Callable[[], Any]) -> Callable[[], Measured]:
        def run() -> Measured:
            start = time.perf_counter()
            for _ in range(HIT_CALLS):
                fn()
            return Measured((time.perf_counter() - start) / HIT_CALLS)

        return run

    def raw() -> float:
        from parajob.hashing import digest

        digest((("x", 1), ("y", 2.0)))
        with open(state["raw_path"], "rb") as f:
            return float(pickle.loads(f.read()))

    return Case(
        name="hit, small scalar arguments (per call)",
        contenders={
            "parajob": loop(lambda: state["pj"](1, 2.0)),
            "joblib": loop(lambda: state["jl"](1, 2.0)),
            "raw key + file read": loop(raw),
        },
        targets=[Target("parajob", "joblib", 0.25)],
        setup=setup,
        teardown=folder.teardown,
    )


def _hit_big_argument() -> Case:
    folder = _Folder()
    state: dict[str, Any] = {}

    def setup() -> None:
        folder.setup()
        pj, jl = _memories(folder.path)
        state["arr"] = np.random.default_rng(0).random(BIG_BYTES // 8)
        state["pj"], state["jl"] = pj.cache(_array_sum), jl.cache(_array_sum)
        state["pj"](state["arr"])
        state["jl"](state["arr"])
        state["raw_path"] = os.path.join(folder.path, "raw.pkl")
        with open(state["raw_path"], "wb") as f:
            pickle.dump(1.0, f)

    def raw() -> float:
        import xxhash

        xxhash.xxh3_128_hexdigest(memoryview(state["arr"]).cast("B"))
        with open(state["raw_path"], "rb") as f:
            return float(pickle.loads(f.read()))

    return Case(
        name=f"hit, {BIG_BYTES >> 20} MB array argument",
        contenders={
            "parajob": lambda: state["pj"](state["arr"]),
            "joblib": lambda: state["jl"](state["arr"]),
            "raw xxh3 + file read": raw,
        },
        targets=[Target("parajob", "joblib", 0.06)],
        setup=setup,
        teardown=folder.teardown,
    )


def _miss_big_result() -> Case:
    folder = _Folder()
    state: dict[str, Any] = {"i": 0}

    def produce(i: int) -> Any:
        return state["result"]

    def setup() -> None:
        folder.setup()
        pj, jl = _memories(folder.path)
        state["result"] = np.random.default_rng(1).random(BIG_BYTES // 8)
        state["pj_mem"], state["jl_mem"] = pj, jl
        state["pj"], state["jl"] = pj.cache(produce), jl.cache(produce)

    def timed_miss(name: str) -> Callable[[], Measured]:
        def run() -> Measured:
            state["i"] += 1
            start = time.perf_counter()
            state[name](state["i"])
            elapsed = time.perf_counter() - start
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state[name].clear(warn=False)  # untimed: keep the disk from filling
            return Measured(elapsed)

        return run

    def raw() -> Measured:
        import parajob

        path = os.path.join(folder.path, "raw.pj")
        start = time.perf_counter()
        parajob.dump(state["result"], path)
        elapsed = time.perf_counter() - start
        os.unlink(path)
        return Measured(elapsed)

    return Case(
        name=f"miss + store, {BIG_BYTES >> 20} MB array result",
        contenders={
            "parajob": timed_miss("pj"),
            "joblib": timed_miss("jl"),
            "raw parajob.dump": raw,
        },
        targets=[Target("parajob", "raw parajob.dump", 1.5)],
        setup=setup,
        teardown=folder.teardown,
    )


def _reduce_size() -> Case:
    folder = _Folder()

    def fill(memory: Any) -> None:
        def entry(i: int) -> bytes:
            return b"x" * 1000

        cached = memory.cache(entry)
        for i in range(N_ENTRIES):
            cached(i)

    def timed(kind: str, wait_for_space: bool = False) -> Callable[[], Measured]:
        def run() -> Measured:
            sub = tempfile.mkdtemp(dir=folder.path)
            pj, jl = _memories(sub)
            memory = pj if kind == "pj" else jl
            fill(memory)
            start = time.perf_counter()
            memory.reduce_size(items_limit=N_ENTRIES // 2)
            if wait_for_space:
                # parajob renames evicted entries away at once and frees their disk space in
                # a background thread; joblib deletes before returning. Same work: wait.
                memory.store_backend.wait_for_trash()
            elapsed = time.perf_counter() - start
            if kind == "pj":
                memory.store_backend.close()
            shutil.rmtree(sub, ignore_errors=True)
            return Measured(elapsed)

        return run

    def raw() -> Measured:
        sub = tempfile.mkdtemp(dir=folder.path)
        pj, _ = _memories(sub)
        fill(pj)
        pj.store_backend.close()
        start = time.perf_counter()
        found = [
            os.stat(os.path.join(root, name)).st_mtime
            for root, _, files in os.walk(sub)
            for name in files
        ]
        elapsed = time.perf_counter() - start
        assert found
        shutil.rmtree(sub, ignore_errors=True)
        return Measured(elapsed)

    return Case(
        name=f"reduce_size on {N_ENTRIES} entries (evict half)",
        contenders={
            "parajob": timed("pj"),
            "parajob, space freed": timed("pj", wait_for_space=True),
            "joblib": timed("jl"),
            "raw walk + stat": raw,
        },
        targets=[Target("parajob", "joblib", 0.15), Target("parajob, space freed", "joblib", 0.15)],
        repeat=3,
        setup=folder.setup,
        teardown=folder.teardown,
        warmup=False,
    )


def cases() -> list[Case]:
    """The Memory benchmark cases."""
    return [_hit_small(), _hit_big_argument(), _miss_big_result(), _reduce_size()]
