"""What a cached function's results depend on besides its arguments: a fingerprint.

The fingerprint has two parts:

- the function's own code: a digest of its bytecode, constants and names (recursively through
  nested functions, lambdas and comprehensions). Comments and formatting do not count;
  docstrings and any change to what the code does do;
- its dependencies: for every global name the code reads (``helper``, ``SCALE``, ``mod.f``),
  when the object it names belongs to the *user's own code* (a module outside the standard
  library and installed packages, or ``__main__``): a function or class (digest of its code,
  followed transitively through the globals it reads in turn), or a module-level constant of
  immutable plain data (numbers, strings, bytes, None, and tuples and frozensets of them,
  hashed by value). ``depends_on=[...]`` adds objects of any kind.

Limits (documented in docs/memory.md): a dependency reached other than through a global name
(an attribute of an argument, ``getattr`` with a computed name, a registry) is not seen;
installed packages are deliberately left out (their versions change rarely and scanning them
would be slow); a constant mutated in place is seen in a new process, not in the running one.

Computing the fingerprint costs a fraction of a millisecond per function and happens once per
process; each call then only checks, by identity, that the objects it was computed from are
still the ones in place (:meth:`Watch.unchanged`).
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from parajob.hashing import digest

__all__ = [
    "Fingerprint",
    "Watch",
    "code_digest",
    "fingerprint",
    "is_plain_constant",
    "is_user_module",
]

_PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_MAX_CONSTANT_ITEMS = 10_000
_MAX_DEPTH = 50


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(p for p in sys.path if "site-packages" in p or "dist-packages" in p)
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # parajob itself
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots if r))


@functools.lru_cache(maxsize=4096)
def _is_user_file(path: str) -> bool:
    real = os.path.realpath(path)
    return not any(real.startswith(root) for root in _library_roots())


def is_user_module(module_name: str | None) -> bool:
    """Return True when ``module_name`` is the user's own code (not stdlib, site-packages)."""
    if not module_name:
        return False
    if module_name == "__main__":
        return True
    if module_name in sys.builtin_module_names:
        return False
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if path is None:
        # A module made in memory (types.ModuleType, exec): user code if it is not a package's.
        return module is not None and getattr(module, "__spec__", None) is None
    return _is_user_file(path)


