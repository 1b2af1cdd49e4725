"""check_store_backend: the conformance kit for cache stores (ours and users')."""

from __future__ import annotations

import pickle
import threading
from typing import Any

__all__ = ["check_store_backend"]


def _fail(name: str, message: str) -> AssertionError:
    return AssertionError(f"store backend {name}: {message}")


def _make(backend_or_name: Any, location: Any, options: dict[str, Any]) -> Any:
    from parajob.memory import _fsspec_store, _local_store  # noqa: F401  (register)
    from parajob.memory._store import StoreBackendBase, store_registry

    if isinstance(backend_or_name, StoreBackendBase):
        return backend_or_name
    if isinstance(backend_or_name, str):
        cls = store_registry.get(backend_or_name)
    elif isinstance(backend_or_name, type) and issubclass(backend_or_name, StoreBackendBase):
        cls = backend_or_name
    else:
        raise TypeError(
            f"check_store_backend takes a registered store name, a StoreBackendBase subclass "
            f"or an instance, got {backend_or_name!r}"
        )
    return cls(location, **options)


def check_store_backend(backend_or_name: Any, location: Any, **options: Any) -> None:
    """Check that a store backend keeps the contract the cache relies on.

    Parameters
    ----------
    backend_or_name : str, type or StoreBackendBase
        A registered name (``"local"``, ``"fsspec"``), a :class:`StoreBackendBase` subclass,
        or an instance.
    location : str or os.PathLike
        An empty location the checks may write to (a folder, a URL).
    **options
        Passed to the store's constructor.

    Raises
    ------
    AssertionError
        Naming the first property that does not hold.

    Examples
    --------
    >>> import tempfile
    >>> from parajob.testing import check_store_backend
    >>> check_store_backend("local", tempfile.mkdtemp())

    .. versionadded:: 0.1
    """
    from parajob.memory import Memory
    from parajob.memory._lock import acquire

    store = _make(backend_or_name, location, options)
    name = type(store).__name__

    # bytes round trip, missing keys, exists
    store.write_bytes("m/f/a1/item.bin", b"hello")
    if store.read_bytes("m/f/a1/item.bin") != b"hello":
        raise _fail(name, "read_bytes does not return what write_bytes wrote")
    if not store.exists("m/f/a1/item.bin") or store.exists("m/f/a1/missing.bin"):
        raise _fail(name, "exists() is wrong for a written or a missing key")
    try:
        store.read_bytes("m/f/a1/missing.bin")
    except FileNotFoundError:
        pass
    else:
        raise _fail(name, "read_bytes of a missing key must raise FileNotFoundError")
    store.write_bytes("m/f/a1/item.bin", b"second, longer value")
    if store.read_bytes("m/f/a1/item.bin") != b"second, longer value":
        raise _fail(name, "write_bytes does not replace an existing item")

    # listing
    store.write_bytes("m/f/a2/item.bin", b"xyz")
    store.write_bytes("m/g/a1/item.bin", b"")
    listed = {item.key: item.size for item in store.list("m/f")}
    if listed != {"m/f/a1/item.bin": 20, "m/f/a2/item.bin": 3}:
        raise _fail(name, f"list('m/f') gave {listed}, expected the two items under m/f")
    if {item.key for item in store.list("")} != set(listed) | {"m/g/a1/item.bin"}:
        raise _fail(name, "list('') does not give every item")

    # deletion
    store.delete("m/f/a2")
    store.delete("m/f/a2")  # missing: no error
    store.delete("m/f/a1/item.bin")
    if any(True for _ in store.list("m/f")):
        raise _fail(name, "delete() left items behind")
    if not store.exists("m/g/a1/item.bin"):
        raise _fail(name, "delete('m/f/...') removed an item outside the prefix")

    # unsafe keys
    for bad in ("../escape", "/absolute", "m/../../x", ".hidden"):
        try:
            store.write_bytes(bad, b"x")
        except ValueError:
            continue
        raise _fail(name, f"write_bytes accepted the unsafe key {bad!r}")

    # values
    value = {"a": [1, 2.5, "three"], "b": (None, True)}
    size = store.store_value("m/v/a1/output.pkl", value, 0)
    if not isinstance(size, int) or size <= 0:
        raise _fail(name, f"store_value must return the number of bytes written, got {size!r}")
    if store.load_value("m/v/a1/output.pkl", None) != value:
        raise _fail(name, "load_value does not return what store_value stored")
    try:
        import numpy as np
    except ImportError:  # numpy is optional: the array check is skipped without it
        pass
    else:
        arr = np.arange(1000, dtype=np.float32)
        store.store_value("m/v/a2/output.pkl", arr, 0)
        back = store.load_value(
            "m/v/a2/output.pkl", "r" if getattr(store, "supports_mmap", False) else None
        )
        if not np.array_equal(np.asarray(back), arr):
            raise _fail(name, "a numpy array does not round-trip through store_value")
        del back

    # concurrent replace: readers see an old or a new value, never a mix
    payloads = [bytes([i]) * 50_000 for i in range(1, 5)]
    store.write_bytes("m/c/a1/item.bin", payloads[0])
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for round_ in range(20):
                store.write_bytes("m/c/a1/item.bin", payloads[round_ % len(payloads)])
        finally:
            stop.set()

    def reader() -> None:
        while not stop.is_set():
            data = store.read_bytes("m/c/a1/item.bin")
            if data not in payloads:
                errors.append(f"read {len(data)} bytes that are no complete value")
                return

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise _fail(name, f"write_bytes is not atomic: {errors[0]}")

    # locks
    first, second = store.lock("m/f/a9", 60.0), store.lock("m/f/a9", 60.0)
    if not first.try_acquire():
        raise _fail(name, "a free entry lock could not be taken")
    if second.try_acquire():
        raise _fail(name, "an entry lock was taken twice")
    first.release()
    if not acquire(second, 5.0):
        raise _fail(name, "a released entry lock could not be taken again")
    second.release()

    # pickling
    clone = pickle.loads(pickle.dumps(store))
    if clone.read_bytes("m/g/a1/item.bin") != b"":
        raise _fail(name, "a pickled copy of the store does not see its items")

    # the cache on top
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    memory = Memory(store, verbose=0)
    cached = memory.cache(square)
    if (cached(3), cached(3)) != (9, 9) or calls != [3]:
        raise _fail(name, f"Memory on this store does not answer from the cache (calls={calls})")
    if not cached.explain(3).hit:
        raise _fail(name, "explain() does not report the stored entry as a hit")
    memory.reduce_size(items_limit=0)
    if cached.check_call_in_cache(3):
        raise _fail(name, "reduce_size(items_limit=0) left an entry")
    memory.clear(warn=False)
    if any(True for _ in store.list("")):
        raise _fail(name, "Memory.clear() left items in the store")
    store.close()
