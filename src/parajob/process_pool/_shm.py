"""Large numpy arrays between the parent and pool workers, through shared memory: mechanics.

Moving parts::

    parent (``_sharer``: one ArraySharer per Parallel call, installed around submit)
      pickling a task: an array above max_nbytes is copied into *unnamed* files (O_TMPFILE)
        in the shm folder (else temp_folder / the system temp dir), in a few pieces written at
        once when it is large; the parent keeps the files' descriptors open; the pickle holds
        a ``_mapping.Segment`` (parent pid, and each piece's fd, device, inode and size)
      np.memmap arguments: (path, offset, layout), the worker maps the same file
    worker (``_mapping``)
      unpickling: open /proc/<parent pid>/fd/<fd> for each piece, check device and inode,
        map the pieces back to back
      pickling results: an array above max_nbytes goes to an unnamed file whose descriptor
        follows the result frame over the worker's socket (SCM_RIGHTS)
    parent manager thread: receives those descriptors right after the frame, maps each one
      while unpickling the result, then closes them

Why unnamed files: they never have a name that could be left behind. The kernel frees their
storage when the last descriptor or mapping goes away, however the processes end (SIGKILL
included), so nobody has to unlink anything. Sizes still count against the folder's
filesystem, which is why room is checked there.

This module holds what both sides use to write segments (places, room, writers) and the
picklers; ``_results`` holds the results path. Only the standard library is imported here
(this module is loaded in every worker); numpy is imported when an array is met, so it is
already loaded by then.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from parajob.errors import SharedMemoryError, SharedMemoryWarning

__all__ = [
    "SHM_DIR_ENV",
    "SHM_SIZE_ENV",
    "ShareSettings",
    "array_hook",
    "close_fds",
    "create_segment",
    "dumps_with",
    "piece_sizes",
    "writer",
]

SHM_DIR_ENV = "PARAJOB_SHM_DIR"
SHM_SIZE_ENV = "PARAJOB_SHM_SIZE"
DEFAULT_SHM_DIR = "/dev/shm"
PROTOCOL = 5

# Errors that mean "this place has no room": the next place is tried.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# pwrite moves at most ~2 GiB per call on Linux; non-contiguous arrays are copied in pieces.
_WRITE_CHUNK = 1 << 30
_COPY_CHUNK = 64 << 20
# Writers check whether to stop (Ctrl-C, another piece failed) at least this often.
_STOP_CHUNK = 8 << 20
# How long a new copy waits for the room freed kept copies give back (workers unmapping them).
_ROOM_WAIT = 0.5
# Hashed and written together: small enough to stay in the CPU's cache in between.
_HASH_CHUNK = 1 << 20
# Pieces of a copy written in parallel end on this boundary (a multiple of any page size).
_PIECE_ALIGN = 2 << 20
# Opening another process's descriptor through /proc is Linux's way to share an unnamed file.
_CAN_SHARE_ARGS = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")

# fill(piece index, descriptor, stop): write one piece of a segment; give up (raise _Stopped)
# once ``stop`` is set.
Fill = Callable[[int, int, threading.Event], None]


class ShareSettings(NamedTuple):
    """How one call shares arrays; travels with each of its tasks, so workers share results.

    ``max_nbytes``: arrays larger than this are shared. ``mmap_mode``: how workers map
    arguments. ``temp_folder``: the fallback folder (None: the system temp dir). ``shm_dir``:
    the shared-memory folder (None: none). ``shm_size``: an upper bound on the room there.
    """

    max_nbytes: int
    mmap_mode: str
    temp_folder: str | None
    shm_dir: str | None
    shm_size: int | None


def make_settings(
    max_nbytes: int,
    mmap_mode: str | None,
    temp_folder: str | None,
    shm_size: int | None,
) -> ShareSettings:
    """Resolve the shm folder (``PARAJOB_SHM_DIR``, else /dev/shm when present)."""
    shm_dir = os.environ.get(SHM_DIR_ENV) or (
        DEFAULT_SHM_DIR if os.path.isdir(DEFAULT_SHM_DIR) else None
    )
    return ShareSettings(
        int(max_nbytes),
        mmap_mode or "r",
        None if temp_folder is None else os.fspath(temp_folder),
        shm_dir,
        shm_size,
    )


# -- where segments live -----------------------------------------------------------------------


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _places(settings: ShareSettings) -> list[tuple[str, int | None, bool]]:
    """(folder, cap on its room, is the shm folder), in the order they are tried."""
    out: list[tuple[str, int | None, bool]] = []
    if settings.shm_dir:
        out.append((settings.shm_dir, settings.shm_size, True))
    fallback = settings.temp_folder or tempfile.gettempdir()
    if fallback != settings.shm_dir:
        out.append((fallback, None, False))
    return out


def _free_bytes(place: str, cap: int | None, held: int = 0) -> int:
    """Room in ``place``: what the filesystem has, within ``cap`` less ``held`` (if capped)."""
    st = os.statvfs(place)
    free = st.f_bavail * st.f_frsize
    return free if cap is None else min(free, max(cap - held, 0))


class Room(Protocol):
    """What the shm folder's room depends on besides the filesystem: copies kept for reuse."""

    def held(self) -> int:
        """Bytes of shm copies held by this process (counted against PARAJOB_SHM_SIZE)."""

    def make_room(self, nbytes: int) -> int:
        """Free idle copies worth ``nbytes`` if possible; return how many bytes were freed."""


