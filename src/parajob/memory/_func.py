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
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import reprlib
import time
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xxhash

from parajob.errors import CacheWarning, FunctionChangedWarning, InvalidParameterError
from parajob.hashing import digest
from parajob.memory._deps import (
    Fingerprint,
    Watch,
    fingerprint,
    is_plain_constant,
    unwrap_layers,
)
from parajob.memory._lock import acquire, acquire_async
from parajob.memory._logging import Logger
from parajob.memory._naming import ArgumentBinder, function_folder, unwrap
from parajob.memory._results import CacheStats, Explanation, MemorizedResult, NotMemorizedResult
from parajob.memory._store import FUNC_INFO, METADATA, OUTPUT, StoreBackendBase, as_store

__all__ = [
    "AsyncMemorizedFunc",
    "AsyncNotMemorizedFunc",
    "Limits",
    "MemorizedFunc",
    "NotMemorizedFunc",
    "evict",
]

INVALIDATION_MODES = ("dependencies", "code", "none")
_STRENGTH = {"none": 0, "code": 1, "dependencies": 2}

_MISS = object()
_salts: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
_SCALAR_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
_SCALAR_TAG = b"parajob.memory.scalars/1\x00"
_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20


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


def evict(store: StoreBackendBase, victims: list[tuple[str, str]], reason: str) -> None:
    """Remove entries from a store and its index, recording ``reason`` for ``explain``."""
    if not victims:
        return
    # Files first, then rows: a process killed in between leaves rows without files, which
    # read as misses and are replaced on the next write; the reverse would leak files. Rows
    # written after ``before`` belong to entries stored again meanwhile, and stay.
    before = time.time()
    store.delete_many([f"{func}/{args}" for func, args in victims])
    store.index.forget(victims, reason, before)
    store.finish_deletes()


def _not_the_entrys_fault(exc: BaseException) -> bool:
    """Return True if loading failed because of this process, not because of the entry."""
    seen: BaseException | None = exc
    for _ in range(8):  # the error or what caused it (persistence wraps some)
        if seen is None:
            break
        if isinstance(seen, (MemoryError, ImportError)):
            return True
        if isinstance(seen, OSError) and not isinstance(
            seen, (NotADirectoryError, IsADirectoryError)
        ):
            return True
        seen = seen.__cause__
    return False


