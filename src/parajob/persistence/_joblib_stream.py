"""The file object the joblib-file unpickler reads: exact, bounded reads and opcode injection.

:mod:`parajob.persistence._joblib_format` reads a joblib file with the C unpickler and takes
each array's bytes from the same stream, right where the unpickler stopped (its module
docstring has the picture). That only works through a reader with particular guarantees, kept
here apart from the unpickling: it has no ``peek``, so the unpickler never reads ahead of the
opcode it needs; every read is exact and checked against the bytes that remain, so a length in
the file cannot allocate more than exists; and it can inject opcodes for the unpickler to read
next, which is how a loaded array takes its header's place on the unpickler's stack.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from parajob.errors import CorruptFileError, TruncatedFileError

__all__ = ["StreamReader"]

# Reads from a stream of unknown length are done in pieces of this size, so that a length
# field claiming gigabytes costs memory only as fast as real data arrives.
_CHUNK = 1 << 26


def _known_end(fileobj: Any) -> int | None:
    """Return the offset of the end of ``fileobj`` when it is a plain file or bytes buffer.

    Decompressing readers (gzip, bz2, lzma, ...) also claim to be seekable and expose the
    compressed file's descriptor, so only types whose size is the stream's size are trusted.
    """
    base = fileobj.raw if isinstance(fileobj, io.BufferedReader | io.BufferedRandom) else fileobj
    if not isinstance(base, io.FileIO | io.BytesIO):
        return None
    try:
        if not fileobj.seekable():
            return None
        here = fileobj.tell()
        end = fileobj.seek(0, io.SEEK_END)
        fileobj.seek(here)
    except (OSError, ValueError):
        return None
    return int(end)


class StreamReader:
    """The file object the unpickler reads: exact, bounded reads and opcode injection.

    It deliberately has no ``peek`` method; see the module docstring.
    """

    def __init__(self, fileobj: BinaryIO, label: str) -> None:
        self._f = fileobj
        self._label = label
        self._injected = b""
        self._readinto_f = getattr(fileobj, "readinto", None)
        self.end = _known_end(fileobj)
        try:
            self.position = int(fileobj.tell())
            self.tells = True
        except (AttributeError, OSError, ValueError):
            self.position = 0
            self.tells = False
        # The last byte handed to the unpickler (not counting reads made for array data).
        self.last = b""

    # -- the file protocol the unpickler uses ------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Return exactly ``n`` bytes, injected ones first; raise when the stream ends early."""
        if self._injected or n < 0 or n > _CHUNK:
            return self._read_slow(n)
        # The unpickler calls this for every frame and opcode outside frames: keep it short.
        if self.end is not None and n > self.end - self.position:
            raise self._truncated("pickle data", n, self.end - self.position)
        data = self._f.read(n)
        if len(data) != n:
            data += self.read_exact(n - len(data), "pickle data")
        else:
            self.position += n
        if n:
            self.last = data[-1:]
        return data

    def _read_slow(self, n: int) -> bytes:
        if n < 0:
            n = self._rest_length()
        head = b""
        if self._injected:
            head, self._injected = self._injected[:n], self._injected[n:]
            if len(head) == n:
                self.last = head[-1:]
                return head
        data = head + self.read_exact(n - len(head), "pickle data")
        if data:
            self.last = data[-1:]
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` completely, injected bytes first; raise when the stream ends early."""
        # Views are released on every path: the C unpickler frees its bytearray on error, and
        # a view kept alive by the traceback would make that a SystemError.
        with memoryview(buffer) as outer, outer.cast("B") as view:
            n = len(view)
            start = 0
            if self._injected:
                start = min(n, len(self._injected))
                view[:start] = self._injected[:start]
                self._injected = self._injected[start:]
            if start < n:
                with view[start:] as rest:
                    self.readinto_exact(rest, "pickle data")
            if n:
                self.last = bytes(view[n - 1 :])
        return n

    def readline(self) -> bytes:
        """Return one line, newline included; raise when the stream ends before it."""
        if self._injected:
            cut = self._injected.find(b"\n")
            if cut >= 0:
                line, self._injected = self._injected[: cut + 1], self._injected[cut + 1 :]
                self.last = line[-1:]
                return line
        line = self._injected + self._f.readline()
        self.position += len(line) - len(self._injected)
        self._injected = b""
        if not line.endswith(b"\n"):
            raise self._truncated("a text opcode's line", len(line) + 1, len(line))
        self.last = line[-1:]
        return line

    # -- reads made by the array reader --------------------------------------------------------

    def inject(self, data: bytes) -> None:
        """Make ``data`` the next bytes the unpickler reads."""
        self._injected = data + self._injected

    @property
    def injection_pending(self) -> bool:
        return bool(self._injected)

    def remaining(self) -> int | None:
        return None if self.end is None else self.end - self.position

    def check_fits(self, n: int, what: object) -> None:
        """Raise before ``n`` bytes of ``what`` are allocated if fewer than ``n`` remain."""
        left = self.remaining()
        if left is not None and n > left:
            raise self._truncated(what, n, max(left, 0))

    def read_exact(self, n: int, what: object) -> bytes:
        """Read exactly ``n`` bytes of ``what`` from the file."""
        self.check_fits(n, what)
        parts: list[bytes] = []
        got = 0
        while got < n:
            piece = self._f.read(min(n - got, _CHUNK))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += len(data)
        if len(data) < n:
            raise self._truncated(what, n, len(data))
        return data

    def readinto_exact(self, view: memoryview, what: object) -> None:
        """Fill the byte view ``view`` from the file without an intermediate copy."""
        n = len(view)
        self.check_fits(n, what)
        got = 0
        while got < n:
            with view[got : got + _CHUNK] as window:
                if self._readinto_f is not None:
                    count = self._readinto_f(window)
                else:
                    piece = self._f.read(len(window))
                    count = len(piece)
                    window[:count] = piece
            if not count:
                break
            got += count
        self.position += got
        if got < n:
            raise self._truncated(what, n, got)

    def skip(self, n: int, what: object) -> None:
        """Move past ``n`` bytes of ``what`` (memory-mapped, so not read)."""
        self.check_fits(n, what)
        self._f.seek(n, io.SEEK_CUR)
        self.position += n

    def _rest_length(self) -> int:
        left = self.remaining()
        if left is None:
            raise CorruptFileError(
                f"cannot load {self._label}: the unpickler asked for the rest of a stream of "
                f"unknown length, which joblib files never need; the file is damaged"
            )
        return left

    def _truncated(self, what: object, needed: int, got: int) -> TruncatedFileError:
        return TruncatedFileError(
            f"cannot load {self._label}: it ends early; reading {what} at byte "
            f"{self.position} of the pickle stream needed {needed} bytes but only {got} "
            f"were left; the file is truncated (an interrupted write, copy or download?)"
        )
