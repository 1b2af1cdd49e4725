"""Read-only shared copies of arrays are kept for later calls with the same array.

A later call reuses a copy only if the array's bytes are unchanged; copies go with their array,
with their budget, and when the shm folder needs the room. Workers report which file their
argument is mapped from (its inode), so the tests see reuse from the workers' side.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import shm_tasks as t
from shm_helpers import held_in, wait_until_released

from parajob import Parallel, delayed, parallel_config
from parajob.errors import SharedMemoryWarning
from parajob.process_pool import _sharer, _shm, free_shared_arrays

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="argument sharing needs Linux's /proc"
)

BIG = 300_000  # float64 values: 2.4 MB, above the default max_nbytes of 1M


def inodes(a: np.ndarray, n: int = 4, **kwargs: object) -> set[int]:
    out = Parallel(n_jobs=2, **kwargs)(delayed(t.where)(a) for _ in range(n))
    assert {value for value, _ in out} == {float(a[0])}
    return {inode for _, inode in out}


def test_a_later_call_with_the_same_array_reuses_its_copy(shm_dir: Path) -> None:
    a = np.random.default_rng(0).random(BIG)
    first = inodes(a)
    assert len(first) == 1
    assert inodes(a) == first
    # A view of the array (here, most of it) points into the same copy.
    out = Parallel(n_jobs=2)(delayed(t.where)(a[10:]) for _ in range(2))
    assert {inode for _, inode in out} == first
    assert _sharer.KEEPER.idle_bytes == a.nbytes


def test_an_array_changed_in_place_is_copied_again(shm_dir: Path) -> None:
    a = np.zeros(BIG)
    inodes(a)
    digest = _sharer.KEEPER._entries[_sharer._key(a)].digest
    a[0] = 42.0
    inodes(a)  # checks that every worker saw 42
    assert _sharer.KEEPER._entries[_sharer._key(a)].digest != digest
    assert len(_sharer.KEEPER) == 1  # the stale copy was freed, not kept beside the new one


def test_a_copy_goes_when_its_array_is_garbage_collected(shm_dir: Path) -> None:
    a = np.ones(BIG)
    inodes(a)
    assert len(_sharer.KEEPER) == 1
    del a
    assert len(_sharer.KEEPER) == 0
    assert wait_until_released(shm_dir) == []


def test_free_shared_arrays_frees_kept_copies(shm_dir: Path) -> None:
    a = np.ones(BIG)
    inodes(a)
    free_shared_arrays()
    assert wait_until_released(shm_dir) == []
    assert len(inodes(a)) == 1  # and the next call simply copies again


def test_workers_writes_never_reach_a_kept_copy(shm_dir: Path) -> None:
    a = np.zeros(BIG)
    kept = inodes(a)
    # Copy-on-write: the worker's write stays in its own pages.
    out = Parallel(n_jobs=2, mmap_mode="c")(delayed(t.write_first)(a, 7.0) for _ in range(2))
    assert out == [7.0, 7.0]
    # r+: workers write into a copy of their own call, never into the kept one.
    out = Parallel(n_jobs=2, mmap_mode="r+")(delayed(t.write_first)(a, 9.0) for _ in range(1))
    assert out == [9.0]
    assert inodes(a) == kept  # still zeros, from the same copy
    assert a[0] == 0.0


def test_keep_budget_zero_frees_copies_when_the_call_ends(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_sharer.KEEP_ENV, "0")
    a = np.ones(BIG)
    inodes(a)
    assert wait_until_released(shm_dir) == []


def test_the_oldest_idle_copies_go_first_beyond_the_budget(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_sharer.KEEP_ENV, str(2 * BIG * 8))  # room for two copies
    arrays = [np.full(BIG, float(i)) for i in range(3)]
    kept = [inodes(x) for x in arrays]
    assert len(_sharer.KEEPER) == 2
    assert not _sharer.KEEPER.holds(_sharer._key(arrays[0]))  # dropped to fit the budget
    assert inodes(arrays[2]) == kept[2] and inodes(arrays[1]) == kept[1]


def test_making_room_frees_idle_copies(shm_dir: Path) -> None:
    a = np.ones(BIG)
    inodes(a)
    _sharer.KEEPER.make_room(1)
    assert len(_sharer.KEEPER) == 0
    assert wait_until_released(shm_dir) == []


def test_concurrent_calls_from_threads_share_correctly(shm_dir: Path) -> None:
    arrays = [np.full(BIG, float(i)) for i in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(3, timeout=60)

    def run(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                out = Parallel(n_jobs=2)(delayed(t.where)(arrays[i]) for _ in range(4))
                assert {value for value, _ in out} == {float(i)}
                arrays[i][0] = float(i)  # unchanged bytes: the copy stays valid
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert len(_sharer.KEEPER) == 3


def _count_kept(queue: mp.Queue[int]) -> None:
    queue.put(len(_sharer.KEEPER))


def test_a_forked_child_starts_with_no_kept_copies(shm_dir: Path) -> None:
    a = np.ones(BIG)
    inodes(a)
    ctx = mp.get_context("fork")
    queue: mp.Queue[int] = ctx.Queue()
    child = ctx.Process(target=_count_kept, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == 0
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    assert held_in(shm_dir)  # the parent still has its copy


def _worker_maps(folder: Path) -> list[str]:
    me = f"pid {os.getpid()} "
    return [h for h in held_in(folder) if " map: " in h and not h.startswith(me)]


def test_workers_keep_their_mappings_until_the_copy_goes(shm_dir: Path) -> None:
    a = np.ones(BIG)
    inodes(a)
    assert _worker_maps(shm_dir), "workers keep kept copies mapped between calls"
    del a
    assert wait_until_released(shm_dir) == []


def test_a_busy_worker_lets_go_of_a_freed_copy_once_its_task_is_done(
    shm_dir: Path, tmp_path: Path
) -> None:
    a = np.ones(BIG)
    inodes(a)
    gate = str(tmp_path / "gate")
    small = np.zeros(10)
    outcome: list[object] = []

    def busy_call() -> None:
        outcome.append(Parallel(n_jobs=2)(delayed(t.wait_for_file)(small, gate) for _ in range(2)))

    runner = threading.Thread(target=busy_call)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".started") and time.monotonic() < deadline:
            time.sleep(0.01)
        del a  # freed in the parent while both workers are busy
        assert _sharer.KEEPER.idle_bytes == 0
    finally:
        open(gate, "w").close()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert outcome == [[0.0, 0.0]]
    assert wait_until_released(shm_dir) == []


def test_shared_pages_do_not_count_toward_max_rss(shm_dir: Path) -> None:
    a = np.ones(32 * 2**20)  # 256 MiB, read whole by every task
    with parallel_config(backend="processes", max_rss=160 * 2**20):
        runs = [Parallel(n_jobs=2)(delayed(t.pid_and_sum)(a) for _ in range(4)) for _ in range(3)]
    assert {value for run in runs for _, value in run} == {float(a.size)}
    assert len({pid for run in runs for pid, _ in run}) <= 2  # no worker was replaced


def test_a_copy_too_big_for_the_budget_is_freed_and_older_ones_stay(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_sharer.KEEP_ENV, str(BIG * 8 + 100))  # room for one small copy
    small = np.ones(BIG)
    inodes(small)
    big = np.ones(2 * BIG)
    inodes(big)
    assert _sharer.KEEPER.holds(_sharer._key(small))
    assert not _sharer.KEEPER.holds(_sharer._key(big))


def test_a_bad_keep_budget_is_named_before_the_call_runs(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_sharer.KEEP_ENV, "lots")
    with Parallel(n_jobs=2) as parallel:
        with pytest.raises(ValueError, match=r"PARAJOB_SHM_KEEP.*'lots'"):
            parallel(delayed(t.where)(np.ones(BIG)) for _ in range(2))
        monkeypatch.setenv(_sharer.KEEP_ENV, "0")  # fixed: the same object works again
        assert [v for v, _ in parallel(delayed(t.where)(np.ones(BIG)) for _ in range(2))] == [
            1.0,
            1.0,
        ]


def test_copy_on_write_writes_never_reach_a_later_call(shm_dir: Path) -> None:
    a = np.zeros(BIG)
    # Tasks keep their argument alive in the worker: its mapping must still not be reused.
    first = Parallel(n_jobs=2, mmap_mode="c")(delayed(t.write_and_keep)(a, 7.0) for _ in range(4))
    second = Parallel(n_jobs=2, mmap_mode="c")(delayed(t.write_and_keep)(a, 8.0) for _ in range(4))
    assert first == second == [0.0] * 4


def test_a_copy_describes_the_bytes_written_even_if_the_array_changes_meanwhile(
    shm_dir: Path,
) -> None:
    n = 2_000_000  # 16 MB: 16 hashed slices of 1 MiB
    ends = np.arange(1, 16) * ((1 << 20) // 8) - 1  # the last value of each slice
    for _ in range(8):
        x = np.zeros(n)
        stop = threading.Event()

        def toggle(x: np.ndarray = x, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                x[ends] = 1.0
                x[ends] = 0.0

        th = threading.Thread(target=toggle)
        th.start()
        try:
            Parallel(n_jobs=2)(delayed(t.max_at)(x, ends) for _ in range(2))  # races the copy
        finally:
            stop.set()
            th.join(timeout=60)
        x[ends] = 0.0  # from now on x is all zeros and nothing changes it
        assert Parallel(n_jobs=2)(delayed(t.max_at)(x, ends) for _ in range(2)) == [0.0, 0.0]
        free_shared_arrays()


@pytest.mark.parametrize("free", ["drop the array", "free_shared_arrays"])
def test_an_argument_a_worker_keeps_stays_readable_after_its_copy_is_freed(
    shm_dir: Path, free: str
) -> None:
    a = np.full(BIG, 3.0)
    Parallel(n_jobs=2)(delayed(t.keep_in_state)(a) for _ in range(4))
    if free == "drop the array":
        del a
    else:
        free_shared_arrays()
    sums = Parallel(n_jobs=2)(delayed(t.sum_kept)() for _ in range(4))
    assert set(sums) <= {None, 3.0 * BIG} and sums != [None] * 4  # read, and no SIGBUS
    Parallel(n_jobs=2)(delayed(t.forget_kept)() for _ in range(4))


def test_waking_a_pool_manager_is_reentrant() -> None:
    # A garbage collection inside wake() can free an array whose kept copy then wakes the
    # same run again (forget_copies), in the same thread: that must not deadlock.
    from parajob.process_pool import ProcessPool
    from parajob.process_pool._state import wake

    with ProcessPool(1) as pool:
        assert pool.submit(int, 3).result(timeout=60) == 3
        run = pool._run
        assert run is not None
        with run.wake_lock:
            wake(run)


def test_freed_copies_never_block_the_pool_on_a_worker_still_starting(
    shm_dir: Path, tmp_path: Path
) -> None:
    # Worker 1 sits in its initializer; large task messages go to worker 0 only. Each call's
    # array is freed after it, so the parent keeps passing on freed copies: none of that may
    # be written to a worker that is not reading yet (its pipe would fill, and the pool hang).
    gate = str(tmp_path / "gate")
    padding = b"x" * (1 << 20)
    done = [0]

    def calls() -> None:
        with Parallel(
            n_jobs=2, initializer=t.wait_in_worker_1, initargs=(gate,), max_nbytes="64K"
        ) as parallel:
            for k in range(600):
                a = np.full(20_000, float(k))  # 160 kB: shared, kept, then freed
                assert parallel(delayed(t.first)(a, padding) for _ in range(1)) == [float(k)]
                del a
                done[0] = k + 1

    runner = threading.Thread(target=calls)
    runner.start()
    try:
        runner.join(timeout=60)
        assert done[0] == 600, f"the pool stopped after {done[0]} calls"
    finally:
        open(gate, "w").close()
        runner.join(timeout=60)


def test_a_new_copy_frees_kept_ones_when_the_shm_folder_is_short_of_room(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_shm.SHM_SIZE_ENV, "5M")  # the room parajob may use in the folder
    monkeypatch.setenv(_sharer.KEEP_ENV, "10M")
    a = np.ones(BIG)  # 2.4 MB, kept
    inodes(a)
    b = np.full(400_000, 2.0)  # 3.2 MB: fits only once a's copy is gone
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedMemoryWarning)  # no fallback to temp_folder
        inodes(b)
    assert _sharer.KEEPER.holds(_sharer._key(b))
    assert not _sharer.KEEPER.holds(_sharer._key(a))
    # The workers were told at once, so only b's copy is still held or mapped anywhere (a
    # file's inode number can only be reused once nothing holds it any more).
    files = {found.group(1) for h in held_in(shm_dir) if (found := re.search(r"#(\d+)", h))}
    assert len(files) == 1
