"""One registry type for every pluggable thing: compressors, parallel backends, store backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A thread-safe mapping of names to plug-ins of one kind.

    Parameters
    ----------
    kind : str
        What the registry holds ("compressor", "parallel backend", ...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def register(self, name: str, item: T, *, force: bool = False) -> None:
        """Register ``item`` under ``name``; refuse to replace an existing one unless ``force``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty str, got {name!r}")
        with self._lock:
            if name in self._items and not force:
                raise ValueError(
                    f"a {self.kind} named {name!r} is already registered; "
                    f"pass force=True to replace it"
                )
            self._items[name] = item

    def unregister(self, name: str) -> None:
        """Remove ``name``; a missing name is an error naming the registered ones."""
        with self._lock:
            if name not in self._items:
                raise KeyError(self._unknown_message(name))
            del self._items[name]

    def get(self, name: str) -> T:
        """Return the plug-in registered as ``name``, or raise ``KeyError`` listing the known ones."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def _unknown_message(self, name: object) -> str:
        known = ", ".join(repr(n) for n in self.names()) or "none"
        return f"unknown {self.kind} {name!r}; registered: {known}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
