"""Cluster backends: parajob's dask and ray backends against joblib's, on the same cluster."""

from __future__ import annotations

import os
from typing import Any

from _harness import Case, Target

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"


def _noop(x: int) -> int:
    return x


def _first(array: Any, i: int) -> float:
    return float(array[i])


def _register() -> None:
    from parajob.parallel._backend import BACKENDS, register_parallel_backend

    if "dask" not in BACKENDS:
        from parajob.parallel.backends._dask import DaskBackend

        register_parallel_backend("dask", DaskBackend)
    if "ray" not in BACKENDS:
        from parajob.parallel.backends._ray import RayBackend

        register_parallel_backend("ray", RayBackend)


def dask_cases() -> list[Case]:
    import distributed
    import joblib
    import numpy as np

    import parajob

    _register()
    state: dict[str, Any] = {}

    def setup() -> None:
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=40,
        )  # fmt: skip
        state["cluster"], state["client"] = cluster, distributed.Client(cluster)

    def teardown() -> None:
        state.pop("client").close()
        state.pop("cluster").close()

    n = 1_000 if QUICK else 10_000
    mb = 20 if QUICK else 200
    array = np.ones(mb * 2**20 // 8)

    def small_pj() -> None:
        with parajob.parallel_config(backend="dask"):
            parajob.Parallel()(parajob.delayed(_noop)(i) for i in range(n))

    def small_jl() -> None:
        with joblib.parallel_config(backend="dask"):
            joblib.Parallel()(joblib.delayed(_noop)(i) for i in range(n))

    def small_raw() -> None:
        client = state["client"]
        client.gather(client.map(_noop, range(n), pure=False))

    def big_pj() -> None:
        with parajob.parallel_config(backend="dask"):
            parajob.Parallel()(parajob.delayed(_first)(array, i) for i in range(20))

    def big_jl() -> None:
        with joblib.parallel_config(backend="dask"):
            joblib.Parallel()(joblib.delayed(_first)(array, i) for i in range(20))

    def big_raw() -> None:
        client = state["client"]
        handle = client.scatter(array, hash=False)
        client.gather([client.submit(_first, handle, i, pure=False) for i in range(20)])

    return [
        Case(
            f"dask LocalCluster(2x1), {n:,} small tasks",
            {"parajob": small_pj, "joblib": small_jl, "client.map": small_raw},
            [Target("parajob", "joblib", 1.0)],
            repeat=3,
            setup=setup,
            teardown=teardown,
        ),
        Case(
            f"dask LocalCluster(2x1), 20 tasks sharing a {mb} MB array",
            {"parajob": big_pj, "joblib": big_jl, "scatter+submit": big_raw},
            [Target("parajob", "joblib", 1.0)],
            repeat=3,
            setup=setup,
            teardown=teardown,
        ),
    ]


def ray_cases() -> list[Case]:
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError:
        return []
    import joblib

    import parajob

    _register()
    n = 1_000

    def setup() -> None:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        register_ray()

    def pj() -> None:
        with parajob.parallel_config(backend="ray"):
            parajob.Parallel()(parajob.delayed(_noop)(i) for i in range(n))

    def jl() -> None:
        with joblib.parallel_config(backend="ray", n_jobs=2):
            joblib.Parallel()(joblib.delayed(_noop)(i) for i in range(n))

    remote = []

    def raw() -> None:
        if not remote:
            remote.append(ray.remote(_noop))
        ray.get([remote[0].remote(i) for i in range(n)])

    return [
        Case(
            f"ray (2 CPUs), {n:,} small tasks",
            {"parajob": pj, "joblib": jl, "ray.remote": raw},
            [Target("parajob", "joblib", 1.0)],
            repeat=3,
            setup=setup,
            teardown=ray.shutdown,
        )
    ]


def cases() -> list[Case]:
    return dask_cases() + ray_cases()
