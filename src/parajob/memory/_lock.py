"""One computation at a time per cache entry, across threads and processes.

Two kinds of lock, one shape (:class:`EntryLock`: ``try_acquire`` / ``release``), and the
waiting loops shared by both (:func:`acquire`, :func:`acquire_async`):

- :class:`FileLock` (local store): ``flock`` on the entry's folder itself (no lock file to
  create, which costs as much as a small write on some file systems). The kernel releases it
  when its holder dies, however it dies, so a crashed process never blocks others. Each
  acquisition opens its own file description, so threads of one process exclude each other
  too. A child forked while a lock is held closes its inherited copy at once (otherwise the
  lock would live as long as the child).
- :class:`LeaseLock` (any store, used by fsspec): a small lease record written through the
  store, valid until its expiry time. A holder that crashes keeps it at most one lease; the
  in-process part (a per-key thread lock) makes threads exact, the cross-process part is best
  effort on stores without an atomic create (documented).

A waiter that waits longer than its timeout computes the value itself (with a warning): a
stuck holder costs duplicated work, never a deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["EntryLock", "FileLock", "LeaseLock", "acquire", "acquire_async"]

_FIRST_WAIT = 0.0005
_MAX_WAIT = 0.05


class EntryLock(Protocol):
    """What the cache needs from a lock."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never block."""

    def release(self) -> None:
        """Give the lock back (only called after a successful ``try_acquire``)."""


def _pauses(timeout: float | None) -> Iterator[float]:
    """Yield how long to pause before each retry, until ``timeout`` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wait = _FIRST_WAIT
    # Polling with capped backoff: flock has no timed wait, and the holder is usually a
    # computation of milliseconds to hours, so 50 ms of extra latency is noise.
    while deadline is None or time.monotonic() < deadline:
        yield wait
        wait = min(wait * 2, _MAX_WAIT)


def acquire(lock: EntryLock, timeout: float | None) -> bool:
    """Wait for ``lock`` up to ``timeout`` seconds (None: forever); return whether it was taken."""
    if lock.try_acquire():
        return True
    for wait in _pauses(timeout):
        time.sleep(wait)
        if lock.try_acquire():
            return True
    return False


async def acquire_async(lock: EntryLock, timeout: float | None) -> bool:
    """Like :func:`acquire`, yielding to the event loop while waiting."""
    if lock.try_acquire():
        return True
    for wait in _pauses(timeout):
        await asyncio.sleep(wait)
        if lock.try_acquire():
            return True
    return False


class FileLock:
    """An exclusive ``flock`` on ``path``, released by the kernel if the holder dies.

    Parameters
    ----------
    path : str
        A folder or a file to lock; a missing file is created (mode 0o600).
    make_folder : callable, optional
        Makes ``path`` as a folder when it is missing (it may be removed by a concurrent
        clear or eviction at any time); without it a missing path is created as a file.
    """

    def __init__(self, path: str, make_folder: Callable[[], None] | None = None) -> None:
        self.path = path
        self._make_folder = make_folder
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if self._make_folder is None:
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._make_folder()
        return os.open(self.path, os.O_RDONLY)

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it."""
        import fcntl

        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        try:
            fd = self._open()
        except FileNotFoundError:
            return False  # removed again right after we made it: the caller retries
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        # The folder may have been removed or replaced (a clear, an eviction) between our open
        # and our flock; a lock on a removed inode excludes no one, so check we locked what is
        # at the path now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._fd = fd
        _held_file_locks[id(self)] = self
        return True

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the flock)."""
        _held_file_locks.pop(id(self), None)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# An flock belongs to the open file description, which a forked child shares: a cached
# function that forks long-lived workers (a multiprocessing pool) would keep its entry locked
# until they all exit. The child closes its copies at once; the parent's release then frees
# the lock. (Plain dict operations, atomic under the GIL: a lock here could be held by a
# thread that does not exist in the child.)
_held_file_locks: dict[int, FileLock] = {}


def _drop_inherited_locks() -> None:
    global _thread_locks, _thread_locks_guard
    for lock in list(_held_file_locks.values()):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _held_file_locks.clear()
    # Thread locks copied from the parent may be held by threads that do not exist here;
    # the child starts with its own (leases held by the parent still bind it, through the
    # store).
    _thread_locks = weakref.WeakValueDictionary()
    _thread_locks_guard = threading.Lock()


# Threads of one process serialise on a real lock per key; held locks are kept alive by
# their holders, so the weak mapping drops only keys nobody is waiting on.
_thread_locks: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_thread_locks_guard = threading.Lock()


def _thread_lock(key: str) -> Any:
    with _thread_locks_guard:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = threading.Lock()
            _thread_locks[key] = lock
        return lock


class LeaseLock:
    """A lease record kept through a store: ``{"owner", "expires"}`` at ``key``.

    Parameters
    ----------
    key : str
        Where the lease lives in the store.
    read : callable
        ``read(key) -> bytes``, raising FileNotFoundError when absent.
    write : callable
        ``write(key, data)``: an atomic replace.
    delete : callable
        ``delete(key)``; a missing key is not an error.
    lease : float
        How long (seconds) a lease lasts; a crashed holder blocks others at most this long.
    scope : str
        Distinguishes stores in the in-process lock table.
    """

    def __init__(
        self,
        key: str,
        read: Callable[[str], bytes],
        write: Callable[[str, bytes], None],
        delete: Callable[[str], None],
        lease: float,
        scope: str,
    ) -> None:
        self.key = key
        self._read = read
        self._write = write
        self._delete = delete
        self.lease = lease
        self._owner = uuid.uuid4().hex
        self._local = _thread_lock(f"{scope}\x00{key}")
        self._held = False

    def _current(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self._read(self.key))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return None  # a damaged record is no lease
        return record if isinstance(record, dict) else None

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired."""
        if not self._local.acquire(blocking=False):
            return False
        try:
            record = self._current()
            now = time.time()
            if record is not None and float(record.get("expires", 0)) > now:
                self._local.release()
                return False
            mine = {"owner": self._owner, "expires": now + self.lease, "pid": os.getpid()}
            self._write(self.key, json.dumps(mine).encode())
            # Read back: of two processes racing here, the later writer wins and the earlier
            # one sees a foreign owner and backs off.
            record = self._current()
            if record is None or record.get("owner") != self._owner:
                self._local.release()
                return False
        except BaseException:
            self._local.release()
            raise
        self._held = True
        return True

    def release(self) -> None:
        """End the lease."""
        if not self._held:
            return
        self._held = False
        try:
            record = self._current()
            if record is not None and record.get("owner") == self._owner:
                self._delete(self.key)
        finally:
            self._local.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)
