"""Real local clusters for the cluster tests, started once per module and fully stopped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from _procs import is_interpreter_helper
from parajob.parallel._backend import BACKENDS, register_parallel_backend
from parajob.parallel.backends._dask import DaskBackend

# Until backends/__init__.py registers them lazily, the tests register the cluster backends.
if "dask" not in BACKENDS:
    register_parallel_backend("dask", DaskBackend)
if "ray" not in BACKENDS:
    from parajob.parallel.backends._ray import RayBackend

    register_parallel_backend("ray", RayBackend)


def _new_children(before: set[int]) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and not is_interpreter_helper(p)
    ]


def _running(proc: psutil.Process) -> bool:
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=0.1)
        alive = [p for p in alive if _running(p)]
    if alive:
        described = []
        for p in alive:
            try:
                described.append((p.pid, " ".join(p.cmdline())[:120]))
            except psutil.Error:
                described.append((p.pid, "?"))
        for p in alive:
            p.kill()
        pytest.fail(f"{what} left processes running after shutdown: {described}")


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A Client on a LocalCluster of 2 worker processes with 1 thread each.

    ``allowed-failures`` is 0 so that a worker crash reaches parajob at once instead of after
    dask re-ran the task on three more workers. Teardown closes the client and the cluster and
    checks that every process they started is gone.
    """
    dask = pytest.importorskip("dask", reason="the dask tests need the 'dask' extra")
    distributed = pytest.importorskip("distributed", reason="the dask tests need 'dask' extra")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.worker.daemon": False,
            "distributed.admin.tick.limit": "1h",
        }
    ):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
        client = distributed.Client(cluster)
        try:
            client.wait_for_workers(2, timeout=60)
            yield client
        finally:
            started = _new_children(before)
            client.close(timeout=30)
            cluster.close(timeout=30)
            _wait_gone(started, "the dask LocalCluster")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs; shut down (all its processes gone) at the end."""
    ray = pytest.importorskip(
        "ray", reason="the Ray tests need the 'ray' extra: pip install 'parajob[ray]'"
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # Ray's workers do not inherit the test runner's sys.path: give them this folder (for
    # cluster_tasks) and whatever PYTHONPATH the runner has.
    paths = [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}},
    )
    try:
        yield ray
    finally:
        started = _new_children(before)
        ray.shutdown()
        _wait_gone(started, "the local Ray instance")
