"""The parajob container, format version 1: its writer and its reader.

One container holds one Python object. numpy arrays of non-object dtypes are taken out of the
pickle stream and stored raw, each at a 64-byte aligned offset, so they can be memory-mapped
without a copy and read straight into their final memory::

    offset 0   magic      8 bytes   b"\\x89PJB\\r\\n\\x1a\\n" (PNG-style: catches newline mangling)
    8          header    32 bytes   <HHIQQQ: version, flags, reserved, pickle length,
                                    table length, xxh3_64 of magic + the first 24 header bytes
    40         pickle               protocol-5 pickle; array i is the call _array_ref(i)
               table                JSON list, entry i describes array i: dtype (numpy descr),
                                    shape, order ("C"/"F"), offset, nbytes, xxh3 (hex xxh3_64
                                    of the array's bytes, or UNVERIFIED)
               checksum   8 bytes   <Q xxh3_64 of header + pickle + table
               zero padding to a multiple of 64, then array 0's bytes, zero padding, array 1...

The layout is canonical: every offset is the first multiple of 64 after the previous region,
so a reader can stream a container front to back (through a decompressor) and a hostile table
cannot point anywhere else. Arrays are stored in C order, except F-contiguous ones, which are
stored in F order (the bytes of ``arr.T``), so both load without reordering.

Everything before the arrays is verified on every load; array bytes are verified as they are
read into memory (memory-mapped loads do not read them, so they are not verified).
"""

from __future__ import annotations

import copyreg
import io
import json
import math
import os
import pickle
import pickletools
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple, NoReturn

import xxhash

from parajob.errors import (
    CorruptFileError,
    MissingDependencyError,
    ParajobError,
    TruncatedFileError,
    UnsafeLoadError,
)
from parajob.persistence._safe import safe_find_class

__all__ = [
    "MAGIC",
    "ArraySpec",
    "ContainerHead",
    "map_arrays",
    "read_arrays",
    "read_head",
    "unpickle",
    "write_container",
]

MAGIC = b"\x89PJB\r\n\x1a\n"
VERSION = 1
ALIGNMENT = 64
_HEADER = struct.Struct("<HHIQQ")  # version, flags, reserved, pickle length, table length
_U64 = struct.Struct("<Q")
PREAMBLE_SIZE = len(MAGIC) + _HEADER.size + _U64.size  # 40
# Stored instead of an array's digest once the file was mapped writable (mmap_mode="r+"):
# its bytes may have changed since, so they can no longer be checked. Same width as a digest,
# so the table can be rewritten in place.
UNVERIFIED = "-" * 16

# Bytes per write or copy when streaming an array out: bounds the temporary copy made for a
# non-contiguous array and the data handed to a compressor at once.
_WRITE_CHUNK = 1 << 24
# Bytes per read when loading: small enough that the bytes the kernel just copied are still
# in the CPU cache when xxh3 hashes them (measured: ~1.05x a plain read at 1 MiB, ~1.1x at
# 16 MiB), large enough that the system-call overhead does not show.
_READ_CHUNK = 1 << 20
# The most bytes read at once for a region whose length comes from the file itself when the
# file's size is unknown (a stream): a corrupt length then costs only the data that exists.
_STREAM_CHUNK = 1 << 24

# dtype kinds whose values are plain bytes: bool, ints, floats, complex, datetimes, bytes,
# unicode, void. Objects ("O") hold pointers and numpy 2's StringDType ("T") points into an
# arena, so neither can be written raw.
_RAW_KINDS = frozenset("biufcmMSUV")
_ENTRY_KEYS = frozenset(("dtype", "shape", "order", "offset", "nbytes", "xxh3"))
_HEX_DIGITS = "0123456789abcdef"
_Order = Literal["C", "F"]


def _array_ref(index: int) -> NoReturn:
    """Stand in for array ``index`` in a container's pickle; only parajob can resolve it."""
    raise CorruptFileError(
        f"this pickle stream is part of a parajob file: its numpy array {index!r} is stored "
        f"outside the pickle; load the file with parajob.load (or the bytes with "
        f"parajob.loads), not with pickle"
    )


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _is_raw_dtype(dtype: Any) -> bool:
    """True when an array of ``dtype`` can be stored as its bytes and rebuilt from them."""
    if dtype.hasobject or dtype.metadata is not None or dtype.itemsize == 0:
        return False
    if dtype.fields is not None:
        return all(_is_raw_dtype(field[0]) for field in dtype.fields.values())
    if dtype.subdtype is not None:
        return _is_raw_dtype(dtype.subdtype[0])
    return dtype.kind in _RAW_KINDS


