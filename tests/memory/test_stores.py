"""Store backends: the conformance kit on local and fsspec stores, URLs, registration."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parajob.memory import (
    FSSpecStoreBackend,
    ItemInfo,
    LocalStoreBackend,
    Memory,
    StoreBackendBase,
    register_store_backend,
)
from parajob.memory._store import store_registry
from parajob.testing._store_kit import check_store_backend

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://parajob-test-{uuid.uuid4().hex[:8]}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url.split("://", 1)[1]
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_local_store_conforms(tmp_path: Path) -> None:
    check_store_backend("local", tmp_path / "store")


def test_fsspec_memory_store_conforms(memory_url: str) -> None:
    check_store_backend("fsspec", memory_url)


def test_fsspec_file_store_conforms(tmp_path: Path) -> None:
    check_store_backend(FSSpecStoreBackend, f"file://{tmp_path}/store")


def test_memory_url_selects_fsspec_and_caches(memory_url: str) -> None:
    memory = Memory(memory_url, verbose=0)
    assert isinstance(memory.store_backend, FSSpecStoreBackend)
    log: list[Any] = []

    @memory.cache
    def f(x):
        log.append(x)
        return np.arange(x)

    np.testing.assert_array_equal(f(5), np.arange(5))
    np.testing.assert_array_equal(f(5), np.arange(5))
    assert log == [5]
    fs = fsspec.filesystem("memory")
    keys = fs.find(memory_url.split("://", 1)[1])
    assert any(k.endswith("output.pkl") for k in keys)
    assert not any(".parajob-tmp-" in k for k in keys)
    assert f.explain(5).hit
    assert f.stats().hits == 1
    ref = f.call_and_shelve(5)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)).get(), np.arange(5))
    memory.clear(warn=False)
    assert not f.check_call_in_cache(5)


def test_backend_fsspec_on_a_file_url(tmp_path: Path) -> None:
    memory = Memory(f"file://{tmp_path}", backend="fsspec", verbose=0)

    @memory.cache
    def g(x):
        return {"x": x}

    assert g(1) == g(1) == {"x": 1}
    assert list((tmp_path / "parajob").rglob("output.pkl"))
    memory.reduce_size(items_limit=0)
    assert not list((tmp_path / "parajob").rglob("output.pkl"))


def test_fsspec_damaged_entry_is_recomputed(memory_url: str) -> None:
    from parajob.errors import CacheWarning

    memory = Memory(memory_url, verbose=0)

    @memory.cache
    def h(x):
        return [x] * 10

    h(2)
    fs = fsspec.filesystem("memory")
    (key,) = [k for k in fs.find(memory_url.split("://", 1)[1]) if k.endswith("output.pkl")]
    fs.pipe_file(key, b"not a parajob file")
    with pytest.warns(CacheWarning):
        assert h(2) == [2] * 10


class DictStore(StoreBackendBase):
    """A user's store: a process-local dict, the smallest possible implementation."""

    DATA: dict[str, dict[str, bytes]] = {}

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self.items = self.DATA.setdefault(location, {})

    def read_bytes(self, key: str) -> bytes:
        from parajob.memory._store import check_key

        try:
            return self.items[check_key(key)]
        except KeyError:
            raise FileNotFoundError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        from parajob.memory._store import check_key

        self.items[check_key(key)] = bytes(data)

    def exists(self, key: str) -> bool:
        return key in self.items

    def delete(self, prefix: str) -> None:
        for key in list(self.items):
            if prefix == "" or key == prefix or key.startswith(prefix + "/"):
                del self.items[key]

    def list(self, prefix: str = "") -> Iterator[ItemInfo]:
        for key, data in list(self.items.items()):
            if prefix == "" or key.startswith(prefix + "/"):
                yield ItemInfo(key, len(data), 0.0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.items = self.DATA.setdefault(self.location, {})


def test_registered_user_store_conforms_and_serves_memory(tmp_path: Path) -> None:
    register_store_backend("dict-test", DictStore)
    try:
        check_store_backend("dict-test", "loc-a")
        memory = Memory("anywhere", backend="dict-test", verbose=0)
        assert isinstance(memory.store_backend, DictStore)
        f = memory.cache(lambda x: x * 3)
        assert f(2) == f(2) == 6
        assert f.explain(2).hit
    finally:
        store_registry.unregister("dict-test")


def test_register_store_backend_rejects_non_stores() -> None:
    with pytest.raises(ValueError, match="subclass"):
        register_store_backend("bad", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str"):
        register_store_backend(3, DictStore)  # type: ignore[arg-type]


def test_store_instance_as_location(tmp_path: Path) -> None:
    store = LocalStoreBackend(tmp_path / "direct")
    memory = Memory(store, verbose=0)
    assert memory.store_backend is store
    assert memory.cache(lambda: 7)() == 7


def test_missing_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from parajob.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingDependencyError, match=r"parajob\[fsspec\]"):
        Memory("memory://nothing", verbose=0)
