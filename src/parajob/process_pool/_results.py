"""Large array results, from a worker to the parent, through shared memory.

A worker pickles a result with a hook that writes each array above ``max_nbytes`` to an
unnamed file (``_shm.create_segment``) and puts a placeholder in the pickle; the files'
descriptors follow the result frame over the worker's socket (SCM_RIGHTS). The parent's
manager thread receives them right after the frame, maps each one while unpickling the result
(:func:`rebuild_result`, inside :func:`receiving`), then closes them: the array in the parent
is the only thing that keeps its memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import select
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from typing import Any

from parajob.errors import SharedMemoryError
from parajob.process_pool._mapping import SharedMapping, span
from parajob.process_pool._shm import (
    PROTOCOL,
    ShareSettings,
    array_hook,
    close_fds,
    create_segment,
    dumps_with,
    np_module,
    shareable_type,
    subclass_of,
    writer,
)

__all__ = ["close_fds", "dumps_result", "rebuild_result", "receive_fds", "receiving", "send_fds"]

# SCM_RIGHTS carries at most 253 descriptors per message on Linux.
_FDS_PER_MESSAGE = 250
_COUNT = struct.Struct("<I")
# How long the manager waits for the descriptors that follow a result frame.
_FDS_TIMEOUT = 30.0
_CAN_PASS_FDS = sys.platform != "win32" and hasattr(socket, "send_fds")


# The descriptors of the result frame being unpickled in this thread (see receiving()).
_local = threading.local()


class _ResultSegments:
    def __init__(self, settings: ShareSettings) -> None:
        self.settings = settings
        self.fds: list[int] = []

    def reduce(self, arr: Any) -> Any:
        np = np_module()
        if (
            arr.nbytes <= self.settings.max_nbytes
            or arr.size == 0
            or arr.dtype.hasobject
            or not shareable_type(arr, np)
        ):
            return NotImplemented
        fill, strides = writer(arr)
        fds, _ = create_segment([arr.nbytes], self.settings, fill)
        self.fds.extend(fds)
        lo, _ = span(tuple(arr.shape), strides, arr.dtype.itemsize)
        return (
            rebuild_result,
            (
                len(self.fds) - 1,
                arr.nbytes,
                -lo,
                tuple(arr.shape),
                strides,
                arr.dtype,
                subclass_of(arr, np),
            ),
        )

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def dumps_result(obj: Any, settings: ShareSettings, by_value: bool) -> tuple[bytes, list[int]]:
    """Pickle a worker's result; large arrays go to segments whose descriptors are returned.

    The caller sends the descriptors with :func:`send_fds` and then closes them.
    """
    if not _CAN_PASS_FDS or "numpy" not in sys.modules:
        if by_value:
            import cloudpickle

            return cloudpickle.dumps(obj, protocol=PROTOCOL), []
        return pickle.dumps(obj, protocol=PROTOCOL), []
    segments = _ResultSegments(settings)
    try:
        return dumps_with(obj, array_hook(segments.reduce), by_value), segments.fds
    except BaseException:
        segments.close()
        raise


def rebuild_result(
    index: int,
    length: int,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: Any,
    cls: type | None,
) -> Any:
    """Map a worker's result array in the parent (unpickling hook, inside :func:`receiving`)."""
    fds = getattr(_local, "fds", None)
    if fds is None or index >= len(fds):
        raise SharedMemoryError(
            "a result array's shared-memory segment did not arrive with the result; this is a "
            "bug in parajob or the result was unpickled outside the pool"
        )
    np = np_module()
    mapping = SharedMapping(fds[index], length, access=mmap.ACCESS_WRITE)
    arr = np.ndarray(shape, dtype=dtype, buffer=mapping, offset=offset, strides=strides)
    return arr if cls is None else arr.view(cls)


@contextlib.contextmanager
def receiving(fds: list[int] | None) -> Iterator[None]:
    """Let :func:`rebuild_result` find the descriptors of one result frame."""
    _local.fds = fds
    try:
        yield
    finally:
        _local.fds = None


def send_fds(conn: Any, fds: list[int]) -> None:
    """Send descriptors over a Connection that is a Unix socket, after a frame."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        for i in range(0, len(fds), _FDS_PER_MESSAGE):
            chunk = fds[i : i + _FDS_PER_MESSAGE]
            socket.send_fds(sock, [_COUNT.pack(len(fds) - i)], chunk)
    finally:
        sock.detach()


def receive_fds(conn: Any, timeout: float = _FDS_TIMEOUT) -> list[int]:
    """Receive what :func:`send_fds` sent; EOFError if the sender died before sending."""
    fileno = conn.fileno()
    sock = socket.socket(fileno=fileno)
    fds: list[int] = []
    try:
        remaining = 1
        while remaining > 0:
            ready, _, _ = select.select([fileno], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no shared-memory descriptors after {timeout:g} s")
            data, got, _, _ = socket.recv_fds(sock, _COUNT.size, _FDS_PER_MESSAGE)
            fds.extend(got)
            if len(data) != _COUNT.size or not got:
                raise EOFError("the worker stopped while sending shared-memory descriptors")
            (remaining,) = _COUNT.unpack(data)
            remaining -= len(got)
        return fds
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    finally:
        sock.detach()
