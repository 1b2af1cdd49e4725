"""The parajob container, format version 1: its layout and its writer.

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
read into memory (memory-mapped loads do not read them, so they are not verified). The reader,
which does that checking, is :mod:`parajob.persistence._format_reader`.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import sys
from collections.abc import Iterator
from typing import IO, Any, NoReturn

import xxhash

from parajob.errors import CorruptFileError

__all__ = [
    "ALIGNMENT",
    "ARRAY_REF",
    "HEADER",
    "MAGIC",
    "PREAMBLE_SIZE",
    "U64",
    "UNVERIFIED",
    "VERSION",
    "bytes_of",
    "is_raw_dtype",
    "write_container",
]

MAGIC = b"\x89PJB\r\n\x1a\n"
VERSION = 1
ALIGNMENT = 64
HEADER = struct.Struct("<HHIQQ")  # version, flags, reserved, pickle length, table length
U64 = struct.Struct("<Q")
PREAMBLE_SIZE = len(MAGIC) + HEADER.size + U64.size  # 40
# Stored instead of an array's digest once the file was mapped writable (mmap_mode="r+"):
# its bytes may have changed since, so they can no longer be checked. Same width as a digest,
# so the table can be rewritten in place.
UNVERIFIED = "-" * 16

# Bytes per write or copy when streaming an array out: bounds the temporary copy made for a
# non-contiguous array and the data handed to a compressor at once.
_WRITE_CHUNK = 1 << 24

# dtype kinds whose values are plain bytes: bool, ints, floats, complex, datetimes, bytes,
# unicode, void. Objects ("O") hold pointers and numpy 2's StringDType ("T") points into an
# arena, so neither can be written raw.
_RAW_KINDS = frozenset("biufcmMSUV")


def _array_ref(index: int) -> NoReturn:
    """Stand in for array ``index`` in a container's pickle; only parajob can resolve it."""
    raise CorruptFileError(
        f"this pickle stream is part of a parajob file: its numpy array {index!r} is stored "
        f"outside the pickle; load the file with parajob.load (or the bytes with "
        f"parajob.loads), not with pickle"
    )


# The global a container's pickle names for each array, as (module, name): part of the file
# format, so _array_ref keeps its name and stays in this module.
ARRAY_REF = (_array_ref.__module__, _array_ref.__name__)


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def is_raw_dtype(dtype: Any) -> bool:
    """True when an array of ``dtype`` can be stored as its bytes and rebuilt from them."""
    if dtype.hasobject or dtype.metadata is not None or dtype.itemsize == 0:
        return False
    if dtype.fields is not None:
        return all(is_raw_dtype(field[0]) for field in dtype.fields.values())
    if dtype.subdtype is not None:
        return is_raw_dtype(dtype.subdtype[0])
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
        if type(obj) in self._array_types and is_raw_dtype(obj.dtype):
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


def bytes_of(contiguous: Any) -> memoryview:
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
        flat = bytes_of(arr)
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
        yield bytes_of(np.ascontiguousarray(arr))
        return
    axis = k - 1
    rows = max(1, chunk // max(1, math.prod(shape[k:]) * arr.itemsize))
    for index in np.ndindex(*shape[:axis]):
        block = arr[index]
        for start in range(0, shape[axis], rows):
            yield bytes_of(np.ascontiguousarray(block[start : start + rows]))


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
        header = HEADER.pack(VERSION, 0, 0, pickle_len, len(table))
        header += U64.pack(xxhash.xxh3_64_intdigest(MAGIC + header))
        checksum = xxhash.xxh3_64(header)
        checksum.update(pickle_bytes)
        checksum.update(table)
        _write_all(out, MAGIC + header)
        _write_all(out, pickle_bytes)
    _write_all(out, table + U64.pack(checksum.intdigest()))
    del pickle_buffer

    position = PREAMBLE_SIZE + pickle_len + len(table) + U64.size
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
        position = PREAMBLE_SIZE + pickle_len + table_len + U64.size
        for entry in entries:
            entry["offset"] = _align(position)
            position = entry["offset"] + entry["nbytes"]
        table = json.dumps(entries, separators=(",", ":")).encode("utf-8")
        if len(table) == table_len:
            return table
        table_len = len(table)
