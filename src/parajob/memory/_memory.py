"""Memory: the cache's front door (joblib's ``Memory`` signature plus limits and stats)."""

from __future__ import annotations

import datetime
import functools
import inspect
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from parajob._units import parse_size
from parajob.errors import InvalidParameterError
from parajob.memory import _fsspec_store, _local_store  # noqa: F401  (register the stores)
from parajob.memory._entry import evict
from parajob.memory._func import (
    INVALIDATION_MODES,
    AsyncMemorizedFunc,
    AsyncNotMemorizedFunc,
    Limits,
    MemorizedFunc,
    NotMemorizedFunc,
)
from parajob.memory._logging import Logger
from parajob.memory._results import CacheStats, stats_from_counters
from parajob.memory._store import StoreBackendBase, make_store

__all__ = ["Memory", "expires_after", "parse_bytes", "parse_seconds"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(value: int | str | None, name: str = "bytes_limit") -> int | None:
    """Return ``value`` in bytes; strings take K, M, G, T suffixes (powers of 1024)."""
    return parse_size(value, name)


def parse_seconds(
    value: float | datetime.timedelta | None, name: str = "age_limit"
) -> float | None:
    """Return ``value`` (seconds or a timedelta) in seconds; negative is an error."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise InvalidParameterError(
            f"{name} must be a non-negative number of seconds or a datetime.timedelta, "
            f"got {value!r}"
        )
    return float(seconds)


def _check_mmap_mode(mmap_mode: Any) -> None:
    if mmap_mode not in (None, "r", "r+", "c", "w+"):
        raise InvalidParameterError(
            f"mmap_mode must be None, 'r', 'r+', 'c' or 'w+', got {mmap_mode!r}"
        )


class Memory(Logger):
    """Cache a function's results on disk, keyed by its arguments.

    Parameters
    ----------
    location : str, os.PathLike or None
        Where to keep the cache: a folder (the cache lives in its ``parajob`` sub-folder), a
        URL for fsspec (``"memory://cache"``, ``"s3://bucket/prefix"``), or None to cache
        nothing (cached functions just call).
    backend : str, default "local"
        The store: ``"local"``, ``"fsspec"`` or a name given to
        :func:`register_store_backend`. A URL location selects ``"fsspec"``.
    mmap_mode : {None, "r", "r+", "c", "w+"}, optional
        Memory-map numpy arrays of cached results instead of reading them.
    compress : bool, int, str or (str, int), default False
        Compression of stored results, as for :func:`parajob.dump`; compressed results
        cannot be memory-mapped.
    verbose : int, default 1
        0 is silent; 1 prints a line for each computation.
    backend_options : dict, optional
        Options for the store (for fsspec: ``storage_options``, ``fs``).
    max_bytes : int or str, optional
        Keep the cache under this size (``"500M"``, ``"2G"``): after each write, the least
        recently used entries are evicted.
    max_items : int, optional
        Keep at most this many entries (least recently used evicted first).
    max_age : float or datetime.timedelta, optional
        Evict entries not used for this long (seconds).
    invalidation : {"dependencies", "code", "none"}, default "dependencies"
        What, besides arguments, makes entries stale: the function's code and its
        user-code dependencies; the code only; nothing.
    lock_timeout : float or None, default 3600
        How long a call waits for another process computing the same entry before computing
        it too; None waits forever.

    Examples
    --------
    >>> import tempfile
    >>> from parajob import Memory
    >>> memory = Memory(tempfile.mkdtemp(), verbose=0)
    >>> @memory.cache
    ... def square(x):
    ...     return x * x
    >>> square(3), square(3)
    (9, 9)
    >>> square.explain(3).hit
    True

    Notes
    -----
    .. versionadded:: 0.1
       ``max_bytes``, ``max_items``, ``max_age``, ``invalidation``, ``lock_timeout``,
       :meth:`stats` and URL locations.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | StoreBackendBase | None = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 1,
        backend_options: dict[str, Any] | None = None,
        *,
        max_bytes: int | str | None = None,
        max_items: int | None = None,
        max_age: float | datetime.timedelta | None = None,
        invalidation: str = "dependencies",
        lock_timeout: float | None = 3600.0,
    ) -> None:
        super().__init__()
        _check_mmap_mode(mmap_mode)
        if invalidation not in INVALIDATION_MODES:
            raise InvalidParameterError(
                f"invalidation must be one of {INVALIDATION_MODES}, got {invalidation!r}"
            )
        if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
            raise InvalidParameterError(f"max_items must be an int >= 0, got {max_items!r}")
        if lock_timeout is not None and lock_timeout < 0:
            raise InvalidParameterError(
                f"lock_timeout must be >= 0 seconds or None, got {lock_timeout!r}"
            )
        self._verbose = verbose
        self.mmap_mode = mmap_mode
        self.timestamp = time.time()
        self.backend = backend
        self.compress = compress
        self.backend_options = dict(backend_options or {})
        self.invalidation = invalidation
        self.lock_timeout = lock_timeout
        self.limits = Limits(
            parse_bytes(max_bytes, "max_bytes"), max_items, parse_seconds(max_age, "max_age")
        )
        if compress and mmap_mode is not None:
            warnings.warn(
                "compressed results cannot be memory-mapped: mmap_mode is ignored when "
                "compress is set; pass compress=False to memory-map",
                stacklevel=2,
            )
        self.location = location
        self.store_backend: StoreBackendBase | None
        if location is None:
            self.store_backend = None
        elif isinstance(location, StoreBackendBase):
            self.store_backend = location
        else:
            self.store_backend = make_store(backend, os.fspath(location), self.backend_options)

    def cache(
        self,
        func: Callable[..., Any] | None = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | bool | None = False,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
        *,
        invalidation: str | None = None,
        depends_on: list[Any] | None = None,
    ) -> Any:
        """Return a cached version of ``func``; usable as ``@memory.cache`` or ``@memory.cache(...)``.

        Parameters
        ----------
        func : callable, optional
            The function (a plain or ``async`` function, method, staticmethod, partial,
            lambda or closure). Omitted when used as a decorator with arguments.
        ignore : list of str, optional
            Argument names left out of the key (an unknown name is an error).
        verbose : int, optional
            Overrides the Memory's verbosity for this function.
        mmap_mode : {None, "r", "r+", "c", "w+"}, optional
            Overrides the Memory's ``mmap_mode`` for this function.
        cache_validation_callback : callable, optional
            ``callback(metadata) -> bool``, called on a cached entry's metadata (``time``,
            ``duration``, ``input_args``); False makes the entry stale (removed and
            recomputed). See :func:`expires_after`.
        invalidation : {"dependencies", "code", "none"}, optional
            Overrides the Memory's invalidation mode for this function.
        depends_on : list, optional
            Extra objects the results depend on: functions and classes (by code), modules
            (by file content) or values (by hash).

            .. versionadded:: 0.1

        Returns
        -------
        MemorizedFunc, AsyncMemorizedFunc or NotMemorizedFunc
            A callable with ``call``, ``call_and_shelve``, ``check_call_in_cache``,
            ``explain``, ``stats`` and ``clear``.
        """
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise InvalidParameterError(
                f"cache_validation_callback must be callable (metadata -> bool), got "
                f"{cache_validation_callback!r}"
            )
        if func is None:
            return functools.partial(
                self.cache,
                ignore=ignore,
                verbose=verbose,
                mmap_mode=mmap_mode,
                cache_validation_callback=cache_validation_callback,
                invalidation=invalidation,
                depends_on=depends_on,
            )
        if isinstance(func, MemorizedFunc):
            func = func.func
        target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
        is_async = inspect.iscoroutinefunction(target)
        if self.store_backend is None:
            return AsyncNotMemorizedFunc(target) if is_async else NotMemorizedFunc(target)
        if mmap_mode is False:
            mmap_mode = self.mmap_mode
        _check_mmap_mode(mmap_mode)
        cls = AsyncMemorizedFunc if is_async else MemorizedFunc
        return cls(
            func,  # a staticmethod or classmethod object keeps its binding
            self.store_backend,
            backend=self.backend,
            ignore=ignore,
            mmap_mode=mmap_mode,  # type: ignore[arg-type]
            compress=self.compress,
            verbose=self._verbose if verbose is None else verbose,
            timestamp=self.timestamp,
            cache_validation_callback=cache_validation_callback,
            invalidation=invalidation or self.invalidation,
            depends_on=depends_on,
            limits=self.limits,
            lock_timeout=self.lock_timeout,
        )

    def clear(self, warn: bool = True) -> None:
        """Remove every entry of this cache."""
        if warn and self._verbose > 0:
            print(
                f"[Memory] Clearing the whole cache at {self.store_backend and self.store_backend.location}"
            )
        if self.store_backend is None:
            return
        # Rows of entries other processes write while the files go stay in the index.
        before = time.time()
        self.store_backend.delete("")
        self.store_backend.index.forget_all(before)

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | float | None = None,
    ) -> None:
        """Evict least recently used entries until the cache fits the given limits.

        Parameters
        ----------
        bytes_limit : int or str, optional
            Maximum total size (``"100M"`` style strings accepted).
        items_limit : int, optional
            Maximum number of entries.
        age_limit : datetime.timedelta or float, optional
            Remove entries not used for longer than this (seconds if a number).
        """
        if self.store_backend is None:
            return
        if bytes_limit is None and items_limit is None and age_limit is None:
            return
        if items_limit is not None and (not isinstance(items_limit, int) or items_limit < 0):
            raise InvalidParameterError(f"items_limit must be an int >= 0, got {items_limit!r}")
        victims = self.store_backend.index.over_limits(
            parse_bytes(bytes_limit, "bytes_limit"),
            items_limit,
            parse_seconds(age_limit, "age_limit"),
        )
        evict(self.store_backend, victims, "evicted|evicted")

    def eval(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` through the cache."""
        if self.store_backend is None:
            return func(*args, **kwargs)
        return self.cache(func)(*args, **kwargs)

    def stats(self) -> CacheStats:
        """Return hits, misses, entries, bytes and time saved, in total and per function.

        .. versionadded:: 0.1
        """
        total = CacheStats()
        if self.store_backend is None:
            return total
        for func, c in sorted(self.store_backend.index.counters().items()):
            one = stats_from_counters(c)
            total.functions[func] = one
            total.hits += one.hits
            total.misses += one.misses
            total.entries += one.entries
            total.bytes += one.bytes
            total.compute_seconds += one.compute_seconds
            total.saved_seconds += one.saved_seconds
        return total

    def __repr__(self) -> str:
        where = None if self.store_backend is None else self.store_backend.location
        return f"{type(self).__name__}(location={where})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["timestamp"] = None
        return state


def expires_after(
    days: float = 0,
    seconds: float = 0,
    microseconds: float = 0,
    milliseconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    weeks: float = 0,
) -> Callable[[dict[str, Any]], bool]:
    """Return a ``cache_validation_callback`` that makes entries stale after a duration.

    Parameters
    ----------
    days, seconds, microseconds, milliseconds, minutes, hours, weeks : float
        Added up like :class:`datetime.timedelta`'s arguments.

    Examples
    --------
    >>> import tempfile
    >>> from parajob import Memory, expires_after
    >>> memory = Memory(tempfile.mkdtemp(), verbose=0)
    >>> @memory.cache(cache_validation_callback=expires_after(minutes=5))
    ... def fetch(url):
    ...     return len(url)
    """
    limit = datetime.timedelta(
        days=days,
        seconds=seconds,
        microseconds=microseconds,
        milliseconds=milliseconds,
        minutes=minutes,
        hours=hours,
        weeks=weeks,
    ).total_seconds()
    return _ExpiresAfter(limit)


class _ExpiresAfter:
    """A picklable validation callback: fresh while younger than ``limit`` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, metadata: dict[str, Any]) -> bool:
        computed = metadata.get("time")
        if not isinstance(computed, (int, float)):
            return False
        return time.time() - computed < self.limit

    def __repr__(self) -> str:
        return f"expires_after(seconds={self.limit})"
