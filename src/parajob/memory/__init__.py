"""On-disk memoization: ``Memory(location).cache(func)`` stores results keyed by arguments.

joblib's ``Memory`` API (``cache``, ``call``, ``call_and_shelve``, ``check_call_in_cache``,
``clear``, ``reduce_size``, ``eval``, ``expires_after``, ``register_store_backend``), plus
dependency-aware invalidation with ``explain``, size limits kept with an LRU index, one
computation at a time across processes, stats, atomic writes and fsspec stores. See
docs/memory.md.
"""

from __future__ import annotations

from parajob.memory._fsspec_store import FSSpecStoreBackend
from parajob.memory._func import (
    AsyncMemorizedFunc,
    AsyncNotMemorizedFunc,
    MemorizedFunc,
    NotMemorizedFunc,
)
from parajob.memory._local_store import LocalStoreBackend
from parajob.memory._logging import Logger, PrintTime
from parajob.memory._memory import Memory, expires_after
from parajob.memory._results import CacheStats, Explanation, MemorizedResult, NotMemorizedResult
from parajob.memory._store import ItemInfo, StoreBackendBase, register_store_backend

__all__ = [
    "AsyncMemorizedFunc",
    "AsyncNotMemorizedFunc",
    "CacheStats",
    "Explanation",
    "FSSpecStoreBackend",
    "ItemInfo",
    "LocalStoreBackend",
    "Logger",
    "MemorizedFunc",
    "MemorizedResult",
    "Memory",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "PrintTime",
    "StoreBackendBase",
    "expires_after",
    "register_store_backend",
]
