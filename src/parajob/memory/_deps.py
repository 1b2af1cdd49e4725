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
    "unwrap_layers",
]

_PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_MAX_CONSTANT_ITEMS = 10_000
_MAX_DEPTH = 50
_MAX_WRAPPED = 20
# Labels of explicit dependencies start with this; both tracking modes record them.
EXPLICIT = "depends_on["


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
    if isinstance(obj, (staticmethod, classmethod)):
        return obj.__func__
    return obj


def unwrap_layers(obj: Any) -> list[Any]:
    """Return ``obj`` and what it wraps, outermost first, through ``__wrapped__``.

    Decorators made with :func:`functools.wraps`, ``functools.lru_cache`` and cached functions
    all set ``__wrapped__``: the code that runs is the wrapper's *and* the wrapped function's.
    """
    layers = [obj]
    while len(layers) < _MAX_WRAPPED and not isinstance(obj, type):
        try:
            inner = getattr(obj, "__wrapped__", None)
        except Exception:  # a proxy whose __getattr__ raises something else
            break
        if inner is None or any(inner is seen for seen in layers):
            break
        layers.append(inner)
        obj = inner
    return layers


def _value_or_type(value: Any) -> str:
    # Plain data by value; anything else by its type only: a mutable default (``memo={}``)
    # or captured object changes as the program runs, and keying on its content would make
    # the fingerprint depend on what ran before the first call.
    if is_plain_constant(value):
        return digest(value)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _defaults_text(fn: Any) -> str:
    defaults = getattr(fn, "__defaults__", None) or ()
    kwdefaults = getattr(fn, "__kwdefaults__", None) or {}
    if not defaults and not kwdefaults:
        return ""
    parts = [_value_or_type(v) for v in defaults]
    parts += [f"{k}={_value_or_type(v)}" for k, v in sorted(kwdefaults.items())]
    return ";".join(parts)


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

    def change_from(self, stored: dict[str, Any] | None, explicit_only: bool = False) -> str | None:
        """Say how this fingerprint differs from a stored one, or None when it does not.

        ``explicit_only`` compares the code and the ``depends_on`` entries only: what every
        tracking mode records, for comparing fingerprints made in different modes.
        """
        if not isinstance(stored, dict):
            return None
        if stored.get("code") != self.code:
            return "its code changed"
        old = stored.get("deps") or {}
        if not isinstance(old, dict):
            old = {}
        new = self.deps
        if explicit_only:
            old = {k: v for k, v in old.items() if k.startswith(EXPLICIT)}
            new = {k: v for k, v in new.items() if k.startswith(EXPLICIT)}
        changed = sorted(k for k in new if k in old and old[k] != new[k])
        added = sorted(k for k in new if k not in old)
        removed = sorted(k for k in old if k not in new)
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

    def add_function(self, fn: Any, depth: int, as_dependency: bool = True) -> str | None:
        """Return the digest of ``fn`` and, when following, record what it depends on.

        A dependency's digest covers its defaults and captured constants too (``helper(x,
        k=2)`` edited to ``k=3`` changes what the cached function returns). The cached
        function's own defaults and captured values are part of every key instead, so they
        are left out of its digest: two closures of one factory must not look like edits of
        each other.
        """
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            return None
        self.watch.codes.append((fn, code))
        result = code_digest(code)
        if as_dependency:
            extra = _defaults_text(fn)
            cells = self._closure_constants(fn)
            if extra or cells:
                result = xxhash.xxh3_128_hexdigest(f"{result}|{extra}|{cells}".encode())
        if self.follow and depth < _MAX_DEPTH and id(fn) not in self._seen:
            self._seen.add(id(fn))
            namespace = getattr(fn, "__globals__", None)
            if isinstance(namespace, dict):
                self._scan_globals(namespace, _names_read(code), depth + 1)
            if as_dependency:
                self._scan_closure(fn, depth + 1)
        return result

    @staticmethod
    def _closure_constants(fn: Any) -> str:
        parts = []
        names = fn.__code__.co_freevars
        for name, cell in zip(names, getattr(fn, "__closure__", None) or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if is_plain_constant(value):
                parts.append(f"{name}={digest(value)}")
        return ";".join(parts)

    def _scan_closure(self, fn: Any, depth: int) -> None:
        # Functions a dependency captured (a helper made by a factory, the function a
        # decorator wrapped) are dependencies too.
        owner = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', '?')}"
        names = fn.__code__.co_freevars
        for name, cell in zip(names, getattr(fn, "__closure__", None) or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if callable(value) and not is_plain_constant(value):
                self._add_object(f"{owner}:{name}", value, depth, ())

    def _scan_globals(self, namespace: dict[str, Any], names: Iterable[str], depth: int) -> None:
        module_name = namespace.get("__name__")
        for name in sorted(names):
            if name not in namespace:
                continue  # an attribute name or a builtin
            value = namespace[name]
            label = f"{module_name}.{name}"
            if self._add_object(label, value, depth, names):
                self.watch.names.append((namespace, name, value))

    def _add_callable(self, label: str, value: Any, depth: int) -> bool:
        # A function, or something wrapping functions (decorators, lru_cache, partial,
        # cached functions): the digest covers every layer's code.
        layers = unwrap_layers(value)
        extra = ""
        if isinstance(layers[-1], functools.partial):
            part = layers[-1]
            extra = ";".join(_value_or_type(v) for v in (*part.args, *part.keywords.values()))
            layers.append(part.func)
        funcs = [f for f in layers if isinstance(f, types.FunctionType)]
        if not funcs or not any(is_user_module(getattr(f, "__module__", None)) for f in funcs):
            return False
        if label not in self.deps:
            self.deps[label] = ""  # reserve, so recursion through cycles stops
            digests = [self.add_function(f, depth) or "" for f in funcs]
            if len(digests) == 1 and not extra:
                self.deps[label] = digests[0]
            else:
                text = "|".join(digests) + f"|{extra}"
                self.deps[label] = xxhash.xxh3_128_hexdigest(text.encode())
        return True

    def _add_class(self, label: str, value: type, depth: int) -> bool:
        if not is_user_module(getattr(value, "__module__", None)):
            return False
        if label in self.deps:
            return True
        self.deps[label] = ""
        h = xxhash.xxh3_128()
        for attr, member in sorted(vars(value).items()):
            # Dunder bookkeeping (__module__, __dict__, __firstlineno__, ...) is skipped;
            # dunder methods that change behaviour (__init__, __call__, ...) are not.
            is_dunder = attr.startswith("__") and attr.endswith("__")
            if is_dunder and not isinstance(
                member, (types.FunctionType, staticmethod, classmethod)
            ):
                continue
            member = _unwrap_callable(member)
            if isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                h.update(f"{attr}:{self.add_function(member, depth)};".encode())
            elif is_plain_constant(member):
                h.update(f"{attr}={digest(member)};".encode())
        self.deps[label] = h.hexdigest()
        # Methods and attributes inherited from the user's own base classes count as well.
        for base in value.__mro__[1:]:
            if base is not object:
                self._add_class(f"{base.__module__}.{base.__qualname__}", base, depth + 1)
        return True

    def _add_object(self, label: str, value: Any, depth: int, names: Iterable[str]) -> bool:
        value = _unwrap_callable(value)
        if isinstance(value, types.ModuleType):
            if not is_user_module(value.__name__):
                return False
            # Only the attributes this code names can be read through the module.
            attrs = vars(value)
            self._scan_globals(attrs, [n for n in names if n in attrs], depth)
            return True
        if isinstance(value, type):
            return self._add_class(label, value, depth)
        if callable(value) and self._add_callable(label, value, depth):
            return True
        if _plain_data(value, [_MAX_CONSTANT_ITEMS]):
            self.deps[label] = digest(value)
            return True
        return False

    def add_explicit(self, index: int, obj: Any) -> None:
        obj = _unwrap_callable(obj)
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        label = f"{EXPLICIT}{index}]" + (f" ({name})" if isinstance(name, str) else "")
        if isinstance(obj, types.ModuleType):
            path = getattr(obj, "__file__", None)
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    self.deps[label] = xxhash.xxh3_128_hexdigest(f.read())
            else:
                self.deps[label] = digest(sorted(vars(obj)))
        elif isinstance(obj, (types.FunctionType, type)):
            # Recorded under its own label even when the automatic scan found it as well.
            key = f"\x00explicit {index}"
            self._add_object(key, obj, 0, ())
            self.deps[label] = self.deps.pop(key, "") or digest(obj)
        else:
            self.deps[label] = digest(obj)


def fingerprint(func: Any, depends_on: list[Any], follow: bool) -> tuple[Fingerprint, Watch]:
    """Compute ``func``'s fingerprint; ``follow`` enables automatic dependency discovery."""
    collector = _Collector(follow)
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    # A decorated function runs its wrappers' code and the wrapped function's: all count.
    digests = [
        collector.add_function(layer, 0, as_dependency=False)
        for layer in unwrap_layers(target)
        if isinstance(layer, types.FunctionType)
    ]
    own = digests[0] if len(digests) == 1 else None
    if len(digests) > 1:
        own = xxhash.xxh3_128_hexdigest("|".join(d or "" for d in digests).encode())
    if own is None:
        # A builtin or callable object: identify it by its value as far as hashing can.
        try:
            own = digest(target)
        except Exception:
            own = digest(f"{type(target).__module__}.{type(target).__qualname__}")
    for i, obj in enumerate(depends_on):
        collector.add_explicit(i, obj)
    return Fingerprint(own, collector.deps), collector.watch
