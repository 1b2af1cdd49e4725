"""The miss path of a cached call, shared by plain and ``async def`` functions.

A miss is a ``with`` (or ``async with``) block around the one step that differs between the
two, calling the function::

    with miss:  # async with, for an async def function
        if miss.needed:
            miss.finish(memorized.func(*miss.args, **miss.kwargs))  # await memorized.func(...)
    return miss.result

Entering waits for the entry's lock (blocking, or yielding to the event loop), looks for the
value again (whoever held the lock may have just written it) and announces the computation;
``finish`` writes the entry, indexes it and enforces the size limits; leaving releases the
lock. It is kept apart from ``_func`` so that ``MemorizedFunc`` holds the hit path and the
public API, and so that the sync and async paths run the same steps in one place.
"""

from __future__ import annotations

import reprlib
import time
import warnings
from typing import TYPE_CHECKING, Any

from parajob.errors import CacheWarning
from parajob.memory._entry import MISS, evict, load_entry, write_entry
from parajob.memory._lock import acquire, acquire_async
from parajob.memory._results import MemorizedResult, NotMemorizedResult
from parajob.memory._store import FUNC_INFO, OUTPUT

if TYPE_CHECKING:
    from parajob.memory._func import MemorizedFunc

__all__ = ["Miss"]

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20


class Miss:
    """One miss of a cached call: lock, look again, compute (by the caller), store, unlock.

    Parameters
    ----------
    owner : MemorizedFunc
        The cached function.
    args_id : str
        The key of the call.
    args, kwargs
        The call's arguments: the caller calls the function with them; they are announced
        and recorded in the metadata.
    shelving : bool
        Whether the result is a :class:`MemorizedResult` (``call_and_shelve``).
    recheck : bool, default True
        Whether to look for the value once the lock is held (False for ``call``, which
        computes even when the value is cached).
    """

    def __init__(
        self,
        owner: MemorizedFunc,
        args_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shelving: bool,
        recheck: bool = True,
    ) -> None:
        self._owner = owner
        self._args_id = args_id
        self._entry = f"{owner.func_id}/{args_id}"
        self.args = args
        self.kwargs = kwargs
        self._shelving = shelving
        self._recheck = recheck
        self._lock = owner._lock(self._entry)
        self._taken = False
        self._start = 0.0
        self._result: tuple[Any, dict[str, Any]] | None = None

    @property
    def needed(self) -> bool:
        """True when the value must be computed (it was not found under the lock)."""
        return self._result is None

    @property
    def result(self) -> tuple[Any, dict[str, Any]]:
        """``(value, metadata)`` of the call; metadata is ``{}`` when the value was found."""
        if self._result is None:
            raise RuntimeError(f"the miss of {self._entry} has no result: finish() was not called")
        return self._result

    def __enter__(self) -> Miss:
        self._taken = acquire(self._lock, self._owner.lock_timeout)
        return self._begin()

    async def __aenter__(self) -> Miss:
        self._taken = await acquire_async(self._lock, self._owner.lock_timeout)
        return self._begin()

    def __exit__(self, *exc_info: object) -> None:
        if self._taken:
            self._taken = False
            self._lock.release()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    def _begin(self) -> Miss:
        # Runs with the lock held (or given up on): anything raised here must release it, as
        # the with statement only calls __exit__ once __enter__ has returned.
        try:
            owner = self._owner
            if not self._taken:
                warnings.warn(
                    CacheWarning(
                        f"waited {owner.lock_timeout}s for another process computing "
                        f"{self._entry} in {owner.store_backend.location}; computing it here "
                        f"as well (raise lock_timeout if computations take longer)"
                    ),
                    stacklevel=6,  # counts this method, __(a)enter__, MemorizedFunc's miss first
                )
            if self._recheck:
                value = load_entry(
                    owner.store_backend,
                    owner.func_id,
                    self._args_id,
                    owner.mmap_mode,
                    self._shelving,
                    stacklevel=6,  # load_entry's usual 4, plus this method and __(a)enter__
                )
                if value is not MISS:
                    self._result = (value, {})
                    return self
            if owner._verbose > 0:
                shown = ", ".join(
                    f"{k}={_repr.repr(v)}"
                    for k, v in owner._binder.describe(self.args, self.kwargs)
                )
                print(f"[Memory] Calling {owner.func_id.replace('/', '.')}({shown})")
            self._start = time.perf_counter()
        except BaseException:
            self.__exit__()
            raise
        return self

    def finish(self, output: Any) -> None:
        """Store the computed ``output``, index it and keep the cache within its limits."""
        owner = self._owner
        duration = time.perf_counter() - self._start
        store = owner.store_backend
        func_id, args_id, entry = owner.func_id, self._args_id, self._entry
        metadata = {
            "duration": duration,
            "input_args": {
                k: _repr.repr(v) for k, v in owner._binder.describe(self.args, self.kwargs)
            },
            "time": time.time() - duration,
        }
        store.index.record_miss(func_id, duration)
        if not store.exists(f"{func_id}/{FUNC_INFO}"):
            # The cache was cleared since this process checked the function: record again
            # which code this entry comes from, or another version would take it for its own.
            owner._write_func_info(owner._fingerprint)
        size = write_entry(store, func_id, args_id, output, metadata, owner.compress)
        if size is not None:
            store.index.record_store(func_id, args_id, size, duration)
            if owner.limits.active:
                lim = owner.limits
                evict(
                    store,
                    store.index.over_limits(lim.max_bytes, lim.max_items, lim.max_age),
                    "evicted|evicted",
                )
        if owner._verbose > 0:
            print(f"[Memory] {func_id.replace('/', '.')} computed in {duration:.3f}s")
        if self._shelving:
            evicted = owner.limits.active and size is not None
            if size is None or (evicted and not store.exists(f"{entry}/{OUTPUT}")):
                # Not stored, or larger than the limits allow: hold the value itself.
                self._result = (NotMemorizedResult(output), metadata)
            else:
                shelved = MemorizedResult(
                    store, (func_id, args_id), mmap_mode=owner.mmap_mode, metadata=metadata
                )
                self._result = (shelved, metadata)
            return
        if owner.mmap_mode is not None and size is not None:
            # Give the first call the same (memory-mapped) value later calls get.
            try:
                output = store.load_value(f"{entry}/{OUTPUT}", owner.mmap_mode)
            except FileNotFoundError:
                pass  # evicted at once by a tiny limit: the computed value is still right
        self._result = (output, metadata)
