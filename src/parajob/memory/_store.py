"""The store backend contract: where cache entries live.

A store is a small key-value filesystem. Keys are relative, ``/``-separated paths whose parts
the cache builds from sanitised names (:mod:`parajob.memory._naming`), and which
:func:`check_key` validates again before any store touches them. The layout inside a store::

    <func module>/<func name>/func_info.json      what the function's entries were made by
    <func module>/<func name>/<args key>/metadata.json
    <func module>/<func name>/<args key>/output.pkl   written last: the entry exists iff it does

Five methods are required (:meth:`~StoreBackendBase.read_bytes`, ``write_bytes``, ``exists``,
``delete``, ``list``); the others have working defaults that a store may override for speed
(``load_value``/``store_value`` to stream or memory-map instead of going through bytes,
``lock`` for a stronger cross-process lock, ``make_index`` for a shared index).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from parajob._registry import Registry
from parajob.errors import InvalidParameterError
from parajob.memory._index import CacheIndex
from parajob.memory._lock import EntryLock, LeaseLock

__all__ = [
    "FUNC_INFO",
    "METADATA",
    "OUTPUT",
    "ItemInfo",
    "StoreBackendBase",
    "as_store",
    "check_key",
    "make_store",
    "read_json",
    "register_store_backend",
    "store_registry",
]

OUTPUT = "output.pkl"
METADATA = "metadata.json"
FUNC_INFO = "func_info.json"
LOCK = ".lock"

# One pass over the whole key: parts of [A-Za-z0-9_.-] that do not start with a dot (so
# neither "." nor ".." nor hidden names), or the fixed lock file name; nothing absolute.
_PART = r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*"
_SAFE_KEY = re.compile(rf"(?:{_PART}/)*(?:{_PART}|\.lock)")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError.

    Safe: ``/``-separated parts of ``[A-Za-z0-9_.-]`` not starting with a dot, except the
    fixed ``.lock`` name; nothing absolute, empty, ``.`` or ``..``.
    """
    if not isinstance(key, str) or _SAFE_KEY.fullmatch(key) is None:
        raise ValueError(
            f"unsafe store key {key!r}: keys are '/'-separated plain names ([A-Za-z0-9_.-], "
            f"not starting with a dot); they are built from sanitised names and never leave "
            f"the cache folder"
        )
    return key


@dataclass(frozen=True)
class ItemInfo:
    """One stored item: its key, size in bytes and modification time (seconds since epoch)."""

    key: str
    size: int
    mtime: float


