"""Hash Python objects by value: the same digest in every process, run and hash seed.

How it works
------------
:func:`digest` feeds a C pickle stream (protocol 5, fixed) into a hash object. The pickler,
:class:`_CanonicalPickler`, keeps nothing: its output goes straight into the hash, one 64 KiB
frame at a time. It runs in *fast* mode (no memo), so the stream depends on values only and not
on which sub-objects happen to be the same Python object: ``["ab", "ab"]`` hashes the same
whether or not the two strings are one object.

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
import hashlib
import math
import operator
import pickle
import reprlib
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

import xxhash

from parajob.errors import HashingError, InvalidParameterError

__all__ = ["HASH_NAMES", "digest", "hash"]

#: The accepted values of ``hash_name``; the first is the default.
HASH_NAMES: tuple[str, ...] = ("xxh3_128", "md5", "sha1", "sha256")

# Written before every stream. Changing the canonical form must change this, so that a cache
# keyed by old hashes misses instead of matching a different description.
_FORMAT_TAG = b"parajob.hashing/1\n"

# Fixed, not pickle.DEFAULT_PROTOCOL: a newer Python must not silently change every hash.
_PROTOCOL = 5

# A non-contiguous array is hashed through C-ordered copies of at most this many bytes.
_CHUNK_BYTES = 1 << 22

# Keys and set elements of these types (all of one type) are sorted by value; their order is
# total and independent of the process. bool is its own type here, so {0, True} does not mix.
_SORTABLE_TYPES = frozenset({str, bytes, int, float, bool})

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

# How deep the error path search descends before it names what it has.
_LOCATE_MAX_DEPTH = 64


class _HashObject(Protocol):
    """What we use of xxhash and hashlib objects."""

    def update(self, data: Any, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


def _new_hash_object(hash_name: str) -> _HashObject:
    if hash_name == "xxh3_128":
        return xxhash.xxh3_128()
    if hash_name in ("md5", "sha1", "sha256"):
        # usedforsecurity=False keeps md5 available on FIPS-restricted builds; these digests
        # identify values, they do not authenticate anything.
        return hashlib.new(hash_name, usedforsecurity=False)
    raise InvalidParameterError(_bad_hash_name(hash_name))


def _bad_hash_name(hash_name: object) -> str:
    return (
        f"hash_name must be one of {', '.join(map(repr, HASH_NAMES))}, got {hash_name!r}; "
        f"use 'xxh3_128' (the default, fastest) unless you need a cryptographic digest"
    )


class _CycleFound(Exception):
    """Raised inside fast mode when an object is met again while it is being described."""


class _PopMarker:
    """The type of ``_POP``, the last element of every tuple that pushed onto the active stack."""

    __slots__ = ()


_POP = _PopMarker()


class _Sink:
    """A file-like object whose ``write`` is the hash object's ``update``."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[Any], object]) -> None:
        self.write = write


class _SwitchSink:
    """A file-like object that writes into whichever hash object ``target`` feeds.

    The C pickler looks ``write`` up once, when it is created; this indirection lets one
    pickler write successive dumps into different hash objects.
    """

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: Callable[[Any], object] = _discard

    def write(self, data: Any) -> None:
        self.target(data)


def _discard(_data: Any) -> None:
    raise AssertionError("a _SwitchSink was written to before it was given a target")


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


def _sortable_kind(items: Collection[Any]) -> type | None:
    """Return the one type all ``items`` share if its sort order is total, else None.

    NaN breaks the order of floats, so floats with a NaN among them are not sortable.
    """
    kinds = set(map(type, items))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind in _SORTABLE_TYPES:
        if kind is float and any(map(math.isnan, items)):
            return None
        return kind
    if kind is tuple:
        # Tuples compare position by position, so their order is total when each position
        # holds one sortable type in every tuple: {(i, "name"): ...} keys sort by value.
        signatures = set(map(_type_signature, items))
        if len(signatures) != 1:
            return None
        signature = signatures.pop()
        if not all(k in _SORTABLE_TYPES for k in signature):
            return None
        if any(
            math.isnan(item[position])
            for position, k in enumerate(signature)
            if k is float
            for item in items
        ):
            return None
        return tuple
    return None


def _uniformly_sortable(items: Collection[Any]) -> bool:
    return _sortable_kind(items) is not None


def _type_signature(item: tuple[Any, ...]) -> tuple[type, ...]:
    return tuple(map(type, item))


def _update_contiguous(hash_object: _HashObject, array: Any) -> None:
    """Feed a C-contiguous array's bytes, in place."""
    if array.nbytes:
        # A flat uint8 view has a buffer for every dtype (datetime64 has none of its own).
        hash_object.update(array.reshape(-1).view("u1"))


