"""The worker's side of shared array arguments: finding, mapping and caching shared copies.

A shared argument reaches a worker as a reference, rebuilt by :func:`rebuild_array`:

- a path (an ``np.memmap`` argument): the worker maps the same file;
- a :class:`Segment`: the parent's unnamed copy, in one piece or several. The worker opens
  each piece through ``/proc/<parent pid>/fd/<fd>`` after checking its device and inode.

A copy in several pieces (the parent writes big copies as a few files at once, since a tmpfs
file is filled by one writer at a time) is mapped into one contiguous range of addresses:
the range is reserved, then each piece is mapped at its place with ``MAP_FIXED``. Python's
``mmap`` cannot do that, so those mappings go through libc's ``mmap`` with ctypes.

Caching: arrays of one task share a mapping per copy (dropped with the last array using it).
Copies the parent keeps between calls carry an id; a worker keeps its read-only mapping of such
a copy until the parent says it freed the copy (:func:`forget_copies`, a K_FORGET message), so
pages a task touched stay mapped for the next task and the next call.

Only the standard library is imported here: this module is loaded in every worker.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import weakref
from collections import deque
from typing import Any, NamedTuple

from parajob.errors import SharedMemoryError

__all__ = ["COPY_ID", "Segment", "SharedMapping", "forget_copies", "rebuild_array", "span"]

COPY_ID = struct.Struct("<Q")


class Segment(NamedTuple):
    """Where a worker finds a shared copy the parent wrote."""

    pid: int  # the parent, whose descriptors the worker opens through /proc
    pieces: tuple[tuple[int, int, int, int], ...]  # (fd, device, inode, size), in order
    copy_id: int  # > 0 for a copy the parent keeps between calls, else 0


def span(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Lowest and one-past-highest byte of an array, relative to its first element."""
    lo = hi = 0
    for n, s in zip(shape, strides, strict=True):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


# -- opening ------------------------------------------------------------------------------------


def _open_path(path: str, writable: bool) -> int:
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    return os.open(path, flags)


def _open_piece(pid: int, piece: tuple[int, int, int, int], writable: bool) -> int:
    fd, dev, ino, _ = piece
    path = f"/proc/{pid}/fd/{fd}"
    gone = SharedMemoryError(
        f"a shared array of process {pid} is gone (descriptor {fd} no longer holds it): the "
        "Parallel call that shared it has ended or its process exited; tasks must not "
        "outlive their call"
    )
    # stat follows the link without opening it: never open what the descriptor became after
    # the call ended (it could be a pipe or a user's file).
    try:
        st = os.stat(path)
    except OSError:
        raise gone from None
    if (st.st_dev, st.st_ino) != (dev, ino):
        raise gone
    opened = _open_path(path, writable)
    st = os.fstat(opened)
    if (st.st_dev, st.st_ino) != (dev, ino):
        os.close(opened)
        raise gone
    return opened


# -- mapping ------------------------------------------------------------------------------------


class SharedMapping(mmap.mmap):
    """An mmap that weak references can point to (the per-worker mapping cache)."""


_ACCESS = {"r": mmap.ACCESS_READ, "c": mmap.ACCESS_COPY, "r+": mmap.ACCESS_WRITE}

_PROT_NONE, _PROT_READ, _PROT_WRITE = 0, 1, 2
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 1, 2, 0x10, 0x20, 0x4000
_libc: Any = None


def _libc_mmap() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        )
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        _libc = libc
    return _libc


def _mmap_failed(result: int | None) -> bool:
    return result is None or result == ctypes.c_void_p(-1).value


def _joined(fds: list[int], sizes: list[int], mode: str) -> Any:
    """Map several files back to back in one range of addresses; return a buffer over it.

    Every size but the last is a multiple of the page size. The range is unmapped when the
    returned object (which numpy arrays keep as their base) is garbage-collected.
    """
    libc = _libc_mmap()
    total = sum(sizes)
    reserved = total + (-total) % mmap.PAGESIZE
    base = libc.mmap(
        None, reserved, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0
    )
    if _mmap_failed(base):
        err = ctypes.get_errno()
        raise OSError(err, f"cannot reserve {total} bytes of addresses: {os.strerror(err)}")
    prot = _PROT_READ if mode == "r" else _PROT_READ | _PROT_WRITE
    flags = (_MAP_PRIVATE if mode == "c" else _MAP_SHARED) | _MAP_FIXED
    try:
        at = 0
        for fd, size in zip(fds, sizes, strict=True):
            got = libc.mmap(base + at, size, prot, flags, fd, 0)
            if got != base + at:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot map a piece of a shared array: {os.strerror(err)}")
            at += size
    except BaseException:
        libc.munmap(base, reserved)
        raise
    buffer = _joined_type(total).from_address(base)
    weakref.finalize(buffer, libc.munmap, base, reserved).atexit = False
    if mode != "r":
        return buffer
    # ctypes buffers are always writeable. An array over a read-only memoryview of one is not,
    # and numpy refuses to make it (or any array built on it) writeable: a task gets a
    # ValueError, as with a read-only mmap, instead of dying on a write to a read-only page.
    import numpy as np

    return np.frombuffer(memoryview(buffer).toreadonly(), dtype=np.uint8)


