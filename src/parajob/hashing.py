"""Hash Python objects by value: the same digest in every process, run and hash seed.

This module is the public face: :func:`hash`, :func:`digest`, :data:`HASH_NAMES`, and the
error report that says where in an object the part that cannot be hashed sits. The canonical
description itself, and how it stays independent of order, identity and cycles, is
:mod:`parajob._hashing_pickler` (its docstring tells how it works); the hash algorithms are
in :mod:`parajob._hashing_algorithms`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

from parajob._hashing_algorithms import HASH_NAMES, _bad_hash_name
from parajob._hashing_pickler import _cell_contents, _feed, _short_repr, _type_name
from parajob.errors import HashingError, InvalidParameterError

__all__ = ["HASH_NAMES", "digest", "hash"]

# How deep the error path search descends before it names what it has.
_LOCATE_MAX_DEPTH = 64


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
