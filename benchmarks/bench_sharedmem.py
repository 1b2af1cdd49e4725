"""Large numpy arrays to and from process workers: parajob's shared memory against joblib.

The cases of issue 5: a 200 MB array passed to 8 tasks that each sum a slice (measured twice:
calls that all get the same array, where parajob reuses its shared copy, and calls that each
get a new array, which must be copied once); the peak RSS growth of workers given a 1 GB
array; 8 tasks that each return a 100 MB array. Each case also runs a raw baseline: a
fork-based pool that inherits the array (no transfer at all), a copy through the pipe
(``max_nbytes=None``), and the tasks' own work without a transfer. A last case runs
scikit-learn through joblib on parajob's backend and on loky (when scikit-learn is there).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

from _harness import Case, Measured, Target

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"
MB = 2**20

_inherited: Any = None  # the fork baseline's array, inherited by its children


def sum_slice(a: Any, i: int, n: int = 8) -> float:
    step = len(a) // n
    return float(a[i * step : (i + 1) * step].sum())


def sum_inherited(i: int) -> float:
    return sum_slice(_inherited, i)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> tuple[int, int]:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return os.getpid(), _status_kib("VmRSS:")


def touch_and_peak(a: Any) -> tuple[int, int]:
    # Sum 1% of the array (a task that reads part of its input), then report the peak RSS.
    float(a[: len(a) // 100].sum())
    return os.getpid(), _status_kib("VmHWM:")


def make(nbytes: int, value: float) -> Any:
    return np.full(nbytes // 8, value)


def make_and_drop(nbytes: int, value: float) -> int:
    return int(make(nbytes, value).shape[0])


def _pass_cases() -> list[Case]:
    from joblib import Parallel as JParallel
    from joblib import delayed as jdelayed

    from parajob import Parallel, delayed

    size = (20 if QUICK else 200) * MB
    a = np.random.default_rng(0).random(size // 8)
    fork = mp.get_context("fork")

    def parajob(x: Any) -> None:
        Parallel(n_jobs=2)(delayed(sum_slice)(x, i) for i in range(8))

    def joblib(x: Any) -> None:
        JParallel(n_jobs=2)(jdelayed(sum_slice)(x, i) for i in range(8))

    def fork_pool(x: Any) -> None:
        global _inherited
        _inherited = x
        with fork.Pool(2) as pool:
            pool.map(sum_inherited, range(8))

    def fresh(run: Any) -> Any:
        # A new array object each time (made outside the timing): nothing shared before.
        def timed() -> Measured:
            x = a.copy()
            start = time.perf_counter()
            run(x)
            return Measured(time.perf_counter() - start)

        return timed

    contenders = {"parajob": parajob, "joblib": joblib, "copy-on-write fork (raw)": fork_pool}
    return [
        # The common pattern: one call per parameter or fold, all with the same data.
        Case(
            f"{size // MB} MB float64 array to 8 tasks summing a slice, 2 workers "
            "(the same array in each call)",
            {name: functools.partial(run, a) for name, run in contenders.items()},
            [Target("parajob", "joblib", 0.12)],
            repeat=3 if QUICK else 7,
        ),
        # The first call with an array: parajob copies it into fresh shared pages once.
        Case(
            f"{size // MB} MB float64 array to 8 tasks summing a slice, 2 workers "
            "(a new array in each call)",
            {name: fresh(run) for name, run in contenders.items()},
            [Target("parajob", "joblib", 1.0)],
            repeat=3 if QUICK else 7,
        ),
    ]


def _rss_case() -> Case:
    from joblib import Parallel as JParallel
    from joblib import delayed as jdelayed

    from parajob import Parallel, delayed

    size = (100 if QUICK else 1024) * MB
    a = np.random.default_rng(1).random(size // 8)

    def growth(parallel: Any, dl: Any, **kwargs: Any) -> Measured:
        # A new array each time: the first share, not a copy workers still map from before.
        x = a.copy()
        # Reset every worker's peak (16 quick tasks reach both), then give each the array.
        start = dict(parallel(n_jobs=2)(dl(reset_peak)() for _ in range(16)))
        peaks = parallel(n_jobs=2, **kwargs)(dl(touch_and_peak)(x) for _ in range(2))
        return Measured(float(max(peak - start.get(pid, peak) for pid, peak in peaks) * 1024))

    return Case(
        f"{size // MB} MB array to 2 workers: peak RSS growth of a worker",
        {
            "parajob": lambda: growth(Parallel, delayed),
            "joblib": lambda: growth(JParallel, jdelayed),
            "copy through the pipe (raw)": lambda: growth(Parallel, delayed, max_nbytes=None),
            "10% of the array": lambda: Measured(a.nbytes / 10),
        },
        [Target("parajob", "10% of the array", 1.0)],
        repeat=1,
        unit="B",
    )


def _results_case() -> Case:
    from joblib import Parallel as JParallel
    from joblib import delayed as jdelayed

    from parajob import Parallel, delayed

    size = (10 if QUICK else 100) * MB

    def parajob() -> None:
        out = Parallel(n_jobs=2)(delayed(make)(size, i) for i in range(8))
        assert out[7][0] == 7

    def joblib() -> None:
        out = JParallel(n_jobs=2)(jdelayed(make)(size, i) for i in range(8))
        assert out[7][0] == 7

    def no_transfer() -> None:
        Parallel(n_jobs=2)(delayed(make_and_drop)(size, i) for i in range(8))

    return Case(
        f"8 tasks each returning a {size // MB} MB array, 2 workers",
        {"parajob": parajob, "joblib": joblib, "compute only, nothing returned (raw)": no_transfer},
        [Target("parajob", "joblib", 0.5)],
        repeat=3 if QUICK else 5,
    )


def _sklearn_case() -> Case | None:
    try:
        import joblib
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import cross_val_score
    except ImportError:
        return None
    from parajob import register_joblib_backend

    register_joblib_backend()
    rows = 20_000 if QUICK else 200_000
    rng = np.random.default_rng(2)
    x = rng.random((rows, 100))  # 160 MB (16 MB quick)
    y = rng.random(rows)

    def fits(backend: str) -> None:
        # One cross-validation per alpha, as a small hyper-parameter search does by hand.
        with joblib.parallel_config(backend=backend):
            for alpha in (0.1, 1.0, 10.0):
                cross_val_score(Ridge(alpha=alpha), x, y, cv=4, n_jobs=2)

    return Case(
        f"scikit-learn: 3 x cross_val_score(Ridge, cv=4, n_jobs=2) on a {x.nbytes // MB} MB X, "
        "through joblib",
        {"parajob": lambda: fits("parajob"), "joblib": lambda: fits("loky")},
        [Target("parajob", "joblib", 1.0)],
        repeat=3 if QUICK else 5,
    )


def cases() -> list[Case]:
    sklearn_case = _sklearn_case()
    extra = [] if sklearn_case is None else [sklearn_case]
    return [*_pass_cases(), _rss_case(), _results_case(), *extra]
