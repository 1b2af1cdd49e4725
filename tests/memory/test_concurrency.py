"""One computation at a time: 8 processes and many threads hammering the same keys."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from parajob.memory import Memory
from parajob.memory._lock import FileLock, acquire

SRC = str(Path(__file__).resolve().parents[2] / "src")
WAIT = 120
N_PROCS = 8
N_KEYS = 12

WORKER = """
import os, random, sys
import numpy as np
from parajob.memory import Memory

memory = Memory(os.environ["PJ_CACHE"], verbose=0)
CALLS = os.environ["PJ_CALLS"]


@memory.cache
def work(k):
    # Each computation leaves a line in calls/<k>: the test counts them.
    with open(os.path.join(CALLS, str(k)), "a") as f:
        f.write(f"{os.getpid()}\\n")
    return {"k": k, "data": np.full(100_000, k, dtype=np.int64)}


def main():
    keys = list(range(int(sys.argv[1])))
    random.Random(int(sys.argv[2])).shuffle(keys)
    print("ready", flush=True)
    sys.stdin.readline()  # the start signal: every process starts together
    for _ in range(2):
        for k in keys:
            out = work(k)
            assert out["k"] == k and out["data"].shape == (100_000,), out
            assert (out["data"] == k).all()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
"""


def test_eight_processes_compute_each_key_exactly_once(tmp_path: Path) -> None:
    mods, calls, cache = tmp_path / "mods", tmp_path / "calls", tmp_path / "cache"
    mods.mkdir()
    calls.mkdir()
    (mods / "hammer_worker.py").write_text(WORKER)
    env = dict(os.environ, PJ_CACHE=str(cache), PJ_CALLS=str(calls))
    env["PYTHONPATH"] = os.pathsep.join([SRC, str(mods)])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import hammer_worker; hammer_worker.main()",
                str(N_KEYS),
                str(seed),
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(N_PROCS)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=WAIT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=WAIT)
    assert [p.returncode for p in procs] == [0] * N_PROCS
    assert all(o.strip() == "ok" for o in outs)
    counts = {k: (calls / str(k)).read_text().count("\n") for k in range(N_KEYS)}
    assert counts == dict.fromkeys(range(N_KEYS), 1)

    memory = Memory(cache, verbose=0)
    sys.path.insert(0, str(mods))
    try:
        os.environ["PJ_CACHE"], os.environ["PJ_CALLS"] = str(cache), str(calls)
        import hammer_worker

        for k in range(N_KEYS):
            assert hammer_worker.work.check_call_in_cache(k)
            assert hammer_worker.work(k)["k"] == k
        hammer_worker.memory.store_backend.close()  # writes the parent's buffered hits
        stats = memory.stats()
        assert stats.entries == N_KEYS
        assert stats.misses == N_KEYS
        # Every call of the children (written at their exit) plus the parent's N_KEYS.
        assert stats.hits == N_PROCS * N_KEYS * 2 - N_KEYS + N_KEYS
    finally:
        sys.path.remove(str(mods))
        sys.modules.pop("hammer_worker", None)
        del os.environ["PJ_CACHE"], os.environ["PJ_CALLS"]
        memory.store_backend.close()


def test_threads_compute_once_and_share_the_result(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    entered = threading.Event()
    release = threading.Event()
    log: list[Any] = []

    @memory.cache
    def slow(x):
        log.append(x)
        entered.set()
        assert release.wait(WAIT)
        return np.full(10, x)

    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(slow(5)))
    first.start()
    assert entered.wait(WAIT)
    others = [threading.Thread(target=lambda: results.append(slow(5))) for _ in range(6)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(WAIT)
    assert log == [5]
    assert len(results) == 7 and all((r == 5).all() for r in results)


def test_file_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "entry.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, fcntl, os\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        lock = FileLock(str(path))
        assert not lock.try_acquire()
        assert not acquire(lock, 0.05)
        holder.kill()
        holder.communicate(timeout=WAIT)
        assert acquire(lock, WAIT)
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=WAIT)


def test_waiter_times_out_and_computes_itself(tmp_path: Path) -> None:
    import pytest

    from parajob.errors import CacheWarning

    memory = Memory(tmp_path, verbose=0, lock_timeout=0.05)

    @memory.cache
    def f(x):
        return x + 1

    args_id = f._get_args_id(1)
    lock = memory.store_backend.lock(f"{f.func_id}/{args_id}", 60.0)
    assert lock.try_acquire()
    try:
        with pytest.warns(CacheWarning, match="computing it here as well"):
            assert f(1) == 2
    finally:
        lock.release()


def _wait_for(event: Any) -> None:
    event.wait(WAIT)


def test_child_forked_while_computing_does_not_keep_the_lock(tmp_path: Path) -> None:
    # A cached function that starts long-lived workers by fork (a multiprocessing pool) must
    # not leave its entry locked until they exit: flock belongs to the open file, which a
    # forked child shares.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    children: list[Any] = []
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def start_worker(x):
        child = ctx.Process(target=_wait_for, args=(release,))
        child.start()
        children.append(child)
        return x

    try:
        assert start_worker(1) == 1
        assert children[0].is_alive()
        lock = memory.store_backend.lock(
            f"{start_worker.func_id}/{start_worker._get_args_id(1)}", 60
        )
        assert lock.try_acquire(), "the forked child still holds the entry's lock"
        lock.release()
    finally:
        release.set()
        for child in children:
            child.join(WAIT)
            assert child.exitcode == 0


def test_lock_on_an_entry_folder_removed_meanwhile_recreates_the_folder(tmp_path: Path) -> None:
    # An eviction or clear may remove the entry's folder between lock() and the acquisition;
    # the lock must not leave a plain file where the folder belongs.
    import warnings

    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def f(x):
        return x + 1

    entry = f"{f.func_id}/{f._get_args_id(1)}"
    store = memory.store_backend
    lock = store.lock(entry, 60.0)
    os.rmdir(store.path_of(entry))
    assert lock.try_acquire()
    try:
        assert os.path.isdir(store.path_of(entry))
    finally:
        lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == 2
        assert f(1) == 2
    assert f.check_call_in_cache(1)


def test_opening_a_new_index_waits_for_a_concurrent_writer(tmp_path: Path) -> None:
    # Several processes opening a fresh cache together: one of them is switching the index
    # to WAL or writing it while another opens it. SQLite answers "database is locked" at
    # once (no busy wait) in that case; opening must wait, not fail the user's call.
    import sqlite3

    from parajob.memory._index import CacheIndex

    path = str(tmp_path / "index.sqlite")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("CREATE TABLE IF NOT EXISTS early (x)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO early VALUES (1)")
        errors: list[BaseException] = []
        index = CacheIndex(path)

        def open_it() -> None:
            try:
                index.totals()
            except BaseException as exc:
                errors.append(exc)

        opener = threading.Thread(target=open_it)
        opener.start()
        opener.join(0.5)
        assert opener.is_alive() and not errors, f"gave up instead of waiting: {errors}"
        other.execute("COMMIT")
        opener.join(WAIT)
        assert not opener.is_alive() and not errors, errors
        assert index.totals() == (0, 0)
        index.close()
    finally:
        other.close()


def _call_cached_and_report(f: Any, queue: Any) -> None:
    queue.put(f(2))


def _acquire_and_report(store: Any, key: str, queue: Any) -> None:
    from parajob.memory._lock import acquire as acquire_lock

    lock = store.lock(key, 60.0)
    got = acquire_lock(lock, 10.0)
    if got:
        lock.release()
    queue.put(got)


def test_child_forked_while_a_thread_writes_the_index_can_use_the_cache(
    tmp_path: Path,
) -> None:
    # Another thread inside an index update when a worker is forked: the child inherits that
    # thread's lock held by nobody, and must not hang on its first cached call.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def double(x):
        return 2 * x

    double(2)
    index = memory.store_backend.index
    inside, leave = threading.Event(), threading.Event()

    def busy_writer() -> None:
        with index._lock:  # as flush() holds it while it writes
            inside.set()
            leave.wait(WAIT)

    writer = threading.Thread(target=busy_writer)
    writer.start()
    assert inside.wait(WAIT)
    queue = ctx.Queue()
    child = ctx.Process(target=_call_cached_and_report, args=(double, queue))
    try:
        child.start()
        assert queue.get(timeout=30) == 4
    finally:
        leave.set()
        writer.join(WAIT)
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(WAIT)
        queue.close()
        queue.join_thread()
    assert child.exitcode == 0


def test_child_forked_while_a_lease_is_held_can_take_it_once_released(tmp_path: Path) -> None:
    import multiprocessing

    import pytest

    pytest.importorskip("fsspec")
    from parajob.memory import FSSpecStoreBackend

    ctx = multiprocessing.get_context("fork")
    store = FSSpecStoreBackend(f"file://{tmp_path}/store")
    key = "m/f/abc"
    lock = store.lock(key, 60.0)
    assert lock.try_acquire()
    queue = ctx.Queue()
    child = ctx.Process(target=_acquire_and_report, args=(store, key, queue))
    try:
        child.start()
        lock.release()  # the child must now get it, not wait for its lease to time out
        assert queue.get(timeout=30) is True
    finally:
        child.join(WAIT)
        queue.close()
        queue.join_thread()
    assert child.exitcode == 0
