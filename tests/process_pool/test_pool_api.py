"""The pool's API: submit, map, batches, cancellation, shutdown, serialization, errors."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import CancelledError, Future
from pathlib import Path

import pool_tasks as t
import pytest
from pool_helpers import assert_gone, run_script

from parajob.errors import (
    InvalidParameterError,
    PoolClosedError,
    RemoteTaskError,
    TaskPicklingError,
    TaskTimeoutError,
    TerminatedWorkerError,
    WorkerStartError,
)
from parajob.process_pool import ProcessPool, RemoteTraceback, get_executor, shutdown_executor


def test_submit_returns_results_and_reraises_with_original_type(pool: ProcessPool) -> None:
    assert pool.submit(t.add, 1, y=2).result(timeout=60) == 3
    with pytest.raises(ValueError) as info:
        pool.submit(t.fail, "boom").result(timeout=60)
    assert info.value.args == ("boom", 42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "pool_tasks.py" in str(cause) and "in fail" in str(cause)


def test_map_keeps_order_zips_iterables_and_honours_chunksize(pool: ProcessPool) -> None:
    assert list(pool.map(t.add, range(100), range(100, 200))) == [i + i + 100 for i in range(100)]
    assert list(pool.map(t.identity, range(7), chunksize=3)) == list(range(7))
    assert list(pool.map(t.identity, [])) == []


def test_map_raises_first_error_at_its_position(pool: ProcessPool) -> None:
    results = pool.map(t.fail, ["a", "b"], chunksize=1)
    with pytest.raises(ValueError, match="a"):
        next(results)


def test_map_timeout_raises_timeout_error(pool: ProcessPool, tmp_path: Path) -> None:
    results = pool.map(t.announce_and_block, [str(tmp_path)], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    (tmp_path / "release").write_text("")


def test_map_rejects_bad_chunksize(pool: ProcessPool) -> None:
    with pytest.raises(InvalidParameterError, match="chunksize"):
        pool.map(t.identity, [1], chunksize=0)


def test_lambdas_and_closures_run_in_workers(pool: ProcessPool) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    assert list(pool.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    assert pool.submit(closure, 1).result(timeout=60) == 11
    assert pool.submit(t.identity, lambda: 3).result(timeout=60)() == 3


def test_functions_defined_in_main_of_a_script_or_c_run() -> None:
    code = """
        from parajob.process_pool import get_executor, shutdown_executor

        class Point:
            def __init__(self, x):
                self.x = x

        def double(p):
            return Point(p.x * 2)

        if __name__ == "__main__":
            pool = get_executor(2)
            print([p.x for p in pool.map(double, [Point(1), Point(2)])])
            shutdown_executor()
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2, 4]"


def test_submit_batch_with_stop_on_error_skips_the_rest(pool: ProcessPool) -> None:
    calls = [(t.add, (1,), {}), (t.fail, ("x",), {}), (t.add, (2,), {})]
    result = pool.submit_batch(calls, stop_on_error=True).result(timeout=60)
    assert result.values == [1, None]
    assert set(result.errors) == {1}


def test_submit_batch_validates_its_input(pool: ProcessPool) -> None:
    with pytest.raises(InvalidParameterError, match="indices"):
        pool.submit_batch([(t.add, (1,), {})], indices=[1, 2])
    with pytest.raises(InvalidParameterError, match="fn, args, kwargs"):
        pool.submit_batch([(t.add, (1,))])  # type: ignore[list-item]
    with pytest.raises(InvalidParameterError, match="task_timeout"):
        pool.submit_batch([(t.add, (1,), {})], task_timeout=0)


def test_callback_runs_once_per_batch(pool: ProcessPool) -> None:
    done: list[Future[object]] = []
    event = threading.Event()

    def callback(future: Future[object]) -> None:
        done.append(future)
        event.set()

    future = pool.submit_batch([(t.add, (1,), {})], callback=callback)
    assert future.result(timeout=60).values == [1]
    assert event.wait(10)
    assert done == [future]


