"""Compressors for :func:`parajob.dump`: the plug-in contract, the built-in ones, the registry.

A compressor turns a binary file object into a compressing writer and back into a
decompressing reader. Files are recognised on load by the compressor's ``prefix`` (the magic
bytes its stream starts with), so a file needs no side information to be read back.

The contract uses the method names of joblib's ``CompressorWrapper``, so an object written for
``joblib.register_compressor`` can be registered here as it is.

The stream formats match what joblib 1.6 writes, so its compressed files load too: ``zlib`` is
a raw zlib stream (RFC 1950), ``gzip`` a single gzip member, ``lzma`` the legacy ``.lzma``
("alone") format, ``xz`` the xz container, ``lz4`` an LZ4 frame and ``zstd`` a Zstandard frame.
"""

from __future__ import annotations

import bz2
import importlib
import io
import lzma
import zlib
from abc import ABC, abstractmethod
from typing import IO, Any

from parajob._registry import Registry
from parajob.errors import MissingDependencyError
from parajob.persistence._format import MAGIC

__all__ = [
    "Compressor",
    "compressor_for_filename",
    "detect_compressor",
    "get_compressor",
    "max_prefix_length",
    "register_compressor",
]

# Bytes handed to zlib per call when reading: big enough that the per-call overhead vanishes,
# small enough that a stalled stream never buffers much.
_READ_CHUNK = 1 << 18


class Compressor(ABC):
    """Describe one compression format for :func:`parajob.dump` and :func:`parajob.load`.

    Subclass it, set the class attributes and implement the two methods, then register an
    instance with :func:`parajob.register_compressor`.

    Attributes
    ----------
    name : str
        A short name, used in messages.
    prefix : bytes
        The magic bytes every stream of this format starts with; :func:`parajob.load` picks the
        compressor of a file by them, so they must not be the prefix of another registered one.
    extensions : tuple of str
        File name endings (with the dot) that select this compressor in :func:`parajob.dump`
        when ``compress`` does not name one.
    max_level : int
        The highest compression level accepted (levels start at 1; 0 means "no compression").

    .. versionadded:: 0.1
    """

    name: str = ""
    prefix: bytes = b""
    extensions: tuple[str, ...] = ()
    max_level: int = 9

    @property
    def extension(self) -> str:
        """The first of :attr:`extensions`, or ``""`` (joblib's attribute name)."""
        return self.extensions[0] if self.extensions else ""

    @abstractmethod
    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        """Return a writable file object compressing into ``fileobj``.

        Parameters
        ----------
        fileobj : binary file object
            Where the compressed bytes go. Closing the returned object must finish the stream
            and must not close ``fileobj``.
        compresslevel : int or None
            The level, or None for the format's default.
        """

    @abstractmethod
    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        """Return a readable file object decompressing ``fileobj``, positioned at its start.

        Closing the returned object must not close ``fileobj``.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} prefix={self.prefix!r}>"


# -- zlib and gzip streams -----------------------------------------------------------------------
# The standard library has no file object for a raw zlib stream (the format joblib writes for
# "zlib"), so these two small classes provide one; gzip reuses them with zlib's gzip framing,
# which is exactly what joblib writes for "gzip" (one member, no file name in the header).


class _DeflateWriter(io.RawIOBase):
    def __init__(self, fileobj: IO[bytes], level: int, wbits: int) -> None:
        self._fp = fileobj
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed compressed stream")
        view = memoryview(data)
        out = self._compressor.compress(view)
        if out:
            self._fp.write(out)
        return view.nbytes

    def close(self) -> None:
        if not self.closed:
            try:
                self._fp.write(self._compressor.flush(zlib.Z_FINISH))
            finally:
                super().close()


class _DeflateReader(io.RawIOBase):
    def __init__(self, fileobj: IO[bytes], wbits: int) -> None:
        self._fp = fileobj
        self._decompressor = zlib.decompressobj(wbits)
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = len(view)
        d = self._decompressor
        while wanted and not self._eof:
            data = d.unconsumed_tail or self._fp.read(_READ_CHUNK)
            if not data:
                raise EOFError("the compressed stream ended before its end-of-stream marker")
            out = d.decompress(data, wanted)
            # At the end marker zlib checks the stream's checksum (adler32 or crc32) and raises
            # on a mismatch, so bytes that reach the caller through here are verified.
            self._eof = d.eof
            if out:
                view[: len(out)] = out
                return len(out)
        return 0


class _DeflateCompressor(Compressor):
    wbits: int = zlib.MAX_WBITS
    default_level = 3

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        level = self.default_level if compresslevel is None else compresslevel
        return _DeflateWriter(fileobj, level, self.wbits)  # type: ignore[return-value]

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return io.BufferedReader(_DeflateReader(fileobj, self.wbits))


class ZlibCompressor(_DeflateCompressor):
    """A raw zlib stream (RFC 1950), joblib's default format; level 3 unless given."""

    name = "zlib"
    prefix = b"\x78"
    extensions = (".z",)
    wbits = zlib.MAX_WBITS


