"""The canonical pickler: writes a value-only description of an object into a hash object.

This is the heart of :mod:`parajob.hashing`, kept apart from its public face so that the
description (the stream that decides every digest) reads in one place. The hash algorithms,
sinks and array feeding are in :mod:`parajob._hashing_algorithms`; the rule for ordering
keys and elements by value is in :mod:`parajob._hashing_order`; the public ``hash``,
``digest`` and the error report that names an unhashable part are in :mod:`parajob.hashing`.

How it works
------------
:func:`_feed` (behind :func:`parajob.hashing.digest`) feeds a C pickle stream (protocol 5,
fixed) into a hash object. The pickler, :class:`_CanonicalPickler`, keeps nothing: its output
goes straight into the hash, one 64 KiB frame at a time. It runs in *fast* mode (no memo), so
the stream depends on values only and not on which sub-objects happen to be the same Python
object: ``["ab", "ab"]`` hashes the same whether or not the two strings are one object.

Canonical forms are injected through ``persistent_id``, which the C pickler calls for every
object it meets. It looks the object's exact type up in a per-call dispatch dict: the atomic
types and lists and tuples map to ``None`` and are pickled as usual; every other type maps to a
handler that returns a stand-in for the object (a tuple, or a string), which the pickler writes
instead:

- dict: keys sorted when they share one sortable type, otherwise replaced by their own digests
  and sorted by those; then the values in that order. A large dict of atomic values is pickled
  in one go, without persistent_id;
- set, frozenset: elements sorted the same way;
- numpy array (buffer dtypes): class, dtype, shape, memory order and a digest of its buffer,
  read in place; numpy scalars and dtypes by their bytes and dtype string;
- function: module, qualified name, code (without file name or line numbers), defaults and
  closure values; methods by function and instance; classes, builtins and modules by name;
- anything else by its pickle reduction, done here rather than by the C pickler so that it is
  on the active stack (below). Instance ``__dict__``s then go through the dict rule, so
  attribute order does not count; dict subclasses other than ``OrderedDict`` have their items
  sorted.

Cycles. Fast mode cannot express a reference back to an ancestor. The objects we describe
ourselves are kept on an *active* stack: the handler pushes the object and ends its stand-in
with a marker; the pickler reaches the marker after the contents, and the marker's handler
pops. Meeting an active object again, or the C pickler's own fast-mode cycle check (for lists),
restarts the hash in memo mode, where a cycle is written as a back-reference
(docs/hashing.md says what that changes).
"""

from __future__ import annotations

import copyreg
import operator
import pickle
import reprlib
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from parajob._hashing_algorithms import (
    _HashObject,
    _new_hash_object,
    _Sink,
    _SwitchSink,
    _update_contiguous,
    _update_strided,
)
from parajob._hashing_order import _sortable_kind, _uniformly_sortable

# Written before every stream. Changing the canonical form must change this, so that a cache
# keyed by old hashes misses instead of matching a different description.
_FORMAT_TAG = b"parajob.hashing/1\n"

# Fixed, not pickle.DEFAULT_PROTOCOL: a newer Python must not silently change every hash.
_PROTOCOL = 5

# Objects of these exact types pickle natively, with nothing to canonicalise inside. A dict or
# set of at least _BULK_MIN of them is pickled without persistent_id (see _plain_digest).
_ATOMIC_TYPES = frozenset({str, bytes, int, float, bool, complex, type(None)})
_BULK_MIN = 64

# numpy kinds whose buffer is plain data: bool, ints, floats, complex, datetimes, bytes and
# str, structured/void. Object arrays and numpy 2's variable-width strings (kind "T") hold
# pointers and are described by their pickle reduction instead.
_BUFFER_KINDS = frozenset("biufcmMSUV")

# copyreg's helpers for objects built with cls.__new__: described by tag, not by their code.
_NEWOBJ = copyreg.__newobj__  # type: ignore[attr-defined]
_NEWOBJ_EX = copyreg.__newobj_ex__  # type: ignore[attr-defined]


class _CycleFound(Exception):
    """Raised inside fast mode when an object is met again while it is being described."""


class _PopMarker:
    """The type of ``_POP``, the last element of every tuple that pushed onto the active stack."""

    __slots__ = ()