def _room_in_shm(place: str, cap: int | None, room: Room | None, nbytes: int) -> int:
    """The shm folder's room, after freeing kept copies if it is short of ``nbytes``."""
    held = 0 if room is None or cap is None else room.held()
    free = _free_bytes(place, cap, held)
    if free >= nbytes or room is None or not room.make_room(nbytes - free):
        return free
    # Freed copies' pages come back once workers have dropped their mappings (they were just
    # told to): wait for that a little, rather than send the new copy to disk.
    deadline = time.monotonic() + _ROOM_WAIT
    while True:
        held = 0 if cap is None else room.held()
        free = _free_bytes(place, cap, held)
        if free >= nbytes or time.monotonic() >= deadline:
            return free
        time.sleep(0.002)


def _open_unnamed(place: str) -> int:
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(place, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            # The filesystem has no O_TMPFILE: a named file, unlinked at once, is the same
            # thing after a window of microseconds.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, path = tempfile.mkstemp(prefix="parajob-", dir=place)
    try:
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_segment(
    sizes: list[int],
    settings: ShareSettings,
    fill: Fill,
    room: Room | None = None,
) -> tuple[list[int], bool]:
    """Return (descriptors, in the shm folder) of new unnamed files, one per piece.

    ``fill(i, fd, stop)`` writes piece ``i`` (``sizes[i]`` bytes); pieces after the first are
    written by threads of their own, since a tmpfs file is filled by one writer at a time.
    ``room``, when given, counts the copies kept from earlier calls against the shm folder's
    cap, and is asked to free some before the folder is given up for lack of room.
    """
    nbytes = sum(sizes)
    tried: list[str] = []
    shm_was_full = False
    for place, cap, is_shm in _places(settings):
        try:
            free = _room_in_shm(place, cap, room, nbytes) if is_shm else _free_bytes(place, cap)
        except OSError as exc:
            tried.append(f"{place} ({exc.strerror})")
            continue
        if free < nbytes:
            tried.append(f"{place} ({_human(free)} free)")
            shm_was_full |= is_shm
            continue
        fds: list[int] = []
        try:
            for _ in sizes:
                fds.append(_open_unnamed(place))
        except OSError as exc:
            close_fds(fds)
            tried.append(f"{place} ({exc.strerror})")
            continue
        try:
            # Data is written with pwrite, never through a fresh mapping: on a full tmpfs a
            # write fails with ENOSPC, where a store to a mapped page would kill us (SIGBUS).
            _fill_pieces(fds, fill)
        except OSError as exc:
            close_fds(fds)
            if exc.errno not in _NO_ROOM:
                raise
            tried.append(f"{place} (full while writing: {exc.strerror})")
            shm_was_full |= is_shm
            continue
        except BaseException:
            close_fds(fds)
            raise
        if shm_was_full:
            try:
                warnings.warn(
                    f"the shared-memory folder {settings.shm_dir} has too little room for the "
                    f"arrays shared with workers, so they go to {place} instead (slower when "
                    f"it is on disk); give it more room (e.g. docker --shm-size), or point "
                    f"{SHM_DIR_ENV} or temp_folder= to a roomier folder",
                    SharedMemoryWarning,
                    stacklevel=2,
                )
            except BaseException:  # the warning is an error here (-W error)
                close_fds(fds)
                raise
        return fds, is_shm
    raise SharedMemoryError(
        f"no room to share an array of {_human(nbytes)} ({nbytes} bytes) between processes; "
        f"tried {', '.join(tried) or 'no folder'}; free some space there, point {SHM_DIR_ENV} "
        "or temp_folder= to a folder with room, or pass max_nbytes=None to send arrays "
        "through the pipe instead"
    )


class _Stopped(Exception):
    """A piece's writer was told to stop (another piece failed, or Ctrl-C)."""


def _fill_pieces(fds: list[int], fill: Fill) -> None:
    """Run ``fill`` for every piece, the first in this thread; raise the first error.

    Never returns (or raises) while a writer thread still runs: the caller closes the
    descriptors next, and a thread still writing would write into whatever file the process
    opens next under the same numbers. Ctrl-C stops every writer (each checks ``stop``
    between slices) and is raised once they all ended; it wins over their own errors.
    """
    stop = threading.Event()
    if len(fds) == 1:
        fill(0, fds[0], stop)
        return
    errors: list[BaseException] = []
    # Writers register before they write and deregister when they stop. On success every
    # writer must finish its piece; after an error or Ctrl-C the caller sets `closed`, so a
    # writer that starts late writes nothing, and waits for the registered ones to stop.
    # Thread.join() is not used: on Python 3.11 a join interrupted by Ctrl-C can leave
    # is_alive() False for a thread that still runs (bpo-45274), and start() itself can be
    # interrupted after its thread began.
    writers = threading.Condition()
    state = {"running": 0, "finished": 0, "closed": False}

    def run(i: int) -> None:
        try:
            fill(i, fds[i], stop)
        except BaseException as exc:  # handed to the calling thread below
            errors.append(exc)
            stop.set()

    def run_thread(i: int) -> None:
        try:
            with writers:
                if state["closed"]:
                    return
                state["running"] += 1
            try:
                run(i)
            finally:
                with writers:
                    state["running"] -= 1
        finally:
            with writers:
                state["finished"] += 1
                writers.notify_all()

    completed = False
    try:
        for i in range(1, len(fds)):
            threading.Thread(
                target=run_thread, args=(i,), name="parajob-shm-copy", daemon=True
            ).start()
        run(0)
        completed = True
    except BaseException as exc:  # Ctrl-C, or a thread that could not start
        errors.append(exc)
        stop.set()
    finally:
        # Never leave while a writer may still write: the caller closes the descriptors next.
        while True:
            try:
                with writers:
                    if completed and not errors:
                        while state["finished"] < len(fds) - 1:
                            writers.wait()
                    else:
                        state["closed"] = True
                        while state["running"]:
                            writers.wait()
                break
            except BaseException as exc:  # Ctrl-C while waiting: stop them, wait again
                completed = False
                errors.append(exc)
                stop.set()
    if errors:
        real = [e for e in errors if not isinstance(e, _Stopped)] or errors
        raise next((e for e in real if not isinstance(e, Exception)), real[0])


def piece_sizes(nbytes: int, pieces: int) -> list[int]:
    """Split ``nbytes`` into at most ``pieces`` parts, all but the last a multiple of 2 MiB."""
    step = _PIECE_ALIGN * max(1, -(-nbytes // (pieces * _PIECE_ALIGN)))
    sizes = [step] * (nbytes // step)
    if nbytes % step:
        sizes.append(nbytes % step)
    return sizes or [nbytes]


# -- array layout ------------------------------------------------------------------------------


def np_module() -> Any:
    import numpy

    return numpy


def address(arr: Any) -> int:
    return int(arr.__array_interface__["data"][0])


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    pos = 0
    total = len(data)
    while pos < total:
        written = os.pwrite(fd, data[pos : pos + _WRITE_CHUNK], at + pos)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        pos += written


def flat_bytes(arr: Any) -> Any:
    """A contiguous array's bytes as a flat uint8 array (no copy), or None if not contiguous."""
    np = np_module()
    arr = arr.view(np.ndarray)  # np.matrix would stay 2-d through reshape
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        return None
    return arr.reshape(-1, order="A").view(np.uint8)


def writer(
    arr: Any, sizes: list[int] | None = None, digests: list[Any] | None = None
) -> tuple[Fill, tuple[int, ...]]:
    """Return (fill, strides of the stored copy): raw bytes for contiguous arrays, else C order.

    ``fill(i, fd, stop)`` writes piece ``i`` of ``sizes`` (one piece when None; several need a
    contiguous array), a slice at a time, and stops between slices once ``stop`` is set. With
    ``digests`` (one xxh3 hasher per piece), ``fill`` also feeds each piece's written bytes to
    its hasher while the slice is in the CPU's cache, so the hash costs next to nothing on top
    of the copy.
    """
    np = np_module()
    flat = flat_bytes(arr)
    if flat is not None:
        data = memoryview(flat)
        starts = [0]
        for size in sizes or [len(data)]:
            starts.append(starts[-1] + size)

        def fill(i: int, fd: int, stop: threading.Event) -> None:
            piece = data[starts[i] : starts[i + 1]]
            # The digest must describe exactly the bytes written, even if another thread
            # changes the array meanwhile: each slice is copied once into a small buffer (it
            # stays in the CPU's cache), then hashed and written from there.
            hasher = None if digests is None else digests[i]
            step = _STOP_CHUNK if hasher is None else _HASH_CHUNK
            if hasher is not None:
                buffer = memoryview(bytearray(min(step, len(piece))))
            for at in range(0, len(piece), step):
                if stop.is_set():
                    raise _Stopped
                part = piece[at : at + step]
                if hasher is not None:
                    staged = buffer[: len(part)]
                    staged[:] = part
                    hasher.update(staged)
                    part = staged
                _pwrite_all(fd, part, at)

        return fill, tuple(arr.strides)

    if digests is not None or (sizes is not None and len(sizes) > 1):
        raise ValueError("only a contiguous array's copy can be digested or split in pieces")
    arr = arr.view(np.ndarray)
    rows = max(1, _COPY_CHUNK // max(arr.nbytes // max(arr.shape[0], 1), 1))

    def fill_rows(i: int, fd: int, stop: threading.Event) -> None:
        at = 0
        for start in range(0, arr.shape[0], rows):
            if stop.is_set():
                raise _Stopped
            piece = np.ascontiguousarray(arr[start : start + rows]).reshape(-1).view(np.uint8)
            _pwrite_all(fd, memoryview(piece), at)
            at += piece.nbytes

    return fill_rows, _c_strides(tuple(arr.shape), arr.dtype.itemsize)


def shareable_type(arr: Any, np: Any) -> bool:
    """True for ndarray and subclasses that pickle as plain arrays (np.matrix, np.recarray)."""
    cls = type(arr)
    if cls is np.ndarray or cls is np.memmap:
        return True
    # A subclass with its own reduction (a masked array...) has state of its own: pickle it.
    return bool(
        cls.__reduce_ex__ is np.ndarray.__reduce_ex__ and cls.__reduce__ is np.ndarray.__reduce__
    )


def subclass_of(arr: Any, np: Any) -> type | None:
    cls = type(arr)
    return None if cls is np.ndarray or cls is np.memmap else cls


# -- picklers with the array hook --------------------------------------------------------------


class _HookPickler(pickle.Pickler):
    def __init__(self, file: Any, hook: Callable[[Any], Any]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._hook = hook

    def reducer_override(self, obj: Any) -> Any:
        return self._hook(obj)


def dumps_with(obj: Any, hook: Callable[[Any], Any], by_value: bool) -> bytes:
    """Pickle ``obj`` with the array ``hook`` (with cloudpickle when ``by_value``)."""
    buf = io.BytesIO()
    if by_value:
        import cloudpickle

        class _CloudHookPickler(cloudpickle.Pickler):
            def reducer_override(self, o: Any) -> Any:
                reduced = hook(o)
                if reduced is not NotImplemented:
                    return reduced
                return super().reducer_override(o)

        _CloudHookPickler(buf, protocol=PROTOCOL).dump(obj)
    else:
        _HookPickler(buf, hook).dump(obj)
    return buf.getvalue()


def array_hook(share: Callable[[Any], Any]) -> Callable[[Any], Any]:
    ndarray = sys.modules["numpy"].ndarray

    def hook(obj: Any) -> Any:
        if isinstance(obj, ndarray):
            return share(obj)
        return NotImplemented

    return hook


def close_fds(fds: list[int] | None) -> None:
    """Close received descriptors (their mappings, if any, keep the memory)."""
    for fd in fds or ():
        with contextlib.suppress(OSError):
            os.close(fd)
