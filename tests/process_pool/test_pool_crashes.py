"""The crash matrix: each failure gives a clear error fast, and the next call works."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pool_tasks as t
import psutil
import pytest
from pool_helpers import assert_gone, start_script

from parajob.errors import (
    RemoteTaskError,
    TaskPicklingError,
    TaskTimeoutError,
    TerminatedWorkerError,
)
from parajob.process_pool import BatchResult, ProcessPool, RemoteTraceback

FAST = 5.0  # every error must arrive within this many seconds


def _next_call_works(pool: ProcessPool) -> None:
    assert pool.submit(t.add, 2, 3).result(timeout=FAST) == 5
    assert sorted(pool.map(t.identity, range(10))) == list(range(10))


def _warm(pool: ProcessPool) -> list[int]:
    # Both workers up, so timings below measure the failure, not the start.
    pool.submit(t.identity, 0).result(timeout=60)
    deadline = time.monotonic() + 60
    while len(pool.pids()) < pool.max_workers and time.monotonic() < deadline:
        pool.submit(t.identity, 0).result(timeout=60)
    return pool.pids()


def test_segfault_in_task_names_task_and_signal_and_pool_recovers(pool: ProcessPool) -> None:
    _warm(pool)
    future = pool.submit(t.segfault)
    with pytest.raises(TerminatedWorkerError) as info:
        future.result(timeout=FAST)
    message = str(info.value)
    assert "task " in message and "segfault" in message
    assert "SIGSEGV" in message and "native code" in message
    assert f"pid {info.value.pid}" in message
    assert info.value.exitcode == -signal.SIGSEGV
    assert info.value.pid not in pool.pids()
    _next_call_works(pool)


def test_os_exit_in_task_reports_exit_code(pool: ProcessPool) -> None:
    _warm(pool)
    future = pool.submit(t.hard_exit, 3)
    with pytest.raises(TerminatedWorkerError, match=r"hard_exit.*exit code 3.*os\._exit"):
        future.result(timeout=FAST)
    _next_call_works(pool)


def test_sigkill_of_a_worker_blames_its_task_and_mentions_memory(
    pool: ProcessPool, tmp_path: Path
) -> None:
    _warm(pool)
    batch = pool.submit_batch(
        [(t.identity, (1,), {}), (t.announce_and_block, (str(tmp_path),), {})],
        indices=[16, 17],
    )
    assert t.wait_for(tmp_path / "started", timeout=FAST)
    victim = int((tmp_path / "started").read_text())
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(TerminatedWorkerError) as info:
        batch.result(timeout=FAST)
    message = str(info.value)
    assert "task 17 (pool_tasks.announce_and_block)" in message
    assert f"pid {victim}" in message and "SIGKILL" in message and "memory" in message
    assert info.value.task_index == 17
    assert victim not in pool.pids()
    _next_call_works(pool)


def test_error_unpickling_arguments_in_worker_fails_only_that_task(pool: ProcessPool) -> None:
    pids = _warm(pool)
    future = pool.submit(t.identity, t.LoadBomb())
    with pytest.raises(TaskPicklingError, match=r"could not be unpickled in worker") as info:
        future.result(timeout=FAST)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "cannot load me" in str(info.value)
    assert pool.pids() == pids, "no worker should have died"
    _next_call_works(pool)


def test_unpicklable_argument_fails_the_future_not_submit(pool: ProcessPool) -> None:
    pids = _warm(pool)
    future = pool.submit(t.identity, threading.Lock())
    with pytest.raises(TaskPicklingError, match=r"argument 0 cannot be pickled.*_thread.lock"):
        future.result(timeout=FAST)
    assert "pool_tasks.identity" in str(future.exception())
    assert pool.pids() == pids
    _next_call_works(pool)


def test_unpicklable_result_is_an_error_of_that_task(pool: ProcessPool) -> None:
    pids = _warm(pool)
    future = pool.submit(t.return_unpicklable)
    with pytest.raises(TaskPicklingError, match=r"result of task \d+ .*return_unpicklable"):
        future.result(timeout=FAST)
    assert pool.pids() == pids
    _next_call_works(pool)


def test_exception_while_pickling_result_is_reported(pool: ProcessPool) -> None:
    pids = _warm(pool)
    future = pool.submit(t.return_dump_bomb)
    with pytest.raises(TaskPicklingError, match=r"RuntimeError: refusing to be pickled"):
        future.result(timeout=FAST)
    assert pool.pids() == pids
    _next_call_works(pool)


def test_exception_that_cannot_be_rebuilt_becomes_remote_task_error(pool: ProcessPool) -> None:
    future = pool.submit(t.raise_stubborn)
    with pytest.raises(RemoteTaskError) as info:
        future.result(timeout=60)
    assert info.value.type_name.endswith("StubbornError")
    assert "raise_stubborn" in info.value.traceback_text
    _next_call_works(pool)


def test_task_timeout_kills_only_that_task(pool: ProcessPool, tmp_path: Path) -> None:
    _warm(pool)
    slow = pool.submit_batch(
        [(t.announce_and_block, (str(tmp_path),), {})], indices=[7], task_timeout=0.5
    )
    quick = [pool.submit(t.add, i, 1) for i in range(20)]
    assert [f.result(timeout=FAST) for f in quick] == [i + 1 for i in range(20)]
    with pytest.raises(TaskTimeoutError, match=r"task 7 \(pool_tasks.announce_and_block\).*0\.5 s"):
        slow.result(timeout=FAST)
    assert isinstance(slow.exception(), TimeoutError)
    victim = int((tmp_path / "started").read_text())
    assert_gone([victim])
    _next_call_works(pool)


def test_batch_reports_per_call_errors_with_traceback_cause(pool: ProcessPool) -> None:
    calls = [(t.add, (1, 2), {}), (t.fail, ("second",), {}), (t.add, (3,), {"y": 4})]
    result = pool.submit_batch(calls).result(timeout=60)
    assert isinstance(result, BatchResult)
    assert result.values == [3, None, 7]
    assert list(result.errors) == [1]
    error = result.errors[1]
    assert type(error) is ValueError and error.args == ("second", 42)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "in fail" in str(error.__cause__)


_CTRL_C_SCRIPT = """
    import sys, time
    from pathlib import Path
    import pool_tasks as t
    from parajob.process_pool import get_executor

    if __name__ == "__main__":
        directory = sys.argv[1] if len(sys.argv) > 1 else {directory!r}
        pool = get_executor(2)
        pool.submit(t.identity, 0).result(timeout=60)
        Path(directory, "pids").write_text(" ".join(map(str, pool.pids())))
        try:
            list(pool.map(t.announce_and_block, [directory] * 6, chunksize=1))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            started = time.monotonic()
            print("next", pool.submit(t.add, 2, 3).result(timeout=10), flush=True)
            print("pids", *pool.pids(), flush=True)
            {after}
