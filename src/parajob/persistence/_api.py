"""dump, load, dumps and loads: the public functions and their argument handling.

Checking the arguments (with joblib's rules for ``compress``, ``mmap_mode`` and the rest) and
turning a path, a file object or bytes into a stream happen here; how a file is replaced
atomically is :mod:`parajob.persistence._atomic_write`, and how a stream's format is told and
loaded is :mod:`parajob.persistence._loading`.
"""

from __future__ import annotations

import contextlib
import io
import operator
import os
import pickle
import stat
import warnings
from typing import IO, Any

from parajob.errors import ParajobWarning
from parajob.persistence._arrays import MMAP_MODES
from parajob.persistence._atomic_write import atomic_write
from parajob.persistence._compressors import compressor_for_filename, get_compressor
from parajob.persistence._format import write_container
from parajob.persistence._loading import LoadSettings, load_stream

__all__ = ["dump", "dumps", "load", "loads"]

DEFAULT_PROTOCOL = 5

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
        atomic_write(path, lambda f: _write(value, f, compression, protocol))
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
            return load_stream(
                f,
                LoadSettings(f"file {path!r}", path, ensure_native_byte_order, allow_pickle),
                path=path if regular else None,
                available=info.st_size if regular else None,
                start=0 if regular else None,
                mmap_mode=mmap_mode,
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
    settings = LoadSettings(
        source, name if isinstance(name, str) else "", ensure_native_byte_order, allow_pickle
    )
    return load_stream(
        filename, settings, path=None, available=available, start=start, mmap_mode=None
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
    settings = LoadSettings("the bytes given to parajob.loads", "", "auto", allow_pickle)
    return load_stream(stream, settings, path=None, available=view.nbytes, start=0, mmap_mode=None)
