"""Small value types of the cache: shelved results, explanations and statistics."""

from __future__ import annotations

import os
import pprint
import time
from dataclasses import dataclass, field
from typing import Any

from parajob.memory._index import FunctionCounters
from parajob.memory._store import METADATA, OUTPUT, StoreBackendBase, as_store

__all__ = [
    "CacheStats",
    "Explanation",
    "MemorizedResult",
    "NotMemorizedResult",
    "stats_from_counters",
]


class MemorizedResult:
    """A reference to a cached value: small, picklable; :meth:`get` loads the value.

    Parameters
    ----------
    location : StoreBackendBase, str or os.PathLike
        The store that holds the value, or a location as given to :class:`Memory`.
    call_id : tuple of str
        ``(function folder, argument key)``.
    backend : str, default "local"
        The store backend to open when ``location`` is a folder or URL (unused when it is
        a store).
    mmap_mode : {None, "r", "r+", "c", "w+"}, optional
        How :meth:`get` maps numpy arrays.
    verbose : int, default 0
        Verbosity (unused; kept for joblib's signature).
    timestamp : float, optional
        Kept for joblib's signature.
    metadata : dict, optional
        The entry's metadata, if already known.
    """

    def __init__(
        self,
        location: StoreBackendBase | str | os.PathLike[str],
        call_id: tuple[str, str],
        backend: str = "local",
        mmap_mode: str | None = None,
        verbose: int = 0,
        timestamp: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.store_backend = as_store(location, backend)
        self._call_id = (str(call_id[0]), str(call_id[1]))
        self.mmap_mode = mmap_mode
        self.verbose = verbose
        self.timestamp = timestamp
        self._metadata = metadata

    @property
    def func(self) -> str:
        """The function's folder (its identifier in the cache)."""
        return self._call_id[0]

    @property
    def func_id(self) -> str:
        """The function's folder (its identifier in the cache)."""
        return self._call_id[0]

    @property
    def args_id(self) -> str:
        """The argument key of the call."""
        return self._call_id[1]

    @property
    def metadata(self) -> dict[str, Any]:
        """The entry's metadata (duration, input_args, time); empty if unavailable."""
        if self._metadata is None:
            import json

            try:
                self._metadata = json.loads(
                    self.store_backend.read_bytes(f"{self.func_id}/{self.args_id}/{METADATA}")
                )
            except (FileNotFoundError, ValueError):
                self._metadata = {}
        return self._metadata or {}

    @property
    def duration(self) -> float | None:
        """How long the computation took, in seconds, if known."""
        value = self.metadata.get("duration")
        return None if value is None else float(value)

    def get(self) -> Any:
        """Load the value from the cache and return it.

        Raises
        ------
        KeyError
            If the entry is no longer in the cache (cleared, evicted) or is damaged.
        """
        key = f"{self.func_id}/{self.args_id}/{OUTPUT}"
        try:
            return self.store_backend.load_value(key, self.mmap_mode)
        except FileNotFoundError:
            raise KeyError(
                f"the cached value of {self.func_id} for argument key {self.args_id} is no "
                f"longer in {self.store_backend.location} (cleared or evicted); call the "
                f"function again to recompute it"
            ) from None
        except (ValueError, EOFError) as exc:
            raise KeyError(
                f"the cached value of {self.func_id} for argument key {self.args_id} in "
                f"{self.store_backend.location} is damaged ({exc}); clear it and recompute"
            ) from exc

    def clear(self) -> None:
        """Remove the value from the cache."""
        before = time.time()
        self.store_backend.delete(f"{self.func_id}/{self.args_id}")
        self.store_backend.index.forget([self._call_id], "cleared", before)

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(location="{self.store_backend.location}", '
            f'func="{self.func_id}", args_id="{self.args_id}")'
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["timestamp"] = None
        return state


class NotMemorizedResult:
    """A value standing in for a :class:`MemorizedResult` when nothing is cached.

    Parameters
    ----------
    value : object
        The value.
    """

    __slots__ = ("valid", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.valid = True

    def get(self) -> Any:
        """Return the value; KeyError after :meth:`clear`."""
        if not self.valid:
            raise KeyError("this result was cleared; it holds no value any more")
        return self.value

    def clear(self) -> None:
        """Drop the value."""
        self.valid = False
        self.value = None

    def __repr__(self) -> str:
        if not self.valid:
            return f"{type(self).__name__} with no value"
        return f"{type(self).__name__}({pprint.pformat(self.value)})"

    def __getstate__(self) -> dict[str, Any]:
        return {"valid": self.valid, "value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.valid = state["valid"]
        self.value = state["value"]


@dataclass(frozen=True)
class Explanation:
    """Whether a call would be answered from the cache, and if not, why.

    Attributes
    ----------
    hit : bool
        True if the call would load its result from the cache.
    reason : str
        ``"hit"``, ``"new-arguments"``, ``"code-changed"``, ``"dependency-changed"``,
        ``"expired"``, ``"evicted"``, ``"cleared"`` or ``"corrupt"``.
    message : str
        A sentence for people.
    func_id : str
        The function's folder in the cache.
    args_id : str
        The argument key.

    .. versionadded:: 0.1
    """

    hit: bool
    reason: str
    message: str
    func_id: str
    args_id: str

    def __str__(self) -> str:
        return self.message

    def __bool__(self) -> bool:
        return self.hit


@dataclass
class CacheStats:
    """Cache statistics of one function, or of a whole cache (with ``functions``).

    Attributes
    ----------
    hits, misses : int
        Calls answered from the cache, and calls computed.
    entries : int
        Entries stored now.
    bytes : int
        Bytes those entries take.
    compute_seconds : float
        Time spent computing (misses).
    saved_seconds : float
        Computation time the hits avoided, minus the time they spent loading.
    functions : dict of str to CacheStats
        Per function, for a whole cache; empty for one function.

    .. versionadded:: 0.1
    """

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    compute_seconds: float = 0.0
    saved_seconds: float = 0.0
    functions: dict[str, CacheStats] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """Hits over calls (0.0 when there were none)."""
        calls = self.hits + self.misses
        return self.hits / calls if calls else 0.0


def stats_from_counters(counters: FunctionCounters) -> CacheStats:
    """Return the statistics of one function from its counters in the index."""
    return CacheStats(
        hits=counters.hits,
        misses=counters.misses,
        entries=counters.entries,
        bytes=counters.bytes,
        compute_seconds=counters.compute_seconds,
        saved_seconds=counters.saved_seconds,
    )