"""


def _interrupt(tmp_path: Path, after: str) -> tuple[str, str, list[int], int]:
    script = _CTRL_C_SCRIPT.format(directory=str(tmp_path), after=after)
    proc = start_script(tmp_path / "main_script.py", script)
    try:
        assert t.wait_for(tmp_path / "started", timeout=60), "no task started"
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert time.monotonic() - sent < 15
    return out, err, pids, proc.returncode


def test_ctrl_c_in_parent_stops_work_and_next_call_works(tmp_path: Path) -> None:
    out, err, pids, code = _interrupt(tmp_path, after="pass")
    assert "interrupted" in out, err
    assert "next 5" in out, err
    assert code == 0, err
    # The worker that ran the interrupted task was killed, not left to finish.
    blocked = int((tmp_path / "started").read_text())
    line = next(x for x in out.splitlines() if x.startswith("pids"))
    assert blocked not in [int(p) for p in line.split()[1:]]
    assert_gone(pids)


def test_uncaught_ctrl_c_exits_without_leaving_workers(tmp_path: Path) -> None:
    _, err, pids, code = _interrupt(tmp_path, after="raise")
    assert "KeyboardInterrupt" in err
    assert code != 0
    assert_gone(pids)


def test_parent_killed_with_sigkill_takes_its_workers_along(tmp_path: Path) -> None:
    script = f"""
        import os, sys
        from pathlib import Path
        import pool_tasks as t
        from parajob.process_pool import get_executor

        if __name__ == "__main__":
            directory = Path({str(tmp_path)!r})
            pool = get_executor(2)
            pool.submit(t.identity, 0).result(timeout=60)
            (directory / "pids").write_text(" ".join(map(str, pool.pids())))
            # Both workers busy: they must go even mid-task.
            futures = [pool.submit(t.announce_and_block, str(directory), f"s{{i}}")
                       for i in range(2)]
            futures[0].result(timeout=60)
    """
    proc = start_script(tmp_path / "main_script.py", script)
    try:
        assert t.wait_for(tmp_path / "s0", timeout=60) and t.wait_for(tmp_path / "s1", timeout=60)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        helpers = [
            p.pid
            for p in psutil.Process(proc.pid).children(recursive=True)
            if p.pid not in pids and "forkserver" in " ".join(p.cmdline())
        ]
        assert helpers, "expected a forkserver process"
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert_gone(pids + helpers, timeout=5)


def test_crash_leaves_no_worker_behind_after_shutdown(pool: ProcessPool) -> None:
    pids = _warm(pool)
    with pytest.raises(TerminatedWorkerError):
        pool.submit(t.hard_exit, 9).result(timeout=FAST)
    pids = sorted(set(pids + pool.pids()))
    pool.shutdown(wait=True)
    assert_gone(pids)


def test_crash_among_fast_calls_names_a_narrow_window(pool: ProcessPool) -> None:
    _warm(pool)
    results = pool.map(t.segfault_at, range(1000), [500] * 1000, chunksize=1000)
    with pytest.raises(TerminatedWorkerError) as info:
        list(results)
    message = str(info.value)
    # Fast calls run in blocks of at most 256; the message names the block, or the call.
    found = re.search(
        r"(?:one of tasks (\d+)\.\.(\d+)|task (\d+)) \(pool_tasks.segfault_at\)", message
    )
    assert found, message
    first, last, exact = found.groups()
    if exact is not None:
        assert int(exact) == 500
    else:
        assert int(first) <= 500 <= int(last) and int(last) - int(first) < 256
    _next_call_works(pool)
