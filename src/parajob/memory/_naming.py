"""Names inside a cache: safe path components, function folders and argument keys.

Every name that reaches a store backend is built here, from parts that cannot escape the
cache folder: only ``[A-Za-z0-9_.-]``, no leading dot, bounded length. A name that had to be
changed gets a short digest of the original appended, so two different originals never map to
the same sanitised name.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import xxhash

from parajob.errors import InvalidParameterError
from parajob.hashing import digest

__all__ = ["ArgumentBinder", "args_key", "function_folder", "sanitize_component", "unwrap"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_MAX_COMPONENT = 96
_SCALAR_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
_SCALAR_TAG = b"parajob.memory.scalars/1\x00"


def sanitize_component(text: str) -> str:
    """Return ``text`` as a safe single path component (changed ones carry a digest suffix)."""
    clean = _UNSAFE.sub("_", text).lstrip(".")
    if clean == text and 0 < len(clean) <= _MAX_COMPONENT:
        return clean
    suffix = xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))[:10]
    return f"{clean[: _MAX_COMPONENT - 11] or 'x'}-{suffix}"


def unwrap(func: Any) -> Any:
    """Return the function a staticmethod/classmethod object wraps, or ``func`` itself."""
    if isinstance(func, (staticmethod, classmethod)):
        return func.__func__
    return func


def _base_function(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__func__", func)  # bound methods


def _main_module_name() -> str:
    # joblib names functions of a script after the script; we do the same so that two scripts
    # run from one folder do not share (and clear) each other's entries.
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return "__main__"
    return f"__main__.{os.path.splitext(os.path.basename(path))[0]}"


def function_folder(func: Any) -> tuple[str, str]:
    """Return ``(module, name)`` identifying ``func``, both already sanitised.

    Lambdas are told apart by their first line, as two lambdas in one module share a name.
    """
    base = _base_function(func)
    module = getattr(base, "__module__", None) or "unknown_module"
    if module == "__main__":
        module = _main_module_name()
    name = getattr(base, "__qualname__", None) or getattr(base, "__name__", None)
    if name is None:
        name = type(base).__name__
    is_lambda = getattr(base, "__name__", None) == "<lambda>"
    name = name.replace(".<locals>.", "-").replace("<", "").replace(">", "")
    code = getattr(base, "__code__", None)
    if is_lambda and code is not None:
        name = f"{name}-L{code.co_firstlineno}"
    return sanitize_component(module), sanitize_component(name)


class ArgumentBinder:
    """Turn ``(args, kwargs)`` into a canonical key description for one function.

    Defaults are applied and keyword order does not count: ``f(1)``, ``f(x=1)`` and ``f(1,
    y=2)`` (with ``y=2`` the default) give the same description. ``ignore`` names arguments
    left out of it.
    """

    def __init__(self, func: Callable[..., Any], ignore: list[str] | None) -> None:
        self.func = func
        self.ignore = list(ignore or ())
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have no signature
            self.signature = None
        # A bound method's instance is part of what the call depends on, as in joblib.
        self.bound_self = getattr(func, "__self__", None) if inspect.ismethod(func) else None
        self._fast = False
        params = list(self.signature.parameters.values()) if self.signature else []
        names = [p.name for p in params]
        if self.bound_self is not None:
            names.insert(0, "self")
        unknown = [name for name in self.ignore if name not in names]
        if unknown and self.signature is not None:
            raise InvalidParameterError(
                f"ignore lists {unknown!r}, which {'is' if len(unknown) == 1 else 'are'} not "
                f"among the arguments of {getattr(func, '__qualname__', func)!r} "
                f"{tuple(names)!r}; remove {'it' if len(unknown) == 1 else 'them'} from ignore"
            )
        kinds = {p.kind for p in params}
        simple = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
        if self.signature is not None and kinds <= simple:
            self._fast = True
            self._positional = tuple(
                p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            )
            self._names = frozenset(p.name for p in params)
            self._order = tuple(p.name for p in params)
            self._defaults = {
                p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            }
        self._ignore = frozenset(self.ignore)

    def describe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Return ``((name, value), ...)`` in signature order, without ignored arguments.

        Raises the same ``TypeError`` as the call would for arguments that do not fit.
        """
        if self._fast and len(args) <= len(self._positional):
            values = dict(zip(self._positional, args, strict=False))  # fewer args: fine
            ok = True
            for name, value in kwargs.items():
                if name in values or name not in self._names:
                    ok = False
                    break
                values[name] = value
            if ok:
                items = []
                for name in self._order:
                    if name in self._ignore:
                        continue
                    if name in values:
                        items.append((name, values[name]))
                    elif name in self._defaults:
                        items.append((name, self._defaults[name]))
                    else:
                        ok = False
                        break
                if ok:
                    if self.bound_self is not None and "self" not in self._ignore:
                        items.insert(0, ("self", self.bound_self))
                    return tuple(items)
        return self._describe_slow(args, kwargs)

    def _describe_slow(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if self.signature is None:
            return (("*args", args), ("**kwargs", kwargs))
        # bind raises the TypeError the call itself would raise (missing or extra arguments).
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        items = [
            (name, value) for name, value in bound.arguments.items() if name not in self._ignore
        ]
        if self.bound_self is not None and "self" not in self._ignore:
            items.insert(0, ("self", self.bound_self))
        return tuple(items)

    def as_dict(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return the description as a dict (for metadata and messages)."""
        return dict(self.describe(args, kwargs))


def args_key(description: tuple[Any, ...], salt: str, coerce_mmap: bool) -> str:
    """Return the hex key of a call description (``salt`` covers partial/closure values)."""
    for _, value in description:
        if type(value) not in _SCALAR_TYPES:
            return digest((salt, description), coerce_mmap=coerce_mmap)
    # Only plain scalars: their repr is exact and unambiguous (floats round-trip, str and
    # bytes are quoted and escaped, True is not 1), so it is a canonical form; hashing it
    # directly is several times faster than the general pickle-based digest, which
    # matters on the hit path. The tag keeps the two key spaces apart.
    text = f"{salt}\x00{description!r}".encode("utf-8", "surrogatepass")
    return xxhash.xxh3_128_hexdigest(_SCALAR_TAG + text)
