"""Compressors: formats, levels, detection, extension inference, registration, joblib streams."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pytest

from parajob.errors import CorruptFileError, MissingDependencyError, ParajobWarning
from parajob.persistence import Compressor, dump, dumps, load, loads, register_compressor
from parajob.persistence._compressors import _COMPRESSORS, detect_compressor, get_compressor
from parajob.persistence._format import MAGIC

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")
# Golden files written by joblib 1.6, beside the checkout (see their README).
JOBLIB_FILES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "joblib-1.6"

PREFIXES = {
    "zlib": b"\x78",
    "gzip": b"\x1f\x8b",
    "bz2": b"BZh",
    "lzma": b"\x5d\x00\x00",
    "xz": b"\xfd7zXZ",
    "lz4": b"\x04\x22\x4d\x18",
    "zstd": b"\x28\xb5\x2f\xfd",
}


def _standalone_decompress(name: str, data: bytes) -> bytes:
    """Decompress with each format's own reference library, not with parajob."""
    if name == "zlib":
        return zlib.decompress(data)
    if name == "gzip":
        return gzip.decompress(data)
    if name == "bz2":
        return bz2.decompress(data)
    if name == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_ALONE)
    if name == "xz":
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if name == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(data))
    import zstandard

    return bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_each_compressor_writes_its_standard_format_around_a_container(name: str) -> None:
    value = {"arr": np.repeat(np.arange(500, dtype=np.int64), 100), "text": "abc" * 100}
    data = dumps(value, compress=name)
    assert data.startswith(PREFIXES[name])
    inner = _standalone_decompress(name, data)
    assert inner.startswith(MAGIC)
    assert inner == dumps(value)
    loaded = loads(data)
    assert loaded["text"] == value["text"]
    np.testing.assert_array_equal(loaded["arr"], value["arr"])
    assert len(data) < len(inner) / 2


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_each_compressor_round_trips_through_a_file_and_warns_on_mmap(
    tmp_path: pathlib.Path, name: str
) -> None:
    arrays = {"c": np.arange(30.0).reshape(5, 6), "f": np.asfortranarray(np.ones((4, 3)))}
    path = tmp_path / f"arrays.{name}.pj"
    dump(arrays, path, compress=(name, 1))
    assert path.read_bytes().startswith(PREFIXES[name])
    with pytest.warns(ParajobWarning, match=f"{name}-compressed"):
        loaded = load(path, mmap_mode="r")
    for key, expected in arrays.items():
        assert type(loaded[key]) is np.ndarray
        np.testing.assert_array_equal(loaded[key], expected)
    assert loaded["f"].flags.f_contiguous


@pytest.mark.parametrize(
    ("extension", "name"),
    [
        (".z", "zlib"),
        (".gz", "gzip"),
        (".bz2", "bz2"),
        (".lzma", "lzma"),
        (".xz", "xz"),
        (".lz4", "lz4"),
        (".zst", "zstd"),
        (".GZ", "gzip"),
    ],
)
def test_the_extension_chooses_the_compressor(
    tmp_path: pathlib.Path, extension: str, name: str
) -> None:
    path = tmp_path / f"data.pkl{extension}"
    dump(np.zeros(1000), path)
    assert path.read_bytes().startswith(PREFIXES[name])
    # As in joblib, an int level keeps the extension's compressor and sets the level ...
    dump(np.zeros(1000), path, compress=1)
    assert path.read_bytes().startswith(PREFIXES[name])
    # ... while a name or a (name, level) tuple wins over the extension.
    dump(np.zeros(1000), path, compress=("zlib", 2))
    assert path.read_bytes().startswith(PREFIXES["zlib"])
    dump(np.zeros(1000), path, compress="bz2")
    assert path.read_bytes().startswith(PREFIXES["bz2"])
    np.testing.assert_array_equal(load(path), np.zeros(1000))


def test_plain_extensions_are_not_compressed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "data.pkl"
    dump(np.zeros(10), path)
    assert path.read_bytes().startswith(MAGIC)


@pytest.mark.parametrize(
    ("compress", "name", "level"),
    [
        (True, "zlib", 3),
        (1, "zlib", 1),
        (9, "zlib", 9),
        ("gzip", "gzip", None),
        (("xz", 2), "xz", 2),
        (("zstd", 19), "zstd", 19),
        (("lz4", 12), "lz4", 12),
    ],
)
def test_compress_argument_forms(compress: Any, name: str, level: int | None) -> None:
    data = dumps(np.zeros(100), compress=compress)
    assert data.startswith(PREFIXES[name])
    if name == "zlib":
        # zlib's header records the level class: 1 -> fastest (0x01), 3 -> fast (0x5e),
        # 9 -> best (0xda).
        assert data[1:2] == {1: b"\x01", 3: b"\x5e", 9: b"\xda"}[level]
    np.testing.assert_array_equal(loads(data), np.zeros(100))