_POP = _PopMarker()


_Handler = Callable[["_CanonicalPickler", Any], Any]


class _CanonicalPickler(pickle.Pickler):
    """A C pickler that writes canonical descriptions of objects into a hash object."""

    def __init__(
        self, sink: _Sink | _SwitchSink, hash_name: str, coerce_mmap: bool, memo_mode: bool
    ) -> None:
        super().__init__(sink, protocol=_PROTOCOL)
        self.fast = not memo_mode
        self._hash_name = hash_name
        self._coerce_mmap = coerce_mmap
        self._memo_mode = memo_mode
        self._active: list[object] = []
        self._active_depth: dict[int, int] = {}
        # id(array) -> (array, description): an array that appears many times is read once.
        # Holding the array keeps its id from being reused during this call.
        self._arrays: dict[int, tuple[Any, tuple[Any, ...]]] = {}
        self._dispatch = _Dispatch(_BASE_DISPATCH)
        self._child: tuple[_CanonicalPickler, _SwitchSink] | None = None  # see _sub_digest

    def persistent_id(self, obj: Any) -> Any:
        """Return the canonical stand-in for ``obj``, or None to pickle it as usual."""
        handler = self._dispatch[type(obj)]
        if handler is None:
            return None
        return handler(self, obj)

    # -- the active stack (cycle detection) ------------------------------------------------

    def _enter(self, obj: object) -> tuple[Any, ...] | None:
        """Push ``obj``; return a back-reference instead when it is already being described."""
        depth = self._active_depth.get(id(obj))
        if depth is not None:
            if not self._memo_mode:
                raise _CycleFound
            # Distance to the ancestor, not its identity: the stream stays a function of the
            # structure, so equal cyclic structures built separately still hash the same.
            return ("cycle", len(self._active) - depth)
        self._active_depth[id(obj)] = len(self._active)
        self._active.append(obj)
        return None

    def _leave(self, _marker: _PopMarker) -> str:
        obj = self._active.pop()
        del self._active_depth[id(obj)]
        return ""

    # -- handlers ----------------------------------------------------------------------------

    def _sub_digest(self, obj: object) -> bytes:
        """Return ``digest(obj)`` as bytes (used to order keys that cannot be sorted by value).

        One child pickler serves all the keys of this call: creating a pickler costs more than
        describing a small key. Its stream for ``obj`` is the one a fresh pickler would write.
        """
        if self._child is None:
            sink = _SwitchSink()
            pickler = _CanonicalPickler(sink, self._hash_name, self._coerce_mmap, memo_mode=False)
            self._child = (pickler, sink)
        child, sink = self._child
        hash_object = _new_hash_object(self._hash_name)
        hash_object.update(_FORMAT_TAG)
        sink.target = hash_object.update
        try:
            child.dump(obj)
        except Exception:
            # A cycle or an error leaves the child mid-description: drop it, and let the full
            # path retry in memo mode or raise the error.
            self._child = None
            return _digest_bytes(obj, self._hash_name, self._coerce_mmap)
        return hash_object.digest()

    def _sorted_elements(self, items: Collection[Any]) -> tuple[list[Any], bool]:
        """Return ``items`` in canonical order, and whether they were replaced by digests."""
        if len(items) < 2:
            return list(items), False
        if _uniformly_sortable(items):
            return sorted(items), False
        return sorted(self._sub_digest(x) for x in items), True

    def _sorted_items(self, mapping: dict[Any, Any]) -> tuple[list[Any], list[Any], bool]:
        """Return a dict's keys and values in canonical order, and whether keys are digests."""
        if len(mapping) < 2:
            return list(mapping), list(mapping.values()), False
        if _uniformly_sortable(mapping):
            keys = sorted(mapping)
            # itemgetter looks all keys up in one C call (and returns a tuple for >= 2 keys).
            return keys, list(operator.itemgetter(*keys)(mapping)), False
        key_digests = [self._sub_digest(k) for k in mapping]
        values = list(mapping.values())
        if len(set(key_digests)) == len(key_digests):
            order = sorted(range(len(values)), key=key_digests.__getitem__)
        else:
            # Distinct keys with equal descriptions (e.g. objects hashed by identity): break
            # the tie by value, or insertion order would leak into the hash.
            value_digests = [self._sub_digest(v) for v in values]
            order = sorted(range(len(values)), key=lambda i: (key_digests[i], value_digests[i]))
        return [key_digests[i] for i in order], [values[i] for i in order], True

    def _plain_digest(self, value: Any) -> bytes:
        """Digest ``value``, made only of atomic objects, with a plain C pickler.

        Nothing in it needs a canonical stand-in, so skipping ``persistent_id`` (one Python
        call per object) changes nothing but the time: it halves it for a dict of 100k str.
        """
        hash_object = _new_hash_object(self._hash_name)
        plain = pickle.Pickler(_Sink(hash_object.update), protocol=_PROTOCOL)
        plain.fast = True  # values, not identities, as everywhere else
        plain.dump(value)
        return hash_object.digest()

    def _save_dict(self, obj: dict[Any, Any]) -> tuple[Any, ...]:
        ref = self._enter(obj)
        if ref is not None:
            return ref
        kind = _sortable_kind(obj) if len(obj) >= _BULK_MIN else None
        if kind is not None:
            keys = sorted(obj)
            values = operator.itemgetter(*keys)(obj)
            if kind in _ATOMIC_TYPES and set(map(type, values)) <= _ATOMIC_TYPES:
                self._leave(_POP)
                return ("dict=", self._plain_digest((keys, values)))
            return ("dict", keys, list(values), _POP)  # what _sorted_items gives
        keys, values_, by_digest = self._sorted_items(obj)
        return ("dict#" if by_digest else "dict", keys, values_, _POP)

    def _save_reduced(self, obj: Any) -> tuple[Any, ...] | None:
        """Describe ``obj`` by its pickle reduction, with dict items made canonical.

        This is what the C pickler would do itself (same reducer lookup, same call), but done
        here the object goes on the active stack, so a cycle through it is seen even when its
        ``__getstate__`` returns a fresh dict on every call.
        """
        ref = self._enter(obj)
        if ref is not None:
            return ref
        reducer = copyreg.dispatch_table.get(type(obj))
        reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(_PROTOCOL)
        if isinstance(reduced, str):
            # A module-level singleton, named: the pickler writes the reference itself.
            self._leave(_POP)
            return None
        if not isinstance(reduced, tuple) or not 2 <= len(reduced) <= 6:
            raise pickle.PicklingError(
                f"{_type_name(type(obj))}.__reduce__ must return a string or a tuple of 2 to "
                f"6 items, got {_short_repr.repr(reduced)}"
            )
        func, args, state, listitems, dictitems, setter = (*reduced, None, None, None, None)[:6]
        if func is _NEWOBJ:
            # The common case (plain instances): skip describing copyreg's helper.
            head: tuple[Any, ...] = ("new", args)
        elif func is _NEWOBJ_EX:
            head = ("new_ex", args)
        else:
            head = ("reduce", func, args)
        if listitems is None and dictitems is None and setter is None:
            return (*head, state, _POP)  # most objects: shorter, so fewer persistent_id calls
        listed = None if listitems is None else list(listitems)
        if dictitems is None:
            items = None
        else:
            mapping = dict(dictitems)
            if isinstance(obj, dict) and not isinstance(obj, OrderedDict):
                # defaultdict, Counter, user subclasses: order does not count, as for dict.
                # OrderedDict equality depends on order, so its hash does too.
                keys, values, by_digest = self._sorted_items(mapping)
                items = ("digest" if by_digest else "sorted", keys, values)
            else:
                items = ("ordered", list(mapping), list(mapping.values()))
        return (*head, state, "+", listed, items, setter, _POP)

    def _save_set(self, obj: set[Any] | frozenset[Any]) -> tuple[Any, ...]:
        tag = "set" if type(obj) is set else "frozenset"
        kind = _sortable_kind(obj) if len(obj) >= _BULK_MIN else None
        if kind is not None:
            elements = sorted(obj)
            if kind in _ATOMIC_TYPES:
                return (tag + "=", self._plain_digest(elements))
            return (tag, elements)  # what _sorted_elements gives
        elements, by_digest = self._sorted_elements(obj)
        return (tag + "#" if by_digest else tag, elements)

    def _save_set_subclass(self, obj: set[Any] | frozenset[Any]) -> tuple[Any, ...]:
        ref = self._enter(obj)
        if ref is not None:
            return ref
        elements, by_digest = self._sorted_elements(obj)
        state = getattr(obj, "__dict__", None) or None
        return ("set-subclass", type(obj), by_digest, elements, state, _POP)

    def _save_function(self, obj: types.FunctionType) -> tuple[Any, ...]:
        ref = self._enter(obj)
        if ref is not None:
            return ref
        closure = obj.__closure__
        # Each cell becomes a list: [value], or [] for a cell not yet assigned.
        cells = None if closure is None else [_cell_contents(cell) for cell in closure]
        return (
            "function",
            obj.__module__,
            obj.__qualname__,
            obj.__code__,
            obj.__defaults__,
            obj.__kwdefaults__,
            cells,
            obj.__dict__ or None,  # attributes, e.g. functools.wraps' __wrapped__
            _POP,
        )

    def _save_code(self, obj: types.CodeType) -> tuple[Any, ...]:
        # Everything that decides what the code does, nothing about where it sits: no
        # co_filename, co_firstlineno or line tables, so moving a function within its file or
        # cloning the project elsewhere keeps the hash. Nested code objects in co_consts come
        # back here. co_code is the unspecialised bytecode on every Python we support.
        return (
            "code",
            obj.co_name,
            getattr(obj, "co_qualname", None),
            obj.co_argcount,
            obj.co_posonlyargcount,
            obj.co_kwonlyargcount,
            obj.co_flags,
            obj.co_code,
            obj.co_consts,
            obj.co_names,
            obj.co_varnames,
            obj.co_freevars,
            obj.co_cellvars,
            getattr(obj, "co_exceptiontable", None),
        )

    def _save_method(self, obj: types.MethodType) -> tuple[Any, ...]:
        return ("method", obj.__func__, obj.__self__)

    def _save_builtin(self, obj: types.BuiltinFunctionType) -> tuple[Any, ...]:
        owner = obj.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            owner = None  # a module-level builtin: its name says it all
        return ("builtin", obj.__module__, obj.__qualname__, owner)

    def _save_type(self, obj: type) -> str:
        # By name, like pickle, but without importing it back: classes defined in __main__ or
        # inside a function hash as well. One string rather than a tuple: the pickler does not
        # ask persistent_id about the stand-in itself, only about the parts of a tuple, and
        # every instance names its class. (The other string stand-in is _leave's "", and
        # names hold no NUL.)
        return f"type\0{obj.__module__}\0{obj.__qualname__}"

    def _save_module(self, obj: types.ModuleType) -> tuple[Any, ...]:
        return ("module", obj.__name__)

    def _save_numpy_dtype(self, obj: Any) -> tuple[Any, ...] | None:
        if obj.kind in _BUFFER_KINDS and obj.fields is None and obj.metadata is None:
            return ("dtype", obj.str)  # "<f8", "<M8[s]", "|S5": stable across numpy versions
        return self._save_reduced(obj)  # structured or annotated: every field counts

    def _save_numpy_scalar(self, obj: Any) -> tuple[Any, ...] | None:
        dtype = obj.dtype
        if type(obj) is not dtype.type or dtype.kind not in _BUFFER_KINDS or dtype.hasobject:
            return self._save_reduced(obj)
        # The dtype (through _save_numpy_dtype) names the scalar type, the bytes its value.
        return ("scalar", dtype, obj.tobytes())

    def _save_array(self, obj: Any) -> tuple[Any, ...] | None:
        cached = self._arrays.get(id(obj))
        if cached is not None:
            return cached[1]
        np = sys.modules["numpy"]
        dtype = obj.dtype
        if dtype.kind not in _BUFFER_KINDS or dtype.hasobject:
            return self._save_reduced(obj)  # elements by value, through the pickler
        cls = type(obj)
        if cls is not np.ndarray and not issubclass(cls, np.memmap):
            if cls.__reduce_ex__ is not np.ndarray.__reduce_ex__ or (
                cls.__reduce__ is not np.ndarray.__reduce__
            ):
                # A subclass that pickles extra state (e.g. a masked array's mask) is
                # described by its own reduction, so that state counts.
                return self._save_reduced(obj)
        elif self._coerce_mmap and issubclass(cls, np.memmap):
            cls = np.ndarray
        hash_object = _new_hash_object(self._hash_name)
        if obj.flags.c_contiguous:
            order = "C"
            _update_contiguous(hash_object, obj)
        elif obj.flags.f_contiguous:
            # The transpose of an F-ordered array is C-ordered over the same memory.
            order = "F"
            _update_contiguous(hash_object, obj.T)
        else:
            order = "C"
            _update_strided(hash_object, obj, np)
        description = ("ndarray", cls, dtype, obj.shape, order, hash_object.digest())
        self._arrays[id(obj)] = (obj, description)
        return description