# -- writing ------------------------------------------------------------------------------------


class _ContainerPickler(pickle.Pickler):
    """The C pickler, taking numpy arrays of raw dtypes out of the stream.

    ``reducer_override`` is only consulted for objects that are not of a builtin type, so
    pickling many small tuples, strings and numbers costs nothing extra. The pickler's memo is
    checked before it, so an array referenced twice is stored once and loads as one object.
    """

    def __init__(self, file: IO[bytes], protocol: int) -> None:
        super().__init__(file, protocol=protocol)
        self.arrays: list[Any] = []
        # If numpy was never imported, no object can be one of its arrays.
        np = sys.modules.get("numpy")
        self._array_types: tuple[type, ...] = (np.ndarray, np.memmap) if np is not None else ()

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in self._array_types and _is_raw_dtype(obj.dtype):
            self.arrays.append(obj)
            return _array_ref, (len(self.arrays) - 1,)
        return NotImplemented


def _storage(arr: Any) -> tuple[str, Any]:
    """Return the order an array is stored in and an array whose C-order bytes are stored."""
    if arr.flags.c_contiguous:
        return "C", arr
    if arr.flags.f_contiguous:
        return "F", arr.T
    return "C", arr


def _bytes_of(contiguous: Any) -> memoryview:
    """A flat byte view of a C-contiguous array (any dtype, including 0-d and structured)."""
    import numpy as np

    return memoryview(contiguous.reshape(-1).view(np.uint8))


