"""The reader of the parajob container: verify its head, load its arrays, unpickle it.

:mod:`parajob.persistence._format` defines the layout and writes it; this module reads it back.
The two share only the layout's constants. Reading is where the file is not trusted, so it is
kept apart from the writer: every length, offset and dtype the file states is checked against
the canonical layout, the data's size and the checksums before memory is allocated for it or
anything in the pickle runs.
"""

from __future__ import annotations

import copyreg
import io
import json
import math
import os
import pickle
import pickletools
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NoReturn

import xxhash

from parajob.errors import (
    CorruptFileError,
    MissingDependencyError,
    ParajobError,
    TruncatedFileError,
    UnsafeLoadError,
)
from parajob.persistence._arrays import is_foreign_byte_order, map_file
from parajob.persistence._format import (
    ALIGNMENT,
    ARRAY_REF,
    HEADER,
    MAGIC,
    PREAMBLE_SIZE,
    U64,
    UNVERIFIED,
    VERSION,
    bytes_of,
    is_raw_dtype,
)
from parajob.persistence._safe import safe_find_class

__all__ = [
    "ArraySpec",
    "ContainerHead",
    "Input",
    "map_arrays",
    "read_arrays",
    "read_head",
    "read_upto",
    "unpickle",
]

# Bytes per read when loading: small enough that the bytes the kernel just copied are still
# in the CPU cache when xxh3 hashes them (measured: ~1.05x a plain read at 1 MiB, ~1.1x at
# 16 MiB), large enough that the system-call overhead does not show.
_READ_CHUNK = 1 << 20
# The most bytes read at once for a region whose length comes from the file itself when the
# file's size is unknown (a stream): a corrupt length then costs only the data that exists.
_STREAM_CHUNK = 1 << 24

_ENTRY_KEYS = frozenset(("dtype", "shape", "order", "offset", "nbytes", "xxh3"))
_HEX_DIGITS = "0123456789abcdef"
_Order = Literal["C", "F"]
_ARRAY_REF_MODULE, _ARRAY_REF_NAME = ARRAY_REF


def read_upto(stream: Any, n: int) -> bytes:
    """Read ``n`` bytes from ``stream``, fewer only at the end of the data."""
    data = stream.read(n)
    if len(data) == n or not data:
        return bytes(data)
    pieces = [bytes(data)]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        pieces.append(bytes(more))
        got += len(more)
    return b"".join(pieces)


# -- the head: header, pickle stream, array table -----------------------------------------------


class ArraySpec(NamedTuple):
    """One validated table entry."""

    dtype: Any
    shape: tuple[int, ...]
    order: _Order
    offset: int
    nbytes: int
    xxh3: str


@dataclass(frozen=True)
class ContainerHead:
    """Everything before the arrays, validated."""

    pickle: bytes
    arrays: list[ArraySpec]
    table_offset: int  # from the container's start
    table: bytes
    header: bytes  # the 32 header bytes, as read
    body_end: int  # end of the checksum: where the padding before the first array starts
    end: int  # the container's total length in bytes


