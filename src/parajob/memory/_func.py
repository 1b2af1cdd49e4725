"""Cached functions: MemorizedFunc (and its async twin) and the pass-through NotMemorizedFunc.

A call goes through these steps::

    check fingerprint (once per process; then an identity check per call)
      -> key = hash(salt, arguments in signature order with defaults)
      -> try to load <func>/<key>/output.pkl ---- found: hit (counted, buffered LRU touch)
      -> miss: take the entry's lock (or wait for whoever holds it)
            -> load again (the holder may have just written it) ---- found: hit
            -> run the function, write metadata.json, then output.pkl (the commit point)
            -> index the entry, evict least recently used entries past the limits

A damaged entry is reported in a CacheWarning, removed and recomputed. The function changing
(its code, or something it depends on, see ``_deps``) removes its entries with a
FunctionChangedWarning that says what changed.

This module holds the classes, the hit path and the public methods; the steps live with what
they are about: the key in ``_naming`` and ``_salt``, the fingerprint record in
``_func_info``, loading, writing and removing an entry in ``_entry``, and the miss (one
implementation for plain and ``async def`` functions) in ``_miss``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parajob.errors import InvalidParameterError
from parajob.memory._deps import Fingerprint, Watch
from parajob.memory._entry import MISS, evict, load_entry
from parajob.memory._func_info import (
    compare,
    current_fingerprint,
    drop_changed_entries,
    read_func_info,
    reason_kind,
    write_func_info,
)
from parajob.memory._lock import EntryLock, acquire
from parajob.memory._logging import Logger
from parajob.memory._miss import Miss
from parajob.memory._naming import ArgumentBinder, args_key, function_folder, unwrap
from parajob.memory._results import (
    CacheStats,
    Explanation,
    MemorizedResult,
    NotMemorizedResult,
    stats_from_counters,
)
from parajob.memory._salt import func_salt
from parajob.memory._store import METADATA, OUTPUT, StoreBackendBase, as_store, read_json

__all__ = [
    "AsyncMemorizedFunc",
    "AsyncNotMemorizedFunc",
    "Limits",
    "MemorizedFunc",
    "NotMemorizedFunc",
]

INVALIDATION_MODES = ("dependencies", "code", "none")


@dataclass(frozen=True)
class Limits:
    """Automatic size limits of a cache, enforced after each write."""

    max_bytes: int | None = None
    max_items: int | None = None
    max_age: float | None = None

    @property
    def active(self) -> bool:
        """True when any limit is set."""
        return self.max_bytes is not None or self.max_items is not None or self.max_age is not None


class NotMemorizedFunc:
    """A stand-in for :class:`MemorizedFunc` when ``Memory(location=None)``: it just calls.

    Parameters
    ----------
    func : callable
        The function.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        with_wrapper = functools.update_wrapper
        try:
            with_wrapper(self, func)
        except (AttributeError, TypeError):
            pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> NotMemorizedResult:
        """Call the function and wrap its value in a :class:`NotMemorizedResult`."""
        return NotMemorizedResult(self.func(*args, **kwargs))

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Call the function; return ``(output, {})``."""
        return self.func(*args, **kwargs), {}

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Return False: nothing is ever cached."""
        return False

    def clear(self, warn: bool = True) -> None:
        """Do nothing (there is no cache)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(func={self.func})"


class AsyncNotMemorizedFunc(NotMemorizedFunc):
    """The async stand-in: calls are awaited, nothing is cached."""

    async def call_and_shelve(self, *args: Any, **kwargs: Any) -> NotMemorizedResult:  # type: ignore[override]
        """Await the function and wrap its value in a :class:`NotMemorizedResult`."""
        return NotMemorizedResult(await self.func(*args, **kwargs))


class MemorizedFunc(Logger):
    """A function whose results are cached on disk, keyed by its arguments.

    Made by :meth:`Memory.cache`; calling it returns the cached result when there is one and
    computes (and stores) it otherwise.

    Parameters
    ----------
    func : callable
        The function to cache.
    location : StoreBackendBase, str or os.PathLike
        The store (``Memory.store_backend``), or a location as given to :class:`Memory`
        (the same cache as ``Memory(location)`` uses).
    backend : str, default "local"
        The store backend to open when ``location`` is a folder or URL (unused when it is
        a store).
    ignore : list of str, optional
        Argument names left out of the key.
    mmap_mode : {None, "r", "r+", "c", "w+"}, optional
        Memory-map numpy arrays of cached results.
    compress : bool, int, str or (str, int), default False
        Compression of stored results (as :func:`parajob.dump`).
    verbose : int, default 1
        0 is silent; 1 prints a line for each computation.
    timestamp : float, optional
        Kept for joblib's signature.
    cache_validation_callback : callable, optional
        ``callback(metadata) -> bool``; False means the entry is stale (see
        :func:`expires_after`).
    invalidation : {"dependencies", "code", "none"}, default "dependencies"
        What makes entries stale besides arguments: the function's code and its user-code
        dependencies; its code only; or nothing (entries survive code edits).
    depends_on : list, optional
        More objects the results depend on (functions, classes, modules, values).
    limits : Limits, optional
        The size limits of the cache, enforced after each write.
    lock_timeout : float or None, default 3600
        How long a call waits for another process computing the same entry before computing
        it too; None waits forever.
    """

    # Marks cached functions for dependency discovery (a cached function calling another).
    _parajob_memorized = True

    def __init__(
        self,
        func: Callable[..., Any],
        location: StoreBackendBase | str | os.PathLike[str],
        backend: str = "local",
        ignore: list[str] | None = None,
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 1,
        timestamp: float | None = None,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
        *,
        invalidation: str = "dependencies",
        depends_on: list[Any] | None = None,
        limits: Limits | None = None,
        lock_timeout: float | None = 3600.0,
    ) -> None:
        if invalidation not in INVALIDATION_MODES:
            raise InvalidParameterError(
                f"invalidation must be one of {INVALIDATION_MODES}, got {invalidation!r}"
            )
        if depends_on and invalidation == "none":
            raise InvalidParameterError(
                f"depends_on={depends_on!r} has no effect with invalidation='none'; use "
                f"invalidation='code' or 'dependencies', or drop depends_on"
            )
        Logger.__init__(self)
        # Decorating a staticmethod or classmethod object in a class body: bind like it would.
        self._binding = (
            "static"
            if isinstance(func, staticmethod)
            else "class"
            if isinstance(func, classmethod)
            else None
        )
        func = unwrap(func)
        self.func = func
        self.store_backend = as_store(location, backend)
        self.backend = backend
        self.ignore = list(ignore or [])
        self.mmap_mode = mmap_mode
        self.compress = compress
        self._verbose = verbose
        self.timestamp = timestamp if timestamp is not None else time.time()
        self.cache_validation_callback = cache_validation_callback
        self.invalidation = invalidation
        self.depends_on = list(depends_on or [])
        self.limits = limits or Limits()
        self.lock_timeout = lock_timeout
        module, name = function_folder(func)
        self.func_id = f"{module}/{name}"
        self._setup()
        try:
            functools.update_wrapper(self, func)
        except (AttributeError, TypeError):
            pass  # callables without __name__ (ufuncs, partials)
        self.__doc__ = f"Memoized version of {getattr(func, '__doc__', None) or func!r}"

    def _setup(self, salt: str | None = None) -> None:
        self._binder = ArgumentBinder(self.func, self.ignore)
        self._watch: Watch | None = None
        self._fingerprint: Fingerprint | None = None
        self._salt = salt if salt is not None else func_salt(self.func, self.invalidation)
        self._coerce = self.mmap_mode is not None

    # -- fingerprint ---------------------------------------------------------------------------

    def _write_func_info(self, fp: Fingerprint | None) -> None:
        write_func_info(self.store_backend, self.func_id, self.func, self.invalidation, fp)

    def _ensure_current(self) -> None:
        watch = self._watch
        if watch is not None and watch.unchanged():
            return
        fp, watch = current_fingerprint(self.func, self.depends_on, self.invalidation)
        stored = read_func_info(self.store_backend, self.func_id)
        if stored is None:
            self._write_func_info(fp)
        else:
            change, record = compare(fp, stored, self.invalidation)
            if change is not None and fp is not None:
                self._invalidate(fp, change)
            elif record:
                self._write_func_info(fp)
        self._fingerprint, self._watch = fp, watch

    def _invalidate(self, fp: Fingerprint, change: str) -> None:
        store = self.store_backend
        lock = self._lock(self.func_id)
        got = acquire(lock, self.lock_timeout)
        try:
            # Another process may have done this while we waited; check again under the lock.
            stored = read_func_info(store, self.func_id)
            if stored is not None and compare(fp, stored, self.invalidation)[0] is None:
                return
            drop_changed_entries(store, self.func_id, change)
            self._write_func_info(fp)
        finally:
            if got:
                lock.release()

    # -- keys ----------------------------------------------------------------------------------

    def _args_id(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return args_key(self._binder.describe(args, kwargs), self._salt, self._coerce)

    def _get_args_id(self, *args: Any, **kwargs: Any) -> str:
        return self._args_id(args, kwargs)

    # -- reading -------------------------------------------------------------------------------

    def _still_valid(self, args_id: str) -> bool:
        callback = self.cache_validation_callback
        if callback is None:
            return True
        entry = f"{self.func_id}/{args_id}"
        if not self.store_backend.exists(f"{entry}/{OUTPUT}"):
            return True  # nothing to validate; the load that follows misses
        meta = read_json(self.store_backend, f"{entry}/{METADATA}") or {}
        if callback(meta):
            return True
        evict(self.store_backend, [(self.func_id, args_id)], "expired|expired")
        return False

    def _lookup(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool
    ) -> tuple[str, Any]:
        self._ensure_current()
        args_id = self._args_id(args, kwargs)
        if not self._still_valid(args_id):
            return args_id, MISS
        store = self.store_backend
        return args_id, load_entry(store, self.func_id, args_id, self.mmap_mode, shelving)

    # -- computing -----------------------------------------------------------------------------

    def _lock(self, key: str) -> EntryLock:
        """Return the (not yet acquired) lock of the entry or function folder ``key``."""
        return self.store_backend.lock(key, self.lock_timeout or 3600.0)

    def _compute(self, miss: Miss) -> tuple[Any, dict[str, Any]]:
        with miss:
            if miss.needed:
                miss.finish(self.func(*miss.args, **miss.kwargs))
        return miss.result

    def _cached_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool
    ) -> tuple[Any, dict[str, Any]]:
        args_id, value = self._lookup(args, kwargs, shelving)
        if value is not MISS:
            return value, {}
        return self._compute(Miss(self, args_id, args, kwargs, shelving))

    # -- public API ----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The hit path, spelled out: it is the one that runs millions of times.
        watch = self._watch
        if watch is None or not watch.unchanged():
            self._ensure_current()
        args_id = self._args_id(args, kwargs)
        if self.cache_validation_callback is None or self._still_valid(args_id):
            value = load_entry(self.store_backend, self.func_id, args_id, self.mmap_mode, False)
            if value is not MISS:
                return value
        return self._compute(Miss(self, args_id, args, kwargs, False))[0]

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult | NotMemorizedResult:
        """Return a :class:`MemorizedResult` referring to the cached value (computing it if needed).

        The reference is small and picklable; ``.get()`` loads the value.
        """
        return self._cached_call(args, kwargs, True)[0]

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Run the function even if cached, store the result; return ``(output, metadata)``."""
        self._ensure_current()
        miss = Miss(self, self._args_id(args, kwargs), args, kwargs, False, recheck=False)
        return self._compute(miss)

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Return True if this call would be answered from the cache (nothing is computed)."""
        self._ensure_current()
        args_id = self._args_id(args, kwargs)
        if not self._still_valid(args_id):
            return False
        return self.store_backend.exists(f"{self.func_id}/{args_id}/{OUTPUT}")

    def explain(self, *args: Any, **kwargs: Any) -> Explanation:
        """Say whether this call would be answered from the cache and, if not, why.

        Nothing is computed, removed or written.

        Returns
        -------
        Explanation
            ``.hit``, ``.reason`` (a short code) and ``.message`` (a sentence); it is truthy
            for a hit and prints as its message.

        .. versionadded:: 0.1
        """
        args_id = self._args_id(args, kwargs)
        entry = f"{self.func_id}/{args_id}"
        name = self.func_id.replace("/", ".")

        def result(hit: bool, reason: str, message: str) -> Explanation:
            return Explanation(hit, reason, f"{name}: {message}", self.func_id, args_id)

        store = self.store_backend
        fp, _ = current_fingerprint(self.func, self.depends_on, self.invalidation)
        stored = read_func_info(store, self.func_id)
        if stored is not None:
            change = compare(fp, stored, self.invalidation)[0]
            if change is not None:
                return result(
                    False, reason_kind(change), f"miss: {change} since the cache was written"
                )
        if store.exists(f"{entry}/{OUTPUT}"):
            callback = self.cache_validation_callback
            metadata_key = f"{entry}/{METADATA}"
            if callback is not None and not callback(read_json(store, metadata_key) or {}):
                return result(
                    False,
                    "expired",
                    "miss: the cached result has expired (cache_validation_callback said so)",
                )
            return result(True, "hit", "hit: the result is in the cache")
        removed = store.index.removal_reason(self.func_id, args_id)
        if removed is not None:
            kind, _, text = removed[0].partition("|")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(removed[1]))
            messages = {
                "evicted": f"miss: the result was evicted at {when} to keep the cache within its size limits",
                "expired": f"miss: the result expired and was removed at {when}",
                "corrupt": f"miss: the stored result was damaged and removed at {when}",
                "cleared": f"miss: the result was cleared at {when}",
            }
            message = messages.get(kind, f"miss: the result was removed at {when} because {text}")
            return result(False, kind, message)
        return result(False, "new-arguments", "miss: no result is cached for these arguments")

    def clear(self, warn: bool = True) -> None:
        """Remove every cached result of this function."""
        if warn and self._verbose > 0:
            print(f"[Memory] Clearing the cache of {self.func_id.replace('/', '.')}")
        store = self.store_backend
        before = time.time()
        store.delete(self.func_id)
        store.index.forget_function(self.func_id, "cleared|cleared", before)
        fp, watch = current_fingerprint(self.func, self.depends_on, self.invalidation)
        self._write_func_info(fp)
        self._fingerprint, self._watch = fp, watch

    def stats(self) -> CacheStats:
        """Return this function's hits, misses, stored entries and bytes, and time saved.

        .. versionadded:: 0.1
        """
        counters = self.store_backend.index.counters().get(self.func_id)
        if counters is None:
            return CacheStats()
        return stats_from_counters(counters)

    # -- object protocol -----------------------------------------------------------------------

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Decorating a method in a class body: bind like a function does, with the instance
        # as the first argument (and so part of the key unless ignored).
        binding = getattr(self, "_binding", None)
        if binding == "static":
            return self
        if binding == "class":
            return _BoundMemorizedFunc(self, owner if owner is not None else type(instance))
        if instance is None:
            return self
        return _BoundMemorizedFunc(self, instance)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_binder", "_watch", "_fingerprint", "_coerce", "__wrapped__"):
            state.pop(name, None)
        state["timestamp"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        salt = state.pop("_salt", None)
        self.__dict__.update(state)
        self.__wrapped__ = self.func
        self._setup(salt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(func={self.func}, location={self.store_backend.location})"


class _BoundMemorizedFunc:
    """A cached method bound to an instance: calls pass the instance first."""

    def __init__(self, owner: MemorizedFunc, instance: Any) -> None:
        self._owner = owner
        self.__self__ = instance
        self.func = owner.func
        functools.update_wrapper(self, owner.func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._owner, name)
        if name in _CALL_METHODS:
            return functools.partial(attr, self.__self__)
        return attr


_CALL_METHODS = frozenset({"call", "call_and_shelve", "check_call_in_cache", "explain"})


class AsyncMemorizedFunc(MemorizedFunc):
    """A cached ``async def`` function: calling it returns an awaitable."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (await self._async_cached_call(args, kwargs, False))[0]

    async def call_and_shelve(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Await the cached call and return a :class:`MemorizedResult` for it."""
        return (await self._async_cached_call(args, kwargs, True))[0]

    async def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        """Await the function even if cached, store the result; return ``(output, metadata)``."""
        self._ensure_current()
        miss = Miss(self, self._args_id(args, kwargs), args, kwargs, False, recheck=False)
        return await self._async_compute(miss)

    async def _async_cached_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool
    ) -> tuple[Any, dict[str, Any]]:
        args_id, value = self._lookup(args, kwargs, shelving)
        if value is not MISS:
            return value, {}
        return await self._async_compute(Miss(self, args_id, args, kwargs, shelving))

    async def _async_compute(self, miss: Miss) -> tuple[Any, dict[str, Any]]:
        # MemorizedFunc._compute, waiting for the lock and for the function without blocking.
        async with miss:
            if miss.needed:
                miss.finish(await self.func(*miss.args, **miss.kwargs))
        return miss.result
