"""Parallel: parajob against joblib on the same work, with the raw standard-library limit."""

from __future__ import annotations

import os
import textwrap
from multiprocessing.pool import ThreadPool

from _harness import Case, Target, measured_from_stdout

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"


def _noop(x: int) -> int:
    return x


def threading_cases() -> list[Case]:
    import joblib

    import parajob

    n = 1_000 if QUICK else 10_000
    pool = ThreadPool(2)

    def pj() -> None:
        parajob.Parallel(n_jobs=2, backend="threading")(parajob.delayed(_noop)(i) for i in range(n))

    def jl() -> None:
        joblib.Parallel(n_jobs=2, backend="threading")(joblib.delayed(_noop)(i) for i in range(n))

    def raw() -> None:
        pool.map(_noop, range(n))

    return [
        Case(
            f"threading, {n:,} trivial tasks",
            {"parajob": pj, "joblib": jl, "ThreadPool.map": raw},
            [Target("parajob", "joblib", 0.05)],
            teardown=pool.terminate,
        )
    ]


def processes_cases() -> list[Case]:
    import joblib

    import parajob

    n = 10_000 if QUICK else 100_000

    def pj() -> None:
        parajob.Parallel(n_jobs=2)(parajob.delayed(_noop)(i) for i in range(n))

    def jl() -> None:
        joblib.Parallel(n_jobs=2)(joblib.delayed(_noop)(i) for i in range(n))

    return [
        Case(
            f"processes, {n:,} trivial tasks, n_jobs=2",
            {"parajob": pj, "joblib": jl},
            [Target("parajob", "joblib", 0.15)],
        )
    ]


def progress_cases() -> list[Case]:
    import parajob
    from parajob.progress import TextProgress

    n = 10_000 if QUICK else 100_000
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in teardown

    def without() -> None:
        parajob.Parallel(n_jobs=2)(parajob.delayed(_noop)(i) for i in range(n))

    def with_bar() -> None:
        parajob.Parallel(n_jobs=2, progress=TextProgress(stream=devnull))(
            parajob.delayed(_noop)(i) for i in range(n)
        )

    return [
        Case(
            f"progress bar on {n:,} trivial tasks",
            {"with progress": with_bar, "without": without},
            [Target("with progress", "without", 1.05)],
            repeat=7,
            teardown=devnull.close,
        )
    ]


_GENERATOR_PEAK = textwrap.dedent(
    """
    import tracemalloc
    from parajob import Parallel, delayed

    def f(i):
        return i

    tracemalloc.start()
    total = 0
    for value in Parallel(n_jobs=2, return_as="generator")(delayed(f)(i) for i in range({n})):
        total += value
    print(tracemalloc.get_traced_memory()[1])
    """
)


def generator_cases() -> list[Case]:
    big = 100_000 if QUICK else 1_000_000
    small = big // 10

    return [
        Case(
            f"return_as='generator' traced peak: {big:,} vs {small:,} tasks",
            {
                f"{big:,} tasks": lambda: measured_from_stdout(_GENERATOR_PEAK.format(n=big)),
                f"{small:,} tasks": lambda: measured_from_stdout(_GENERATOR_PEAK.format(n=small)),
            },
            [Target(f"{big:,} tasks", f"{small:,} tasks", 1.5)],
            repeat=1,
            unit="B",
            warmup=False,
        )
    ]


def cases() -> list[Case]:
    return threading_cases() + processes_cases() + progress_cases() + generator_cases()