class Input:
    """Sequential reads from a binary stream, with the position and the source name kept.

    ``available`` is how many bytes the container can have (the rest of a regular file), or
    None for a stream whose end is only found by reading it.
    """

    def __init__(self, stream: Any, source: str, available: int | None, position: int = 0) -> None:
        self.stream = stream
        self.source = source
        self.available = available
        self.position = position
        self._readinto = getattr(stream, "readinto", None)

    def truncated(self, needed: int, what: str) -> TruncatedFileError:
        actual = self.position if self.available is None else self.available
        return TruncatedFileError(
            f"{self.source} is truncated: its {what} needs {needed} bytes but the data ends "
            f"after {actual}; the file was probably cut short while being written or copied, "
            f"write it again"
        )

    def read(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes."""
        needed = self.position + n
        if self.available is not None:
            if needed > self.available:
                raise self.truncated(needed, what)
            data = read_upto(self.stream, n)
        else:
            # The length came from the stream itself: read in bounded pieces, so a corrupt
            # length costs only as much memory as there is data.
            pieces = []
            remaining = n
            while remaining:
                request = min(remaining, _STREAM_CHUNK)
                piece = read_upto(self.stream, request)
                pieces.append(piece)
                remaining -= len(piece)
                if len(piece) < request:
                    break
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.position += len(data)
        if len(data) != n:
            raise self.truncated(needed, what)
        return data

    def readinto(self, view: memoryview, what: str, needed: int) -> None:
        """Fill ``view`` completely."""
        filled = 0
        size = view.nbytes
        while filled < size:
            if self._readinto is not None:
                got = self._readinto(view[filled:])
            else:
                data = self.stream.read(size - filled)
                got = len(data)
                view[filled : filled + got] = data
            if not got:
                self.position += filled
                raise self.truncated(needed, what)
            filled += got
        self.position += size

    def skip_padding(self, n: int, what: str) -> None:
        """Read ``n`` padding bytes, which must be zero."""
        if n and any(self.read(n, what)):
            raise CorruptFileError(
                f"{self.source} is corrupt: the padding before {what} is not zero; the file was "
                f"damaged, write it again"
            )


def read_head(inp: Input) -> ContainerHead:
    """Read and verify header, pickle and table; ``inp`` must be right after the magic."""
    source = inp.source
    raw_header = inp.read(HEADER.size + U64.size, "header")
    (stored_header_hash,) = U64.unpack_from(raw_header, HEADER.size)
    if xxhash.xxh3_64_intdigest(MAGIC + raw_header[: HEADER.size]) != stored_header_hash:
        raise CorruptFileError(
            f"{source} is corrupt: its header checksum does not match; the file was damaged, "
            f"write it again"
        )
    version, flags, reserved, pickle_len, table_len = HEADER.unpack_from(raw_header)
    if version > VERSION:
        raise CorruptFileError(
            f"{source} uses parajob container format version {version}, written by a newer "
            f"parajob (this one reads version {VERSION}); upgrade parajob to read it"
        )
    if version < VERSION:
        raise CorruptFileError(
            f"{source} is corrupt: it claims container format version {version}, which no "
            f"parajob writes"
        )
    if flags or reserved:
        raise CorruptFileError(
            f"{source} uses container features this parajob does not know (flags={flags:#x}, "
            f"reserved={reserved:#x}); upgrade parajob to read it"
        )
    table_offset = PREAMBLE_SIZE + pickle_len
    body_end = table_offset + table_len + U64.size
    if inp.available is not None and body_end > inp.available:
        raise inp.truncated(body_end, "metadata")
    pickle_bytes = inp.read(pickle_len, "pickle stream")
    table = inp.read(table_len, "array table")
    (stored_checksum,) = U64.unpack(inp.read(U64.size, "checksum"))
    checksum = xxhash.xxh3_64(raw_header)
    checksum.update(pickle_bytes)
    checksum.update(table)
    if checksum.intdigest() != stored_checksum:
        raise CorruptFileError(
            f"{source} is corrupt: the checksum of its pickle stream and array table does not "
            f"match; the file was damaged, write it again"
        )
    arrays = _parse_table(table, body_end, source)
    end = arrays[-1].offset + arrays[-1].nbytes if arrays else body_end
    if inp.available is not None and end > inp.available:
        raise inp.truncated(end, "array data")
    return ContainerHead(pickle_bytes, arrays, table_offset, table, raw_header, body_end, end)


def _corrupt_table(source: str, why: str) -> CorruptFileError:
    return CorruptFileError(
        f"{source} is corrupt: its array table is invalid ({why}); the file was damaged or not "
        f"written by parajob"
    )


def _no_floats(text: str) -> NoReturn:
    raise ValueError(f"unexpected number {text}")


def _parse_table(table: bytes, body_end: int, source: str) -> list[ArraySpec]:
    # This loop runs once per array on every load, memory-mapped ones included, so it is kept
    # lean: JSON floats (never written) are refused while parsing, so every number is an int
    # or a bool, and a shape or dtype seen before is not checked again.
    if table == b"[]":
        return []  # no arrays: the common case of small values, without a JSON decoder
    try:
        entries = json.loads(
            table.decode("utf-8"), parse_float=_no_floats, parse_constant=_no_floats
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt_table(source, f"not JSON: {exc}") from None
    if type(entries) is not list:
        raise _corrupt_table(source, "not a list")
    specs = []
    position = body_end
    dtypes: dict[str, Any] = {}
    sizes: dict[tuple[int, ...], int] = {}
    for index, entry in enumerate(entries):
        if type(entry) is not dict or entry.keys() != _ENTRY_KEYS:
            raise _corrupt_table(source, f"entry {index} is not an array description")
        descr = entry["dtype"]
        key = descr if type(descr) is str else json.dumps(descr)
        dtype = dtypes.get(key)
        if dtype is None:
            dtype = dtypes[key] = _table_dtype(descr, index, source)
        shape = entry["shape"]
        try:
            shape = tuple(shape)
            size = sizes.get(shape)
        except TypeError:
            size = None
        if size is None:
            if type(entry["shape"]) is not list or not all(
                type(d) is int and d >= 0 for d in shape
            ):
                raise _corrupt_table(source, f"entry {index} has an invalid shape {shape!r}")
            size = sizes[shape] = math.prod(shape)
        nbytes = entry["nbytes"]
        if nbytes != size * dtype.itemsize or type(nbytes) is not int:
            raise _corrupt_table(
                source,
                f"entry {index} has nbytes {nbytes!r}, which does not match shape {shape} of "
                f"{dtype}",
            )
        offset = entry["offset"]
        expected = -(-position // ALIGNMENT) * ALIGNMENT
        if offset != expected or type(offset) is not int:
            raise _corrupt_table(
                source, f"entry {index} has offset {offset!r}, expected {expected}"
            )
        order = entry["order"]
        if order != "C" and order != "F":
            raise _corrupt_table(source, f"entry {index} has an invalid order {order!r}")
        digest = entry["xxh3"]
        if digest != UNVERIFIED and (
            type(digest) is not str or len(digest) != 16 or digest.strip(_HEX_DIGITS)
        ):
            raise _corrupt_table(source, f"entry {index} has an invalid checksum {digest!r}")
        specs.append(ArraySpec(dtype, shape, order, offset, nbytes, digest))
        position = offset + nbytes
    return specs


def _table_dtype(descr: Any, index: int, source: str) -> Any:
    try:
        import numpy as np
    except ImportError:
        raise MissingDependencyError(
            f"{source} holds numpy arrays; loading it needs numpy: pip install 'parajob[numpy]'"
        ) from None

    try:
        dtype = np.lib.format.descr_to_dtype(_descr_from_json(descr))
    except (TypeError, ValueError, KeyError, IndexError, RecursionError) as exc:
        raise _corrupt_table(
            source, f"entry {index} has an invalid dtype {descr!r}: {exc}"
        ) from None
    if not is_raw_dtype(dtype):
        raise _corrupt_table(source, f"entry {index} has dtype {dtype}, which is not stored raw")
    return dtype


def _descr_from_json(descr: Any) -> Any:
    """Undo JSON's turning tuples into lists in a numpy descr (field titles, sub-shapes)."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise TypeError(f"expected a str or a list of fields, got {descr!r}")
    fields: list[tuple[Any, ...]] = []
    for field in descr:
        if not isinstance(field, list) or len(field) not in (2, 3):
            raise TypeError(f"expected a field [name, descr(, shape)], got {field!r}")
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        if len(field) == 2:
            fields.append((name, _descr_from_json(field[1])))
        else:
            fields.append((name, _descr_from_json(field[1]), tuple(field[2])))
    return fields


# -- the arrays ---------------------------------------------------------------------------------


def read_arrays(inp: Input, head: ContainerHead, ensure_native_byte_order: bool) -> list[Any]:
    """Read every array into fresh memory, verifying each against its digest."""
    if not head.arrays:
        return []
    import numpy as np

    arrays = []
    for index, spec in enumerate(head.arrays):
        what = f"array {index}"
        inp.skip_padding(spec.offset - inp.position, what)
        try:
            arr = np.empty(spec.shape, dtype=spec.dtype, order=spec.order)
        except ValueError:
            # Only reachable from a stream (a file's size bounds every array): a table that
            # declares more bytes than an address space holds.
            raise CorruptFileError(
                f"{inp.source} is corrupt: its array {index} declares {spec.nbytes} bytes "
                f"(shape {spec.shape}), more than this machine can address"
            ) from None
        if spec.nbytes:
            stored = arr.T if spec.order == "F" else arr
            flat = bytes_of(stored)
            digest = xxhash.xxh3_64()
            needed = spec.offset + spec.nbytes
            for start in range(0, spec.nbytes, _READ_CHUNK):
                piece = flat[start : start + _READ_CHUNK]
                inp.readinto(piece, what, needed)
                digest.update(piece)
            if spec.xxh3 != UNVERIFIED and digest.hexdigest() != spec.xxh3:
                raise CorruptFileError(
                    f"{inp.source} is corrupt: the bytes of array {index} (dtype {spec.dtype}, "
                    f"shape {spec.shape}) do not match their checksum; the file was damaged, "
                    f"write it again"
                )
        if ensure_native_byte_order and is_foreign_byte_order(arr.dtype):
            arr.byteswap(inplace=True)
            arr = arr.view(arr.dtype.newbyteorder("="))
        arrays.append(arr)
    return arrays


def map_arrays(path: str, head: ContainerHead, mmap_mode: str) -> list[Any]:
    """Return every array as an ``np.memmap`` onto the file at ``path``, without copying.

    One ``mmap`` of the whole file backs all the arrays: creating a memmap per array (what
    ``np.memmap(path, ...)`` does) opens and maps the file once per array, which dominates
    the load time of a file holding many small arrays. The arrays are still ``np.memmap``
    instances with numpy's attributes (``filename``, ``offset``, ``mode``), built the way
    ``np.memmap.__new__`` builds them on its own map.
    """
    if not head.arrays:
        return []
    import numpy as np

    mapped = map_file(path, mmap_mode)
    if mmap_mode == "r+":
        _mark_unverified(mapped, head)
    filename = os.path.abspath(path)
    # Positional arguments and local names: this runs once per array (~0.7 us each).
    new, memmap = np.ndarray.__new__, np.memmap
    arrays = []
    for spec in head.arrays:
        # An empty array needs no bytes, and its offset may lie past the end of the file.
        arr = new(
            memmap,
            spec.shape,
            spec.dtype,
            mapped,
            spec.offset if spec.nbytes else 0,
            None,
            spec.order,
        )
        arr._mmap = mapped
        arr.filename = filename
        arr.offset = spec.offset
        arr.mode = mmap_mode
        arrays.append(arr)
    return arrays


def _mark_unverified(mapped: Any, head: ContainerHead) -> None:
    """Replace the stored digests by UNVERIFIED: arrays mapped writable may change."""
    if all(spec.xxh3 == UNVERIFIED for spec in head.arrays):
        return
    entries = json.loads(head.table)
    for entry in entries:
        entry["xxh3"] = UNVERIFIED
    table = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    if len(table) != len(head.table):
        # Re-encoding changed the length (the table was not written by this parajob); leave
        # the digests alone rather than shift the arrays.
        return
    checksum = xxhash.xxh3_64(head.header)
    checksum.update(head.pickle)
    checksum.update(table)
    start = head.table_offset
    mapped[start : start + len(table)] = table
    mapped[start + len(table) : start + len(table) + U64.size] = U64.pack(checksum.intdigest())


# -- unpickling ---------------------------------------------------------------------------------


class _ContainerUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, arrays: list[Any], safe: bool, source: str) -> None:
        # Unpickling from memory: a length field in the stream can never make the unpickler
        # wait for, or read, more than the bytes that exist.
        super().__init__(io.BytesIO(data))
        self._arrays = arrays
        self._safe = safe
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if name == _ARRAY_REF_NAME and module == _ARRAY_REF_MODULE:
            return self._array_ref
        if self._safe:
            return safe_find_class(module, name)
        return super().find_class(module, name)

    def _array_ref(self, index: Any) -> Any:
        if type(index) is not int or not 0 <= index < len(self._arrays):
            raise CorruptFileError(
                f"{self._source} is corrupt: its pickle stream refers to array {index!r} but "
                f"the file holds {len(self._arrays)}"
            )
        return self._arrays[index]