def _byte_chunks(arr: Any, chunk: int = _WRITE_CHUNK) -> Iterator[memoryview]:
    """Yield the C-order bytes of ``arr`` in pieces of about ``chunk`` bytes, copying at most
    one piece at a time for a non-contiguous array."""
    import numpy as np

    if arr.nbytes == 0:
        return
    if arr.flags.c_contiguous:
        flat = _bytes_of(arr)
        for start in range(0, flat.nbytes, chunk):
            yield flat[start : start + chunk]
        return
    # Split at the first axis k whose trailing block shape[k:] fits in a chunk: the leading
    # axes are walked index by index and axis k - 1 in runs of rows, each run copied once.
    shape = arr.shape
    k = next(
        (i for i in range(arr.ndim + 1) if math.prod(shape[i:]) * arr.itemsize <= chunk),
        arr.ndim,
    )
    if k == 0:
        yield _bytes_of(np.ascontiguousarray(arr))
        return
    axis = k - 1
    rows = max(1, chunk // max(1, math.prod(shape[k:]) * arr.itemsize))
    for index in np.ndindex(*shape[:axis]):
        block = arr[index]
        for start in range(0, shape[axis], rows):
            yield _bytes_of(np.ascontiguousarray(block[start : start + rows]))


def _write_all(out: IO[bytes], data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = out.write(view)
        if written is None or written >= view.nbytes:
            return
        view = view[written:]


def write_container(value: Any, out: IO[bytes], protocol: int) -> None:
    """Write ``value`` as a container to the binary file object ``out``, front to back.

    Only sequential writes are used, so ``out`` may be a compressor's stream. The pickle stream
    is built in memory (it is small next to the arrays it leaves out); arrays are streamed.
    """
    pickle_buffer = io.BytesIO()
    pickler = _ContainerPickler(pickle_buffer, protocol)
    pickler.dump(value)
    arrays = pickler.arrays
    del pickler

    entries: list[dict[str, Any]] = []
    sources: list[Any] = []
    if arrays:
        import numpy as np

        for arr in arrays:
            order, source = _storage(arr)
            # The table precedes the arrays, so digests are computed in a first pass. xxh3 runs
            # at ~30 GB/s, a few percent of writing the same bytes.
            digest = xxhash.xxh3_64()
            for piece in _byte_chunks(source):
                digest.update(piece)
            entries.append(
                {
                    "dtype": np.lib.format.dtype_to_descr(arr.dtype),
                    "shape": list(arr.shape),
                    "order": order,
                    "offset": 0,
                    "nbytes": int(arr.nbytes),
                    "xxh3": digest.hexdigest(),
                }
            )
            sources.append(source)

    with pickle_buffer.getbuffer() as pickle_bytes:
        pickle_len = pickle_bytes.nbytes
        table = _layout_table(entries, pickle_len)
        header = _HEADER.pack(VERSION, 0, 0, pickle_len, len(table))
        header += _U64.pack(xxhash.xxh3_64_intdigest(MAGIC + header))
        checksum = xxhash.xxh3_64(header)
        checksum.update(pickle_bytes)
        checksum.update(table)
        _write_all(out, MAGIC + header)
        _write_all(out, pickle_bytes)
    _write_all(out, table + _U64.pack(checksum.intdigest()))
    del pickle_buffer

    position = PREAMBLE_SIZE + pickle_len + len(table) + _U64.size
    for entry, source in zip(entries, sources, strict=True):
        _write_all(out, bytes(entry["offset"] - position))
        for piece in _byte_chunks(source):
            _write_all(out, piece)
        position = entry["offset"] + entry["nbytes"]


def _layout_table(entries: list[dict[str, Any]], pickle_len: int) -> bytes:
    """Fill in the entries' offsets and return the encoded table.

    The offsets depend on the table's length, which depends on the offsets' digits; starting
    from the shortest table the lengths only grow, so this settles in a few rounds.
    """
    table_len = 0
    while True:
        position = PREAMBLE_SIZE + pickle_len + table_len + _U64.size
        for entry in entries:
            entry["offset"] = _align(position)
            position = entry["offset"] + entry["nbytes"]
        table = json.dumps(entries, separators=(",", ":")).encode("utf-8")
        if len(table) == table_len:
            return table
        table_len = len(table)


# -- reading ------------------------------------------------------------------------------------


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
            data = self._read_upto(n)
        else:
            # The length came from the stream itself: read in bounded pieces, so a corrupt
            # length costs only as much memory as there is data.
            pieces = []
            remaining = n
            while remaining:
                request = min(remaining, _STREAM_CHUNK)
                piece = self._read_upto(request)
                pieces.append(piece)
                remaining -= len(piece)
                if len(piece) < request:
                    break
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.position += len(data)
        if len(data) != n:
            raise self.truncated(needed, what)
        return data

    def _read_upto(self, n: int) -> bytes:
        """Read ``n`` bytes, fewer only at the end of the data."""
        data = self.stream.read(n)
        if len(data) == n or not data:
            return bytes(data)
        pieces = [bytes(data)]
        got = len(data)
        while got < n:
            more = self.stream.read(n - got)
            if not more:
                break
            pieces.append(bytes(more))
            got += len(more)
        return b"".join(pieces)

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
    raw_header = inp.read(_HEADER.size + _U64.size, "header")
    (stored_header_hash,) = _U64.unpack_from(raw_header, _HEADER.size)
    if xxhash.xxh3_64_intdigest(MAGIC + raw_header[: _HEADER.size]) != stored_header_hash:
        raise CorruptFileError(
            f"{source} is corrupt: its header checksum does not match; the file was damaged, "
            f"write it again"
        )
    version, flags, reserved, pickle_len, table_len = _HEADER.unpack_from(raw_header)
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
    body_end = table_offset + table_len + _U64.size
    if inp.available is not None and body_end > inp.available:
        raise inp.truncated(body_end, "metadata")
    pickle_bytes = inp.read(pickle_len, "pickle stream")
    table = inp.read(table_len, "array table")
    (stored_checksum,) = _U64.unpack(inp.read(_U64.size, "checksum"))
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
    if not _is_raw_dtype(dtype):
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


def _needs_swap(dtype: Any) -> bool:
    # joblib's rule: a plain dtype in the other byte order, or a structured one whose fields
    # all are; mixed structured dtypes are left as they are.
    other = ">" if sys.byteorder == "little" else "<"
    if dtype.byteorder == other:
        return True
    fields = dtype.fields
    return bool(
        dtype.byteorder == "|" and fields and all(f[0].byteorder == other for f in fields.values())
    )


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
            flat = _bytes_of(stored)
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
        if ensure_native_byte_order and _needs_swap(arr.dtype):
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
    import mmap

    import numpy as np

    access = {"r": mmap.ACCESS_READ, "c": mmap.ACCESS_COPY, "r+": mmap.ACCESS_WRITE}[mmap_mode]
    with open(path, "r+b" if mmap_mode == "r+" else "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=access)
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
    mapped[start + len(table) : start + len(table) + _U64.size] = _U64.pack(checksum.intdigest())


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
        if name == "_array_ref" and module == __name__:
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
