"""dump, load, dumps and loads: argument handling, compression, atomic writes, file detection."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import operator
import os
import pickle
import secrets
import stat
import sys
import warnings
from collections.abc import Callable
from typing import IO, Any

from parajob.errors import CorruptFileError, ParajobError, ParajobWarning, TruncatedFileError
from parajob.persistence._compressors import (
    Compressor,
    compressor_for_filename,
    detect_compressor,
    get_compressor,
    max_prefix_length,
)
from parajob.persistence._format import (
    MAGIC,
    Input,
    map_arrays,
    read_arrays,
    read_head,
    unpickle,
    write_container,
)

__all__ = ["dump", "dumps", "load", "loads"]

DEFAULT_PROTOCOL = 5
MMAP_MODES = (None, "r", "r+", "c", "w+")
# joblib's (and pickle's) older formats: a pickle stream starts with PROTO (0x80) for protocols
# 2 and up; joblib < 0.10 wrote zlib files behind this prefix.
_PICKLE_PREFIX = b"\x80"
_OLD_JOBLIB_PREFIX = b"ZF"

Compression = tuple[str, int | None]  # (compressor name, level or None for its default)


# -- argument checks ----------------------------------------------------------------------------


def _check_protocol(protocol: Any) -> int:
    if protocol is None:
        return DEFAULT_PROTOCOL
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise ValueError(
            f"protocol must be None or an int pickle protocol, got {protocol!r}; use None for "
            f"protocol {DEFAULT_PROTOCOL}"
        )
    if protocol < 0:
        return pickle.HIGHEST_PROTOCOL
    if protocol > pickle.HIGHEST_PROTOCOL:
        raise ValueError(
            f"protocol must be at most {pickle.HIGHEST_PROTOCOL} (this Python's highest pickle "
            f"protocol), got {protocol}; use None for protocol {DEFAULT_PROTOCOL}"
        )
    return protocol


def _as_level(level: Any) -> int | None:
    if level is None:
        return None
    if isinstance(level, bool):
        raise TypeError
    return operator.index(level)


_COMPRESS_HELP = (
    "use 0 or False for none, True or an int level 1-9 for zlib, a compressor name such as "
    "'zstd', or a (name, level) tuple"
)


def _resolve_compress(compress: Any, filename: str | None) -> Compression | None:
    """Return (compressor name, level or None for its default), or None for no compression.

    joblib's rules: True is zlib at its default level 3; an int is a zlib level; a name or a
    (name, level) tuple chooses the compressor; otherwise a file name ending with a
    compressor's extension chooses it (at the given level, or its default one when the level
    is 0); a level of 0 means no compression.
    """
    method = "zlib"
    explicit = False
    level: int | None
    if compress is True:
        level = None
    elif compress is False or compress is None:
        level = 0
    elif isinstance(compress, str):
        method, level, explicit = compress, None, True
    elif isinstance(compress, tuple):
        if len(compress) != 2 or not isinstance(compress[0], str):
            raise ValueError(
                f"compress as a tuple must be (compressor name, level), got {compress!r}; "
                f"e.g. ('zstd', 3)"
            )
        method, explicit = compress[0], True
        try:
            level = _as_level(compress[1])
        except TypeError:
            raise ValueError(
                f"compress level must be an int, got {compress[1]!r} in {compress!r}; "
                f"e.g. ({method!r}, 3)"
            ) from None
    else:
        try:
            level = _as_level(compress)
        except TypeError:
            raise ValueError(f"compress got {compress!r}; {_COMPRESS_HELP}") from None
    if not explicit and filename is not None:
        by_extension = compressor_for_filename(filename)
        if by_extension is not None:
            method = by_extension
            if level == 0:
                level = None
    compressor = get_compressor(method)
    if level is not None and not 0 <= level <= compressor.max_level:
        raise ValueError(
            f"compress level must be from 0 to {compressor.max_level} for {method!r}, got "
            f"{level}; 0 means no compression, higher levels compress more but slower"
        )
    if level == 0:
        return None
    return method, level


def _check_load_args(
    mmap_mode: Any, ensure_native_byte_order: Any, allow_pickle: Any
) -> str | None:
    if mmap_mode not in MMAP_MODES:
        raise ValueError(
            f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}; use 'r' for read-only "
            f"memory maps, 'c' for copy-on-write, 'r+' to write through to the file"
        )
    if ensure_native_byte_order not in ("auto", True, False) or (
        isinstance(ensure_native_byte_order, int) and not isinstance(ensure_native_byte_order, bool)
    ):
        raise ValueError(
            f"ensure_native_byte_order must be 'auto', True or False, got "
            f"{ensure_native_byte_order!r}"
        )
    if ensure_native_byte_order is True and mmap_mode is not None:
        raise ValueError(
            f"ensure_native_byte_order=True needs mmap_mode=None, got mmap_mode={mmap_mode!r}: "
            f"a memory map keeps the file's byte order; use ensure_native_byte_order='auto'"
        )
    if not isinstance(allow_pickle, bool):
        raise ValueError(f"allow_pickle must be True or False, got {allow_pickle!r}")
    # joblib maps 'w+' (numpy's "create or overwrite") to 'r+': loading never truncates.
    return "r+" if mmap_mode == "w+" else mmap_mode


def _native_order(ensure_native_byte_order: Any, in_memory: bool) -> bool:
    if ensure_native_byte_order == "auto":
        return in_memory
    return bool(ensure_native_byte_order)


def _path_of(filename: Any) -> str | None:
    if isinstance(filename, (str, os.PathLike)):
        path = os.fspath(filename)
        return os.fsdecode(path) if isinstance(path, bytes) else path
    if isinstance(filename, bytes):
        return os.fsdecode(filename)
    return None


def _describe_fileobj(fileobj: Any) -> str:
    name = getattr(fileobj, "name", None)
    if isinstance(name, str) and name:
        return f"file object {name!r}"
    return f"file object {fileobj!r}"


# -- writing ------------------------------------------------------------------------------------


def _write(value: Any, out: IO[bytes], compression: Compression | None, protocol: int) -> None:
    if compression is None:
        write_container(value, out, protocol)
        return
    name, level = compression
    stream = get_compressor(name).compressor_file(out, compresslevel=level)
    try:
        write_container(value, stream, protocol)
    except BaseException:
        # Release the compressor (zstd holds worker threads); its error, if any, would only
        # hide the one that matters.
        with contextlib.suppress(Exception):
            stream.close()
        raise
    stream.close()


_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None  # resolved on first use; False when unavailable


def _exchange(first: str, second: str) -> bool:
    """Atomically swap two existing paths; False when the system cannot (then nothing moved).

    Linux's ``renameat2(..., RENAME_EXCHANGE)``, through libc. It exists for speed: ext4 (the
    usual Linux file system) treats a rename *over* an existing file as a hint to flush the
    new file to disk first ("auto_da_alloc"), which made replacing a 1 GB file 3-4x slower than
    writing it; an exchange is just as atomic for readers and is not subject to that flush.
    """
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_uint,
                ]
                function.restype = ctypes.c_int
                _renameat2 = function
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    result = _renameat2(
        at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT, errno.EXDEV):
        return False  # not supported here (or the target just vanished): use a plain rename
    raise OSError(error, os.strerror(error), second)


# Below this size, the old version's cached pages are not worth a system call.
_RELEASE_CACHE_FROM = 1 << 20


def _release_cached_pages(path: str) -> None:
    """Ask the kernel to drop the page cache of a file that is about to be replaced.

    Until the new version is complete, the old one must stay, so an atomic replacement would
    otherwise hold both in the page cache: twice the file's size, taken from memory that may
    not have been touched for a while. On virtual machines such memory costs a host page fault
    per page; writing a 1 GB file next to its cached old version measured 3-6x slower than
    writing it after dropping that cache. Readers of the old version are unaffected (they
    read it from disk again). Best effort: where the call is missing or fails, nothing changes.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in its directory, then move it into place.

    Readers see the old file or the new one, never a partial one; on any failure (a full disk,
    an unpicklable object, Ctrl-C) the temporary file is removed and the old file is untouched.
    """
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        # A device or FIFO (/dev/null, a pipe): there is nothing to replace, write through.
        with open(target, "wb") as f:
            write(f)
        return
    if existing is not None and existing.st_size >= _RELEASE_CACHE_FROM:
        _release_cached_pages(target)
    directory, name = os.path.split(os.path.abspath(target))
    temporary = os.path.join(directory, f"{name}.parajob-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as f:
            write(f)
        if existing is None:
            os.replace(temporary, target)
        else:
            os.chmod(temporary, stat.S_IMODE(existing.st_mode))
            if not _exchange(temporary, target):
                os.replace(temporary, target)
    finally:
        # After an exchange the temporary name holds the old file; after a failure, the
        # partial new one; after a plain rename, nothing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def dump(
    value: Any, filename: Any, compress: Any = 0, protocol: int | None = None
) -> list[str] | None:
    """Persist an object into one file; numpy arrays are stored raw and aligned.

    Parameters
    ----------
    value : object
        Any picklable object. numpy arrays in it (of non-object dtypes) are stored outside the
        pickle stream, 64-byte aligned, so that :func:`load` can memory-map them.
    filename : str, os.PathLike or binary file object
        Where to write. A path is written atomically: to a temporary file beside it, renamed
        into place when complete, so the old file survives any failure. A file object is
        written at its current position.
    compress : bool, int, str or (str, int), default 0
        ``0``/``False``: no compression; ``True``: zlib at level 3; an int 1-9: zlib at that
        level; a name (``"zlib"``, ``"gzip"``, ``"bz2"``, ``"lzma"``, ``"xz"``, ``"lz4"``,
        ``"zstd"`` or a registered one): that compressor at its default level; ``(name,
        level)``: both. Unless a name is given, a path ending with a compressor's extension
        (``.z .gz .bz2 .lzma .xz .lz4 .zst``) selects that compressor, as in joblib.
    protocol : int, optional
        The pickle protocol; None means 5. Older protocols work too (arrays are still stored
        out of the pickle stream).

    Returns
    -------
    list of str or None
        ``[filename]`` for a path, None for a file object (as joblib).

    Raises
    ------
    ValueError
        For an invalid ``filename``, ``compress`` or ``protocol``.
    parajob.errors.MissingDependencyError
        If the compressor needs a package that is not installed (lz4, zstandard).

    See Also
    --------
    load, dumps

    Examples
    --------
    >>> import numpy as np, parajob
    >>> parajob.dump({"weights": np.ones((1000, 100))}, "/tmp/model.pj")
    ['/tmp/model.pj']
    >>> parajob.dump([1, 2, 3], "/tmp/small.pj.zst")  # zstd, from the extension
    ['/tmp/small.pj.zst']
    """
    protocol = _check_protocol(protocol)
    path = _path_of(filename)
    if path is not None:
        compression = _resolve_compress(compress, path)
        _atomic_write(path, lambda f: _write(value, f, compression, protocol))
        return [path]
    if callable(getattr(filename, "write", None)):
        compression = _resolve_compress(compress, None)
        _write(value, filename, compression, protocol)
        return None
    raise ValueError(
        f"filename must be a path (str or os.PathLike) or a binary file object opened for "
        f"writing, got {filename!r} of type {type(filename).__name__}; note the order is "
        f"dump(value, filename)"
    )


def dumps(value: Any, compress: Any = 0, protocol: int | None = None) -> bytes:
    """Return the bytes :func:`dump` would write for ``value``.

    Parameters
    ----------
    value : object
        Any picklable object.
    compress : bool, int, str or (str, int), default 0
        As for :func:`dump` (there is no file name to infer a compressor from).
    protocol : int, optional
        The pickle protocol; None means 5.

    Returns
    -------
    bytes
        A parajob container, which :func:`loads` (or :func:`load`, once written to a file)
        reads back.

    Examples
    --------
    >>> import parajob
    >>> data = parajob.dumps({"a": [1, 2, 3]}, compress="zlib")
    >>> parajob.loads(data)
    {'a': [1, 2, 3]}

    .. versionadded:: 0.1
    """
    protocol = _check_protocol(protocol)
    compression = _resolve_compress(compress, None)
    out = io.BytesIO()
    _write(value, out, compression, protocol)
    return out.getvalue()


# -- reading ------------------------------------------------------------------------------------


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


def _read_upto(stream: Any, n: int) -> bytes:
    pieces = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        pieces.append(bytes(data))
        got += len(data)
    return b"".join(pieces)


def _not_ours(source: str, head: bytes) -> CorruptFileError:
    return CorruptFileError(
        f"{source} is not a parajob or joblib file (starts with {head[:8]!r}); give the path of a "
        f"file written by parajob.dump or joblib.dump"
    )


def _load_container(
    stream: Any,
    *,
    source: str,
    available: int | None,
    path: str | None,
    mmap_mode: str | None,
    ensure_native_byte_order: Any,
    allow_pickle: bool,
    compressed: str | None = None,
) -> Any:
    inp = Input(stream, source, available, position=len(MAGIC))
    head = read_head(inp)
    if mmap_mode is not None and path is not None:
        arrays = map_arrays(path, head, mmap_mode)
    else:
        arrays = read_arrays(inp, head, _native_order(ensure_native_byte_order, True))
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
    return unpickle(head.pickle, arrays, allow_pickle=allow_pickle, source=source)


def _load_joblib(
    stream: Any,
    *,
    name: str,
    mmap_mode: str | None,
    ensure_native_byte_order: Any,
    allow_pickle: bool,
) -> Any:
    """Hand a joblib (or plain pickle) stream to the joblib-format reader.

    ``name`` is the file's path or name, for messages and, with ``mmap_mode``, for mapping.
    """
    from parajob.persistence._joblib_format import load_joblib_stream

    return load_joblib_stream(
        stream,
        filename=name,
        mmap_mode=mmap_mode,
        ensure_native_byte_order=_native_order(ensure_native_byte_order, mmap_mode is None),
        allow_pickle=allow_pickle,
    )


def _load_stream(
    stream: Any,
    *,
    source: str,
    name: str,
    path: str | None,
    available: int | None,
    start: int | None,
    mmap_mode: str | None,
    ensure_native_byte_order: Any,
    allow_pickle: bool,
) -> Any:
    """Load from ``stream`` at a container's start; ``start`` is its offset when seekable."""
    head = _read_upto(stream, len(MAGIC))
    options = {
        "source": source,
        "ensure_native_byte_order": ensure_native_byte_order,
        "allow_pickle": allow_pickle,
    }
    if head == MAGIC:
        return _load_container(
            stream, available=available, path=path, mmap_mode=mmap_mode, **options
        )
    if not head:
        raise TruncatedFileError(f"{source} is empty; it holds no parajob or joblib data")
    if MAGIC.startswith(head):
        raise TruncatedFileError(
            f"{source} is truncated: it ends after {len(head)} bytes, inside the parajob header"
        )
    if len(head) == len(MAGIC) and max_prefix_length() > len(head):
        head += _read_upto(stream, max_prefix_length() - len(head))

    def rewound() -> Any:
        if start is not None:
            stream.seek(start)
            return stream
        reader = _Reader(stream, source)
        reader.push_back(head)
        return io.BufferedReader(reader)

    if head.startswith(_PICKLE_PREFIX):
        mapped = mmap_mode if path is not None else None
        return _load_joblib(
            rewound(),
            name=name,
            mmap_mode=mapped,
            ensure_native_byte_order=ensure_native_byte_order,
            allow_pickle=allow_pickle,
        )
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
    return _load_compressed(rewound(), compressor_name, compressor, name=name, **options)


