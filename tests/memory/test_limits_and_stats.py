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
    assert not _trash_items(tmp_path / "parajob")


def _square(x: int) -> int:
    return x * x


def test_hits_in_unpickled_copies_count_for_stats_and_lru(tmp_path: Path) -> None:
    # Parallel sends cached functions to workers pickled; a copy used once and dropped must
    # still record its hits (stats) and their recency (LRU order).
    import gc
    import pickle

    memory = Memory(tmp_path, verbose=0)
    f = memory.cache(_square)
    f(1)
    f(2)  # 2 is the most recently used
    for _ in range(5):
        copy = pickle.loads(pickle.dumps(f))
        assert copy(1) == 1
        del copy
    gc.collect()
    assert memory.stats().hits == 5
    memory.reduce_size(items_limit=1)
    assert f.check_call_in_cache(1) and not f.check_call_in_cache(2)


def test_many_copies_of_a_cached_function_share_one_index_connection(tmp_path: Path) -> None:
    import gc
    import pickle

    psutil = pytest.importorskip("psutil")
    memory = Memory(tmp_path, verbose=0)
    f = memory.cache(_square)
    f(3)
    copies = [pickle.loads(pickle.dumps(f)) for _ in range(20)]
    for copy in copies:
        assert copy(3) == 9
    gc.collect()
    index_path = str(tmp_path / "parajob" / "index.sqlite")
    handles = [o for o in psutil.Process().open_files() if o.path.startswith(index_path)]
    assert len(handles) <= 3, handles  # the database, its WAL and shared-memory files, once
    memory.store_backend.close()


class _InterleavingStore:
    """Mixin: run ``hook`` right after the files of a clear or an eviction are gone."""

    hook: Any = None

    def _run_hook(self) -> None:
        hook, type(self).hook = type(self).hook, None
        if hook is not None:
            hook()


def _interleaving_store(location: Path) -> Any:
    from parajob.memory import LocalStoreBackend

    class Store(_InterleavingStore, LocalStoreBackend):
        def delete(self, prefix: str) -> None:
            super().delete(prefix)
            if prefix == "":
                self._run_hook()

        def delete_many(self, prefixes: Any) -> None:
            super().delete_many(prefixes)
            self._run_hook()

    return Store(str(location / "parajob"))


@pytest.mark.parametrize("operation", ["clear", "reduce_size"])
def test_entry_written_during_clear_or_eviction_stays_indexed(
    tmp_path: Path, operation: str
) -> None:
    # Another process writes an entry between the removal of the files and the index update;
    # the index must still list it, or limits would never count or evict it.
    store = _interleaving_store(tmp_path)
    memory = Memory(store, verbose=0)
    other = Memory(tmp_path, verbose=0)  # a second user of the same cache
    f, g = memory.cache(_square), other.cache(_square)
    f(1)
    # A clear loses any entry; an eviction, the entry it removes, written again at once.
    key = 7 if operation == "clear" else 1
    type(store).hook = lambda: g(key)
    if operation == "clear":
        memory.clear(warn=False)
    else:
        memory.reduce_size(items_limit=0)
    assert type(store).hook is None, "the interleaving did not happen"
    assert f.check_call_in_cache(key)
    assert memory.stats().entries == 1
    assert [(r.func, r.args) for r in store.index.entries()] == [(f.func_id, f._get_args_id(key))]
    store.close()
    other.store_backend.close()


def test_call_and_shelve_of_a_result_larger_than_the_limit_still_gets(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0, max_bytes=100)
    f = make(memory)
    ref = f.call_and_shelve(1, size=10_000)  # evicted as soon as it is stored
    assert ref.get() == b"x" * 10_000
    assert not f.check_call_in_cache(1, size=10_000)


def _trash_items(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".trash")]


def test_trash_left_by_a_process_that_exited_is_freed_by_the_next_eviction(
    tmp_path: Path,
) -> None:
    memory = Memory(tmp_path, verbose=0)
    f = make(memory)
    for i in range(40):
        f(i)
    root = tmp_path / "parajob"
    # What a process that exited while its background deletion ran leaves: a renamed-away
    # entry nobody will free.
    leftover = root / f.func_id / ".trash-0123abcd-deadbeef"
    leftover.mkdir()
    (leftover / "output.pkl").write_bytes(b"x" * 1000)
    memory.reduce_size(items_limit=0)
    assert memory.store_backend.wait_for_trash(timeout=60)
    assert not leftover.exists()
    assert not list(root.rglob("output.pkl"))
    memory.store_backend.close()


EXIT_AFTER_EVICTION = """
import sys
from parajob.memory import Memory
memory = Memory(sys.argv[1], verbose=0)
@memory.cache
def payload(i):
    return b"x" * 20_000
for i in range(1500):
    payload(i)
memory.reduce_size(items_limit=0)
print("evicted", flush=True)
"""


def test_process_exit_right_after_an_eviction_neither_hangs_nor_leaves_trash(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src)
    done = subprocess.run(
        [sys.executable, "-c", EXIT_AFTER_EVICTION, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "evicted"
    root = tmp_path / "parajob"
    assert not list(root.rglob("output.pkl"))
    assert not _trash_items(root), _trash_items(root)[:3]
