"""The salt of a cached callable: the values baked into it, which select results like arguments.

A ``functools.partial``'s arguments and what a closure captured (``k`` in ``lambda x: x * k``)
are not arguments of the call, yet they change its result, so every entry key includes a
digest of them (see ``_naming.args_key``). This is apart from ``_deps``, which fingerprints a
function's code to remove entries when it changes: the salt picks among entries that stay
valid, by value, and is computed once per function object and process.
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from typing import Any

from parajob.hashing import digest
from parajob.memory._deps import fingerprint, is_plain_constant, unwrap_layers

__all__ = ["func_salt"]

_salts: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def func_salt(func: Any, invalidation: str) -> str:
    """Return the salt of ``func`` cached with ``invalidation`` ("" when nothing is baked in)."""
    # What a closure captured is keyed as it was when the function object was first
    # cached in this process: caching it again (Memory.eval, another Memory) after it
    # mutated what it captured (a log list) must find the same entries. A copy sent to
    # another process carries its salt (see MemorizedFunc.__getstate__).
    try:
        by_mode = _salts.get(func)
    except TypeError:  # not weakly referable or not hashable
        return _compute_salt(func, invalidation)
    if by_mode is None:
        by_mode = {}
        with contextlib.suppress(TypeError):
            _salts[func] = by_mode
    salt = by_mode.get(invalidation)
    if salt is None:
        salt = by_mode[invalidation] = _compute_salt(func, invalidation)
    return salt


def _compute_salt(func: Any, invalidation: str) -> str:
    # Values baked into the callable (a partial's arguments, a closure's cells) change its
    # results as much as arguments do, so they belong in every key.
    parts: list[Any] = []
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
                values.append(_callable_identity(value, invalidation))
            else:
                try:
                    values.append(digest(value))
                except Exception:
                    values.append(f"<{type(value).__module__}.{type(value).__qualname__}>")
    if not parts and not values:
        return ""
    return digest((parts, values))


def _callable_identity(value: Any, invalidation: str) -> str:
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
    if invalidation == "none" or not isinstance(base, types.FunctionType):
        return label
    fp, _ = fingerprint(base, [], invalidation == "dependencies")
    return f"{label}:{fp.code}:{sorted(fp.deps.items())}"