def _load_compressed(
    stream: Any,
    compressor_name: str,
    compressor: Compressor,
    *,
    name: str,
    source: str,
    ensure_native_byte_order: Any,
    allow_pickle: bool,
) -> Any:
    decompressed = compressor.decompressor_file(stream)
    try:
        reader = _Reader(decompressed, source, compressor=compressor_name)
        head = _read_upto(reader, len(MAGIC))
        options = {
            "source": source,
            "ensure_native_byte_order": ensure_native_byte_order,
            "allow_pickle": allow_pickle,
        }
        if head == MAGIC:
            return _load_container(
                reader,
                available=None,
                path=None,
                mmap_mode=None,
                compressed=compressor_name,
                **options,
            )
        if head.startswith(_PICKLE_PREFIX):
            reader.push_back(head)
            return _load_joblib(
                io.BufferedReader(reader),
                name=name,
                mmap_mode=None,
                ensure_native_byte_order=ensure_native_byte_order,
                allow_pickle=allow_pickle,
            )
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


def load(
    filename: Any,
    mmap_mode: str | None = None,
    ensure_native_byte_order: Any = "auto",
    *,
    allow_pickle: bool = True,
) -> Any:
    """Reconstruct an object from a file written by :func:`dump` (or by ``joblib.dump``).

    Parameters
    ----------
    filename : str, os.PathLike or binary file object
        The file to read. Its format and compressor are recognised from its first bytes.
    mmap_mode : {None, "r", "r+", "c", "w+"}, optional
        Memory-map the numpy arrays instead of reading them: ``"r"`` read-only, ``"c"``
        copy-on-write, ``"r+"`` (and ``"w+"``, treated as ``"r+"`` as in joblib) writable
        through to the file. The arrays come back as :class:`numpy.memmap`, without copying.
        Ignored, with a warning, for compressed files and file objects.
    ensure_native_byte_order : {"auto", True, False}, default "auto"
        Convert arrays stored in the other byte order to the machine's. ``"auto"`` does so for
        arrays read into memory and keeps the file's order for memory-mapped ones; True
        requires ``mmap_mode=None``.
    allow_pickle : bool, default True
        With False, only numbers, str, bytes, None, bools, lists, tuples, dicts, sets and numpy
        arrays of non-object dtypes are rebuilt; any other global the file names raises
        :class:`~parajob.errors.UnsafeLoadError` before anything from the file runs. Use it
        for files from someone you do not trust.

        .. versionadded:: 0.1

    Returns
    -------
    object
        The object that was dumped.

    Raises
    ------
    parajob.errors.CorruptFileError
        If the file is damaged or is not a parajob or joblib file.
    parajob.errors.TruncatedFileError
        If the file ends before its content does (a subclass of CorruptFileError and EOFError).
    parajob.errors.UnsafeLoadError
        With ``allow_pickle=False``, if the file asks for anything outside the safe set.
    ValueError
        For invalid arguments.

    Notes
    -----
    Every load verifies the file's metadata and pickle stream against checksums; arrays read
    into memory are verified too. Memory-mapped arrays are not read at load time, so their
    bytes are not verified. Loading with ``mmap_mode="r+"`` marks the file's array checksums
    as unverifiable, since the arrays may then be changed in place.

    See Also
    --------
    dump, loads

    Examples
    --------
    >>> import numpy as np, parajob
    >>> _ = parajob.dump({"weights": np.ones((1000, 100))}, "/tmp/model.pj")
    >>> model = parajob.load("/tmp/model.pj", mmap_mode="r")
    >>> type(model["weights"]).__name__, model["weights"].flags.writeable
    ('memmap', False)
    """
    mmap_mode = _check_load_args(mmap_mode, ensure_native_byte_order, allow_pickle)
    path = _path_of(filename)
    if path is not None:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            regular = stat.S_ISREG(info.st_mode)
            # A FIFO or a character device (/dev/stdin) is read as a stream: its size says
            # nothing and it cannot be mapped.
            if not regular and mmap_mode is not None:
                warnings.warn(
                    f"mmap_mode={mmap_mode!r} cannot memory-map file {path!r}: it is not a "
                    f"regular file, so it was loaded into memory",
                    ParajobWarning,
                    stacklevel=2,
                )
                mmap_mode = None
            return _load_stream(
                f,
                source=f"file {path!r}",
                name=path,
                path=path if regular else None,
                available=info.st_size if regular else None,
                start=0 if regular else None,
                mmap_mode=mmap_mode,
                ensure_native_byte_order=ensure_native_byte_order,
                allow_pickle=allow_pickle,
            )
    if not callable(getattr(filename, "read", None)):
        raise ValueError(
            f"filename must be a path (str or os.PathLike) or a binary file object opened for "
            f"reading, got {filename!r} of type {type(filename).__name__}"
        )
    source = _describe_fileobj(filename)
    if mmap_mode is not None:
        warnings.warn(
            f"mmap_mode={mmap_mode!r} is ignored when loading from a file object ({source}); "
            f"pass the file's path to memory-map its arrays",
            ParajobWarning,
            stacklevel=2,
        )
    start, available = _position_and_size(filename)
    name = getattr(filename, "name", "")
    return _load_stream(
        filename,
        source=source,
        name=name if isinstance(name, str) else "",
        path=None,
        available=available,
        start=start,
        mmap_mode=None,
        ensure_native_byte_order=ensure_native_byte_order,
        allow_pickle=allow_pickle,
    )


