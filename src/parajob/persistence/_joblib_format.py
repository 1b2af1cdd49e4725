"""Read files written by :func:`joblib.dump` (1.6 and earlier, back to 0.10) without joblib.

What a joblib file holds
------------------------
One pickle stream (compressed as a whole or not; the caller undoes the compression) in which
every numpy array was replaced by a ``joblib.numpy_pickle.NumpyArrayWrapper`` object carrying
the array's subclass, shape, memory order ('C' or 'F'), dtype and whether it may be mapped.
Right after the wrapper's BUILD opcode the writer ends the pickle frame and appends the array
itself, outside the opcodes:

- non-object dtypes: one byte ``p`` and ``p`` bytes of 0xFF, so that the data starts on a
  16-byte boundary (files from joblib <= 1.1 have neither), then the raw bytes, in the
  wrapper's order and in the dtype's own byte order;
- object dtypes: a complete, nested pickle stream (protocol 5) of the array.

How it is read with the C unpickler
-----------------------------------
joblib swaps the wrapper for the array on the stack from a pure-Python ``load_build``; the C
unpickler has no such hook, and the pure-Python one is many times slower. Instead::

    file ─► StreamReader ─► C Unpickler ── BUILD ─► wrapper.__setstate__(state)
               ▲    ▲                                   │ reads the array from the reader
               │    └───────────────────────────────────┘ (it sits at the array's 1st byte)
               └─ then hands the unpickler three injected opcodes first:
                  POP (the wrapper), NONE, BINPERSID
                  ─► persistent_load(None) returns the array, which takes the wrapper's place

This is exact because the reader has no ``peek``: the C unpickler then never reads ahead of
the opcode it needs, and joblib ends a frame right after every wrapper, so when BUILD runs the
unpickler has consumed exactly the bytes before the array, and its next read comes to us.

Nothing from the file runs beyond what ``find_class`` allows: with ``allow_pickle=False`` that
is the allow-list of :mod:`parajob.persistence._safe` plus the wrapper, which only reads bytes.
Every length the file states is checked against the bytes that remain before memory is
allocated for it (exactly for plain files; for compressed streams, reads grow with the data
that actually arrives).
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import sys
import warnings
from typing import Any, BinaryIO, ClassVar, NamedTuple

from parajob.errors import (
    CorruptFileError,
    InvalidParameterError,
    MissingDependencyError,
    ParajobError,
    ParajobWarning,
    TruncatedFileError,
    UnsafeLoadError,
)
from parajob.persistence._arrays import MMAP_MODES, is_foreign_byte_order, map_file
from parajob.persistence._joblib_stream import StreamReader
from parajob.persistence._safe import safe_find_class

__all__ = ["load_joblib_stream"]

# The names under which joblib (and scikit-learn's old vendored copy) pickled its array header.
_WRAPPER_MODULES = ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")
_WRAPPER_NAME = "NumpyArrayWrapper"
# joblib < 0.10 kept arrays in companion .npy / zlib files beside the pickle.
_OLD_WRAPPER_MODULES = (
    *_WRAPPER_MODULES,
    "joblib.numpy_pickle_compat",
    "sklearn.externals.joblib.numpy_pickle_compat",
)
_OLD_WRAPPER_NAMES = ("NDArrayWrapper", "ZNDArrayWrapper")

_MAX_NDIM = 64  # numpy's limit on dimensions (NPY_MAXDIMS)
_MAX_REPR = 80

_BUILD = b"b"
# What the unpickler reads right after an array header's BUILD: POP (the header), NONE,
# BINPERSID, so persistent_load(None) puts the array where the header was. A file's own
# persistent ids are refused, so only this injected one can ever reach the array.
_SWAP_IN = b"0NQ"


class _Nothing:
    """The value of an empty array slot, distinct from any object a file can build."""


_NOTHING = _Nothing()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


class _ArraySpec(NamedTuple):
    """A validated joblib array header."""

    shape: tuple[int, ...]
    order: str
    dtype: Any
    subclass: Any
    allow_mmap: bool
    alignment: int | None
    size: int  # number of elements
    nbytes: int


class _ArrayData:
    """Describes an array's data in an error message, formatted only if one is raised."""

    __slots__ = ("spec",)

    def __init__(self, spec: _ArraySpec) -> None:
        self.spec = spec

    def __str__(self) -> str:
        return f"the data of a {self.spec.shape} {self.spec.dtype} array"


