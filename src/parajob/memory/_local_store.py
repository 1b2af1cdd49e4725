"""The local file store: entries are folders under ``<location>/parajob``.

Safety properties and how they hold:

- every folder the store creates is mode 0o700 and every file 0o600 (the umask can only
  narrow that): a cache holds pickles, which run code when loaded, so other users must not
  be able to plant or read them;
- every write goes to a temporary file in the destination folder and is renamed into place
  (``os.replace``): a reader sees the old file or the new one, and a writer killed midway
  leaves only a temporary file, which no reader looks at and :meth:`sweep_temporaries` removes;
- an entry is deleted by unlinking its output first (one atomic step that makes it disappear),
  then the rest; a large batch (an eviction of many entries) is renamed away instead, to
  ``.trash-<name>-<token>`` beside each entry (one rename in the same folder per entry: atomic
  and ten times cheaper than unlinking), and the renamed folders are deleted by a short-lived
  background thread. That thread deletes nothing but ``.trash-*`` folders, which no key can
  name, so it cannot remove a live entry. It also removes stale ``.trash-*`` folders it finds
  in the folders it works in: leftovers of processes that exited before their thread finished.
  At exit the process waits for it a little (``_EXIT_WAIT_SECONDS``), never longer; what is
  left then is freed by a later eviction in the same folder, or by ``parajob cache prune``;
- every key is validated (:func:`check_key`) and the resulting path checked to lie inside the
  root, so no name can point outside the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import stat
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from parajob.errors import CacheWarning
from parajob.memory._index import CacheIndex
from parajob.memory._lock import EntryLock, FileLock
from parajob.memory._store import (
    LOCK,
    METADATA,
    OUTPUT,
    ItemInfo,
    StoreBackendBase,
    check_key,
    store_registry,
    writer_tag,
)

__all__ = ["LocalStoreBackend"]

_TMP_MARK = ".parajob-tmp-"
_TRASH_PREFIX = ".trash-"
_SMALL_READ = 1 << 16
# Below this many entries, deleting in place is quick enough not to need a thread.
_BATCH_IN_BACKGROUND = 32
_EXIT_WAIT_SECONDS = 5.0

_trash_threads: set[threading.Thread] = set()
_trash_threads_guard = threading.Lock()


def _empty_trash(paths: list[str], folders: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    # Leftovers of processes that exited before their deletion finished: renamed-away
    # entries nobody else will free. (Another live process may be freeing some right now;
    # deleting them twice is harmless.)
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(_TRASH_PREFIX):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _run_trash_worker(paths: list[str], folders: list[str]) -> None:
    try:
        _empty_trash(paths, folders)
    finally:
        with _trash_threads_guard:
            _trash_threads.discard(threading.current_thread())


def _wait_for_trash_at_exit() -> None:
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    with _trash_threads_guard:
        workers = list(_trash_threads)
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


atexit.register(_wait_for_trash_at_exit)


def _reset_after_fork() -> None:
    global _trash_threads_guard
    _trash_threads_guard = threading.Lock()
    _trash_threads.clear()  # the parent's threads; the parent waits for them


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _mkdir_private(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _makedirs_private(path: str) -> None:
    # os.makedirs gives its mode to the last folder only; every folder made here is private.
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    _mkdir_private(path)


def _others_can_write(path: str, sticky_protects: bool) -> str | None:
    # Returns why others could change what is under ``path``, or None. A sticky folder
    # (like /tmp) stops others renaming or deleting what is ours in it, so it is safe as a
    # parent, but not as the cache folder itself: others could still add function folders.
    if not hasattr(os, "getuid"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid not in (os.getuid(), 0):
        return f"{path} belongs to another user: uid {st.st_uid}"
    if st.st_mode & stat.S_IWOTH and not (sticky_protects and st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by everyone: mode {stat.S_IMODE(st.st_mode):o}"
    return None


def _warn_if_others_can_write(location: str) -> None:
    problem = _others_can_write(location, False) or _others_can_write(
        os.path.dirname(location), True
    )
    if problem is None:
        return
    warnings.warn(
        CacheWarning(
            f"the cache at {location} can be written by other users ({problem}), so it may "
            f"hold results planted by someone else, and loading a cached result runs code (it "
            f"is a pickle); use a cache folder only you can write to (chmod 700), or silence "
            f"this warning if you trust everyone who can write there"
        ),
        stacklevel=5,  # the user's Memory(...) call
    )


class LocalStoreBackend(StoreBackendBase):
    """Store cache entries as files in a local folder.

    Parameters
    ----------
    location : str or os.PathLike
        The store's root folder (created with mode 0o700, parents as needed).
    **options
        ``compress`` and ``mmap_mode`` are accepted (and ignored here: the cache passes them
        per call) so that ``backend_options`` written for joblib work.
    """

    supports_mmap: ClassVar[bool] = True
    supports_exact_locks: ClassVar[bool] = True

    def __init__(self, location: Any, **options: Any) -> None:
        location = os.path.abspath(os.fspath(location))
        super().__init__(location, **options)
        _makedirs_private(location)
        _warn_if_others_can_write(location)
        self._root_prefix = os.path.join(location, "")
        self._trash_workers: list[threading.Thread] = []
        self._pending_trash: list[str] = []
        self._trash_folders: set[str] = set()

    # -- paths ---------------------------------------------------------------------------------

    def path_of(self, key: str) -> str:
        """Return the file system path of ``key``, refusing anything outside the root."""
        # check_key admits no absolute path, "." or ".." part, so joining cannot escape.
        check_key(key)
        if os.sep != "/":
            key = key.replace("/", os.sep)
        return self._root_prefix + key

    def _ensure_parents(self, key: str) -> str:
        # Called only after an operation failed for a missing folder: making folders that
        # exist costs a system call each, which adds up on every write.
        parts = key.split("/")
        path = self.location
        # The whole cache folder may have been removed (to start over): make it again.
        _makedirs_private(path)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            _mkdir_private(path)
        return os.path.join(path, parts[-1])

    # -- the contract --------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``."""
        with open(self.path_of(key), "rb") as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically (temporary file, then rename)."""
        path = self.path_of(key)
        for attempt in range(3):
            if attempt:
                self._ensure_parents(key)
            # Host, pid and a random token: unique even when hosts share the folder.
            tmp = f"{path}{_TMP_MARK}{writer_tag()}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                # The folder was removed under us (a concurrent clear or eviction): make it
                # again and retry, a few times at most.
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if attempt == 2:
                    raise
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def exists(self, key: str) -> bool:
        """Return True if ``key`` is a stored file."""
        return os.path.isfile(self.path_of(key))

    def delete(self, prefix: str) -> None:
        """Remove ``prefix`` (a file or a folder and everything in it)."""
        path = self.location if prefix == "" else self.path_of(prefix)
        if prefix == "":
            for name in os.listdir(path):
                if name != "index.sqlite" and not name.startswith("index.sqlite-"):
                    self._remove_path(os.path.join(path, name))
            return
        self._remove_path(path)

    def delete_many(self, prefixes: Sequence[str]) -> None:
        """Remove entries; a large batch is renamed away now and freed by :meth:`finish_deletes`."""
        if len(prefixes) < _BATCH_IN_BACKGROUND:
            for prefix in prefixes:
                self.delete(prefix)
            return
        by_folder: dict[str, list[str]] = {}
        for prefix in prefixes:
            self.path_of(prefix)  # validates the key
            folder, _, name = prefix.rpartition("/")
            by_folder.setdefault(folder, []).append(name)
        token = secrets.token_hex(4)
        for folder, names in by_folder.items():
            path = self.path_of(folder) if folder else self.location
            try:
                dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # the function's folder is gone: nothing of it to delete
            self._trash_folders.add(path)
            try:
                # A rename inside one folder, relative to an open descriptor of it, is the
                # cheapest atomic way to make an entry vanish (no data is freed yet).
                for name in names:
                    trash = f"{_TRASH_PREFIX}{name}-{token}"
                    try:
                        os.rename(name, trash, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                    except OSError:
                        self._remove_path(os.path.join(path, name))
                        continue
                    self._pending_trash.append(os.path.join(path, trash))
            finally:
                os.close(dir_fd)

    def finish_deletes(self) -> None:
        """Free renamed-away entries in a short-lived background thread."""
        if not self._pending_trash:
            return
        paths, self._pending_trash = self._pending_trash, []
        folders, self._trash_folders = sorted(self._trash_folders), set()
        # A daemon thread: it never keeps the process alive (the exit handler waits for it a
        # bounded time), and what it leaves is freed later (see the module's notes).
        worker = threading.Thread(
            target=_run_trash_worker,
            args=(paths, folders),
            name="parajob-cache-trash",
            daemon=True,
        )
        with _trash_threads_guard:
            _trash_threads.add(worker)
        worker.start()
        self._trash_workers = [t for t in self._trash_workers if t.is_alive()] + [worker]

    def wait_for_trash(self, timeout: float | None = None) -> bool:
        """Wait until background deletions finish; return True if they all did."""
        self.finish_deletes()
        for worker in list(self._trash_workers):
            worker.join(timeout)
        self._trash_workers = [t for t in self._trash_workers if t.is_alive()]
        return not self._trash_workers

    def close(self) -> None:
        """Finish background deletions and close the index."""
        self.wait_for_trash()
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_trash_workers"] = []
        state["_pending_trash"] = []
        state["_trash_folders"] = set()
        return state

    def _remove_path(self, path: str) -> None:
        # An entry folder holds output.pkl and metadata.json: unlinking the output first
        # removes the entry in one atomic step, then the rest goes without a tree walk.
        try:
            os.unlink(os.path.join(path, OUTPUT))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except OSError:
            pass
        else:
            try:
                os.unlink(os.path.join(path, METADATA))
                os.rmdir(path)
                return
            except OSError:
                pass  # something else is in there: take the general path
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        # Rename first, so the folder vanishes at once, then delete it (here: a single
        # deletion is small or, like a clear, expected to take its time).
        parent, name = os.path.split(path)
        trash = os.path.join(parent, f"{_TRASH_PREFIX}{name}-{secrets.token_hex(4)}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = path  # cannot rename (busy on some systems): remove in place
        shutil.rmtree(trash, ignore_errors=True)

    def list(self, prefix: str = "") -> Iterator[ItemInfo]:
        """Yield the files under ``prefix`` (temporary, trash and lock files excluded)."""
        top = self.location if prefix == "" else self.path_of(prefix)
        base = len(self._root_prefix)
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                it = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or _TMP_MARK in name or name.startswith("index.sqlite"):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            key = entry.path[base:].replace(os.sep, "/")
                            yield ItemInfo(key, st.st_size, st.st_mtime)
                    except FileNotFoundError:
                        continue

    # -- faster paths --------------------------------------------------------------------------

    def load_value(self, key: str, mmap_mode: str | None) -> Any:
        """Load the value at ``key``; small files in one read, arrays memory-mapped on demand."""
        from parajob.persistence import load, loads

        path = self.path_of(key)
        if mmap_mode is not None:
            return load(path, mmap_mode=mmap_mode)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, _SMALL_READ)
            if len(data) < _SMALL_READ:
                return loads(data)
        finally:
            os.close(fd)
        return load(path)

    def store_value(self, key: str, value: Any, compress: Any) -> int:
        """Dump ``value`` at ``key`` with :func:`parajob.dump` (atomic); return its size."""
        from parajob.persistence import dump

        path = self.path_of(key)
        for attempt in range(3):
            if attempt:
                self._ensure_parents(key)
            try:
                dump(value, path, compress=compress)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        return os.stat(path).st_size

    def lock(self, key: str, lease: float) -> EntryLock:
        """Return an flock-based lock on the entry folder ``key`` (created if missing)."""
        path = self.path_of(key)

        def make_folder() -> None:
            # Makes the parents as well: a clear may have removed the function's folder.
            self._ensure_parents(f"{key}/{LOCK}")

        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            make_folder()
        return FileLock(path, make_folder)

    def make_index(self) -> CacheIndex:
        """Return the shared SQLite index in the root folder."""
        path = os.path.join(self.location, "index.sqlite")
        return CacheIndex.shared(path, path)

    # -- housekeeping --------------------------------------------------------------------------

    def sweep_temporaries(self, older_than: float = 3600.0) -> int:
        """Remove temporary files of killed writers and leftover trash; return how many."""
        removed = 0
        cutoff = time.time() - older_than
        self.wait_for_trash()
        for folder, dirs, files in os.walk(self.location):
            for name in list(dirs):
                if name.startswith(_TRASH_PREFIX):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                    dirs.remove(name)
                    removed += 1
            for name in files:
                if _TMP_MARK in name or name.endswith(".parajob-tmp"):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
        return removed


store_registry.register("local", LocalStoreBackend, force=True)
