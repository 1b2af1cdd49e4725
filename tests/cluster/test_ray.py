"""The Ray backend on a local Ray instance (runs when the 'ray' extra is installed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cluster_tasks as ct
import numpy as np
import pytest

from parajob import Parallel, delayed, parallel_config
from parajob.errors import TerminatedWorkerError
from parajob.parallel._tasks import RemoteTraceback
from parajob.testing import check_parallel_backend

pytest.importorskip("ray", reason="the Ray tests need the 'ray' extra: pip install 'parajob[ray]'")

# The module's Ray instance lives across tests on purpose; its fixture checks its teardown.
pytestmark = pytest.mark.allow_leftovers


def test_ray_backend_passes_the_conformance_kit(ray_session: Any) -> None:
    check_parallel_backend("ray")


def test_parallel_config_runs_tasks_in_ray_workers(ray_session: Any) -> None:
    from parajob import effective_n_jobs

    with parallel_config(backend="ray"):
        assert effective_n_jobs() == 2  # every CPU of the Ray instance
        out = Parallel()(delayed(ct.pid_of)(i) for i in range(40))
    assert [x for x, _ in out] == list(range(40))
    assert os.getpid() not in {pid for _, pid in out}


def test_large_array_is_put_in_the_object_store_once(ray_session: Any) -> None:
    array = np.arange(500_000, dtype=np.float64)
    with parallel_config(backend="ray"):
        out = Parallel(batch_size=1, pre_dispatch="all")(
            delayed(ct.plasma_address)(array, i) for i in range(20)
        )
    assert [v for v, *_ in out] == [float(i) for i in range(20)]
    # One object in the store: each worker process maps it at one address, read-only (a
    # copy per task would be 20 objects, alive together since all tasks were in flight).
    addresses: dict[int, set[int]] = {}
    for _, pid, address, writable in out:
        addresses.setdefault(pid, set()).add(address)
        assert not writable
    assert all(len(a) == 1 for a in addresses.values()), addresses


def test_task_error_names_the_task_and_carries_the_worker_traceback(ray_session: Any) -> None:
    with parallel_config(backend="ray"), pytest.raises(ct.ClusterTaskError) as info:
        Parallel()(delayed(ct.fail_on)(i, 13) for i in range(30))
    assert info.value.args == ("bad input", 13)
    assert "raised by task 13 (fail_on) of Parallel" in info.value.__notes__
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_on_error_return_and_retries(ray_session: Any, tmp_path: Path) -> None:
    with parallel_config(backend="ray"):
        out = Parallel(on_error="return")(delayed(ct.fail_on)(i, 2) for i in range(5))
        again = Parallel(retries=1)(delayed(ct.fail_first)(i, str(tmp_path)) for i in range(6))
    assert isinstance(out[2], ct.ClusterTaskError)
    assert again == list(range(6))


def test_worker_crash_names_the_task_and_the_next_call_works(ray_session: Any) -> None:
    with parallel_config(backend="ray"), pytest.raises(TerminatedWorkerError) as info:
        Parallel(batch_size=1)(delayed(ct.exit_on)(i, 3) for i in range(6))
    assert "running task 3 (exit_on) died" in str(info.value)
    assert "raised by task 3 (exit_on) of Parallel" in info.value.__notes__
    with parallel_config(backend="ray"):
        assert Parallel()(delayed(ct.square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_nested_parallel_runs_in_ray_without_deadlock(ray_session: Any) -> None:
    # Both CPUs are held by outer tasks; their inner calls wait with ray.get in the task's
    # thread, which lends the CPU to the inner tasks.
    with parallel_config(backend="ray"):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(ct.inner_sum)(n) for n in (5, 6, 7))
    assert [s for s, _ in out] == [sum(range(n)) for n in (5, 6, 7)]
    assert os.getpid() not in {pid for _, pids in out for pid in pids}


def test_first_error_cancels_pending_batches(ray_session: Any, tmp_path: Path) -> None:
    folder = str(tmp_path)

    def tasks() -> Any:
        yield delayed(ct.fail_on)(0, 0)
        for i in range(1, 60):
            yield delayed(ct.wait_for_file)(i, folder)

    with parallel_config(backend="ray"), pytest.raises(ct.ClusterTaskError):
        Parallel(batch_size=1, pre_dispatch="all")(tasks())
    Path(folder, "release").touch()
    # The workers running the call's batches were stopped (ray.cancel(force=True)); a new
    # call runs at once on fresh workers.
    with parallel_config(backend="ray"):
        assert Parallel()(delayed(ct.square)(i) for i in range(4)) == [0, 1, 4, 9]
    started = len(list(tmp_path.glob("started-*")))
    assert started < 20, f"{started} of 59 pending tasks ran after the first error"