class _SubclassMarker:
    """Stands for ``numpy.memmap`` / ``numpy.matrix`` in a header loaded with allow_pickle=False.

    The real classes could be called by the stream with arbitrary arguments (``np.memmap``
    opens and may truncate any file); this marker only records which subclass was named.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeLoadError(
            f"refused to call numpy.{self.name} with allow_pickle=False: in a joblib file it "
            f"may only name an array's subclass; load the file with allow_pickle=True only if "
            f"you trust whoever wrote it"
        )


_SAFE_SUBCLASS_MARKERS = {name: _SubclassMarker(name) for name in ("memmap", "matrix")}


class _ArrayWrapper:
    """Base of the per-load stand-in for ``joblib.numpy_pickle.NumpyArrayWrapper``."""

    __slots__ = ()
    _loader: ClassVar[_JoblibUnpickler | None] = None

    def __setstate__(self, state: Any) -> None:
        loader = type(self)._loader
        if loader is None:
            raise CorruptFileError(
                "a joblib array header was used after its file finished loading; "
                "the stream is damaged"
            )
        loader.read_array_after_header(state)


class _JoblibUnpickler(pickle.Unpickler):
    """The C unpickler, with joblib's array header resolved to our reader."""

    def __init__(
        self,
        reader: StreamReader,
        *,
        label: str,
        filename: str,
        mmap_mode: str | None,
        ensure_native_byte_order: bool | str,
        allow_pickle: bool,
    ) -> None:
        super().__init__(reader)
        if mmap_mode not in MMAP_MODES:
            raise InvalidParameterError(
                f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}; use 'r' for "
                f"read-only maps"
            )
        self._reader = reader
        self._label = label
        self._filename = filename
        self._mmap_mode = "r+" if mmap_mode == "w+" else mmap_mode  # w+ would truncate the file
        self._map: mmap.mmap | None = None
        self._abs_filename = ""
        self._ensure = ensure_native_byte_order
        self._allow_pickle = allow_pickle
        self._pending: Any = _NOTHING
        self.missing_global: BaseException | None = None
        # A class per load, so that the instances the C unpickler creates know their loader.
        self._wrapper_cls: type[_ArrayWrapper] = type(
            _WRAPPER_NAME, (_ArrayWrapper,), {"__slots__": (), "_loader": self}
        )

    def close(self) -> None:
        """Detach the wrapper class from this loader (a stray instance becomes inert)."""
        self._wrapper_cls._loader = None

    def finish(self, obj: Any) -> Any:
        if self._pending is not _NOTHING or self._reader.injection_pending:
            raise CorruptFileError(
                f"cannot load {self._label}: the pickle stream stopped right after an array "
                f"header, before the array took its place; the file is damaged"
            )
        return obj

    # -- pickle hooks ------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if name == _WRAPPER_NAME and module in _WRAPPER_MODULES:
            self._require_numpy()
            return self._wrapper_cls
        return self.find_other_class(module, name)

    def find_other_class(self, module: str, name: str) -> Any:
        """Resolve every global except joblib's current array header."""
        if name in _OLD_WRAPPER_NAMES and module in _OLD_WRAPPER_MODULES:
            raise CorruptFileError(
                f"cannot load {self._label}: it was written by joblib < 0.10, which kept "
                f"arrays in companion files ({module}.{name}); parajob reads joblib >= 0.10 "
                f"files only; load it with an old joblib and dump it again"
            )
        if not self._allow_pickle:
            if module == "numpy" and name in _SAFE_SUBCLASS_MARKERS:
                return _SAFE_SUBCLASS_MARKERS[name]
            return safe_find_class(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            # A module or class the file names is missing here: the environment's fault.
            self.missing_global = exc
            raise

    def persistent_load(self, pid: Any) -> Any:
        if pid is None and self._pending is not _NOTHING:
            array, self._pending = self._pending, _NOTHING
            return array
        raise CorruptFileError(
            f"cannot load {self._label}: the stream uses a persistent id ({_short(pid)}), "
            f"which joblib never writes; the file is damaged or was not written by joblib"
        )

    # -- arrays ------------------------------------------------------------------------------

    def _require_numpy(self) -> Any:
        try:
            import numpy as np
        except ImportError:
            raise MissingDependencyError(
                f"{self._label} holds numpy arrays, and loading them needs numpy: "
                f"pip install 'parajob[numpy]'"
            ) from None
        return np

    def _corrupt(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"cannot load {self._label}: {what}; the file is damaged")

    def read_array_after_header(self, state: Any) -> None:
        """Read the array that follows a header, and arrange for it to replace the header."""
        if self._pending is not _NOTHING or self._reader.injection_pending:
            raise self._corrupt("two array headers follow each other without array data")
        if self._reader.last != _BUILD:
            raise self._corrupt(
                "an array header does not end its pickle frame, so the array data cannot follow it"
            )
        np = self._require_numpy()
        spec = self._parse_header(state, np)
        if spec.dtype.hasobject:
            array = self._read_object_array(spec, np)
        else:
            array = self._read_plain_array(spec, np)
        array = self._apply_subclass(array, spec, np)
        self._pending = array
        self._reader.inject(_SWAP_IN)

    def _parse_header(self, state: Any, np: Any) -> _ArraySpec:
        if type(state) is not dict:
            raise self._corrupt(f"an array header's state is {_short(state)}, not a dict")
        missing = {"subclass", "shape", "order", "dtype"} - state.keys()
        if missing:
            raise self._corrupt(f"an array header lacks {sorted(missing)}")
        shape = state["shape"]
        if (
            type(shape) is not tuple
            or len(shape) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)
        ):
            raise self._corrupt(
                f"an array header has shape {_short(shape)}, not a tuple of at most "
                f"{_MAX_NDIM} non-negative ints"
            )
        order = state["order"]
        if order not in ("C", "F"):
            raise self._corrupt(f"an array header has order {_short(order)}, not 'C' or 'F'")
        dtype = state["dtype"]
        if not isinstance(dtype, np.dtype):
            raise self._corrupt(f"an array header has dtype {_short(dtype)}, not a numpy dtype")
        allow_mmap = state.get("allow_mmap", False)
        if type(allow_mmap) is not bool:
            raise self._corrupt(f"an array header has allow_mmap={_short(allow_mmap)}")
        alignment = state.get("numpy_array_alignment_bytes")
        if alignment is not None and not (type(alignment) is int and 1 <= alignment <= 255):
            raise self._corrupt(
                f"an array header has alignment {_short(alignment)}, not an int in 1..255"
            )
        size = math.prod(shape)
        nbytes = size * dtype.itemsize
        if nbytes > sys.maxsize:
            raise self._corrupt(
                f"an array header describes {nbytes} bytes ({shape} of {dtype}), more than "
                f"this machine can address"
            )
        return _ArraySpec(
            shape, order, dtype, state["subclass"], allow_mmap, alignment, size, nbytes
        )

    def _read_object_array(self, spec: _ArraySpec, np: Any) -> Any:
        if not self._allow_pickle:
            # The allow-list refuses object dtypes already; this is the second lock.
            raise UnsafeLoadError(
                f"refused a numpy array of dtype {spec.dtype} with allow_pickle=False: object "
                f"arrays hold arbitrary pickled objects; load the file with allow_pickle=True "
                f"only if you trust whoever wrote it"
            )
        array = _NestedUnpickler(self._reader, self).load()
        if (
            not isinstance(array, np.ndarray)
            or not array.dtype.hasobject
            or array.shape != spec.shape
        ):
            raise self._corrupt(
                f"an object array's nested pickle holds {type(array).__name__} "
                f"{_short(getattr(array, 'shape', ''))}, not the {spec.shape} {spec.dtype} "
                f"array its header describes"
            )
        return array

    def _skip_padding(self, spec: _ArraySpec) -> None:
        if spec.alignment is None:
            return
        length = self._reader.read_exact(1, "an array's alignment padding")[0]
        if not 1 <= length <= spec.alignment:
            raise self._corrupt(
                f"an array's alignment padding claims {length} bytes, outside 1..{spec.alignment}"
            )
        if self._reader.read_exact(length, "an array's alignment padding").strip(b"\xff"):
            raise self._corrupt("an array's alignment padding holds bytes other than 0xFF")

    def _read_plain_array(self, spec: _ArraySpec, np: Any) -> Any:
        self._skip_padding(spec)
        foreign = is_foreign_byte_order(spec.dtype)
        mode = self._mmap_mode
        if (
            mode is not None
            and spec.allow_mmap
            # "Always native" wins over mapping: such an array is read into memory instead.
            and not (foreign and self._ensure is True)
            and self._can_map()
        ):
            return self._map_array(spec, mode, np)
        what = _ArrayData(spec)
        self._reader.check_fits(spec.nbytes, what)
        try:
            flat = np.empty(spec.size, dtype=spec.dtype)
        except MemoryError:
            raise self._corrupt(
                f"an array header asks for {spec.nbytes} bytes ({spec.shape} of "
                f"{spec.dtype}), more memory than is available"
            ) from None
        if spec.nbytes:
            with memoryview(flat.view(np.uint8)) as view:
                self._reader.readinto_exact(view, what)
        if foreign and (self._ensure is True or self._ensure == "auto"):
            # In place: the freshly read buffer is ours, so no second copy is needed.
            flat.byteswap(inplace=True)
            flat = flat.view(flat.dtype.newbyteorder("="))
        if spec.order == "F":
            return flat.reshape(spec.shape[::-1]).transpose()
        return flat.reshape(spec.shape)

    def _can_map(self) -> bool:
        if self._filename and self._reader.tells:
            return True
        source = "a stream without a position" if self._filename else "a file object without a name"
        warnings.warn(
            f"mmap_mode={self._mmap_mode!r} needs a file on disk, but {self._label} is read "
            f"from {source}; its arrays are loaded into memory instead",
            ParajobWarning,
            stacklevel=2,
        )
        self._mmap_mode = None
        return False

    def _file_map(self, mode: str) -> mmap.mmap:
        """Map the whole file once; every array of the load is a view of this one map."""
        if self._map is None:
            # One mmap per array (what np.memmap does) costs a file open and a system call
            # each; views of one map cost neither. Arrays never overlap, so sharing the map
            # is invisible, "c" included: a write lands in the writer's private pages.
            self._map = map_file(self._filename, mode)
            self._abs_filename = os.path.abspath(self._filename)
        return self._map

    def _map_array(self, spec: _ArraySpec, mode: str, np: Any) -> Any:
        offset = self._reader.position
        what = _ArrayData(spec)
        self._reader.check_fits(spec.nbytes, what)
        file_map = self._file_map(mode)
        if offset + spec.nbytes > len(file_map):  # for a reader that does not know its end
            raise TruncatedFileError(
                f"cannot load {self._label}: it ends early; the data of a {spec.shape} "
                f"{spec.dtype} array at byte {offset} needs {spec.nbytes} bytes but the file "
                f"has {len(file_map)} bytes; the file is truncated (an interrupted write, copy "
                f"or download?)"
            )
        array = np.ndarray.__new__(
            np.memmap,
            spec.shape,
            dtype=spec.dtype,
            buffer=file_map,
            offset=offset,
            order=spec.order,
        )
        # The attributes np.memmap.__new__ sets, so slices, flush() and .filename work as usual.
        array._mmap = file_map
        array.filename = self._abs_filename
        array.offset = offset
        array.mode = mode
        if spec.nbytes and offset % spec.dtype.alignment:
            warnings.warn(
                f"an array mapped from {self._label} starts at byte {offset}, which is not "
                f"aligned for {spec.dtype}; some libraries (BLAS, PyTorch) may crash on it; "
                f"files written by joblib >= 1.2 or by parajob.dump are aligned",
                ParajobWarning,
                stacklevel=2,
            )
        self._reader.skip(spec.nbytes, what)
        return array

    def _apply_subclass(self, array: Any, spec: _ArraySpec, np: Any) -> Any:
        subclass = spec.subclass
        if subclass is np.ndarray or subclass is np.memmap:
            return array
        if isinstance(subclass, _SubclassMarker):
            return array if subclass.name == "memmap" else array.view(np.matrix)
        if isinstance(subclass, type) and issubclass(subclass, np.ndarray):
            return array if type(array) is subclass else array.view(subclass)
        raise self._corrupt(
            f"an array header names {_short(subclass)} as the array's class, which is not a "
            f"numpy array type"
        )


