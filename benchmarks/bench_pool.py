"""The process pool: parajob's pool against joblib's (loky through Parallel) and the stdlib.

Four cases, as stated in issue 3: a first call from a fresh interpreter, a warm call of two
trivial tasks, 100,000 trivial tasks with batching, and 200 tasks of ~5 ms of CPU each.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import textwrap
import time
from typing import Any

from _harness import Case, Target, measured_from_stdout

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"


def trivial(x: int) -> int:
    return x


def cpu_5ms(x: int) -> int:
    # Spin on CPU time, not wall time, so a busy machine does not shorten the work.
    end = time.process_time() + 0.005
    while time.process_time() < end:
        pass
    return x


_FIRST_CALL = {
    "parajob": """
        import time
        from parajob.process_pool import get_executor
        def f(x):
            return x
        start = time.perf_counter()
        pool = get_executor(2)
        futures = [pool.submit(f, i) for i in range(2)]
        [fut.result(timeout=120) for fut in futures]
        print(time.perf_counter() - start)
    """,
    "joblib": """
        import time
        from joblib import Parallel, delayed
        def f(x):
            return x
        start = time.perf_counter()
        Parallel(n_jobs=2)(delayed(f)(i) for i in range(2))
        print(time.perf_counter() - start)
    """,
    # The stdlib's spawn-based executor cannot pickle a function from `python -c`: use abs.
    "ProcessPoolExecutor(spawn)": """
        import time, multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        start = time.perf_counter()
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(abs, range(2)))
        print(time.perf_counter() - start)
    """,
}


def _first_call_case() -> Case:
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def contender(code: str) -> Any:
        return lambda: measured_from_stdout(textwrap.dedent(code), env=env)

    return Case(
        "first call from a fresh interpreter, 2 trivial tasks (imports excluded)",
        {name: contender(code) for name, code in _FIRST_CALL.items()},
        [Target("parajob", "joblib", 0.4)],
        repeat=3 if QUICK else 7,
        warmup=False,
    )


class _Pools:
    """The warm pools of the in-process cases, started in setup and stopped in teardown."""

    def __init__(self) -> None:
        self.mp_pool: Any = None

    def setup(self) -> None:
        from parajob.process_pool import get_executor

        # Not the default fork context: forking a parent whose threads (joblib's, ours) may
        # hold a lock at that moment can deadlock the child. Warm-call costs do not depend
        # on the start method.
        self.mp_pool = mp.get_context("forkserver").Pool(2)
        get_executor(2)

    def teardown(self) -> None:
        from parajob.process_pool import shutdown_executor

        shutdown_executor()
        if self.mp_pool is not None:
            self.mp_pool.terminate()
            self.mp_pool.join()
            self.mp_pool = None


def _map_contenders(pools: _Pools, fn: Any, n: int) -> dict[str, Any]:
    from joblib import Parallel, delayed

    from parajob.process_pool import get_executor

    def parajob_map() -> None:
        list(get_executor(2).map(fn, range(n)))

    def joblib_parallel() -> None:
        Parallel(n_jobs=2)(delayed(fn)(i) for i in range(n))

    def stdlib_map() -> None:
        pools.mp_pool.map(fn, range(n))

    return {
        "parajob": parajob_map,
        "joblib": joblib_parallel,
        "multiprocessing.Pool": stdlib_map,
    }


def _warm_case() -> Case:
    pools = _Pools()
    return Case(
        "warm call, 2 trivial tasks",
        _map_contenders(pools, trivial, 2),
        [Target("parajob", "joblib", 0.05)],
        repeat=20 if QUICK else 100,
        setup=pools.setup,
        teardown=pools.teardown,
    )


def _many_case() -> Case:
    pools = _Pools()
    n = 10_000 if QUICK else 100_000
    return Case(
        f"{n:,} trivial tasks, auto batching",
        _map_contenders(pools, trivial, n),
        [
            Target("parajob", "joblib", 0.15),
            Target("parajob", "multiprocessing.Pool", 2.5),
        ],
        repeat=3 if QUICK else 9,
        setup=pools.setup,
        teardown=pools.teardown,
    )


def _cpu_case() -> Case:
    pools = _Pools()
    n = 40 if QUICK else 200
    return Case(
        f"{n} tasks of ~5 ms CPU each",
        _map_contenders(pools, cpu_5ms, n),
        [Target("parajob", "multiprocessing.Pool", 1.0)],
        repeat=3 if QUICK else 7,
        setup=pools.setup,
        teardown=pools.teardown,
    )


def cases() -> list[Case]:
    """Return the pool's benchmark cases."""
    return [_first_call_case(), _warm_case(), _many_case(), _cpu_case()]