def test_cancel_pending_and_kill_running(tmp_path: Path) -> None:
    with ProcessPool(1, prefetch=False) as pool:
        running = pool.submit(t.announce_and_block, str(tmp_path))
        pending = [pool.submit(t.identity, i) for i in range(3)]
        assert t.wait_for(tmp_path / "started", timeout=60)
        assert pool.cancel(pending) == 3
        assert all(f.cancelled() for f in pending)
        assert pool.cancel([running], kill_running=True) == 1
        with pytest.raises(CancelledError):
            running.result(timeout=5)
        victim = int((tmp_path / "started").read_text())
        assert_gone([victim])
        assert pool.submit(t.add, 1, 1).result(timeout=60) == 2


def test_shutdown_is_idempotent_and_refuses_new_work() -> None:
    pool = ProcessPool(2)
    assert pool.submit(t.identity, 1).result(timeout=60) == 1
    pids = pool.pids()
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(wait=False, kill_workers=True)
    assert pool.closed
    with pytest.raises(PoolClosedError, match="shut down"):
        pool.submit(t.identity, 1)
    assert_gone(pids)


def test_shutdown_waits_for_submitted_work(tmp_path: Path) -> None:
    pool = ProcessPool(1)
    futures = [pool.submit(t.add, i, 1) for i in range(5)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [1, 2, 3, 4, 5]


def test_shutdown_with_kill_workers_fails_running_work(tmp_path: Path) -> None:
    pool = ProcessPool(1)
    running = pool.submit(t.announce_and_block, str(tmp_path))
    queued = pool.submit(t.identity, 1)
    assert t.wait_for(tmp_path / "started", timeout=60)
    pool.shutdown(wait=True, kill_workers=True)
    with pytest.raises(PoolClosedError, match="kill_workers"):
        running.result(timeout=0)
    assert queued.cancelled() or isinstance(queued.exception(timeout=0), CancelledError)


def test_context_manager_shuts_down() -> None:
    with ProcessPool(1) as pool:
        assert pool.submit(t.identity, 5).result(timeout=60) == 5
        pids = pool.pids()
    assert pool.closed
    assert_gone(pids)


def test_get_executor_reuses_and_resizes(pool: ProcessPool) -> None:
    assert get_executor(2) is pool
    first = pool.submit(t.pid).result(timeout=60)
    bigger = get_executor(3)
    assert bigger is pool and pool.max_workers == 3
    assert list(bigger.map(t.identity, range(6))) == list(range(6))
    smaller = get_executor(1)
    assert smaller is pool and pool.max_workers == 1
    assert smaller.submit(t.identity, 1).result(timeout=60) == 1
    assert isinstance(first, int)
    assert get_executor(1, reuse=False) is not pool


def test_initializer_runs_in_each_worker_and_reruns_when_changed() -> None:
    try:
        pool = get_executor(2, initializer=t.fill_state, initargs=("first",))
        assert set(pool.map(t.read_state, range(4))) == {"first"}
        same = get_executor(2, initializer=t.fill_state, initargs=("first",))
        assert same is pool
        other = get_executor(2, initializer=t.fill_state, initargs=("second",))
        assert other is not pool
        assert set(other.map(t.read_state, range(4))) == {"second"}
    finally:
        shutdown_executor()


def test_failing_initializer_breaks_pool_clearly_and_next_get_executor_works() -> None:
    try:
        pool = get_executor(2, initializer=t.failing_initializer)
        future = pool.submit(t.identity, 1)
        with pytest.raises(WorkerStartError, match="initializer is broken") as info:
            future.result(timeout=30)
        assert "failing_initializer" in str(info.value)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        with pytest.raises(PoolClosedError, match="broken"):
            pool.submit(t.identity, 1)
        fresh = get_executor(2)
        assert fresh is not pool
        assert fresh.submit(t.identity, 2).result(timeout=60) == 2
    finally:
        shutdown_executor()


def test_errors_pickle_with_their_attributes() -> None:
    err = TerminatedWorkerError("a worker died")
    err.__dict__.update(task_index=3, pid=10, exitcode=-9)
    back = pickle.loads(pickle.dumps(err))
    assert (back.task_index, back.pid, back.exitcode, str(back)) == (3, 10, -9, "a worker died")
    remote = pickle.loads(pickle.dumps(RemoteTaskError("msg", "mod.Err", "tb")))
    assert (str(remote), remote.type_name, remote.traceback_text) == ("msg", "mod.Err", "tb")
    for cls in (TaskTimeoutError, TaskPicklingError, WorkerStartError, PoolClosedError):
        assert str(pickle.loads(pickle.dumps(cls("x")))) == "x"
    assert isinstance(TaskTimeoutError("x"), TimeoutError)
    assert isinstance(pickle.loads(pickle.dumps(RemoteTraceback("tb"))), RemoteTraceback)


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(InvalidParameterError, match="max_workers"):
        ProcessPool(0)
    with pytest.raises(InvalidParameterError, match="initargs must be a tuple"):
        ProcessPool(1, initializer=t.fill_state, initargs=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="start_method"):
        ProcessPool(1, start_method="teleport")
    with pytest.raises(InvalidParameterError, match="idle_timeout"):
        ProcessPool(1, idle_timeout=0)
    with pytest.raises(InvalidParameterError, match="max_tasks_per_child"):
        ProcessPool(1, max_tasks_per_child=0)


def test_spawn_start_method_works() -> None:
    with ProcessPool(1, start_method="spawn") as pool:
        assert pool.start_method == "spawn"
        assert list(pool.map(t.add, [1, 2], [3, 4])) == [4, 6]


def test_nested_pool_inside_a_worker(pool: ProcessPool) -> None:
    assert pool.submit(t.nested_pool_sum, 10).result(timeout=120) == 45


def test_large_messages_submitted_before_workers_are_ready_are_dispatched() -> None:
    # Frames above the prefetch size wait for a ready worker; a fresh pool has none yet.
    with ProcessPool(2) as pool:
        big = [bytes(100_000)] * 6
        assert list(pool.map(len, big, chunksize=1)) == [100_000] * 6
        assert sum(pool.map(t.identity, range(50_000))) == sum(range(50_000))


def test_many_threads_submitting_at_once_get_their_own_results(pool: ProcessPool) -> None:
    results: dict[int, list[int]] = {}

    def client(k: int) -> None:
        futures = [pool.submit(t.add, k * 1000, i) for i in range(200)]
        results[k] = [f.result(timeout=60) for f in futures]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert results == {k: [k * 1000 + i for i in range(200)] for k in range(4)}


def test_a_done_callback_may_submit_more_work(pool: ProcessPool) -> None:
    chained: list[Future[int]] = []
    event = threading.Event()

    def again(future: Future[object]) -> None:
        chained.append(pool.submit(t.add, 1, 1))
        event.set()

    pool.submit_batch([(t.identity, (1,), {})], callback=again).result(timeout=60)
    assert event.wait(10)
    assert chained[0].result(timeout=60) == 2


def test_pool_in_a_forked_child_fails_clearly_and_child_can_build_its_own() -> None:
    code = """
        import multiprocessing as mp, os
        import pool_tasks as t
        from parajob.errors import PoolClosedError
        from parajob.process_pool import get_executor, shutdown_executor

        def child(q):
            try:
                inherited.submit(t.identity, 1)
                q.put("no error")
            except PoolClosedError as exc:
                q.put("closed: " + str(exc))
            fresh = get_executor(1)
            q.put(fresh is not inherited and fresh.submit(t.add, 2, 2).result(timeout=60))
            shutdown_executor()

        if __name__ == "__main__":
            inherited = get_executor(1)
            inherited.submit(t.identity, 1).result(timeout=60)
            ctx = mp.get_context("fork")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print(q.get(timeout=60))
            print(q.get(timeout=60))
            p.join(timeout=60)
            print(inherited.submit(t.add, 1, 1).result(timeout=60))
            shutdown_executor()
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("closed: ") and "fork" in lines[0]
    assert lines[1:] == ["4", "2"]
