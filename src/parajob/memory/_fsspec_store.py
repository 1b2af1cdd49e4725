"""A store on any fsspec filesystem: ``Memory("s3://bucket/prefix")``, ``memory://``, ``file://``.

Atomicity: a value is written to a temporary key beside its destination and then moved into
place. On filesystems whose move is a rename (local, memory, most network file systems) that
is atomic; on object stores (S3, GCS, Azure) the move is a copy of a complete object followed
by a delete, and since an object becomes visible only once fully written, a reader still never
sees half a value. A writer killed midway leaves a temporary key that readers ignore.

Locks are :class:`~parajob.memory._lock.LeaseLock` records: exact between threads, best effort
between processes (object stores have no atomic create-if-absent everywhere). The index lives
in memory, seeded from a listing, so size limits see other processes' entries only as of that
listing (documented in docs/memory.md).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import Any

from parajob.errors import MissingDependencyError
from parajob.memory._store import (
    ItemInfo,
    StoreBackendBase,
    check_key,
    store_registry,
    writer_tag,
)

__all__ = ["FSSpecStoreBackend"]

_TMP_MARK = ".parajob-tmp-"


def _import_fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise MissingDependencyError(
            "a cache on an fsspec URL needs the fsspec package: pip install 'parajob[fsspec]'"
        ) from exc
    return fsspec


def _mtime(info: dict[str, Any]) -> float:
    for field in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(field)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
    return 0.0


class FSSpecStoreBackend(StoreBackendBase):
    """Store cache entries on an fsspec filesystem.

    Parameters
    ----------
    location : str
        A URL (``"memory://cache"``, ``"s3://bucket/prefix"``) or, with ``fs``, a path on it.
    fs : fsspec.AbstractFileSystem, optional
        The filesystem to use instead of the one the URL names.
    storage_options : dict, optional
        Passed to fsspec when it builds the filesystem (credentials, endpoint, ...).
    **options
        ``compress`` and ``mmap_mode`` are accepted and ignored (the cache passes them per
        call).
    """

    def __init__(
        self,
        location: str,
        fs: Any = None,
        storage_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        fsspec = _import_fsspec()
        super().__init__(location, **options)
        self.storage_options = dict(storage_options or {})
        if fs is None:
            fs, root = fsspec.core.url_to_fs(location, **self.storage_options)
        else:
            root = fs._strip_protocol(location)
        self.fs = fs
        self.root = root.rstrip("/")
        # Object stores have no folders, so makedirs may be a no-op; that is fine.
        with contextlib.suppress(Exception):
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        check_key(key)
        return posixpath.join(self.root, key)

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``."""
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except (OSError, KeyError) as exc:
            if not self.fs.exists(self._path(key)):
                raise FileNotFoundError(key) from exc
            raise
        return bytes(data)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``: to a temporary key, then moved into place."""
        path = self._path(key)
        parent = posixpath.dirname(path)
        with contextlib.suppress(Exception):
            self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}{_TMP_MARK}{writer_tag()}"
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise

    def exists(self, key: str) -> bool:
        """Return True if ``key`` holds an item."""
        return bool(self.fs.isfile(self._path(key)))

    def delete(self, prefix: str) -> None:
        """Remove ``prefix`` and everything under it."""
        path = self.root if prefix == "" else self._path(prefix)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.isdir(path):
                if prefix == "":
                    for child in self.fs.ls(path, detail=False):
                        with contextlib.suppress(FileNotFoundError):
                            self.fs.rm(child, recursive=True)
                else:
                    self.fs.rm(path, recursive=True)
            elif self.fs.exists(path):
                self.fs.rm_file(path)

    def list(self, prefix: str = "") -> Iterator[ItemInfo]:
        """Yield the items under ``prefix`` (temporary and lock keys excluded)."""
        top = self.root if prefix == "" else self._path(prefix)
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return
        base = len(self.root.rstrip("/")) + 1
        root_with_protocol = self.root.lstrip("/")
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            rel = path.lstrip("/")[len(root_with_protocol) + 1 :] if path else ""
            if not rel:
                rel = path[base:]
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(".") or _TMP_MARK in name:
                continue
            yield ItemInfo(rel, int(info.get("size") or 0), _mtime(info))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # fsspec filesystems pickle (they rebuild from their storage options).
        return state

    def __repr__(self) -> str:
        return f"FSSpecStoreBackend(location={self.location!r})"


store_registry.register("fsspec", FSSpecStoreBackend, force=True)
