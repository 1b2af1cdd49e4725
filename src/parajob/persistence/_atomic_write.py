"""Replace a file atomically: readers see the old version or the new one, never a mix.

:func:`parajob.dump` writes through :func:`atomic_write`. It is kept apart from the file
format because it is only about the file system: a temporary file beside the target, then a
rename (or, on Linux, an exchange, see :func:`_exchange`), with the old version's page cache
released first. It knows nothing of what is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write"]

_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None  # resolved on first use; False when unavailable


def _exchange(first: str, second: str) -> bool:
    """Atomically swap two existing paths; False when the system cannot (then nothing moved).

    Linux's ``renameat2(..., RENAME_EXCHANGE)``, through libc. It exists for speed: ext4 (the
    usual Linux file system) treats a rename *over* an existing file as a hint to flush the
    new file to disk first ("auto_da_alloc"), which made replacing a 1 GB file 3-4x slower than
    writing it; an exchange is just as atomic for readers and is not subject to that flush.
    """
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_uint,
                ]
                function.restype = ctypes.c_int
                _renameat2 = function
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    result = _renameat2(
        at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT, errno.EXDEV):
        return False  # not supported here (or the target just vanished): use a plain rename
    raise OSError(error, os.strerror(error), second)


# Below this size, the old version's cached pages are not worth a system call.
_RELEASE_CACHE_FROM = 1 << 20


def _release_cached_pages(path: str) -> None:
    """Ask the kernel to drop the page cache of a file that is about to be replaced.

    Until the new version is complete, the old one must stay, so an atomic replacement would
    otherwise hold both in the page cache: twice the file's size, taken from memory that may
    not have been touched for a while. On virtual machines such memory costs a host page fault
    per page; writing a 1 GB file next to its cached old version measured 3-6x slower than
    writing it after dropping that cache. Readers of the old version are unaffected (they
    read it from disk again). Best effort: where the call is missing or fails, nothing changes.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in its directory, then move it into place.

    Readers see the old file or the new one, never a partial one; on any failure (a full disk,
    an unpicklable object, Ctrl-C) the temporary file is removed and the old file is untouched.
    """
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        # A device or FIFO (/dev/null, a pipe): there is nothing to replace, write through.
        with open(target, "wb") as f:
            write(f)
        return
    if existing is not None and existing.st_size >= _RELEASE_CACHE_FROM:
        _release_cached_pages(target)
    directory, name = os.path.split(os.path.abspath(target))
    temporary = os.path.join(directory, f"{name}.parajob-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as f:
            write(f)
        if existing is None:
            os.replace(temporary, target)
        else:
            os.chmod(temporary, stat.S_IMODE(existing.st_mode))
            if not _exchange(temporary, target):
                os.replace(temporary, target)
    finally:
        # After an exchange the temporary name holds the old file; after a failure, the
        # partial new one; after a plain rename, nothing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