def _position_and_size(fileobj: Any) -> tuple[int | None, int | None]:
    """The stream's position and the bytes after it, or (None, None) when it cannot seek."""
    try:
        if not fileobj.seekable():
            return None, None
        start = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(start)
    except (AttributeError, OSError, ValueError):
        return None, None
    return start, end - start


def loads(data: Any, *, allow_pickle: bool = True) -> Any:
    """Reconstruct an object from bytes made by :func:`dumps` (or read from a dumped file).

    Parameters
    ----------
    data : bytes-like
        A parajob container, compressed or not, or a joblib pickle stream.
    allow_pickle : bool, default True
        As for :func:`load`: False rebuilds only plain data and numpy arrays.

    Returns
    -------
    object
        The object that was dumped. Arrays are fresh, writable copies.

    Raises
    ------
    parajob.errors.CorruptFileError
        If the bytes are damaged or not a parajob container.
    parajob.errors.UnsafeLoadError
        With ``allow_pickle=False``, if the data asks for anything outside the safe set.

    Examples
    --------
    >>> import parajob
    >>> parajob.loads(parajob.dumps((1, "two", 3.0)))
    (1, 'two', 3.0)

    .. versionadded:: 0.1
    """
    _check_load_args(None, "auto", allow_pickle)
    if isinstance(data, str):
        raise TypeError(
            "loads needs bytes, got str; pass the bytes returned by parajob.dumps (for a file, "
            "use parajob.load(path))"
        )
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"loads needs a bytes-like object, got {type(data).__name__}; pass the bytes "
            f"returned by parajob.dumps"
        ) from None
    stream = io.BytesIO(data if isinstance(data, bytes) else view.cast("B").tobytes())
    return _load_stream(
        stream,
        source="the bytes given to parajob.loads",
        name="",
        path=None,
        available=view.nbytes,
        start=0,
        mmap_mode=None,
        ensure_native_byte_order="auto",
        allow_pickle=allow_pickle,
    )