def _feed_code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    shape = (
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
    )
    h.update(repr(shape).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(b"\x00code")
            _feed_code(h, const)
        elif isinstance(const, _PLAIN_SCALARS):
            h.update(f"\x00{type(const).__name__}:{const!r}".encode("utf-8", "surrogatepass"))
        else:  # tuples and frozensets of literals; frozenset repr order depends on the seed
            h.update(b"\x00obj" + digest(const).encode())


def code_digest(code: types.CodeType) -> str:
    """Return a digest of what ``code`` does (not where it lives: no file name, no lines)."""
    h = xxhash.xxh3_128()
    _feed_code(h, code)
    return h.hexdigest()


def _names_read(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_read(const)
    return names


def _plain_data(value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, _PLAIN_SCALARS):
        return True
    # Only immutable containers: a module-level list or dict is as often a registry or an
    # accumulator mutated at run time as a setting, and tracking it would clear the cache
    # on every run. Such values can be listed in depends_on.
    if type(value) in (tuple, frozenset):
        return all(_plain_data(v, budget) for v in value)
    return False


def is_plain_constant(value: Any) -> bool:
    """Return True for immutable plain data: numbers, str, bytes, None, tuples/frozensets."""
    return _plain_data(value, [_MAX_CONSTANT_ITEMS])


def _unwrap_callable(obj: Any) -> Any:
    # A cached function calling another cached function depends on the inner function.
    inner = getattr(obj, "__wrapped__", None)
    if inner is not None and getattr(obj, "_parajob_memorized", False):
        return inner
    if isinstance(obj, (staticmethod, classmethod)):
        return obj.__func__
    return obj


@dataclass
class Watch:
    """The objects a fingerprint was computed from, checked by identity on each call."""

    codes: list[tuple[Any, types.CodeType]] = field(default_factory=list)
    names: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)

    def unchanged(self) -> bool:
        """Return True while every watched code and global binding is the same object."""
        for fn, code in self.codes:
            if fn.__code__ is not code:
                return False
        missing = _MISSING
        return all(namespace.get(name, missing) is obj for namespace, name, obj in self.names)


class _Missing:
    pass


_MISSING = _Missing()


@dataclass(frozen=True)
class Fingerprint:
    """The code digest of a cached function and the digests of its dependencies."""

    code: str
    deps: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {"code": self.code, "deps": dict(sorted(self.deps.items()))}

    def change_from(self, stored: dict[str, Any] | None) -> str | None:
        """Say how this fingerprint differs from a stored one, or None when it does not."""
        if not isinstance(stored, dict):
            return None
        if stored.get("code") != self.code:
            return "its code changed"
        old = stored.get("deps") or {}
        if not isinstance(old, dict):
            old = {}
        changed = sorted(k for k in self.deps if k in old and old[k] != self.deps[k])
        added = sorted(k for k in self.deps if k not in old)
        removed = sorted(k for k in old if k not in self.deps)
        parts = []
        if changed:
            parts.append(f"dependency {', '.join(changed)} changed")
        if added:
            parts.append(f"it now depends on {', '.join(added)}")
        if removed:
            parts.append(f"it no longer depends on {', '.join(removed)}")
        return "; ".join(parts) or None


class _Collector:
    def __init__(self, follow: bool) -> None:
        self.follow = follow
        self.deps: dict[str, str] = {}
        self.watch = Watch()
        self._seen: set[int] = set()

    def add_function(self, fn: Any, depth: int) -> str | None:
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            return None
        self.watch.codes.append((fn, code))
        result = code_digest(code)
        if self.follow and depth < _MAX_DEPTH and id(fn) not in self._seen:
            self._seen.add(id(fn))
            namespace = getattr(fn, "__globals__", None)
            if isinstance(namespace, dict):
                self._scan_globals(namespace, _names_read(code), depth + 1)
        return result

    def _scan_globals(self, namespace: dict[str, Any], names: Iterable[str], depth: int) -> None:
        module_name = namespace.get("__name__")
        for name in sorted(names):
            if name not in namespace:
                continue  # an attribute name or a builtin
            value = namespace[name]
            label = f"{module_name}.{name}"
            if self._add_object(label, value, depth, names):
                self.watch.names.append((namespace, name, value))

    def _add_object(self, label: str, value: Any, depth: int, names: Iterable[str]) -> bool:
        value = _unwrap_callable(value)
        if isinstance(value, types.ModuleType):
            if not is_user_module(value.__name__):
                return False
            # Only the attributes this code names can be read through the module.
            attrs = vars(value)
            self._scan_globals(attrs, [n for n in names if n in attrs], depth)
            return True
        if isinstance(value, types.FunctionType):
            if not is_user_module(getattr(value, "__module__", None)):
                return False
            if label not in self.deps:
                self.deps[label] = ""  # reserve, so recursion through cycles stops
                self.deps[label] = self.add_function(value, depth) or ""
            return True
        if isinstance(value, type):
            if not is_user_module(getattr(value, "__module__", None)):
                return False
            if label not in self.deps:
                self.deps[label] = ""
                h = xxhash.xxh3_128()
                for attr, member in sorted(vars(value).items()):
                    member = _unwrap_callable(member)
                    if isinstance(member, property):
                        member = member.fget
                    sub = self.add_function(member, depth) if callable(member) else None
                    if sub is not None:
                        h.update(f"{attr}:{sub};".encode())
                self.deps[label] = h.hexdigest()
            return True
        if _plain_data(value, [_MAX_CONSTANT_ITEMS]):
            self.deps[label] = digest(value)
            return True
        return False

    def add_explicit(self, index: int, obj: Any) -> None:
        obj = _unwrap_callable(obj)
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        label = f"depends_on[{index}]" + (f" ({name})" if isinstance(name, str) else "")
        if isinstance(obj, types.ModuleType):
            path = getattr(obj, "__file__", None)
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    self.deps[label] = xxhash.xxh3_128_hexdigest(f.read())
            else:
                self.deps[label] = digest(sorted(vars(obj)))
        elif isinstance(obj, (types.FunctionType, type)):
            module = getattr(obj, "__module__", "") or ""
            self._add_object(f"{module}.{name}", obj, 0, ())
            self.deps[label] = self.deps.pop(f"{module}.{name}", "") or digest(obj)
        else:
            self.deps[label] = digest(obj)


def fingerprint(func: Any, depends_on: list[Any], follow: bool) -> tuple[Fingerprint, Watch]:
    """Compute ``func``'s fingerprint; ``follow`` enables automatic dependency discovery."""
    collector = _Collector(follow)
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    own = collector.add_function(target, 0)
    if own is None:
        # A builtin or callable object: identify it by its value as far as hashing can.
        try:
            own = digest(target)
        except Exception:
            own = digest(f"{type(target).__module__}.{type(target).__qualname__}")
    for i, obj in enumerate(depends_on):
        collector.add_explicit(i, obj)
    return Fingerprint(own, collector.deps), collector.watch