@pytest.mark.parametrize("compress", [0, False, None, ("zlib", 0), ("zstd", 0)])
def test_level_zero_means_no_compression(compress: Any) -> None:
    assert dumps(1, compress=compress).startswith(MAGIC)


@pytest.mark.parametrize(
    ("compress", "message"),
    [
        (10, "from 0 to 9 for 'zlib', got 10"),
        (-1, "from 0 to 9 for 'zlib', got -1"),
        (("zstd", 23), "from 0 to 22 for 'zstd', got 23"),
        (("gzip", 10), "from 0 to 9 for 'gzip', got 10"),
        ("snappy", "unknown compressor 'snappy'; registered: bz2, gzip, lz4, lzma, xz, zlib, zstd"),
        (("zlib",), r"must be \(compressor name, level\)"),
        (("zlib", 3, 4), r"must be \(compressor name, level\)"),
        (("zlib", "3"), "compress level must be an int, got '3'"),
        (("zlib", True), "compress level must be an int, got True"),
        (2.5, "compress got 2.5"),
        ([1], r"compress got \[1\]"),
    ],
)
def test_invalid_compress_arguments_say_what_and_how(compress: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dumps(1, compress=compress)


def test_golden_joblib_streams_decompress_to_their_plain_files() -> None:
    compressed = sorted(JOBLIB_FILES.glob("*.*.pkl"))
    assert len(compressed) >= 7
    seen = set()
    for path in compressed:
        raw = path.read_bytes()
        found = detect_compressor(raw[:8])
        assert found is not None, path.name
        name, compressor = found
        seen.add(name)
        with compressor.decompressor_file(io.BytesIO(raw)) as stream:
            inner = stream.read()
        plain = (JOBLIB_FILES / (path.name.split(".")[0] + ".pkl")).read_bytes()
        assert inner == plain, path.name
    assert seen == {"zlib", "gzip", "bz2", "lzma", "xz", "lz4"}


def test_a_file_with_a_compressor_prefix_but_bad_data_is_corrupt(tmp_path: pathlib.Path) -> None:
    for name, prefix in PREFIXES.items():
        path = tmp_path / f"bad_{name}.pj"
        path.write_bytes(prefix + b"this is not compressed data at all" * 10)
        with pytest.raises(CorruptFileError, match=str(path)):
            load(path)


def test_compressed_data_holding_something_else_is_reported() -> None:
    with pytest.raises(CorruptFileError, match="zlib-compressed, but what it holds"):
        loads(zlib.compress(b"hello world, not a parajob container"))


def test_arrays_are_written_in_bounded_pieces_not_copied_whole() -> None:
    class _CountingSink(io.RawIOBase):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            n = memoryview(data).nbytes
            self.sizes.append(n)
            return n

    base = np.random.default_rng(1).random((6000, 1000))  # 48 MB
    for arr in (base, base[:, ::2], np.asfortranarray(base)):
        sink = _CountingSink()
        dump(arr, sink)
        assert sum(sink.sizes) >= arr.nbytes
        assert max(sink.sizes) <= 16 << 20, max(sink.sizes)


# -- registration -------------------------------------------------------------------------------


class _XorStream(io.RawIOBase):
    """A toy format (xor with 0x5A after a 6-byte magic) to test the plug-in contract."""

    def __init__(self, fileobj: IO[bytes], mode: str) -> None:
        self._fp = fileobj
        self._mode = mode
        if mode == "wb":
            fileobj.write(b"XORED\x00")
        else:
            assert fileobj.read(6) == b"XORED\x00"

    def readable(self) -> bool:
        return self._mode == "rb"

    def writable(self) -> bool:
        return self._mode == "wb"

    def write(self, data: Any) -> int:
        view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        self._fp.write((view ^ 0x5A).tobytes())
        return view.size

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._fp.read(view.nbytes)
        view[: len(data)] = (np.frombuffer(data, dtype=np.uint8) ^ 0x5A).tobytes()
        return len(data)


class XorCompressor(Compressor):
    name = "xor"
    prefix = b"XORED\x00"
    extensions = (".xor",)

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        return _XorStream(fileobj, "wb")  # type: ignore[return-value]

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        return _XorStream(fileobj, "rb")  # type: ignore[return-value]


class JoblibStyleWrapper:
    """What joblib users register: a CompressorWrapper look-alike, not our ABC."""

    prefix = b"JOBLIBX\x01"
    extension = ".jx"

    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> IO[bytes]:
        fileobj.write(self.prefix)
        return gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=compresslevel or 3)

    def decompressor_file(self, fileobj: IO[bytes]) -> IO[bytes]:
        assert fileobj.read(len(self.prefix)) == self.prefix
        return gzip.GzipFile(fileobj=fileobj, mode="rb")


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        _COMPRESSORS.unregister(name)