def _refuse_extension_codes(data: bytes, source: str) -> None:
    # The unpickler resolves an extension code through a process-wide cache before it asks
    # find_class, so once any code is registered (copyreg.add_extension) a safe load must
    # refuse the opcodes outright. Nothing registers one by default, so this scan is rare.
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeLoadError(
                    f"{source}: refused the copyreg extension code {arg} with "
                    f"allow_pickle=False: extension codes can name any global; load the file "
                    f"with allow_pickle=True only if you trust whoever wrote it"
                )
    except ValueError as exc:
        raise CorruptFileError(
            f"{source} is corrupt: its pickle stream is invalid ({exc})"
        ) from None


def unpickle(data: bytes, arrays: list[Any], *, allow_pickle: bool, source: str) -> Any:
    """Rebuild the object from a container's pickle stream and its loaded arrays."""
    if not allow_pickle and copyreg._inverted_registry:  # type: ignore[attr-defined]
        _refuse_extension_codes(data, source)
    unpickler = _ContainerUnpickler(data, arrays, not allow_pickle, source)
    try:
        return unpickler.load()
    except UnsafeLoadError as exc:
        raise UnsafeLoadError(f"{source}: {exc}") from None
    except ParajobError:
        raise
    except (pickle.UnpicklingError, EOFError, MemoryError) as exc:
        # The stream passed its checksum, so it was written this way: a hostile or broken
        # writer, e.g. a length field far beyond the data.
        raise CorruptFileError(
            f"{source} is corrupt: its pickle stream is invalid ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:
        if allow_pickle:
            raise  # raised by the objects' own code (a missing module, a failing __setstate__)
        # With allow_pickle=False only allow-listed constructors run, so any other failure
        # means a malformed stream.
        raise CorruptFileError(
            f"{source} is corrupt: its pickle stream is invalid ({type(exc).__name__}: {exc})"
        ) from exc
