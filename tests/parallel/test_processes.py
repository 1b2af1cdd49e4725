"""Parallel on the processes backend: crashes, time limits, retries, workers and nesting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parajob import Parallel, delayed, effective_n_jobs, worker_id
from parajob.errors import TaskTimeoutError, TerminatedWorkerError
from parajob.process_pool import cpu_count, get_executor


def die_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(7)
    return x


def die_first_time(x: int, marker_dir: str) -> int:
    marker = Path(marker_dir) / f"died-{x}"
    if x == 1 and not marker.exists():
        marker.touch()
        os._exit(9)
    return x


def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def raise_value_error(x: int) -> int:
    raise ValueError(f"bad value {x}")


def inner_share(_: int) -> int:
    return effective_n_jobs(-1)


def nested_sum(n: int) -> int:
    return sum(Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(n)))


def test_a_dead_worker_fails_its_task_by_name_and_the_next_call_works():
    with pytest.raises(TerminatedWorkerError) as info:
        Parallel(n_jobs=2, batch_size=1)(delayed(die_on)(i, 3) for i in range(6))
    message = str(info.value)
    assert "task 3 (" in message and "die_on" in message and "exit code 7" in message
    assert "raised by task 3 (die_on) of Parallel" in info.value.__notes__
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_retries_rerun_a_task_whose_worker_died(tmp_path):
    out = Parallel(n_jobs=2, batch_size=1, retries=1)(
        delayed(die_first_time)(i, str(tmp_path)) for i in range(4)
    )
    assert out == [0, 1, 2, 3]


def test_task_timeout_kills_only_the_late_task():
    out = Parallel(n_jobs=2, task_timeout=1.0, on_error="return")(
        delayed(sleep_for)(t) for t in (0.0, 30.0, 0.0, 0.0)
    )
    assert out[0] == 0.0 and out[2:] == [0.0, 0.0]
    assert isinstance(out[1], TaskTimeoutError)
    assert "task 1 (" in str(out[1]) and "sleep_for" in str(out[1])
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_errors_carry_the_worker_traceback():
    with pytest.raises(ValueError, match=r"bad value \d") as info:
        Parallel(n_jobs=2)(delayed(raise_value_error)(i) for i in range(3))
    assert "raise_value_error" in str(info.value.__cause__)


def test_lambdas_and_closures_run_in_workers():
    offset = 10
    out = Parallel(n_jobs=2)(delayed(lambda x: x + offset)(i) for i in range(4))
    assert out == [10, 11, 12, 13]


def _remember(key: str, value: int) -> None:
    from parajob import worker_state

    worker_state()[key] = value


def _recall(key: str) -> tuple[int | None, int | None]:
    from parajob import worker_state

    return worker_id(), worker_state().get(key)


def test_initializer_state_and_worker_ids_in_processes():
    out = Parallel(n_jobs=2, batch_size=1, initializer=_remember, initargs=("k", 42))(
        delayed(_recall)("k") for _ in range(10)
    )
    assert {state for _, state in out} == {42}
    assert {wid for wid, _ in out} <= {0, 1}


def test_nested_calls_in_process_workers_get_their_share():
    shares = Parallel(n_jobs=2, batch_size=1)(delayed(inner_share)(i) for i in range(4))
    assert set(shares) == {max(cpu_count() // 2, 1)}
    assert Parallel(n_jobs=2)(delayed(nested_sum)(n) for n in (3, 4)) == [3, 6]


def test_a_with_block_keeps_the_same_workers():
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(abs)(-i) for i in range(4))
        pool = parallel._backend._pool
        pids = pool.pids()
        parallel(delayed(abs)(-i) for i in range(4))
        assert parallel._backend._pool is pool and pool.pids() == pids


def test_the_backend_follows_the_shared_pool_when_it_is_replaced():
    with Parallel(n_jobs=2) as parallel:
        assert parallel(delayed(abs)(-i) for i in range(2)) == [0, 1]
        get_executor(2, reuse=False)  # someone else replaces the shared pool
        assert parallel(delayed(abs)(-i) for i in range(2)) == [0, 1]


def test_timeout_counts_from_when_a_batch_starts_not_from_when_it_was_queued():
    # Six 0.4 s tasks on 2 workers: the last ones wait ~0.8 s in the queue, yet each runs
    # well within timeout=2, so nothing times out.
    out = Parallel(n_jobs=2, batch_size=1, pre_dispatch="all", timeout=2)(
        delayed(sleep_for)(0.4) for _ in range(6)
    )
    assert out == [0.4] * 6


def test_timeout_stops_the_call_when_a_batch_runs_too_long():
    from parajob.errors import ParallelTimeoutError

    with pytest.raises(ParallelTimeoutError, match=r"did not finish within timeout=0\.5"):
        Parallel(n_jobs=2, batch_size=1, timeout=0.5)(delayed(sleep_for)(t) for t in (0, 30))
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def _omp_threads(_: int) -> str | None:
    return os.environ.get("OMP_NUM_THREADS")


def test_inner_max_num_threads_caps_native_threads_in_workers():
    from parajob import parallel_config

    with parallel_config(backend="processes", n_jobs=2, inner_max_num_threads=3):
        assert set(Parallel()(delayed(_omp_threads)(i) for i in range(4))) == {"3"}
    with pytest.raises(ValueError, match="does not cap its workers' native threads"):
        parallel_config(backend="threading", inner_max_num_threads=2)
    with pytest.raises(ValueError, match="name the backend"):
        parallel_config(inner_max_num_threads=2)
