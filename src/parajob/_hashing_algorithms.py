"""The hash algorithms ``hash_name`` selects, and the two ways bytes reach them.

This is the byte side of hashing: which hash object each name creates (the one place that
knows xxhash and hashlib), the file-like sinks a pickler writes its stream into, and the
feeding of a numpy array's buffer in place, in C order and without a full copy. It knows
nothing of how an object is described; that is :mod:`parajob._hashing_pickler`, which writes
through these sinks and feeds arrays through these helpers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

import xxhash

from parajob.errors import InvalidParameterError

#: The accepted values of ``hash_name``; the first is the default.
HASH_NAMES: tuple[str, ...] = ("xxh3_128", "md5", "sha1", "sha256")

# A non-contiguous array is hashed through C-ordered copies of at most this many bytes.
_CHUNK_BYTES = 1 << 22


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