class StoreBackendBase(ABC):
    """Base class of cache stores: a small key-value filesystem under a location.

    Subclass it, implement the five abstract methods, register it with
    :func:`register_store_backend` and check it with
    :func:`parajob.testing.check_store_backend`.

    Parameters
    ----------
    location : str
        Where the store keeps its items (a folder, a URL); the cache's own sub-folder
        (``.../parajob``) is already part of it.
    **options
        Store-specific options, from ``Memory(backend_options=...)``.

    Notes
    -----
    Requirements on implementations:

    - ``write_bytes`` is atomic: a concurrent ``read_bytes`` returns the old content or the new
      one, never a mix, and a writer killed midway leaves the old state (or nothing);
    - ``delete(prefix)`` removes the item at ``prefix`` and everything under ``prefix + "/"``;
      a missing prefix is not an error;
    - instances pickle (``Memory`` objects travel to worker processes).

    .. versionadded:: 0.1
       parajob's own contract; joblib's ``StoreBackendBase`` methods are not used.
    """

    #: True when :meth:`load_value` honours ``mmap_mode``.
    supports_mmap: ClassVar[bool] = False
    #: True when :meth:`lock` excludes other processes exactly (not just best effort).
    supports_exact_locks: ClassVar[bool] = False

    def __init__(self, location: str, **options: Any) -> None:
        self.location = location
        self.options = options
        self._index: CacheIndex | None = None

    # -- the contract --------------------------------------------------------------------------

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``; raise FileNotFoundError if it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` atomically, creating parent folders as needed."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return True if an item is stored at ``key``."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Remove the item at ``prefix`` and every item under ``prefix/`` ("" means all)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ItemInfo]:
        """Yield every item under ``prefix/`` (all items for ""), in no particular order."""

    # -- hooks with defaults -------------------------------------------------------------------

    def delete_many(self, prefixes: Sequence[str]) -> None:
        """Remove several entries (as :meth:`delete` each); stores may batch this."""
        for prefix in prefixes:
            self.delete(prefix)

    def finish_deletes(self) -> None:
        """Complete deletions :meth:`delete_many` deferred (called after the index update)."""

    def load_value(self, key: str, mmap_mode: str | None) -> Any:
        """Return the value stored at ``key`` (FileNotFoundError if absent)."""
        from parajob.persistence import loads

        return loads(self.read_bytes(key))

    def store_value(self, key: str, value: Any, compress: Any) -> int:
        """Store ``value`` at ``key`` atomically; return the number of bytes written."""
        from parajob.persistence import dumps

        data = dumps(value, compress=compress)
        self.write_bytes(key, data)
        return len(data)

    def lock(self, key: str, lease: float) -> EntryLock:
        """Return a lock for the entry folder ``key`` (not yet acquired)."""
        return LeaseLock(
            f"{key}/{LOCK}",
            self.read_bytes,
            self.write_bytes,
            self.delete,
            lease,
            scope=f"{type(self).__qualname__}:{self.location}",
        )

    def make_index(self) -> CacheIndex:
        """Return the index of this store; the default lives in memory, seeded by a listing.

        It is shared by the stores of one process on the same location.
        """
        name = f"{type(self).__module__}.{type(self).__qualname__}:{self.location}"
        return CacheIndex.shared(name, None)

    @property
    def index(self) -> CacheIndex:
        """The store's index, made on first use (and seeded from a listing when new)."""
        index = self._index
        if index is None:
            index = self._index = self.make_index()
            index.seed_once(self.scan_entries)
        return index

    def scan_entries(self) -> Iterator[tuple[str, str, int, float]]:
        """Yield ``(func folder, args key, size, mtime)`` of every committed entry."""
        sizes: dict[str, int] = {}
        committed: dict[str, float] = {}
        for item in self.list(""):
            parts = item.key.split("/")
            if len(parts) != 4:
                continue
            folder = "/".join(parts[:3])
            sizes[folder] = sizes.get(folder, 0) + item.size
            if parts[3] == OUTPUT:
                committed[folder] = item.mtime
        for folder, mtime in committed.items():
            func, args = folder.rsplit("/", 1)
            yield func, args, sizes[folder], mtime

    def close(self) -> None:
        """Release what the store holds open (its index connection)."""
        if self._index is not None:
            self._index.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(location={self.location!r})"


store_registry: Registry[type[StoreBackendBase]] = Registry("store backend")


def register_store_backend(backend_name: str, backend: type[StoreBackendBase]) -> None:
    """Make a store backend available to ``Memory(backend=backend_name)``.

    Parameters
    ----------
    backend_name : str
        The name to register; an existing registration of that name is replaced (as in
        joblib).
    backend : type
        A subclass of :class:`StoreBackendBase`.
    """
    if not isinstance(backend_name, str):
        raise ValueError(
            f"backend_name must be a str, got {backend_name!r} of type "
            f"{type(backend_name).__name__}"
        )
    if not (isinstance(backend, type) and issubclass(backend, StoreBackendBase)):
        raise ValueError(
            f"backend must be a subclass of parajob.memory.StoreBackendBase, got {backend!r}; "
            f"subclass it and implement read_bytes, write_bytes, exists, delete and list"
        )
    store_registry.register(backend_name, backend, force=True)


def _is_url(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum() and len(scheme) > 1


def make_store(
    backend: str | StoreBackendBase, location: str, options: dict[str, Any]
) -> StoreBackendBase:
    """Build the store for ``Memory(location, backend=..., backend_options=...)``.

    ``location`` is the user's location; the cache's ``parajob`` sub-folder is added here. A
    URL (``memory://x``, ``s3://bucket/prefix``) selects the fsspec store unless another
    backend is named.
    """
    if isinstance(backend, StoreBackendBase):
        return backend
    if backend == "local" and _is_url(location):
        backend = "fsspec"
    try:
        cls = store_registry.get(backend)
    except KeyError as exc:
        raise ValueError(
            f"{exc.args[0]}; register yours with parajob.memory.register_store_backend"
        ) from None
    if backend == "fsspec" or _is_url(location):
        root = posixpath.join(location.rstrip("/"), "parajob")
    else:
        import os

        root = os.path.join(location, "parajob")
    return cls(root, **options)


def as_store(location: Any, backend: str = "local") -> StoreBackendBase:
    """Return ``location`` if it is a store, else the store ``Memory(location)`` would use."""
    if isinstance(location, StoreBackendBase):
        return location
    import os

    if not isinstance(location, (str, os.PathLike)):
        raise InvalidParameterError(
            f"location must be a store backend, a folder or a URL, got {location!r} of type "
            f"{type(location).__name__}"
        )
    # The stores register themselves when imported.
    from parajob.memory import _fsspec_store, _local_store  # noqa: F401

    return make_store(backend, os.fspath(location), {})


def read_json(store: StoreBackendBase, key: str) -> dict[str, Any] | None:
    """Return the JSON object stored at ``key``, or None if it is missing or not one.

    The cache's own records (``metadata.json``, ``func_info.json``) are read this way: one
    that a crash or another version left unreadable counts as absent.
    """
    try:
        record = json.loads(store.read_bytes(key))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# This machine's name, made safe for a file name (computed once).
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"


def writer_tag() -> str:
    """A name part unique to this write: host, process and a random token.

    Temporary files carry it, so writers on several hosts sharing one cache folder (NFS, a
    bucket) never write to the same temporary file before publishing atomically.
    """
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