def _update_strided(hash_object: _HashObject, array: Any, np: Any) -> None:
    """Feed a non-contiguous array's bytes in C order, copying at most _CHUNK_BYTES at a time.

    The bytes fed are exactly those of ``np.ascontiguousarray(array)``, so a strided view hashes
    like its C-ordered copy.
    """
    if array.nbytes == 0:
        return
    if array.flags.c_contiguous:
        _update_contiguous(hash_object, array)
        return
    row_bytes = array.nbytes // array.shape[0]
    if row_bytes > _CHUNK_BYTES and array.ndim > 1:
        for row in array:
            _update_strided(hash_object, row, np)
        return
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], step):
        _update_contiguous(hash_object, np.ascontiguousarray(array[start : start + step]))


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
    :func:`digest` turns it into a HashingError that says where the culprit sits.
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


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """Yield (path step, child) for the parts of ``obj`` an error search can descend into."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            step = f"[{_short_repr.repr(key)}]"
            yield f"<key of {step}>", key
            yield step, value
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield f"[{index}]", value
    elif isinstance(obj, (set, frozenset)):
        for value in obj:
            yield "{...}", value
    elif isinstance(obj, types.FunctionType):
        names = obj.__code__.co_freevars
        for name, cell in zip(names, obj.__closure__ or (), strict=True):
            for value in _cell_contents(cell):
                yield f".<closure variable {name}>", value
        for index, value in enumerate(obj.__defaults__ or ()):
            yield f".__defaults__[{index}]", value
        for name, value in (obj.__kwdefaults__ or {}).items():
            yield f".__kwdefaults__[{name!r}]", value
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
    else:
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            for name, value in attributes.items():
                yield f".{name}", value


def _locate(obj: Any, hash_name: str, coerce_mmap: bool) -> tuple[str, Any]:
    """Return the path to, and the value of, the deepest part of ``obj`` that cannot be hashed."""
    path = ""
    on_path = {id(obj)}
    for _ in range(_LOCATE_MAX_DEPTH):
        try:
            for step, child in _children(obj):
                if id(child) in on_path:
                    continue  # a cycle back up the path: the culprit is elsewhere
                try:
                    _feed(child, hash_name, coerce_mmap)
                except Exception:
                    path += step
                    obj = child
                    on_path.add(id(obj))
                    break
            else:
                return path, obj
        except Exception:  # a child we could not even enumerate: stop at its parent
            return path, obj
    return path, obj


def digest(obj: Any, hash_name: str = "xxh3_128", coerce_mmap: bool = False) -> str:
    """Return the hex digest of ``obj``'s value; the implementation behind :func:`hash`.

    Parameters
    ----------
    obj : object
        Any picklable object, plus functions, lambdas, closures, classes and modules.
    hash_name : {"xxh3_128", "md5", "sha1", "sha256"}
        The hash algorithm.
    coerce_mmap : bool
        When true, an ``np.memmap`` hashes like an ``np.ndarray`` with the same data.

    Returns
    -------
    str
        The hex digest (32 characters for xxh3_128 and md5, 40 for sha1, 64 for sha256).

    Raises
    ------
    parajob.errors.InvalidParameterError
        If ``hash_name`` is not one of :data:`HASH_NAMES` (a ValueError).
    parajob.errors.HashingError
        If part of ``obj`` cannot be described (a lock, a generator, an open file, ...); the
        message names its type and where it sits.
    """
    if not isinstance(hash_name, str) or hash_name not in HASH_NAMES:
        raise InvalidParameterError(_bad_hash_name(hash_name))
    try:
        return _feed(obj, hash_name, coerce_mmap).hexdigest()
    except RecursionError as exc:
        raise HashingError(
            f"cannot hash object of type {_type_name(type(obj))}: it is nested deeper than "
            f"the recursion limit ({sys.getrecursionlimit()}) allows, or something in it "
            f"reduces to a new, deeper object every time it is pickled; flatten the "
            f"structure, or raise the limit with sys.setrecursionlimit"
        ) from exc
    except Exception as exc:
        path, culprit = _locate(obj, hash_name, coerce_mmap)
        where = path or "the top level"
        raise HashingError(
            f"cannot hash object of type {_type_name(type(culprit))} at {where} "
            f"({type(exc).__name__}: {exc}); hashing describes objects the way pickle does, "
            f"so leave this object out of what you hash, or give its class a __reduce__ or "
            f"__getstate__ that returns picklable state"
        ) from exc


def hash(obj: Any, hash_name: str = "xxh3_128", coerce_mmap: bool = False) -> str:
    """Return a hex digest of ``obj`` that depends only on its value.

    The digest is the same in every process, after restarts and under any
    ``PYTHONHASHSEED``, for the same versions of Python, parajob and the libraries whose
    objects are hashed. Dict and set insertion order do not change it; unhashable and nested
    objects work; functions, lambdas and closures hash by their code and captured values; numpy
    arrays hash straight from their buffers, without a copy. docs/hashing.md lists what is and
    is not considered equal.

    Parameters
    ----------
    obj : object
        Any picklable object, plus functions, lambdas, closures, classes and modules.
    hash_name : {"xxh3_128", "md5", "sha1", "sha256"}, default "xxh3_128"
        The hash algorithm. xxh3_128 is several times faster than md5 on large arrays; md5,
        sha1 and sha256 are there when a cryptographic digest is wanted.
    coerce_mmap : bool, default False
        When true, an ``np.memmap`` hashes like an ``np.ndarray`` with the same data; when
        false the two differ, as their classes do.

    Returns
    -------
    str
        The hex digest (32 characters for xxh3_128 and md5, 40 for sha1, 64 for sha256).

    Raises
    ------
    parajob.errors.InvalidParameterError
        If ``hash_name`` is not one of the names above (a ValueError, as in joblib).
    parajob.errors.HashingError
        If part of ``obj`` cannot be described (a lock, a generator, an open file, ...); the
        message names its type and where it sits. It is also a ``TypeError`` and a
        ``pickle.PicklingError``, so ``except`` clauses written for joblib keep working.

    See Also
    --------
    joblib.hash : the function this one replaces; its digests differ from these.

    Notes
    -----
    .. versionadded:: 0.1
       xxh3_128 (the default) and sha256; joblib defaults to md5.

    Examples
    --------
    >>> import parajob
    >>> parajob.hash({"a": 1, "b": [1, 2]}) == parajob.hash({"b": [1, 2], "a": 1})
    True
    >>> len(parajob.hash(3.14, hash_name="sha1"))
    40
    """
    return digest(obj, hash_name=hash_name, coerce_mmap=coerce_mmap)