def test_a_registered_compressor_is_used_by_name_and_extension_and_detected(
    tmp_path: pathlib.Path, registered: list[str]
) -> None:
    register_compressor("xor", XorCompressor())
    registered.append("xor")
    value = {"arr": np.arange(100), "s": "secret"}
    data = dumps(value, compress="xor")
    assert data.startswith(b"XORED\x00") and MAGIC not in data
    assert loads(data)["s"] == "secret"
    path = tmp_path / "file.xor"
    dump(value, path)
    assert path.read_bytes().startswith(b"XORED\x00")
    assert load(path)["arr"].tolist() == list(range(100))


def test_a_joblib_style_compressor_object_can_be_registered(
    tmp_path: pathlib.Path, registered: list[str]
) -> None:
    register_compressor("joblibx", JoblibStyleWrapper())
    registered.append("joblibx")
    assert get_compressor("joblibx").extension == ".jx"
    path = tmp_path / "model.jx"
    dump({"arr": np.ones(5)}, path, compress=5)
    assert path.read_bytes().startswith(b"JOBLIBX\x01")
    np.testing.assert_array_equal(load(path)["arr"], np.ones(5))


def test_registration_refuses_taken_names_unless_forced(registered: list[str]) -> None:
    register_compressor("xor", XorCompressor())
    registered.append("xor")
    with pytest.raises(ValueError, match="'xor' is already registered; pass force=True"):
        register_compressor("xor", XorCompressor())
    register_compressor("xor", XorCompressor(), force=True)


def test_registration_refuses_overlapping_or_reserved_prefixes(registered: list[str]) -> None:
    class Clash(XorCompressor):
        prefix = b"\x1f\x8b\x08"  # a gzip stream's start

    with pytest.raises(
        ValueError, match=r"overlaps the prefix .* of the registered compressor 'gzip'"
    ):
        register_compressor("clash", Clash())

    class PickleLike(XorCompressor):
        prefix = b"\x80\x05"

    with pytest.raises(ValueError, match="how pickle streams or parajob containers start"):
        register_compressor("picklelike", PickleLike())

    class Empty(XorCompressor):
        prefix = b""

    with pytest.raises(ValueError, match="non-empty bytes prefix"):
        register_compressor("empty", Empty())
    assert "clash" not in _COMPRESSORS and "empty" not in _COMPRESSORS


def test_registration_refuses_objects_without_the_interface() -> None:
    with pytest.raises(ValueError, match="lacks \\['decompressor_file'\\]"):
        register_compressor("half", type("Half", (), {"prefix": b"H", "compressor_file": len})())
    with pytest.raises(ValueError, match="compressor_name must be a non-empty str"):
        register_compressor("", XorCompressor())


def test_replacing_a_builtin_compressor_with_force_takes_effect(
    registered: list[str],
) -> None:
    original = get_compressor("xz")

    class StrongXZ(Compressor):
        name = "xz"
        prefix = b"\xfd7zXZ"
        extensions = (".xz",)
        used = False

        def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = None) -> Any:
            StrongXZ.used = True
            return lzma.LZMAFile(fileobj, "wb", format=lzma.FORMAT_XZ, preset=9)

        def decompressor_file(self, fileobj: IO[bytes]) -> Any:
            return lzma.LZMAFile(fileobj, "rb", format=lzma.FORMAT_XZ)

    register_compressor("xz", StrongXZ(), force=True)
    try:
        assert loads(dumps([1, 2], compress="xz")) == [1, 2]
        assert StrongXZ.used
    finally:
        register_compressor("xz", original, force=True)


@pytest.mark.parametrize(
    ("module", "name", "extra"), [("lz4", "lz4", "lz4"), ("zstandard", "zstd", "zstd")]
)
def test_a_missing_optional_compressor_package_names_the_extra(
    tmp_path: pathlib.Path, module: str, name: str, extra: str
) -> None:
    path = tmp_path / f"x.{name}"
    dump([1, 2, 3], path, compress=name)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # as if the package were not installed
        from parajob.errors import MissingDependencyError
        from parajob.persistence import dumps, load
        for attempt in (lambda: dumps(1, compress={name!r}), lambda: load({str(path)!r})):
            try:
                attempt()
            except MissingDependencyError as exc:
                print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stderr
    for line in lines:
        assert f"pip install 'parajob[{extra}]'" in line
    assert issubclass(MissingDependencyError, ImportError)