class _NestedUnpickler(pickle.Unpickler):
    """Reads the nested pickle of an object array, with the outer loader's ``find_class``."""

    def __init__(self, reader: StreamReader, outer: _JoblibUnpickler) -> None:
        super().__init__(reader)
        self._outer = outer

    def find_class(self, module: str, name: str) -> Any:
        if name == _WRAPPER_NAME and module in _WRAPPER_MODULES:
            raise self._outer._corrupt("an object array's nested pickle holds an array header")
        return self._outer.find_other_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise self._outer._corrupt(
            f"an object array's nested pickle uses a persistent id ({_short(pid)})"
        )


# Failures of the unpickler or of the callables it runs that mean "this stream is not what it
# claims" (AttributeError: APPEND on a dict, BUILD on an int, ...). A module or class that
# cannot be found passes through as pickle raises it, since the environment is at fault.
_DAMAGE = (
    pickle.UnpicklingError,
    AttributeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
)


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)


def load_joblib_stream(
    fileobj: BinaryIO,
    *,
    filename: str,
    mmap_mode: str | None,
    ensure_native_byte_order: bool | str,
    allow_pickle: bool,
) -> Any:
    """Load the object of a joblib pickle stream that starts at ``fileobj``'s position.

    Parameters
    ----------
    fileobj : binary file object
        Positioned at the stream's first byte (``b"\\x80"``), already decompressed. It is
        seekable when the file was not compressed.
    filename : str
        The file's path, for messages and for :class:`numpy.memmap`; may be empty for a file
        object without a name.
    mmap_mode : {None, "r", "r+", "c", "w+"}
        Map the arrays of non-object dtype from ``filename`` instead of reading them, with
        :class:`numpy.memmap` semantics; ``"w+"`` means ``"r+"`` (the data already exists).
        Must be None for a compressed file.
    ensure_native_byte_order : bool or "auto"
        ``True``: every array comes back in this machine's byte order (an array stored in the
        other order is read into memory even when ``mmap_mode`` is set); ``"auto"``: arrays
        read into memory are converted, mapped arrays keep the file's order; ``False``: all
        arrays keep the file's order.
    allow_pickle : bool
        When False, only numbers, str, bytes, containers and numpy arrays of non-object dtypes
        are rebuilt; anything else raises :class:`~parajob.errors.UnsafeLoadError` before any
        of it runs.

    Returns
    -------
    object
        What :func:`joblib.load` returns for the same file and arguments.

    Raises
    ------
    TruncatedFileError
        The stream ends before its content does.
    CorruptFileError
        The stream is damaged or is not a joblib stream.
    UnsafeLoadError
        ``allow_pickle=False`` and the stream names something outside the safe set.
    """
    label = repr(filename) if filename else "the file object"
    reader = StreamReader(fileobj, label)
    unpickler = _JoblibUnpickler(
        reader,
        label=label,
        filename=filename,
        mmap_mode=mmap_mode,
        ensure_native_byte_order=ensure_native_byte_order,
        allow_pickle=allow_pickle,
    )
    try:
        return unpickler.finish(unpickler.load())
    except UnsafeLoadError as exc:
        # The allow-list does not know the file; say which one was refused.
        raise UnsafeLoadError(f"cannot load {label}: {exc}") from exc
    except ParajobError:
        raise
    except EOFError as exc:
        raise TruncatedFileError(
            f"cannot load {label}: it ends early ({exc}); the file is truncated"
        ) from exc
    except _DAMAGE as exc:
        if exc is unpickler.missing_global:
            _add_note(exc, f"raised while loading {label} as a joblib file")
            raise
        if isinstance(exc, UnicodeDecodeError):
            raise CorruptFileError(
                f"cannot load {label}: a str in it is not valid text ({exc}); it is damaged, "
                f"or was written by Python 2, which parajob does not read"
            ) from exc
        if isinstance(exc, MemoryError):
            raise CorruptFileError(
                f"cannot load {label}: a length in it asks for more memory than is available; "
                f"the file is damaged"
            ) from exc
        raise CorruptFileError(
            f"cannot load {label}: its pickle stream is damaged, or an object in it cannot be "
            f"rebuilt here ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:
        # A missing module, or a user's class failing in its own way: the error keeps its
        # type (callers may catch it) and gains a note naming the file.
        _add_note(exc, f"raised while loading {label} as a joblib file")
        raise
    finally:
        unpickler.close()