_joined_types: dict[int, type] = {}


def _joined_type(nbytes: int) -> Any:
    # A subclass of a ctypes char array, so that instances take weak references.
    found = _joined_types.get(nbytes)
    if found is None:
        found = type("_JoinedMapping", (ctypes.c_char * nbytes,), {})
        if len(_joined_types) < 64:
            _joined_types[nbytes] = found
    return found


def _map_segment(segment: Segment, mode: str) -> Any:
    """Map a whole copy (any number of pieces)."""
    fds: list[int] = []
    try:
        for piece in segment.pieces:
            fds.append(_open_piece(segment.pid, piece, writable=mode == "r+"))
        sizes = [piece[3] for piece in segment.pieces]
        if len(fds) == 1:
            return SharedMapping(fds[0], sizes[0], access=_ACCESS[mode])
        return _joined(fds, sizes, mode)
    finally:
        for fd in fds:
            os.close(fd)


# Arrays of one task (or of tasks that keep them) share one mapping per copy; a mapping is
# dropped with the last array using it, so nothing outlives its users. Copy-on-write mappings
# are never shared: each argument's writes must stay its own.
_maps: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_maps_lock = threading.Lock()

# Kept copies: id -> read-only mapping, until the parent says the copy is gone.
_kept: dict[int, Any] = {}
# Ids already forgotten, so that a late task of an ended call never brings one back.
_forgotten: set[int] = set()
_forgotten_order: deque[int] = deque()
_FORGOTTEN_REMEMBERED = 4096


def _mapping_for(segment: Segment, mode: str) -> Any:
    if mode == "c":
        return _map_segment(segment, mode)
    kept = mode == "r" and segment.copy_id > 0
    key = (tuple((p[1], p[2]) for p in segment.pieces), mode)
    with _maps_lock:
        found = _kept.get(segment.copy_id) if kept else _maps.get(key)
        if found is not None:
            return found
        mapping = _map_segment(segment, mode)
        if not kept:
            _maps[key] = mapping
        elif segment.copy_id not in _forgotten:
            _kept[segment.copy_id] = mapping
        return mapping


def _map_file_range(path: str, start: int, length: int, mode: str) -> SharedMapping:
    key = (path, start, length, mode)
    with _maps_lock:
        found = _maps.get(key) if mode != "c" else None
        if found is not None:
            return found
        fd = _open_path(path, writable=mode == "r+")
        try:
            mapping = SharedMapping(fd, length, access=_ACCESS[mode], offset=start)
        finally:
            os.close(fd)
        if mode != "c":
            _maps[key] = mapping
        return mapping


def forget_copies(body: Any) -> None:
    """Drop the mappings of kept copies the parent freed (the body of a K_FORGET message)."""
    with _maps_lock:
        for (copy_id,) in COPY_ID.iter_unpack(body):
            _kept.pop(copy_id, None)
            if copy_id not in _forgotten:
                _forgotten.add(copy_id)
                _forgotten_order.append(copy_id)
                if len(_forgotten_order) > _FORGOTTEN_REMEMBERED:
                    _forgotten.discard(_forgotten_order.popleft())


def rebuild_array(
    source: str | Segment,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: Any,
    mode: str,
    cls: type | None,
) -> Any:
    """Map a shared array in a worker (the unpickling hook of a shared argument).

    ``source`` is a file's path or a :class:`Segment`; ``offset`` is the array's first
    element in it. The array is an ``np.memmap`` (or the argument's own ndarray subclass),
    read-only when ``mode`` is ``"r"``.
    """
    import numpy as np

    if isinstance(source, str):
        # Map only the pages the array spans (a view of a large memmap file).
        lo, hi = span(shape, strides, dtype.itemsize)
        first = offset + lo
        start = first - first % mmap.ALLOCATIONGRANULARITY
        mapping: Any = _map_file_range(source, start, offset + hi - start, mode)
    else:
        mapping = _mapping_for(source, mode)
        start = 0
    arr = np.ndarray.__new__(
        np.memmap if cls is None else cls,
        shape,
        dtype=dtype,
        buffer=mapping,
        offset=offset - start,
        strides=strides,
    )
    if cls is None:
        arr._mmap = mapping
        arr.filename = source if isinstance(source, str) else None
        arr.offset = offset
        arr.mode = mode
    return arr