def _reason_kind(change: str) -> str:
    return "code-changed" if change.startswith("its code") else "dependency-changed"


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
        self._salt = salt if salt is not None else self._salt_of_func()
        self._coerce = self.mmap_mode is not None

    def _salt_of_func(self) -> str:
        # What a closure captured is keyed as it was when the function object was first
        # cached in this process: caching it again (Memory.eval, another Memory) after it
        # mutated what it captured (a log list) must find the same entries. A copy sent to
        # another process carries its salt (see __getstate__).
        try:
            by_mode = _salts.get(self.func)
        except TypeError:  # not weakly referable or not hashable
            return self._compute_salt()
        if by_mode is None:
            by_mode = {}
            with contextlib.suppress(TypeError):
                _salts[self.func] = by_mode
        salt = by_mode.get(self.invalidation)
        if salt is None:
            salt = by_mode[self.invalidation] = self._compute_salt()
        return salt

    def _compute_salt(self) -> str:
        # Values baked into the callable (a partial's arguments, a closure's cells) change its
        # results as much as arguments do, so they belong in every key.
        parts: list[Any] = []
        func = self.func
        while isinstance(func, functools.partial):
            parts.append((func.args, func.keywords))
            func = func.func
        base = getattr(func, "__func__", func)
        values: list[Any] = []
        for layer in unwrap_layers(base):
            for cell in getattr(layer, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell (a name assigned later)
                    continue
                # What a closure captured selects its results as much as an argument does
                # (``k`` in ``lambda x: x * k``, the data an enclosing function was given,
                # the ``transform`` of a factory making one cached ``apply`` each), so it is
                # keyed by value, as it is when the function is cached. Functions by their
                # code; objects that cannot be hashed (a lock, a client) by type only.
                if is_plain_constant(value):
                    values.append(value)
                elif callable(value) and not isinstance(value, type):
                    values.append(self._callable_identity(value))
                else:
                    try:
                        values.append(digest(value))
                    except Exception:
                        values.append(f"<{type(value).__module__}.{type(value).__qualname__}>")
        if not parts and not values:
            return ""
        return digest((parts, values))

    def _callable_identity(self, value: Any) -> str:
        # How a captured function is told apart: Python functions by name only when code
        # edits must not count (invalidation="none"), else by their code and, with
        # "dependencies", by what they depend on, so an edit selects new entries. Other
        # callables (builtins, ufuncs) by name; callable objects (a model with __call__) by
        # type only, like any captured object: hashing their state is not done here.
        base = getattr(value, "__func__", value)
        name = getattr(base, "__qualname__", None) or getattr(base, "__name__", None)
        if not isinstance(name, str):
            return f"<{type(value).__module__}.{type(value).__qualname__}>"
        label = f"{getattr(base, '__module__', None)}.{name}"
        if self.invalidation == "none" or not isinstance(base, types.FunctionType):
            return label
        fp, _ = fingerprint(base, [], self.invalidation == "dependencies")
        return f"{label}:{fp.code}:{sorted(fp.deps.items())}"

    # -- fingerprint ---------------------------------------------------------------------------

    def _read_func_info(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.store_backend.read_bytes(f"{self.func_id}/{FUNC_INFO}"))
        except (FileNotFoundError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _write_func_info(self, fp: Fingerprint | None) -> None:
        code = getattr(getattr(self.func, "__func__", self.func), "__code__", None)
        info = {
            "function": getattr(self.func, "__qualname__", repr(self.func)),
            "module": getattr(self.func, "__module__", None),
            "file": getattr(code, "co_filename", None),
            "line": getattr(code, "co_firstlineno", None),
            "invalidation": self.invalidation,
            "fingerprint": fp.to_json() if fp is not None else None,
        }
        self.store_backend.write_bytes(f"{self.func_id}/{FUNC_INFO}", json.dumps(info).encode())

    def _current_fingerprint(self) -> tuple[Fingerprint | None, Watch]:
        if self.invalidation == "none":
            return None, Watch()
        return fingerprint(self.func, self.depends_on, self.invalidation == "dependencies")

    def _compare(self, fp: Fingerprint | None, stored: dict[str, Any]) -> tuple[str | None, bool]:
        """Return what changed since ``stored`` (or None) and whether to record ``fp``.

        Fingerprints made in different modes are compared on what both record (the code and
        ``depends_on``), so a ``"code"`` and a ``"dependencies"`` user of one cache do not
        undo each other; the stronger record is kept. A record without a fingerprint (made
        with ``invalidation="none"``) is replaced by the current one.
        """
        if fp is None:
            return None, False
        old = stored.get("fingerprint")
        if not isinstance(old, dict):
            return None, True
        mode = stored.get("invalidation", self.invalidation)
        if mode == self.invalidation:
            return fp.change_from(old), False
        change = fp.change_from(old, explicit_only=True)
        stronger = _STRENGTH.get(str(mode), 0) > _STRENGTH[self.invalidation]
        return change, change is None and not stronger

    def _ensure_current(self) -> None:
        watch = self._watch
        if watch is not None and watch.unchanged():
            return
        fp, watch = self._current_fingerprint()
        stored = self._read_func_info()
        if stored is None:
            self._write_func_info(fp)
        else:
            change, record = self._compare(fp, stored)
            if change is not None and fp is not None:
                self._invalidate(fp, change)
            elif record:
                self._write_func_info(fp)
        self._fingerprint, self._watch = fp, watch

    def _invalidate(self, fp: Fingerprint, change: str) -> None:
        store = self.store_backend
        lock = store.lock(self.func_id, self.lock_timeout or 3600.0)
        got = acquire(lock, self.lock_timeout)
        try:
            # Another process may have done this while we waited; check again under the lock.
            stored = self._read_func_info()
            if stored is not None and self._compare(fp, stored)[0] is None:
                return
            count = sum(1 for _ in store.index.entries(self.func_id))
            warnings.warn(
                FunctionChangedWarning(
                    f"{self.func_id}: {change} since its results were cached; its {count} "
                    f"cached result(s) were removed and will be computed again (use "
                    f"invalidation='none' to keep results across edits)"
                ),
                stacklevel=5,
            )
            before = time.time()
            for item in list(store.list(self.func_id)):
                parts = item.key.split("/")
                if len(parts) == 4 and parts[3] == OUTPUT:
                    store.delete("/".join(parts[:3]))
            store.index.forget_function(self.func_id, f"{_reason_kind(change)}|{change}", before)
            self._write_func_info(fp)
        finally:
            if got:
                lock.release()

    # -- keys ----------------------------------------------------------------------------------

    def _args_id(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        description = self._binder.describe(args, kwargs)
        for _, value in description:
            if type(value) not in _SCALAR_TYPES:
                return digest((self._salt, description), coerce_mmap=self._coerce)
        # Only plain scalars: their repr is exact and unambiguous (floats round-trip, str and
        # bytes are quoted and escaped, True is not 1), so it is a canonical form; hashing it
        # directly is several times faster than the general pickle-based digest, which
        # matters on the hit path. The tag keeps the two key spaces apart.
        text = f"{self._salt}\x00{description!r}".encode("utf-8", "surrogatepass")
        return xxhash.xxh3_128_hexdigest(_SCALAR_TAG + text)

    def _get_args_id(self, *args: Any, **kwargs: Any) -> str:
        return self._args_id(args, kwargs)

    # -- reading -------------------------------------------------------------------------------

    def _read_metadata(self, entry: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.store_backend.read_bytes(f"{entry}/{METADATA}"))
        except (FileNotFoundError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _still_valid(self, entry: str, args_id: str) -> bool:
        callback = self.cache_validation_callback
        if callback is None:
            return True
        if not self.store_backend.exists(f"{entry}/{OUTPUT}"):
            return True  # nothing to validate; the load that follows misses
        meta = self._read_metadata(entry) or {}
        if callback(meta):
            return True
        evict(self.store_backend, [(self.func_id, args_id)], "expired|expired")
        return False

    def _try_load(self, entry: str, args_id: str, shelving: bool) -> Any:
        store = self.store_backend
        start = time.perf_counter()
        try:
            if shelving:
                if not store.exists(f"{entry}/{OUTPUT}"):
                    return _MISS
                value: Any = MemorizedResult(
                    store, (self.func_id, args_id), mmap_mode=self.mmap_mode
                )
            else:
                value = store.load_value(f"{entry}/{OUTPUT}", self.mmap_mode)
        except FileNotFoundError:
            return _MISS
        except Exception as exc:  # a damaged entry: any error of unpickling, not just ours
            if _not_the_entrys_fault(exc):
                # Out of memory, a module this process cannot import, a permission problem:
                # the entry may be fine. Compute (a success replaces it), but do not remove
                # a result that may have taken hours because this process cannot read it.
                warnings.warn(
                    CacheWarning(
                        f"the cached result of {self.func_id} at {store.location}/{entry} "
                        f"could not be read ({type(exc).__name__}: {exc}); it is being "
                        f"computed again (the stored entry is kept)"
                    ),
                    stacklevel=4,
                )
                return _MISS
            warnings.warn(
                CacheWarning(
                    f"the cached result of {self.func_id} at {store.location}/{entry} could "
                    f"not be read ({type(exc).__name__}: {exc}); it was removed and is being "
                    f"computed again"
                ),
                stacklevel=4,
            )
            evict(store, [(self.func_id, args_id)], "corrupt|damaged")
            return _MISS
        store.index.record_hit(self.func_id, args_id, time.perf_counter() - start)
        return value

    def _lookup(self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool) -> Any:
        self._ensure_current()
        args_id = self._args_id(args, kwargs)
        entry = f"{self.func_id}/{args_id}"
        if not self._still_valid(entry, args_id):
            return args_id, entry, _MISS
        return args_id, entry, self._try_load(entry, args_id, shelving)

    # -- computing -----------------------------------------------------------------------------

    def _before_compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        if self._verbose > 0:
            shown = ", ".join(
                f"{k}={_repr.repr(v)}" for k, v in self._binder.describe(args, kwargs)
            )
            print(f"[Memory] Calling {self.func_id.replace('/', '.')}({shown})")
        return time.perf_counter()

    def _after_compute(
        self,
        entry: str,
        args_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        start: float,
        shelving: bool,
    ) -> tuple[Any, dict[str, Any]]:
        duration = time.perf_counter() - start
        store = self.store_backend
        metadata = {
            "duration": duration,
            "input_args": {k: _repr.repr(v) for k, v in self._binder.describe(args, kwargs)},
            "time": time.time() - duration,
        }
        store.index.record_miss(self.func_id, duration)
        if not store.exists(f"{self.func_id}/{FUNC_INFO}"):
            # The cache was cleared since this process checked the function: record again
            # which code this entry comes from, or another version would take it for its own.
            self._write_func_info(self._fingerprint)
        size = self._store(entry, output, metadata)
        if size is not None:
            store.index.record_store(self.func_id, args_id, size, duration)
            if self.limits.active:
                lim = self.limits
                evict(
                    store,
                    store.index.over_limits(lim.max_bytes, lim.max_items, lim.max_age),
                    "evicted|evicted",
                )
        if self._verbose > 0:
            print(f"[Memory] {self.func_id.replace('/', '.')} computed in {duration:.3f}s")
        if shelving:
            evicted = self.limits.active and size is not None
            if size is None or (evicted and not store.exists(f"{entry}/{OUTPUT}")):
                # Not stored, or larger than the limits allow: hold the value itself.
                return NotMemorizedResult(output), metadata
            return MemorizedResult(
                store, (self.func_id, args_id), mmap_mode=self.mmap_mode, metadata=metadata
            ), metadata
        if self.mmap_mode is not None and size is not None:
            # Give the first call the same (memory-mapped) value later calls get.
            try:
                output = store.load_value(f"{entry}/{OUTPUT}", self.mmap_mode)
            except FileNotFoundError:
                pass  # evicted at once by a tiny limit: the computed value is still right
        return output, metadata

    def _store(self, entry: str, output: Any, metadata: dict[str, Any]) -> int | None:
        store = self.store_backend
        try:
            meta_bytes = json.dumps(metadata).encode()
            store.write_bytes(f"{entry}/{METADATA}", meta_bytes)
            # The output is written last: its appearance commits the entry.
            return store.store_value(f"{entry}/{OUTPUT}", output, self.compress) + len(meta_bytes)
        except Exception as exc:
            warnings.warn(
                CacheWarning(
                    f"the result of {self.func_id} could not be stored in the cache at "
                    f"{store.location} ({type(exc).__name__}: {exc}); it is returned anyway "
                    f"and will be computed again next time"
                ),
                stacklevel=5,
            )
            try:
                store.delete(f"{entry}/{OUTPUT}")
                store.delete(f"{entry}/{METADATA}")
            except Exception:
                pass
            return None

    def _wait_warning(self, entry: str) -> None:
        warnings.warn(
            CacheWarning(
                f"waited {self.lock_timeout}s for another process computing {entry} in "
                f"{self.store_backend.location}; computing it here as well (raise "
                f"lock_timeout if computations take longer)"
            ),
            stacklevel=5,
        )

    def _miss(
        self,
        args_id: str,
        entry: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shelving: bool,
        recheck: bool = True,
    ) -> tuple[Any, dict[str, Any]]:
        lock = self.store_backend.lock(entry, self.lock_timeout or 3600.0)
        got = acquire(lock, self.lock_timeout)
        if not got:
            self._wait_warning(entry)
        try:
            if recheck:
                value = self._try_load(entry, args_id, shelving)
                if value is not _MISS:
                    return value, {}
            start = self._before_compute(args, kwargs)
            output = self.func(*args, **kwargs)
            return self._after_compute(entry, args_id, args, kwargs, output, start, shelving)
        finally:
            if got:
                lock.release()

    def _cached_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool
    ) -> tuple[Any, dict[str, Any]]:
        args_id, entry, value = self._lookup(args, kwargs, shelving)
        if value is not _MISS:
            return value, {}
        return self._miss(args_id, entry, args, kwargs, shelving)

    # -- public API ----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The hit path, spelled out: it is the one that runs millions of times.
        watch = self._watch
        if watch is None or not watch.unchanged():
            self._ensure_current()
        args_id = self._args_id(args, kwargs)
        entry = f"{self.func_id}/{args_id}"
        if self.cache_validation_callback is None or self._still_valid(entry, args_id):
            value = self._try_load(entry, args_id, False)
            if value is not _MISS:
                return value
        return self._miss(args_id, entry, args, kwargs, False)[0]

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult | NotMemorizedResult:
        """Return a :class:`MemorizedResult` referring to the cached value (computing it if needed).

        The reference is small and picklable; ``.get()`` loads the value.
        """
        return self._cached_call(args, kwargs, True)[0]

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Run the function even if cached, store the result; return ``(output, metadata)``."""
        self._ensure_current()
        args_id = self._args_id(args, kwargs)
        return self._miss(args_id, f"{self.func_id}/{args_id}", args, kwargs, False, False)

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Return True if this call would be answered from the cache (nothing is computed)."""
        self._ensure_current()
        args_id = self._args_id(args, kwargs)
        entry = f"{self.func_id}/{args_id}"
        if not self._still_valid(entry, args_id):
            return False
        return self.store_backend.exists(f"{entry}/{OUTPUT}")

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

        fp, _ = self._current_fingerprint()
        stored = self._read_func_info()
        if stored is not None:
            change = self._compare(fp, stored)[0]
            if change is not None:
                return result(
                    False, _reason_kind(change), f"miss: {change} since the cache was written"
                )
        store = self.store_backend
        if store.exists(f"{entry}/{OUTPUT}"):
            callback = self.cache_validation_callback
            if callback is not None and not callback(self._read_metadata(entry) or {}):
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
        fp, watch = self._current_fingerprint()
        self._write_func_info(fp)
        self._fingerprint, self._watch = fp, watch

    def stats(self) -> CacheStats:
        """Return this function's hits, misses, stored entries and bytes, and time saved.

        .. versionadded:: 0.1
        """
        counters = self.store_backend.index.counters().get(self.func_id)
        if counters is None:
            return CacheStats()
        return CacheStats(
            hits=counters.hits,
            misses=counters.misses,
            entries=counters.entries,
            bytes=counters.bytes,
            compute_seconds=counters.compute_seconds,
            saved_seconds=counters.saved_seconds,
        )

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
        args_id = self._args_id(args, kwargs)
        return await self._async_miss(
            args_id, f"{self.func_id}/{args_id}", args, kwargs, False, False
        )

    async def _async_cached_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shelving: bool
    ) -> tuple[Any, dict[str, Any]]:
        args_id, entry, value = self._lookup(args, kwargs, shelving)
        if value is not _MISS:
            return value, {}
        return await self._async_miss(args_id, entry, args, kwargs, shelving)

    async def _async_miss(
        self,
        args_id: str,
        entry: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shelving: bool,
        recheck: bool = True,
    ) -> tuple[Any, dict[str, Any]]:
        lock = self.store_backend.lock(entry, self.lock_timeout or 3600.0)
        got = await acquire_async(lock, self.lock_timeout)
        if not got:
            self._wait_warning(entry)
        try:
            if recheck:
                value = self._try_load(entry, args_id, shelving)
                if value is not _MISS:
                    return value, {}
            start = self._before_compute(args, kwargs)
            output = await self.func(*args, **kwargs)
            return self._after_compute(entry, args_id, args, kwargs, output, start, shelving)
        finally:
            if got:
                lock.release()