def _cell_contents(cell: types.CellType) -> list[Any]:
    try:
        return [cell.cell_contents]
    except ValueError:
        return []


class _Dispatch(dict[type, "_Handler | None"]):
    """Type -> handler (or None), filled in the first time a type is met."""

    def __missing__(self, kind: type) -> _Handler | None:
        handler = _classify(kind)
        self[kind] = handler
        return handler


def _classify(kind: type) -> _Handler | None:
    if issubclass(kind, type):
        return _CanonicalPickler._save_type
    if issubclass(kind, (set, frozenset)):
        return _CanonicalPickler._save_set_subclass
    if issubclass(kind, types.ModuleType):
        return _CanonicalPickler._save_module
    np = sys.modules.get("numpy")  # an ndarray can only exist once numpy is imported
    if np is not None:
        if issubclass(kind, np.ndarray):
            return _CanonicalPickler._save_array
        if issubclass(kind, np.generic):
            return _CanonicalPickler._save_numpy_scalar
        if issubclass(kind, np.dtype):
            return _CanonicalPickler._save_numpy_dtype
    # Everything else, dict subclasses included, by its reduction.
    return _CanonicalPickler._save_reduced


_BASE_DISPATCH: dict[type, _Handler | None] = {
    # The most common types pickle as they are; listing them skips classification.
    str: None,
    int: None,
    float: None,
    bool: None,
    bytes: None,
    type(None): None,
    list: None,
    tuple: None,
    complex: None,
    bytearray: None,
    pickle.PickleBuffer: None,
    dict: _CanonicalPickler._save_dict,
    set: _CanonicalPickler._save_set,
    frozenset: _CanonicalPickler._save_set,
    type: _CanonicalPickler._save_type,
    types.FunctionType: _CanonicalPickler._save_function,
    types.CodeType: _CanonicalPickler._save_code,
    types.MethodType: _CanonicalPickler._save_method,
    types.BuiltinFunctionType: _CanonicalPickler._save_builtin,
    types.ModuleType: _CanonicalPickler._save_module,
    _PopMarker: _CanonicalPickler._leave,
}


