"""What a function's entries were made by: its ``func_info.json`` record, and invalidation.

The record holds the fingerprint (see ``_deps``) of the code that wrote a function's entries.
A cached function compares it with its current fingerprint once per process (then whenever
its watch sees a change); when they differ the entries are removed with a
FunctionChangedWarning that says what changed. This is the store side of invalidation,
apart from ``_deps`` (which computes fingerprints and knows nothing of stores) and from the
call path in ``_func`` (which only asks whether the record is current).
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

from parajob.errors import FunctionChangedWarning
from parajob.memory._deps import Fingerprint, Watch, fingerprint
from parajob.memory._store import FUNC_INFO, OUTPUT, StoreBackendBase, read_json

__all__ = [
    "compare",
    "current_fingerprint",
    "drop_changed_entries",
    "read_func_info",
    "reason_kind",
    "write_func_info",
]

_STRENGTH = {"none": 0, "code": 1, "dependencies": 2}


def reason_kind(change: str) -> str:
    """Return the removal reason code (as ``explain`` reports it) of a change description."""
    return "code-changed" if change.startswith("its code") else "dependency-changed"


def read_func_info(store: StoreBackendBase, func_id: str) -> dict[str, Any] | None:
    """Return the record of ``func_id``, or None if it is missing or unreadable."""
    return read_json(store, f"{func_id}/{FUNC_INFO}")


def write_func_info(
    store: StoreBackendBase,
    func_id: str,
    func: Any,
    invalidation: str,
    fp: Fingerprint | None,
) -> None:
    """Record that ``func`` (with fingerprint ``fp``) makes the entries of ``func_id``."""
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    info = {
        "function": getattr(func, "__qualname__", repr(func)),
        "module": getattr(func, "__module__", None),
        "file": getattr(code, "co_filename", None),
        "line": getattr(code, "co_firstlineno", None),
        "invalidation": invalidation,
        "fingerprint": fp.to_json() if fp is not None else None,
    }
    store.write_bytes(f"{func_id}/{FUNC_INFO}", json.dumps(info).encode())


def current_fingerprint(
    func: Any, depends_on: list[Any], invalidation: str
) -> tuple[Fingerprint | None, Watch]:
    """Return the fingerprint of ``func`` as ``invalidation`` sees it, and its watch."""
    if invalidation == "none":
        return None, Watch()
    return fingerprint(func, depends_on, invalidation == "dependencies")


def compare(
    fp: Fingerprint | None, stored: dict[str, Any], invalidation: str
) -> tuple[str | None, bool]:
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
    mode = stored.get("invalidation", invalidation)
    if mode == invalidation:
        return fp.change_from(old), False
    change = fp.change_from(old, explicit_only=True)
    stronger = _STRENGTH.get(str(mode), 0) > _STRENGTH[invalidation]
    return change, change is None and not stronger


def drop_changed_entries(store: StoreBackendBase, func_id: str, change: str) -> None:
    """Remove every entry of ``func_id`` because ``change`` happened, with a warning.

    The caller holds the function's lock and records the new fingerprint afterwards.
    """
    count = sum(1 for _ in store.index.entries(func_id))
    warnings.warn(
        FunctionChangedWarning(
            f"{func_id}: {change} since its results were cached; its {count} "
            f"cached result(s) were removed and will be computed again (use "
            f"invalidation='none' to keep results across edits)"
        ),
        stacklevel=6,  # counts this function, MemorizedFunc._invalidate, _ensure_current first
    )
    before = time.time()
    for item in list(store.list(func_id)):
        parts = item.key.split("/")
        if len(parts) == 4 and parts[3] == OUTPUT:
            store.delete("/".join(parts[:3]))
    store.index.forget_function(func_id, f"{reason_kind(change)}|{change}", before)
