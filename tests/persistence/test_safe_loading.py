"""load(..., allow_pickle=False): plain data and arrays load; nothing from a hostile file runs."""

from __future__ import annotations

import builtins
import copyreg
import json
import os
import pathlib
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import xxhash

from parajob.errors import CorruptFileError, UnsafeLoadError
from parajob.persistence import dump, dumps, load, loads

MAGIC = b"\x89PJB\r\n\x1a\n"


def container(pickle_bytes: bytes) -> bytes:
    """A container with valid checksums around any pickle stream (no arrays)."""
    table = b"[]"
    header = struct.pack("<HHIQQ", 1, 0, 0, len(pickle_bytes), len(table))
    header += struct.pack("<Q", xxhash.xxh3_64_intdigest(MAGIC + header))
    body = header + pickle_bytes + table
    return MAGIC + body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


class Call:
    """Pickles as ``func(*args)``: what an attacker writes into a file."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> Any:
        return self.func, self.args

    def __call__(self, *args: Any) -> Any:
        # Only here so that a Call can stand as the callable of another Call when pickled.
        raise AssertionError("a payload is never called while it is written")


def _payloads(marker: pathlib.Path) -> dict[str, Any]:
    quoted = str(marker)
    return {
        "os.system": Call(os.system, f"touch {quoted}"),
        "eval": Call(builtins.eval, f"open({quoted!r}, 'w').close()"),
        "exec": Call(builtins.exec, f"open({quoted!r}, 'w').close()"),
        "getattr": Call(
            Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), f"touch {quoted}"
        ),
        "nested": [1, "fine", {"k": (2.5, [None, Call(os.system, f"touch {quoted}")])}],
        "after_arrays": {
            "arr": np.arange(10),
            "then": Call(builtins.exec, f"open({quoted!r}, 'w').close()"),
        },
        "open": Call(builtins.open, quoted, "w"),
        "class_instance": OrderedDict(a=Call(os.system, f"touch {quoted}")),
    }


PAYLOAD_NAMES = list(_payloads(pathlib.Path("x")))


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
@pytest.mark.parametrize("compress", [0, "zstd"])
def test_hostile_objects_in_a_container_are_refused_before_running(
    tmp_path: pathlib.Path, name: str, compress: Any
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pj"
    dump(_payloads(marker)[name], path, compress=compress)
    with pytest.raises(UnsafeLoadError, match="refused") as caught:
        load(path, allow_pickle=False)
    assert str(path) in str(caught.value)
    assert not marker.exists()
    with pytest.raises(UnsafeLoadError):
        loads(path.read_bytes(), allow_pickle=False)
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_raw_pickle_files_are_refused_before_running(
    tmp_path: pathlib.Path, name: str, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pkl"
    payload = pickle.dumps(_payloads(marker)[name], protocol=protocol)
    if protocol >= 2:
        path.write_bytes(payload)
        with pytest.raises(UnsafeLoadError, match="refused"):
            load(path, allow_pickle=False)
    # Any protocol, wrapped in a container.
    with pytest.raises(UnsafeLoadError, match="refused"):
        loads(container(payload), allow_pickle=False)
    assert not marker.exists()


def test_the_error_names_the_refused_global(tmp_path: pathlib.Path) -> None:
    data = dumps(Call(builtins.eval, "1 + 1"))
    with pytest.raises(UnsafeLoadError, match=r"the global builtins\.eval"):
        loads(data, allow_pickle=False)
    data = dumps(OrderedDict(a=1))
    with pytest.raises(UnsafeLoadError, match=r"the global collections\.OrderedDict"):
        loads(data, allow_pickle=False)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "int.__subclasses__"),
        ("builtins", "str.__class__"),
        ("builtins", "__import__"),
        ("builtins", "getattr"),
        ("numpy", "dtype.__class__"),
        ("numpy", "load"),
        ("numpy", "ndarray.__reduce__"),
        ("os", "system"),
        ("parajob.persistence._format", "pickle"),
        ("subprocess", "Popen"),
    ],
)
def test_dotted_and_unlisted_globals_are_refused(module: str, name: str) -> None:
    # STACK_GLOBAL (protocol 4+) resolves dotted names by getattr chains: a classic escape.
    def short(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    stream = b"\x80\x04" + short(module) + short(name) + b"\x93."
    with pytest.raises(UnsafeLoadError, match=f"{module}.{name}"):
        loads(container(stream), allow_pickle=False)


@pytest.fixture
def extension_code(tmp_path: pathlib.Path) -> Iterator[int]:
    code = 0x7FFFF123
    copyreg.add_extension("os", "mkdir", code)
    try:
        yield code
    finally:
        copyreg.remove_extension("os", "mkdir", code)


def test_copyreg_extension_codes_are_refused_even_when_cached(
    tmp_path: pathlib.Path, extension_code: int
) -> None:
    target = tmp_path / "made_by_the_file"
    ext4 = b"\x84" + struct.pack("<i", extension_code)
    # An earlier, trusted load resolves the code, which puts os.mkdir in the unpickler's
    # process-wide cache, where later loads find it without asking find_class.
    assert loads(container(b"\x80\x02" + ext4 + b"0N."), allow_pickle=True) is None
    hostile = b"\x80\x02" + ext4 + b"X" + struct.pack("<I", len(str(target))) + str(target).encode()
    hostile += b"\x85R."
    with pytest.raises(UnsafeLoadError, match="extension code"):
        loads(container(hostile), allow_pickle=False)
    assert not target.exists()


@pytest.mark.parametrize(
    ("opcode", "name"),
    [
        (b"\x8d", "BINUNICODE8"),
        (b"\x8e", "BINBYTES8"),
        (b"\x96", "BYTEARRAY8"),
        (b"\x95", "FRAME"),
    ],
)
@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("size", [2**62, 2**40, 2**20])
def test_absurd_lengths_are_reported_not_allocated(
    opcode: bytes, name: str, allow_pickle: bool, size: int
) -> None:
    stream = b"\x80\x05" + opcode + struct.pack("<Q", size) + b"abc."
    with pytest.raises(CorruptFileError, match="pickle stream is invalid"):
        loads(container(stream), allow_pickle=allow_pickle)


def test_absurd_long_and_string_lengths_are_reported() -> None:
    streams = [
        b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01.",  # LONG4
        b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"abc.",  # BINUNICODE
        b"\x80\x02B" + struct.pack("<I", 2**32 - 1) + b"abc.",  # BINBYTES
    ]
    for stream in streams:
        with pytest.raises(CorruptFileError):
            loads(container(stream), allow_pickle=False)


@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
def test_sized_bytes_constructors_are_refused(kind: str) -> None:
    # bytes(n) would allocate and zero n bytes from a few bytes of file.
    stream = b"\x80\x02c__builtin__\n" + kind.encode() + b"\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R."
    with pytest.raises(UnsafeLoadError, match=f"refused {kind}"):
        loads(container(stream), allow_pickle=False)


def test_a_huge_array_shape_is_reported() -> None:
    stream = b"\x80\x02cnumpy\nndarray\n\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x85\x85R."
    with pytest.raises(CorruptFileError):
        loads(container(stream), allow_pickle=False)


def test_object_arrays_are_refused_naming_the_dtype() -> None:
    data = dumps({"objects": np.array([1, "a"], dtype=object)})
    with pytest.raises(UnsafeLoadError, match="dtype object"):
        loads(data, allow_pickle=False)


def test_garbage_pickles_are_corrupt_not_crashes() -> None:
    streams = [
        b"\x80\x05",
        b"\x80\x05)",
        b"\x80\x05R.",
        b"\x80\x05h\x07.",
        b"\x80\x05\x97.",
        b"\xff",
    ]
    for stream in streams:
        with pytest.raises(CorruptFileError):
            loads(container(stream), allow_pickle=False)


def test_plain_data_and_arrays_load_with_allow_pickle_false(tmp_path: pathlib.Path) -> None:
    value = {
        "ints": [0, -7, 2**80],
        "floats": (1.5, float("-inf")),
        "complex": 3 - 4j,
        "text": "ünïcode",
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"abc"),
        "none": None,
        "bools": [True, False],
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "nested": {"a": [(1, {"b": ()})]},
        "array": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3), dtype=np.int8)),
        "structured": np.zeros(2, dtype=[("x", "<f4"), ("y", "S3")]),
        "big_endian": np.arange(3, dtype=">u2"),
        "empty": np.empty((0,)),
        "scalar": np.float64(2.5),
        "int_scalar": np.int32(-3),
        "dtype": np.dtype("<m8[s]"),
    }
    path = tmp_path / "plain.pj"
    dump(value, path)
    for loaded in (
        load(path, allow_pickle=False),
        load(path, mmap_mode="r", allow_pickle=False),
        loads(dumps(value, compress="zstd"), allow_pickle=False),
    ):
        assert loaded.keys() == value.keys()
        for key, expected in value.items():
            if isinstance(expected, np.ndarray):
                np.testing.assert_array_equal(loaded[key], expected)
            else:
                assert loaded[key] == expected, key
                assert type(loaded[key]) is type(expected), key


def test_in_band_numpy_arrays_load_with_allow_pickle_false() -> None:
    # A plain pickle of an array (what other tools write) rebuilds through the allow-list.
    for protocol in (2, 3, 4, 5):
        stream = pickle.dumps([np.arange(5), np.ones((2, 2), order="F")], protocol=protocol)
        loaded = loads(container(stream), allow_pickle=False)
        assert loaded[0].tolist() == [0, 1, 2, 3, 4]
        assert loaded[1].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_raw_pickle_files_of_plain_data_load_with_allow_pickle_false(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "arr": np.arange(3)}, protocol=5))
    loaded = load(path, allow_pickle=False)
    assert loaded["a"] == [1, 2.5, "x"] and loaded["arr"].tolist() == [0, 1, 2]


def test_allow_pickle_true_is_the_default_and_rebuilds_any_object() -> None:
    data = dumps(OrderedDict(a=1))
    assert loads(data) == OrderedDict(a=1)
    assert type(loads(data)) is OrderedDict


def test_the_table_of_a_container_cannot_smuggle_object_arrays() -> None:
    table = json.dumps(
        [{"dtype": "|O", "shape": [1], "order": "C", "offset": 128, "nbytes": 8, "xxh3": "0" * 16}],
        separators=(",", ":"),
    ).encode()
    pickle_bytes = b"N."
    header = struct.pack("<HHIQQ", 1, 0, 0, len(pickle_bytes), len(table))
    header += struct.pack("<Q", xxhash.xxh3_64_intdigest(MAGIC + header))
    body = header + pickle_bytes + table
    data = MAGIC + body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    data += bytes(-len(data) % 64) + bytes(8)
    for allow_pickle in (True, False):
        with pytest.raises(CorruptFileError, match="not stored raw"):
            loads(data, allow_pickle=allow_pickle)
