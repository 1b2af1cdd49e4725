"""The dask backend on a real distributed.LocalCluster with two worker processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cluster_tasks as ct
import numpy as np
import pytest

from parajob import Parallel, delayed, parallel_config
from parajob.errors import InvalidParameterError, TerminatedWorkerError
from parajob.parallel._tasks import RemoteTraceback
from parajob.testing import check_parallel_backend

# The module's cluster lives across tests on purpose; its fixture checks its own teardown.
pytestmark = pytest.mark.allow_leftovers


def test_dask_backend_passes_the_conformance_kit(dask_client: Any) -> None:
    check_parallel_backend("dask")


def test_parallel_config_runs_tasks_on_the_active_clients_workers(dask_client: Any) -> None:
    from parajob import effective_n_jobs

    with parallel_config(backend="dask"):
        assert effective_n_jobs() == 2  # every thread of the cluster
        out = Parallel()(delayed(ct.pid_of)(i) for i in range(40))
    assert [x for x, _ in out] == list(range(40))
    pids = {pid for _, pid in out}
    assert pids <= worker_pids(dask_client)
    assert os.getpid() not in pids


def test_client_parameter_selects_the_cluster(dask_client: Any) -> None:
    out = Parallel(backend="dask", client=dask_client, n_jobs=2)(
        delayed(ct.pid_of)(i) for i in range(10)
    )
    assert {pid for _, pid in out} <= worker_pids(dask_client)


def test_large_argument_is_scattered_once_per_call(dask_client: Any) -> None:
    array = np.arange(500_000, dtype=np.float64)  # 4 MB, above max_nbytes="1M"
    with parallel_config(backend="dask"):
        out = Parallel(batch_size=1)(delayed(ct.scattered_keys)(array, i) for i in range(20))
    assert [v for v, _ in out] == [float(i) for i in range(20)]
    keys = {k for _, ks in out for k in ks}
    assert len(keys) == 1, f"the array reached the workers as {len(keys)} objects: {keys}"


def test_max_nbytes_none_sends_arguments_with_their_tasks(dask_client: Any) -> None:
    array = np.arange(500_000, dtype=np.float64)
    with parallel_config(backend="dask", max_nbytes=None):
        out = Parallel(batch_size=1)(delayed(ct.scattered_keys)(array, i) for i in range(4))
    assert [v for v, _ in out] == [0.0, 1.0, 2.0, 3.0]
    assert all(ks == [] for _, ks in out)


def test_task_error_names_the_task_and_carries_the_worker_traceback(dask_client: Any) -> None:
    with parallel_config(backend="dask"), pytest.raises(ct.ClusterTaskError) as info:
        Parallel()(delayed(ct.fail_on)(i, 13) for i in range(30))
    assert info.value.args == ("bad input", 13)
    assert "raised by task 13 (fail_on) of Parallel" in info.value.__notes__
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_on" in info.value.__cause__.tb_text


def test_on_error_return_and_retries_work_as_on_processes(dask_client: Any, tmp_path: Path) -> None:
    with parallel_config(backend="dask"):
        out = Parallel(on_error="return")(delayed(ct.fail_on)(i, 2) for i in range(5))
        again = Parallel(retries=1)(delayed(ct.fail_first)(i, str(tmp_path)) for i in range(6))
    assert isinstance(out[2], ct.ClusterTaskError)
    assert [out[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert again == list(range(6))


def test_progress_counts_every_task(dask_client: Any) -> None:
    seen: list[tuple[int, int | None]] = []
    with parallel_config(backend="dask", progress=lambda done, total: seen.append((done, total))):
        Parallel()([delayed(ct.square)(i) for i in range(100)])
    assert seen[-1] == (100, 100)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def _scheduler_task_count(client: Any) -> int:
    def count(dask_scheduler: Any) -> int:
        return sum(
            1
            for key, ts in dask_scheduler.tasks.items()
            if str(key).startswith("parajob-")
            and ts.state in ("waiting", "queued", "processing", "no-worker")
        )

    return int(client.run_on_scheduler(count))


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def test_first_error_cancels_the_pending_batches(dask_client: Any, tmp_path: Path) -> None:
    folder = str(tmp_path)

    def tasks() -> Any:
        yield delayed(ct.fail_on)(0, 0)
        for i in range(1, 100):
            yield delayed(ct.wait_for_file)(i, folder)

    with (
        parallel_config(backend="dask"),
        pytest.raises(ct.ClusterTaskError),
    ):
        Parallel(batch_size=1, pre_dispatch="all")(tasks())
    Path(folder, "release").touch()
    _wait_until(lambda: _scheduler_task_count(dask_client) == 0, 30, "the cluster is idle")
    started = len(list(tmp_path.glob("started-*")))
    # What was running, and the few tasks the scheduler had already queued on a worker when
    # the cancellation arrived, ran; the rest (most of 99) were cancelled.
    assert started < 20, f"{started} of 99 pending tasks ran after the first error"


def test_closing_a_generator_early_cancels_the_rest(dask_client: Any, tmp_path: Path) -> None:
    folder = str(tmp_path)

    def tasks() -> Any:
        yield delayed(ct.square)(0)
        for i in range(1, 100):
            yield delayed(ct.wait_for_file)(i, folder)

    with parallel_config(backend="dask"):
        gen = Parallel(batch_size=1, pre_dispatch="all", return_as="generator")(tasks())
        assert next(gen) == 0
        gen.close()
    Path(folder, "release").touch()
    _wait_until(lambda: _scheduler_task_count(dask_client) == 0, 30, "the cluster is idle")
    started = len(list(tmp_path.glob("started-*")))
    assert started < 20, f"{started} of 99 pending tasks ran after the generator was closed"


@pytest.mark.slow
def test_worker_crash_names_the_task_and_the_next_call_works(dask_client: Any) -> None:
    with parallel_config(backend="dask"), pytest.raises(TerminatedWorkerError) as info:
        Parallel(batch_size=1)(delayed(ct.exit_on)(i, 3) for i in range(6))
    # A dead worker takes the tasks queued on it along; dask cannot tell which one killed it,
    # so the error names the batch parajob learnt about first (task 3 or one behind it).
    match = re.search(r"holding task (\d+) \(exit_on\)", str(info.value))
    assert match is not None, str(info.value)
    assert int(match.group(1)) >= 3
    assert f"raised by task {match.group(1)} (exit_on) of Parallel" in info.value.__notes__
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(ct.square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_nested_parallel_runs_on_the_cluster_without_deadlock(dask_client: Any) -> None:
    # The outer call holds both worker threads; its tasks' inner calls still get to run
    # because a waiting task gives its thread back to the worker.
    with parallel_config(backend="dask"):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(ct.inner_sum)(n) for n in (5, 6, 7, 8))
    assert [s for s, _ in out] == [sum(range(n)) for n in (5, 6, 7, 8)]
    inner_pids = {pid for _, pids in out for pid in pids}
    assert inner_pids <= worker_pids(dask_client)


def test_initializer_runs_once_in_each_worker_process(dask_client: Any, tmp_path: Path) -> None:
    with parallel_config(backend="dask"):
        out = Parallel(initializer=ct.count_init, initargs=(str(tmp_path),), batch_size=1)(
            delayed(ct.pid_of)(i) for i in range(20)
        )
    pids = {pid for _, pid in out}
    markers = [p.name for p in tmp_path.glob("init-*")]
    assert sorted(int(m.split("-")[1]) for m in markers) == sorted(pids)


def test_task_timeout_fails_a_task_that_ran_too_long(dask_client: Any, tmp_path: Path) -> None:
    from parajob.errors import TaskTimeoutError

    folder = str(tmp_path)
    with parallel_config(backend="dask"):
        out = Parallel(task_timeout=0.05, on_error="return")(
            delayed(ct.wait_for_file)(i, folder, 0.3) for i in range(2)
        )
    assert all(isinstance(r, TaskTimeoutError) for r in out)


def test_without_a_client_the_error_says_how_to_create_one(tmp_path: Path) -> None:
    code = (
        "from parajob import Parallel, delayed\n"
        "from parajob.parallel._backend import register_parallel_backend\n"
        "from parajob.parallel.backends._dask import DaskBackend\n"
        "register_parallel_backend('dask', DaskBackend)\n"
        "try:\n"
        "    Parallel(backend='dask')(delayed(abs)(i) for i in range(3))\n"
        "except ValueError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert "InvalidParameterError" in done.stdout, done.stderr
    assert "found no dask.distributed Client" in done.stdout
    assert "Client()" in done.stdout


def test_unknown_backend_parameter_is_rejected_with_the_accepted_ones() -> None:
    with pytest.raises(InvalidParameterError, match="client= and wait_for_workers_timeout="):
        parallel_config(backend="dask", clinet=None)


def worker_pids(client: Any) -> set[int]:
    """The pids of the cluster's worker processes."""
    return set(client.run(os.getpid).values())


def test_scatter_goes_straight_to_local_workers_unless_the_client_says_otherwise(
    dask_client: Any,
) -> None:
    from distributed import Client

    from parajob.parallel.backends._dask import _scatter_direct

    # A LocalCluster listens on loopback: data can go straight to a worker.
    assert _scatter_direct(dask_client) is True
    # The client's own setting always wins.
    with Client(dask_client.scheduler.address, direct_to_workers=False) as other:
        assert _scatter_direct(other) is False
