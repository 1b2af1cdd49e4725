"""Load from an open stream: tell its format from its first bytes and hand it to that reader.

A stream holds a parajob container, a joblib (or plain) pickle stream, or either of them
behind a registered compressor. This module reads just enough of its start to tell which,
rewinds (or, for a stream that cannot seek, pushes the bytes back), and calls the container
reader, the joblib-file reader or a decompressor; over a decompressor it also turns the
decompressor's own exceptions into errors naming the file. It is separate from ``_api``, which
validates the public functions' arguments and turns a path, a file object or bytes into the
stream, the size and the :class:`LoadSettings` this module starts from.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, NamedTuple

from parajob.errors import CorruptFileError, ParajobError, ParajobWarning, TruncatedFileError
from parajob.persistence._compressors import Compressor, detect_compressor, max_prefix_length
from parajob.persistence._format import MAGIC
from parajob.persistence._format_reader import (
    Input,
    map_arrays,
    read_arrays,
    read_head,
    read_upto,
    unpickle,
)

__all__ = ["LoadSettings", "load_stream"]

# joblib's (and pickle's) older formats: a pickle stream starts with PROTO (0x80) for protocols
# 2 and up; joblib < 0.10 wrote zlib files behind this prefix.
_PICKLE_PREFIX = b"\x80"
_OLD_JOBLIB_PREFIX = b"ZF"


class LoadSettings(NamedTuple):
    """What every reader of one load is told, whichever format the stream turns out to hold."""

    source: str  # how messages name what is loaded: "file '/data/model.pj'", ...
    name: str  # the file's path or name ("" if none), for the joblib reader's messages and maps
    ensure_native_byte_order: Any  # "auto", True or False, as given to load
    allow_pickle: bool


def _native_order(ensure_native_byte_order: Any, in_memory: bool) -> bool:
    if ensure_native_byte_order == "auto":
        return in_memory
    return bool(ensure_native_byte_order)


class _Reader(io.RawIOBase):
    """A readable stream over another, with bytes pushed back in front of it.

    Over a decompressor it also turns the decompressor's own exceptions (zlib.error, OSError,
    LZMAError, lz4's RuntimeError, ZstdError, ...) into CorruptFileError/TruncatedFileError
    naming the file, whoever is reading.
    """

    def __init__(self, inner: Any, source: str, compressor: str | None = None) -> None:
        self._inner = inner
        self._pending = b""
        self._source = source
        self._compressor = compressor
        self._readinto = getattr(inner, "readinto", None)

    def readable(self) -> bool:
        return True

    def push_back(self, data: bytes) -> None:
        self._pending = data + self._pending

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pending:
            n = min(len(self._pending), view.nbytes)
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        try:
            if self._readinto is not None:
                return int(self._readinto(view))
            data = self._inner.read(view.nbytes)
            view[: len(data)] = data
            return len(data)
        except (ParajobError, MemoryError):
            raise
        except EOFError as exc:
            if self._compressor is None:
                raise
            raise TruncatedFileError(
                f"{self._source} is truncated: its {self._compressor} stream ends early ({exc}); "
                f"the file was probably cut short while being written or copied"
            ) from exc
        except Exception as exc:
            if self._compressor is None:
                raise
            raise CorruptFileError(
                f"{self._source} is corrupt: it starts like a {self._compressor} stream but "
                f"does not decompress ({type(exc).__name__}: {exc})"
            ) from exc


def _not_ours(source: str, head: bytes) -> CorruptFileError:
    return CorruptFileError(
        f"{source} is not a parajob or joblib file (starts with {head[:8]!r}); give the path of a "
        f"file written by parajob.dump or joblib.dump"
    )


def _load_container(
    stream: Any,
    settings: LoadSettings,
    *,
    available: int | None,
    path: str | None,
    mmap_mode: str | None,
    compressed: str | None = None,
) -> Any:
    source = settings.source
    inp = Input(stream, source, available, position=len(MAGIC))
    head = read_head(inp)
    if mmap_mode is not None and path is not None:
        arrays = map_arrays(path, head, mmap_mode)
    else:
        arrays = read_arrays(inp, head, _native_order(settings.ensure_native_byte_order, True))
    if compressed is not None:
        # Reading on past the container makes the decompressor check its own trailer (CRC,
        # length), so a stream cut short after the container's last byte is reported too
        # (as TruncatedFileError). Whatever follows the stream is not this file's concern:
        # a decompressor may try to read it as another stream and fail, which is ignored.
        try:
            stream.read(1)
        except TruncatedFileError:
            raise
        except CorruptFileError:
            pass
    return unpickle(head.pickle, arrays, allow_pickle=settings.allow_pickle, source=source)


def _load_joblib(stream: Any, settings: LoadSettings, *, mmap_mode: str | None) -> Any:
    """Hand a joblib (or plain pickle) stream to the joblib-format reader.

    ``settings.name`` is the file's path or name, for messages and, with ``mmap_mode``, for
    mapping.
    """
    from parajob.persistence._joblib_format import load_joblib_stream

    return load_joblib_stream(
        stream,
        filename=settings.name,
        mmap_mode=mmap_mode,
        ensure_native_byte_order=_native_order(
            settings.ensure_native_byte_order, mmap_mode is None
        ),
        allow_pickle=settings.allow_pickle,
    )


def load_stream(
    stream: Any,
    settings: LoadSettings,
    *,
    path: str | None,
    available: int | None,
    start: int | None,
    mmap_mode: str | None,
) -> Any:
    """Load from ``stream`` at a container's start; ``start`` is its offset when seekable.

    ``path`` is the file's path when its arrays may be memory-mapped, ``available`` the bytes
    left in the stream when known. A warning this raises points at the caller's caller (the
    user's call of :func:`parajob.load`).
    """
    source = settings.source
    head = read_upto(stream, len(MAGIC))
    if head == MAGIC:
        return _load_container(
            stream, settings, available=available, path=path, mmap_mode=mmap_mode
        )
    if not head:
        raise TruncatedFileError(f"{source} is empty; it holds no parajob or joblib data")
    if MAGIC.startswith(head):
        raise TruncatedFileError(
            f"{source} is truncated: it ends after {len(head)} bytes, inside the parajob header"
        )
    if len(head) == len(MAGIC) and max_prefix_length() > len(head):
        head += read_upto(stream, max_prefix_length() - len(head))

    def rewound() -> Any:
        if start is not None:
            stream.seek(start)
            return stream
        reader = _Reader(stream, source)
        reader.push_back(head)
        return io.BufferedReader(reader)

    if head.startswith(_PICKLE_PREFIX):
        mapped = mmap_mode if path is not None else None
        return _load_joblib(rewound(), settings, mmap_mode=mapped)
    if head.startswith(_OLD_JOBLIB_PREFIX):
        raise CorruptFileError(
            f"{source} was written by joblib older than 0.10, a format parajob does not read; "
            f"load it with that joblib and dump it again"
        )
    found = detect_compressor(head)
    if found is None:
        raise _not_ours(source, head)
    compressor_name, compressor = found
    if mmap_mode is not None:
        warnings.warn(
            f"mmap_mode={mmap_mode!r} cannot memory-map {source}: it is {compressor_name}-"
            f"compressed, so it "
            f"was loaded into memory; dump without compression to memory-map it",
            ParajobWarning,
            stacklevel=3,
        )
    return _load_compressed(rewound(), compressor_name, compressor, settings)


def _load_compressed(
    stream: Any, compressor_name: str, compressor: Compressor, settings: LoadSettings
) -> Any:
    source = settings.source
    decompressed = compressor.decompressor_file(stream)
    try:
        reader = _Reader(decompressed, source, compressor=compressor_name)
        head = read_upto(reader, len(MAGIC))
        if head == MAGIC:
            return _load_container(
                reader,
                settings,
                available=None,
                path=None,
                mmap_mode=None,
                compressed=compressor_name,
            )
        if head.startswith(_PICKLE_PREFIX):
            reader.push_back(head)
            return _load_joblib(io.BufferedReader(reader), settings, mmap_mode=None)
        if len(head) < len(MAGIC) and MAGIC.startswith(head):
            raise TruncatedFileError(
                f"{source} is truncated: its {compressor_name} stream ends after {len(head)} bytes, inside "
                f"the parajob header"
            )
        raise CorruptFileError(
            f"{source} is {compressor_name}-compressed, but what it holds is not a parajob or joblib file "
            f"(starts with {head!r})"
        )
    finally:
        with contextlib.suppress(Exception):
            decompressed.close()
