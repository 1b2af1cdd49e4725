"""The parent's side of sharing a Parallel call's large array arguments with process workers.

Each call gets an :class:`ArraySharer` (from the backend's ``start_call`` to ``stop_call``);
batches are pickled inside :func:`sharing`, whose hook hands arrays to it. An array above
``max_nbytes`` is copied once into unnamed shared files (``_shm``; a large one in a few
pieces written at once, which workers map back to back, see ``_mapping``); a view of an array
already shared points into its copy; an ``np.memmap`` goes by path.

Copies kept between calls
-------------------------
Copying into fresh shared pages is the whole cost of sharing a big array (page allocation
dominates: ~45 ms for 200 MB here on 2 CPUs, where hashing the same bytes takes ~6 ms).
Calls that map arguments read-only (``mmap_mode`` ``"r"``, the default, or ``"c"``)
therefore leave their copies with :data:`KEEPER` when they end. A later call given the
*same array object* checks that its bytes are unchanged (xxh3-128, taken of the bytes written
by the first copy, at no extra cost) and reuses the copy. A kept copy is freed as soon as:

- its array is garbage-collected (a weak reference watches it);
- its array's bytes changed (found by the next call that passes it);
- copies kept idle exceed the budget (``PARAJOB_SHM_KEEP``, by default an eighth of the RAM
  and a quarter of the shm folder), oldest first;
- the shm folder needs the room for a new copy;
- :func:`free_shared_arrays` or ``shutdown_executor()`` is called.

Calls with ``mmap_mode="r+"`` or ``"w+"`` let workers write into the copy, so theirs are
freed when the call ends, as before.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple

from parajob.errors import SharedMemoryError, SharedMemoryWarning
from parajob.process_pool import _shm
from parajob.process_pool._mapping import Segment, rebuild_array, span
from parajob.process_pool._shm import (
    ShareSettings,
    address,
    create_segment,
    flat_bytes,
    np_module,
    piece_sizes,
    shareable_type,
    subclass_of,
    writer,
)

__all__ = [
    "KEEPER",
    "KEEP_ENV",
    "ArraySharer",
    "call_sharer",
    "current_sharer",
    "free_shared_arrays",
    "payload_hook",
    "sharing",
    "submit_sharing",
    "unwrap_no_room",
    "watch_pool",
]

KEEP_ENV = "PARAJOB_SHM_KEEP"
# A tmpfs file is filled by one writer at a time (page allocation dominates the copy), so big
# copies are written as a few pieces at once: 200 MB takes ~45 ms in 2 pieces, ~85 ms in 1.
_PIECE_MIN = 32 << 20
_MAX_STREAMS = 4
_KEPT_MODES = frozenset({"r", "c"})  # modes in which workers cannot change the copy


class _Copy:
    """One shared copy of an array, owned by the parent: one unnamed file per piece."""

    __slots__ = (
        "digest",
        "dropped",
        "key",
        "nbytes",
        "offset",
        "segment",
        "strides",
        "users",
    )

    def __init__(
        self,
        segment: Segment,
        digest: bytes | None,
        offset: int,
        strides: tuple[int, ...],
    ) -> None:
        self.segment = segment  # how a worker finds the copy
        self.nbytes = sum(piece[3] for piece in segment.pieces)
        self.digest = digest
        self.offset = offset  # of the array's first element in the copy
        self.strides = strides  # of the stored copy
        self.users = 0  # calls that use the copy now
        self.dropped = False  # out of the keeper: closed when the last user is done
        self.key: tuple[Any, ...] = ()  # the keeper's key, once kept

    @property
    def sizes(self) -> list[int]:
        return [piece[3] for piece in self.segment.pieces]

    def close_files(self) -> None:
        for piece in self.segment.pieces:
            with contextlib.suppress(OSError):
                os.close(piece[0])

    def close(self) -> None:
        # The memory goes when the last worker mapping goes too. The files are not emptied
        # first: a task may keep an argument between calls (worker_state(), a module-level
        # cache), and reading it must not kill its worker (SIGBUS), as it would not with
        # joblib. Workers drop their own mappings of kept copies once told (K_FORGET).
        self.close_files()
        if self.segment.copy_id:
            for pool in list(_pools):
                pool.forget_copies((self.segment.copy_id,))


# Pools whose workers may map kept copies; each is told when one is freed (forget_copies must
# neither block nor take a lock: it can be called from a weak-reference callback).
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_copy_ids = itertools.count(1)


def watch_pool(pool: Any) -> None:
    """Tell ``pool`` (through ``pool.forget_copies(ids)``) about every kept copy freed."""
    _pools.add(pool)


def _digest(flat: Any, sizes: list[int]) -> bytes:
    """The digest of a copy's bytes: xxh3-128 of each piece's xxh3-128 (see ``writer``)."""
    import xxhash

    data = memoryview(flat)
    parts = []
    at = 0
    for size in sizes:
        parts.append(xxhash.xxh3_128(data[at : at + size]).digest())
        at += size
    return _combine(parts)


def _combine(parts: list[bytes]) -> bytes:
    import xxhash

    return parts[0] if len(parts) == 1 else bytes(xxhash.xxh3_128(b"".join(parts)).digest())


def _streams(nbytes: int) -> int:
    """How many pieces to write a copy of ``nbytes`` in, at once (one per CPU, at most 4)."""
    if nbytes < 2 * _PIECE_MIN:
        return 1
    from parajob.process_pool._cpu import cpu_count

    return max(1, min(cpu_count(), _MAX_STREAMS, nbytes // _PIECE_MIN))


def _keep_budget(settings: ShareSettings) -> int:
    """How many bytes of idle copies may be kept (``PARAJOB_SHM_KEEP`` or the default)."""
    from parajob._units import parse_size

    configured = parse_size(os.environ.get(KEEP_ENV) or None, KEEP_ENV)
    if configured is not None:
        return configured
    if not hasattr(os, "sysconf"):
        return 0  # no argument is shared where there is no sysconf (Windows): nothing to keep
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    room = ram
    if settings.shm_dir:
        with contextlib.suppress(OSError):
            st = os.statvfs(settings.shm_dir)
            room = st.f_blocks * st.f_frsize
        if settings.shm_size is not None:
            room = min(room, settings.shm_size)
    return min(ram // 8, room // 4)


class _Keeper:
    """Shared copies kept between calls, keyed by their array (see the module docstring).

    Entries are in least-recently-used order. Weak-reference callbacks can fire in any thread
    at any moment (a garbage collection inside a locked section included), so they never wait
    for the lock: they queue the dead array's key, and whoever lets go of the lock (or the
    callback itself, when the lock is free) empties the queue.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], _Copy] = {}
        self._refs: dict[tuple[Any, ...], weakref.ref[Any]] = {}
        self._dead: list[tuple[tuple[Any, ...], weakref.ref[Any]]] = []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self._lock:
                yield
        finally:
            self._drain()

    def _drain(self) -> None:
        # Every thread that queues a key, or lets go of the lock, ends here: a key queued
        # while another thread held the lock is handled by that thread once it lets go.
        while self._dead and self._lock.acquire(blocking=False):
            try:
                while self._dead:
                    key, ref = self._dead.pop()
                    # The key may name a newer entry by now (same id and address).
                    if self._refs.get(key) is ref:
                        self._drop(key)
            finally:
                self._lock.release()

    @property
    def idle_bytes(self) -> int:
        """Bytes of shared memory held for arrays that no running call uses."""
        with self._locked():
            return self._idle_bytes()

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, key: tuple[Any, ...]) -> bool:
        return key in self._entries

    def take(self, key: tuple[Any, ...], flat: Any) -> _Copy | None:
        """The kept copy of the array ``key`` names, if its bytes (``flat``) are unchanged.

        The caller becomes one of the copy's users and must :meth:`release` it.
        """
        with self._locked():
            entry = self._entries.get(key)
        if entry is None:
            return None
        digest = _digest(flat, entry.sizes)  # outside the lock: other calls need not wait
        with self._locked():
            if self._entries.get(key) is not entry:
                return None  # freed meanwhile
            if entry.digest != digest:
                self._drop(key)  # the array was changed in place since it was copied
                return None
            entry.users += 1
            self._entries[key] = self._entries.pop(key)  # most recently used last
            return entry

    def adopt(self, key: tuple[Any, ...], arr: Any, copy: _Copy) -> None:
        """Keep ``copy`` (of ``arr``, which the caller now uses) after the call ends."""
        with self._locked():
            if key in self._entries:
                self._drop(key)
            copy.users = 1
            copy.key = key
            self._entries[key] = copy
            self._refs[key] = weakref.ref(arr, functools.partial(self._died, key))

    def release(self, copy: _Copy, budget: int) -> None:
        """A call is done with ``copy``: keep it idle, within ``budget`` bytes, or free it."""
        with self._locked():
            copy.users -= 1
            if copy.users:
                return
            if copy.dropped:
                copy.close()
                return
            if copy.nbytes > budget:
                self._drop(copy.key)  # too big to keep: older copies stay
                return
            idle = self._idle_bytes()
            if idle > budget:
                self._free_idle(idle - budget)

    def held(self) -> int:
        """Bytes of shared memory held by kept copies, idle or in use."""
        with self._locked():
            return sum(entry.nbytes for entry in self._entries.values())

    def make_room(self, nbytes: int) -> int:
        """Free idle copies, oldest first, until ``nbytes`` are freed or none is left.

        Return the bytes freed. Workers are told at once to drop their mappings of them, so
        that the memory comes back within moments (see ``_shm._room_in_shm``).
        """
        with self._locked():
            freed = self._free_idle(nbytes)
        if freed:
            for pool in list(_pools):
                pool.send_forgets_now()
        return freed

    def clear(self) -> None:
        """Free every idle copy; copies in use are freed when their calls end."""
        with self._locked():
            for key in list(self._entries):
                self._drop(key)

    def after_fork_in_child(self) -> None:
        # A forked child must not use (or wait on) the parent's copies and lock; the workers
        # that map them are the parent's, so they are not told anything.
        for entry in self._entries.values():
            entry.close_files()
        self.__init__()  # type: ignore[misc]

    # -- under the lock ----------------------------------------------------------------------

    def _idle_bytes(self) -> int:
        # Counted, not kept up to date by hand: there are few entries (the budget bounds them).
        return sum(entry.nbytes for entry in self._entries.values() if not entry.users)

    def _free_idle(self, nbytes: int) -> int:
        freed = 0
        for key in [k for k, e in self._entries.items() if not e.users]:
            if freed >= nbytes:
                break
            freed += self._entries[key].nbytes
            self._drop(key)
        return freed

    def _drop(self, key: tuple[Any, ...]) -> None:
        entry = self._entries.pop(key)
        self._refs.pop(key, None)
        entry.dropped = True
        if not entry.users:
            entry.close()

    def _died(self, key: tuple[Any, ...], ref: weakref.ref[Any]) -> None:
        self._dead.append((key, ref))
        self._drain()