def _is_fast_mode_cycle(exc: ValueError) -> bool:
    # The C pickler's own check, for cycles through containers it pickles itself (lists).
    return str(exc).startswith("fast mode: can't pickle cyclic objects")


def _feed(obj: Any, hash_name: str, coerce_mmap: bool) -> _HashObject:
    """Return a hash object fed with the canonical description of ``obj``.

    Raises the underlying error (TypeError, PicklingError, RecursionError, ...) unchanged;
    :func:`parajob.hashing.digest` turns it into a HashingError that says where the culprit
    sits.
    """
    for memo_mode in (False, True):
        hash_object = _new_hash_object(hash_name)
        hash_object.update(_FORMAT_TAG)
        pickler = _CanonicalPickler(_Sink(hash_object.update), hash_name, coerce_mmap, memo_mode)
        try:
            pickler.dump(obj)
        except _CycleFound:
            continue
        except ValueError as exc:
            if memo_mode or not _is_fast_mode_cycle(exc):
                raise
            continue
        return hash_object
    raise AssertionError("unreachable: memo mode writes cycles as back-references")


def _digest_bytes(obj: Any, hash_name: str, coerce_mmap: bool) -> bytes:
    return _feed(obj, hash_name, coerce_mmap).digest()


# Used in error messages: here, for a bad __reduce__, and by parajob.hashing's error report.
def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40