class GzipCompressor(_DeflateCompressor):
    """A gzip member (RFC 1952), readable by ``gzip`` and ``zcat``; level 3 unless given."""

    name = "gzip"
    prefix = b"\x1f\x8b"
    extensions = (".gz",)
    wbits = 16 + zlib.MAX_WBITS


class BZ2Compressor(Compressor):
    """bzip2, through the standard library's :mod:`bz2`; level 9 unless given."""

    name = "bz2"
    prefix = b"BZh"
    extensions = (".bz2",)

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        return bz2.BZ2File(
            fileobj, "wb", compresslevel=9 if compresslevel is None else compresslevel
        )

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return bz2.BZ2File(fileobj, "rb")


class LZMACompressor(Compressor):
    """The legacy ``.lzma`` format (``lzma.FORMAT_ALONE``); preset 6 unless given."""

    name = "lzma"
    prefix = b"\x5d\x00\x00"
    extensions = (".lzma",)
    lzma_format = lzma.FORMAT_ALONE

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        return lzma.LZMAFile(fileobj, "wb", format=self.lzma_format, preset=compresslevel)

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return lzma.LZMAFile(fileobj, "rb", format=self.lzma_format)


class XZCompressor(LZMACompressor):
    """The xz format (``lzma.FORMAT_XZ``, CRC64-checked); preset 6 unless given."""

    name = "xz"
    prefix = b"\xfd7zXZ"
    extensions = (".xz",)
    lzma_format = lzma.FORMAT_XZ


def _import_package(module: str, compressor: str, package: str) -> Any:
    """Import ``module``, which ``compressor`` needs, or name the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{compressor} compression needs the {package} package: "
            f"pip install 'parajob[{compressor}]'"
        ) from None


class LZ4Compressor(Compressor):
    """An LZ4 frame (needs the ``lz4`` package); very fast, modest ratio."""

    name = "lz4"
    prefix = b"\x04\x22\x4d\x18"
    extensions = (".lz4",)
    max_level = 16

    @staticmethod
    def _frame_module() -> Any:
        return _import_package("lz4.frame", "lz4", "lz4")

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        frame = self._frame_module()
        level = 0 if compresslevel is None else compresslevel
        return frame.LZ4FrameFile(fileobj, "wb", compression_level=level)

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return self._frame_module().LZ4FrameFile(fileobj, "rb")


class ZstdCompressor(Compressor):
    """A Zstandard frame (needs ``zstandard``), compressed on every CPU; level 3 unless given.

    Levels 1-22 are accepted; 1-9 cover the useful speed/size trade-offs for arrays.
    """

    name = "zstd"
    prefix = b"\x28\xb5\x2f\xfd"
    extensions = (".zst",)
    max_level = 22

    @staticmethod
    def _zstandard() -> Any:
        return _import_package("zstandard", "zstd", "zstandard")

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        zstandard = self._zstandard()
        level = 3 if compresslevel is None else compresslevel
        # threads=-1: one worker per CPU; the frame is still a plain, single zstd frame.
        compressor = zstandard.ZstdCompressor(level=level, threads=-1)
        return compressor.stream_writer(fileobj, closefd=False)

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        zstandard = self._zstandard()
        return zstandard.ZstdDecompressor().stream_reader(fileobj, closefd=False)


class _ForeignCompressor(Compressor):
    """Adapt an object with joblib's ``CompressorWrapper`` interface to :class:`Compressor`."""

    def __init__(self, name: str, wrapped: Any) -> None:
        self.name = name
        self.prefix = wrapped.prefix
        extension = getattr(wrapped, "extension", "") or ""
        self.extensions = (extension,) if extension else ()
        self.max_level = int(getattr(wrapped, "max_level", 9))
        self.wrapped = wrapped

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        return self.wrapped.compressor_file(fileobj, compresslevel=compresslevel)

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return self.wrapped.decompressor_file(fileobj)


_COMPRESSORS: Registry[Compressor] = Registry("compressor")