KEEPER = _Keeper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=KEEPER.after_fork_in_child)


def free_shared_arrays() -> None:
    """Free the shared copies of arrays kept from earlier Parallel calls.

    Copies that a running call uses are freed when that call ends. ``shutdown_executor()``
    calls this too.
    """
    KEEPER.clear()


# -- one call ----------------------------------------------------------------------------------


class _Shared(NamedTuple):
    keep: Any  # the array itself: keeps id() and the memory valid while the call runs
    copy: _Copy


class ArraySharer:
    """Share a call's large array arguments with workers; :meth:`close` ends the call.

    Each array (keyed by identity, address, shape, strides and dtype) is shared once per call,
    however many tasks use it; a view of an array already shared points into its copy.
    ``np.memmap`` arguments backed by a file are passed as the file's path: no copy at all.
    """

    def __init__(self, settings: ShareSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._shared: dict[tuple[Any, ...], _Shared] = {}
        self._closed = False
        self._pid = os.getpid()
        # Workers map read-only (or privately) in these modes: the copy can outlive the call.
        self._keep = settings.mmap_mode in _KEPT_MODES
        # Read now, so that a bad PARAJOB_SHM_KEEP fails the call before it runs anything.
        self._budget = _keep_budget(settings) if self._keep else 0

    def __enter__(self) -> ArraySharer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def nsegments(self) -> int:
        """How many arrays this call shares through shared memory so far."""
        return len(self._shared)

    def close(self) -> None:
        """End the call: its copies are kept (see the module docstring) or freed."""
        with self._lock:
            self._closed = True
            shared, self._shared = self._shared, {}
        for entry in shared.values():
            KEEPER.release(entry.copy, self._budget)

    def reduce(self, arr: Any) -> Any:
        """Pickle hook: a reduction that maps ``arr`` in the worker, or NotImplemented."""
        np = np_module()
        if not isinstance(arr, np.ndarray) or arr.dtype.hasobject or not shareable_type(arr, np):
            return NotImplemented
        backing = _file_backing(arr, np)
        if backing is None and (arr.nbytes <= self.settings.max_nbytes or not _shm._CAN_SHARE_ARGS):
            return NotImplemented
        if arr.size == 0:
            return NotImplemented
        mode = self.settings.mmap_mode
        if backing is not None:
            path, offset, mm_mode = backing
            source: Any = path
            strides = tuple(arr.strides)
            mode = "r+" if mm_mode == "w+" else mm_mode
        else:
            if mode == "w+":
                mode = "r+"  # the segment is created here; workers only open it
            with self._lock:
                if self._closed:
                    return NotImplemented
                source, offset, strides = self._segment_for(arr, np)
        return (
            rebuild_array,
            (source, offset, tuple(arr.shape), strides, arr.dtype, mode, subclass_of(arr, np)),
        )

    def _segment_for(self, arr: Any, np: Any) -> tuple[Any, int, tuple[int, ...]]:
        key = _key(arr)
        hit = self._shared.get(key)
        if hit is not None:
            return hit.copy.segment, hit.copy.offset, hit.copy.strides
        owner = arr
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        # A base that holds Python objects cannot be shared (a plain field of a structured
        # array with an object field, say): then the view is copied on its own.
        if (
            owner is not arr
            and not owner.dtype.hasobject
            and (owner.flags.c_contiguous or owner.flags.f_contiguous)
        ):
            owner_key = _key(owner)
            lo, hi = span(tuple(arr.shape), tuple(arr.strides), arr.dtype.itemsize)
            at = address(arr) - address(owner)
            inside = at + lo >= 0 and at + hi <= owner.nbytes
            # Share the whole base when a view is most of it (or the base is shared already):
            # tasks that take slices of one array then share one copy of it.
            if inside and (owner_key in self._shared or owner.nbytes <= 4 * arr.nbytes):
                base = self._shared.get(owner_key) or self._add(owner_key, owner)
                return base.copy.segment, base.copy.offset + at, tuple(arr.strides)
        entry = self._add(key, arr)
        return entry.copy.segment, entry.copy.offset, entry.copy.strides

    def _add(self, key: tuple[Any, ...], arr: Any) -> _Shared:
        flat = flat_bytes(arr)
        copy = None
        try:
            copy = KEEPER.take(key, flat) if self._keep and flat is not None else None
            if copy is None:
                copy = self._new_copy(key, arr, contiguous=flat is not None)
            entry = _Shared(arr, copy)
            self._shared[key] = entry
        except BaseException:
            # Ctrl-C (or an error) before the call recorded the copy: let go of it here, or
            # it would count as in use forever.
            if copy is not None and key not in self._shared:
                KEEPER.release(copy, self._budget)
            raise
        return entry

    def _new_copy(self, key: tuple[Any, ...], arr: Any, contiguous: bool) -> _Copy:
        keepable = self._keep and contiguous
        sizes = piece_sizes(arr.nbytes, _streams(arr.nbytes)) if contiguous else [arr.nbytes]
        digests = None
        if keepable:
            import xxhash

            digests = [xxhash.xxh3_128() for _ in sizes]
        fill, strides = writer(arr, sizes, digests)
        fds, in_shm = create_segment(sizes, self.settings, fill, KEEPER)
        try:
            kept = keepable and in_shm
            pieces = []
            for fd, size in zip(fds, sizes, strict=True):
                st = os.fstat(fd)
                pieces.append((fd, st.st_dev, st.st_ino, size))
            lo, _ = span(tuple(arr.shape), strides, arr.dtype.itemsize)
            copy = _Copy(
                Segment(self._pid, tuple(pieces), next(_copy_ids) if kept else 0),
                None if digests is None else _combine([bytes(d.digest()) for d in digests]),
                -lo,
                strides,
            )
        except BaseException:  # Ctrl-C before the copy is anyone's: close its files here
            _shm.close_fds(fds)
            raise
        if kept:
            KEEPER.adopt(key, arr, copy)
        else:
            copy.users = 1
            copy.dropped = True  # not kept: freed when this call releases it
        return copy


def call_sharer(
    max_nbytes: int | None, mmap_mode: str | None, temp_folder: str | None
) -> ArraySharer:
    """The sharer of one call with these joblib settings.

    With ``max_nbytes=None`` no array is copied to shared memory (arguments and results go
    through the pipe, as with joblib), but ``np.memmap`` arguments still go by path: their
    workers must write into the same file.
    """
    from parajob._units import parse_size

    shm_size = parse_size(os.environ.get(_shm.SHM_SIZE_ENV) or None, _shm.SHM_SIZE_ENV)
    limit = sys.maxsize if max_nbytes is None else max_nbytes
    return ArraySharer(_shm.make_settings(limit, mmap_mode, temp_folder, shm_size))


def submit_sharing(sharer: ArraySharer | None, submit: Callable[[], Future[Any]]) -> Future[Any]:
    """Call ``submit`` (which pickles a batch) with ``sharer``'s array hook, if any."""
    if sharer is None:
        return submit()
    with sharing(sharer):
        future = submit()
    return unwrap_no_room(future)


def unwrap_no_room(future: Future[Any]) -> Future[Any]:
    """Fail with the SharedMemoryError itself when no folder had room for an argument.

    The pool reports any failure to pickle a batch as a TaskPicklingError; "no room" deserves
    its own, clearer error (it says how much was needed and where parajob looked). So does
    the fallback's SharedMemoryWarning when warnings are errors (``-W error``).
    """
    if not future.done() or future.cancelled():
        return future
    exc = future.exception()
    cause = None if exc is None else exc.__cause__
    if not isinstance(cause, (SharedMemoryError, SharedMemoryWarning)):
        return future
    replacement: Future[Any] = Future()
    replacement.set_exception(cause)
    return replacement


def _key(arr: Any) -> tuple[Any, ...]:
    return (id(arr), address(arr), arr.shape, arr.strides, arr.dtype.str)


def _file_backing(arr: Any, np: Any) -> tuple[str, int, str] | None:
    """(path, file offset of arr's first element, mode) when arr lives in a np.memmap's file."""
    base = arr
    while base is not None:
        if isinstance(base, np.memmap):
            mm = getattr(base, "_mmap", None)
            filename = getattr(base, "filename", None)
            if mm is None or filename is None or not isinstance(base.offset, int):
                return None
            try:
                if mm.closed or not os.path.isfile(filename):
                    return None
                mm_address = address(np.frombuffer(mm, dtype=np.uint8, count=1))
            except (ValueError, TypeError, OSError):
                return None
            # numpy maps from the offset rounded down to the allocation granularity.
            mm_start = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY
            path = os.fspath(filename)  # numpy keeps a Path when given one
            return path, mm_start + address(arr) - mm_address, str(base.mode)
        base = getattr(base, "base", None)
    return None


_local = threading.local()


def current_sharer() -> ArraySharer | None:
    """The sharer installed by :func:`sharing` in this thread, if any."""
    return getattr(_local, "sharer", None)


@contextlib.contextmanager
def sharing(sharer: ArraySharer | None) -> Iterator[None]:
    """Pickle the tasks submitted in this block with ``sharer``'s array hook."""
    previous = getattr(_local, "sharer", None)
    _local.sharer = sharer
    try:
        yield
    finally:
        _local.sharer = previous


def payload_hook(sharer: ArraySharer) -> Callable[[Any], Any] | None:
    """The hook for a task payload, or None when no array can be in it (numpy not loaded)."""
    if "numpy" not in sys.modules:
        return None
    return _shm.array_hook(sharer.reduce)
