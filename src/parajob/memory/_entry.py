"""Load, write and remove one cache entry in a store.

An entry is the folder ``<func_id>/<args_id>`` holding ``metadata.json`` and ``output.pkl``.
These operations are apart from the call logic (``_func``, ``_miss``): they know nothing of
the cached function, ``Memory.reduce_size`` and the command line remove entries too, and
they hold the rules for what is on disk:

- ``output.pkl`` is written last; its appearance commits the entry.
- A damaged entry is reported and removed (the caller computes it again); one that this
  process cannot read (no memory, a missing module, no permission) is reported and kept.
- Files are removed before index rows, so a crash in between never leaks files.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

from parajob.errors import CacheWarning
from parajob.memory._results import MemorizedResult
from parajob.memory._store import METADATA, OUTPUT, StoreBackendBase

__all__ = ["MISS", "evict", "load_entry", "write_entry"]

# What load_entry returns when there is no usable value (None is a valid cached value).
MISS: Any = object()


def evict(store: StoreBackendBase, victims: list[tuple[str, str]], reason: str) -> None:
    """Remove entries from a store and its index, recording ``reason`` for ``explain``."""
    if not victims:
        return
    # Files first, then rows: a process killed in between leaves rows without files, which
    # read as misses and are replaced on the next write; the reverse would leak files. Rows
    # written after ``before`` belong to entries stored again meanwhile, and stay.
    before = time.time()
    store.delete_many([f"{func}/{args}" for func, args in victims])
    store.index.forget(victims, reason, before)
    store.finish_deletes()


def _not_the_entrys_fault(exc: BaseException) -> bool:
    """Return True if loading failed because of this process, not because of the entry."""
    seen: BaseException | None = exc
    for _ in range(8):  # the error or what caused it (persistence wraps some)
        if seen is None:
            break
        if isinstance(seen, (MemoryError, ImportError)):
            return True
        if isinstance(seen, OSError) and not isinstance(
            seen, (NotADirectoryError, IsADirectoryError)
        ):
            return True
        seen = seen.__cause__
    return False


def load_entry(
    store: StoreBackendBase,
    func_id: str,
    args_id: str,
    mmap_mode: str | None,
    shelving: bool,
    stacklevel: int = 4,
) -> Any:
    """Return the stored value (a :class:`MemorizedResult` when ``shelving``), or MISS.

    A hit is counted in the index. ``stacklevel`` is that of the warnings about an entry
    that could not be read.
    """
    entry = f"{func_id}/{args_id}"
    start = time.perf_counter()
    try:
        if shelving:
            if not store.exists(f"{entry}/{OUTPUT}"):
                return MISS
            value: Any = MemorizedResult(store, (func_id, args_id), mmap_mode=mmap_mode)
        else:
            value = store.load_value(f"{entry}/{OUTPUT}", mmap_mode)
    except FileNotFoundError:
        return MISS
    except Exception as exc:  # a damaged entry: any error of unpickling, not just ours
        if _not_the_entrys_fault(exc):
            # Out of memory, a module this process cannot import, a permission problem:
            # the entry may be fine. Compute (a success replaces it), but do not remove
            # a result that may have taken hours because this process cannot read it.
            warnings.warn(
                CacheWarning(
                    f"the cached result of {func_id} at {store.location}/{entry} "
                    f"could not be read ({type(exc).__name__}: {exc}); it is being "
                    f"computed again (the stored entry is kept)"
                ),
                stacklevel=stacklevel,
            )
            return MISS
        warnings.warn(
            CacheWarning(
                f"the cached result of {func_id} at {store.location}/{entry} could "
                f"not be read ({type(exc).__name__}: {exc}); it was removed and is being "
                f"computed again"
            ),
            stacklevel=stacklevel,
        )
        evict(store, [(func_id, args_id)], "corrupt|damaged")
        return MISS
    store.index.record_hit(func_id, args_id, time.perf_counter() - start)
    return value


def write_entry(
    store: StoreBackendBase,
    func_id: str,
    args_id: str,
    output: Any,
    metadata: dict[str, Any],
    compress: Any,
) -> int | None:
    """Store ``output`` and its metadata; return the bytes written, or None if it failed.

    A failure (an unpicklable result, a full disk) is a CacheWarning, not an error: the
    caller still has the value.
    """
    entry = f"{func_id}/{args_id}"
    try:
        meta_bytes = json.dumps(metadata).encode()
        store.write_bytes(f"{entry}/{METADATA}", meta_bytes)
        # The output is written last: its appearance commits the entry.
        return store.store_value(f"{entry}/{OUTPUT}", output, compress) + len(meta_bytes)
    except Exception as exc:
        warnings.warn(
            CacheWarning(
                f"the result of {func_id} could not be stored in the cache at "
                f"{store.location} ({type(exc).__name__}: {exc}); it is returned anyway "
                f"and will be computed again next time"
            ),
            stacklevel=5,
        )
        try:
            store.delete(f"{entry}/{OUTPUT}")
            store.delete(f"{entry}/{METADATA}")
        except Exception:
            pass
        return None