def register_compressor(compressor_name: str, compressor: Any, force: bool = False) -> None:
    """Register a compressor for :func:`parajob.dump` and :func:`parajob.load`.

    Parameters
    ----------
    compressor_name : str
        The name to select it with, as in ``dump(obj, path, compress=(name, level))``.
    compressor : Compressor
        A :class:`Compressor` instance, or any object with joblib's ``CompressorWrapper``
        interface (``prefix``, ``extension``, ``compressor_file``, ``decompressor_file``).
    force : bool, default False
        Replace a compressor already registered under ``compressor_name``.

    Raises
    ------
    ValueError
        If the name is taken and ``force`` is false, if the object lacks the interface, or if
        its prefix clashes with another registered compressor's.

    Examples
    --------
    Replace the built-in ``xz`` compressor by one using the strongest preset:

    >>> import lzma
    >>> from parajob.persistence import Compressor, register_compressor
    >>> class StrongXZ(Compressor):
    ...     name = "xz"
    ...     prefix = b"\\xfd7zXZ"
    ...     extensions = (".xz",)
    ...     def compressor_file(self, fileobj, compresslevel=None):
    ...         preset = 9 | lzma.PRESET_EXTREME
    ...         return lzma.LZMAFile(fileobj, "wb", format=lzma.FORMAT_XZ, preset=preset)
    ...     def decompressor_file(self, fileobj):
    ...         return lzma.LZMAFile(fileobj, "rb", format=lzma.FORMAT_XZ)
    >>> register_compressor("xz", StrongXZ(), force=True)
    """
    if not isinstance(compressor_name, str) or not compressor_name:
        raise ValueError(f"compressor_name must be a non-empty str, got {compressor_name!r}")
    if not isinstance(compressor, Compressor):
        missing = [
            attr
            for attr in ("compressor_file", "decompressor_file")
            if not callable(getattr(compressor, attr, None))
        ]
        if missing or not hasattr(compressor, "prefix"):
            raise ValueError(
                f"compressor must be a parajob.persistence.Compressor or have joblib's "
                f"CompressorWrapper interface (prefix, compressor_file, decompressor_file); "
                f"{compressor!r} lacks {missing or ['prefix']}"
            )
        compressor = _ForeignCompressor(compressor_name, compressor)
    prefix = compressor.prefix
    if not isinstance(prefix, bytes) or not prefix:
        raise ValueError(
            f"compressor {compressor_name!r} must have a non-empty bytes prefix (the magic bytes "
            f"its streams start with), got {prefix!r}"
        )
    if prefix.startswith(b"\x80") or MAGIC.startswith(prefix) or prefix.startswith(MAGIC):
        raise ValueError(
            f"compressor {compressor_name!r} has prefix {prefix!r}, which is how pickle streams "
            f"or parajob containers start; choose the format's real magic bytes"
        )
    for other in _COMPRESSORS.names():
        if other == compressor_name:
            continue
        other_prefix = _COMPRESSORS.get(other).prefix
        if other_prefix.startswith(prefix) or prefix.startswith(other_prefix):
            raise ValueError(
                f"compressor {compressor_name!r} has prefix {prefix!r}, which overlaps the "
                f"prefix {other_prefix!r} of the registered compressor {other!r}; files could "
                f"not be told apart on load"
            )
    _COMPRESSORS.register(compressor_name, compressor, force=force)


def get_compressor(name: str) -> Compressor:
    """Return the compressor registered as ``name`` or raise ValueError naming the known ones."""
    if name not in _COMPRESSORS:
        raise ValueError(
            f"unknown compressor {name!r}; registered: {', '.join(_COMPRESSORS.names())}; "
            f"use one of those or add yours with parajob.register_compressor"
        )
    return _COMPRESSORS.get(name)


def detect_compressor(head: bytes) -> tuple[str, Compressor] | None:
    """Return the registered compressor whose prefix ``head`` starts with, if any."""
    for name in _COMPRESSORS.names():
        compressor = _COMPRESSORS.get(name)
        if head.startswith(compressor.prefix):
            return name, compressor
    return None


def compressor_for_filename(filename: str) -> str | None:
    """Return the name of the compressor whose extension ``filename`` ends with, if any."""
    lowered = filename.lower()
    for name in _COMPRESSORS.names():
        if any(lowered.endswith(ext.lower()) for ext in _COMPRESSORS.get(name).extensions):
            return name
    return None


def max_prefix_length() -> int:
    """The length of the longest registered prefix."""
    return max((len(_COMPRESSORS.get(n).prefix) for n in _COMPRESSORS.names()), default=0)


for _name, _compressor in (
    ("zlib", ZlibCompressor()),
    ("gzip", GzipCompressor()),
    ("bz2", BZ2Compressor()),
    ("lzma", LZMACompressor()),
    ("xz", XZCompressor()),
    ("lz4", LZ4Compressor()),
    ("zstd", ZstdCompressor()),
):
    register_compressor(_name, _compressor)
