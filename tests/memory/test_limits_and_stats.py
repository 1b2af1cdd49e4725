"""reduce_size and automatic limits evict least recently used entries; stats count right."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from parajob.memory import Memory


def make(memory: Memory, log: list[Any] | None = None) -> Any:
    log = log if log is not None else []

    def payload(i, size=1000):
        log.append(i)
        return b"x" * size

    return memory.cache(payload)


def test_max_items_evicts_least_recently_used(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0, max_items=3)
    log: list[Any] = []
    f = make(memory, log)
    for i in range(3):
        f(i)
    f(0)  # 0 is now the most recently used; 1 is the least
    memory.store_backend.index.flush()
    f(3)
    assert [f.check_call_in_cache(i) for i in range(4)] == [True, False, True, True]


def test_max_bytes_keeps_cache_under_limit(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0, max_bytes="10K")
    f = make(memory)
    for i in range(30):
        f(i, size=2000)
    entries, nbytes = memory.store_backend.index.totals()
    assert nbytes <= 10 * 1024
    assert 1 <= entries <= 5
    on_disk = sum(p.stat().st_size for p in (tmp_path / "parajob").rglob("output.pkl"))
    assert on_disk <= 10 * 1024
    assert f.check_call_in_cache(29, size=2000)


def test_max_age_evicts_unused_entries(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0, max_age=datetime.timedelta(seconds=0))
    f = make(memory)
    f(1)
    f(2)  # writing 2 evicts 1 (older than zero seconds); 2 goes at its own write
    assert not f.check_call_in_cache(1)


def test_reduce_size_by_items_bytes_and_age(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    f = make(memory)
    for i in range(10):
        f(i)
    for i in (0, 1):
        f(i)  # touch: most recently used
    memory.reduce_size(items_limit=4)
    kept = [i for i in range(10) if f.check_call_in_cache(i)]
    assert kept == [0, 1, 8, 9]
    memory.reduce_size(bytes_limit=2 * 1200)
    assert memory.store_backend.index.totals()[1] <= 2 * 1200
    memory.reduce_size(age_limit=datetime.timedelta(0))
    assert memory.store_backend.index.totals() == (0, 0)
    memory.reduce_size()  # no limit: nothing to do


def test_reduce_size_indexes_a_cache_written_before_the_index(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    f = make(memory)
    for i in range(5):
        f(i)
    memory.store_backend.close()
    for p in (tmp_path / "parajob").glob("index.sqlite*"):
        p.unlink()
    fresh = Memory(tmp_path, verbose=0)
    fresh.reduce_size(items_limit=2)
    assert sum(1 for _ in (tmp_path / "parajob").rglob("output.pkl")) == 2


def test_stats_per_function_and_total(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def a(x):
        return x

    @memory.cache
    def b(x):
        return [x] * 100

    a(1), a(1), a(1), a(2)
    b(1)
    sa = a.stats()
    assert (sa.hits, sa.misses, sa.entries) == (2, 2, 2)
    assert sa.bytes > 0
    assert sa.hit_rate == pytest.approx(0.5)
    total = memory.stats()
    assert (total.hits, total.misses, total.entries) == (2, 3, 3)
    assert set(total.functions) == {a.func_id, b.func_id}
    assert total.bytes == sum(s.bytes for s in total.functions.values())
    assert total.saved_seconds >= 0


def test_large_eviction_is_immediate_and_space_is_freed(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    f = make(memory)
    for i in range(60):
        f(i)
    memory.reduce_size(items_limit=10)
    store = memory.store_backend
    visible = [item.key for item in store.list("") if item.key.endswith("output.pkl")]
    assert len(visible) == 10
    assert sum(f.check_call_in_cache(i) for i in range(60)) == 10
    assert store.wait_for_trash(timeout=60)
    assert len(list((tmp_path / "parajob").rglob("output.pkl"))) == 10
    assert not [p for p in (tmp_path / "parajob").rglob(".trash-*")]
