"""Damaged, truncated, foreign and hostile files: always a clear error, never wrong data."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import pytest
import xxhash

from parajob.errors import CorruptFileError, TruncatedFileError
from parajob.persistence import dump, dumps, load, loads
from parajob.persistence._format import _array_ref

MAGIC = b"\x89PJB\r\n\x1a\n"


def _small_value() -> dict[str, Any]:
    return {
        "c": np.arange(6, dtype=np.int16).reshape(2, 3),
        "f": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "empty": np.empty(0),
        "text": "hello",
        "t": (1, 2.5, None),
    }


def _assert_same(loaded: dict[str, Any], value: dict[str, Any]) -> None:
    for key, expected in value.items():
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(loaded[key], expected)
        else:
            assert loaded[key] == expected


# -- the format, read back with an independent parser ------------------------------------------


def _parse(data: bytes) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
    """Read a container per the format description, without parajob's reader."""
    assert data[:8] == MAGIC
    version, flags, reserved, pickle_len, table_len, header_hash = struct.unpack_from(
        "<HHIQQQ", data, 8
    )
    assert xxhash.xxh3_64_intdigest(data[:32]) == header_hash
    pickle_bytes = data[40 : 40 + pickle_len]
    table = data[40 + pickle_len : 40 + pickle_len + table_len]
    (checksum,) = struct.unpack_from("<Q", data, 40 + pickle_len + table_len)
    assert xxhash.xxh3_64_intdigest(data[8 : 40 + pickle_len + table_len]) == checksum
    header = {"version": version, "flags": flags, "reserved": reserved}
    return header, pickle_bytes, json.loads(table)


def build(pickle_bytes: bytes, entries: Any = (), arrays: list[bytes] | None = None) -> bytes:
    """Write a container from its parts, with valid checksums, per the format description."""
    table = json.dumps(list(entries), separators=(",", ":")).encode()
    header = struct.pack("<HHIQQ", 1, 0, 0, len(pickle_bytes), len(table))
    header += struct.pack("<Q", xxhash.xxh3_64_intdigest(MAGIC + header))
    body = header + pickle_bytes + table
    out = bytearray(MAGIC + body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body)))
    for data in arrays or []:
        out += bytes(-len(out) % 64) + data
    return bytes(out)


def test_the_written_file_matches_the_documented_format() -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4)
    fortran = np.asfortranarray(np.ones((2, 5)))
    data = dumps({"arr": arr, "fortran": fortran, "again": arr})
    header, pickle_bytes, entries = _parse(data)
    assert header == {"version": 1, "flags": 0, "reserved": 0}
    assert len(entries) == 2  # the second reference to arr is a pickle memo hit
    first, second = entries
    assert first["dtype"] == ">i4" and first["shape"] == [3, 4] and first["order"] == "C"
    assert second["dtype"] == "<f8" and second["order"] == "F"
    for entry, source in ((first, arr), (second, fortran.T)):
        assert entry["offset"] % 64 == 0
        raw = data[entry["offset"] : entry["offset"] + entry["nbytes"]]
        assert raw == source.tobytes()
        assert entry["xxh3"] == xxhash.xxh3_64_hexdigest(raw)
    assert second["offset"] + second["nbytes"] == len(data)
    # The independent writer produces exactly parajob's bytes.
    assert build(pickle_bytes, entries, [arr.tobytes(), fortran.T.tobytes()]) == data


def test_a_container_pickle_read_by_plain_pickle_explains_what_to_do() -> None:
    _, pickle_bytes, _ = _parse(dumps([np.arange(3)]))
    with pytest.raises(CorruptFileError, match=r"load the file with parajob\.load"):
        pickle.loads(pickle_bytes)
    with pytest.raises(CorruptFileError, match="stored outside the pickle"):
        _array_ref(0)


# -- truncation ---------------------------------------------------------------------------------


def test_every_truncation_of_a_file_is_reported_with_the_file_name(
    tmp_path: pathlib.Path,
) -> None:
    data = dumps(_small_value())
    path = tmp_path / "cut.pj"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        for mmap_mode in (None, "r"):
            with pytest.raises(TruncatedFileError) as caught:
                load(path, mmap_mode=mmap_mode)
            assert str(path) in str(caught.value), length


def test_truncation_messages_give_expected_and_actual_sizes(tmp_path: pathlib.Path) -> None:
    data = dumps({"arr": np.arange(1000)})
    path = tmp_path / "short.pj"
    path.write_bytes(data[:-100])
    with pytest.raises(
        TruncatedFileError,
        match=f"needs {len(data)} bytes but the data ends after {len(data) - 100}",
    ):
        load(path)
    path.write_bytes(b"")
    with pytest.raises(TruncatedFileError, match="is empty"):
        load(path)
    assert issubclass(TruncatedFileError, EOFError)


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd"])
def test_every_truncation_of_a_compressed_stream_is_reported(compress: str) -> None:
    data = dumps(_small_value(), compress=compress)
    for length in range(len(data)):
        with pytest.raises(CorruptFileError):
            loads(data[:length])
    _assert_same(loads(data), _small_value())


class _NonSeekable(io.RawIOBase):
    """A stream that can only be read front to back, like a pipe or a socket."""

    def __init__(self, payload: bytes) -> None:
        self._buffer = io.BytesIO(payload)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._buffer.readinto(b)


def test_truncated_non_seekable_streams_are_reported() -> None:
    data = dumps(_small_value())
    for length in range(len(data)):
        with pytest.raises(TruncatedFileError):
            load(io.BufferedReader(_NonSeekable(data[:length])))
    _assert_same(load(io.BufferedReader(_NonSeekable(data))), _small_value())


# -- corruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_flipped_byte_is_detected(mask: int) -> None:
    data = dumps(_small_value())
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= mask
        with pytest.raises(CorruptFileError):
            loads(bytes(damaged))


def test_flipped_bytes_in_each_region_name_the_file_and_the_region(
    tmp_path: pathlib.Path,
) -> None:
    value = {"arr": np.arange(100, dtype=np.int64), "text": "x" * 50}
    data = dumps(value)
    _, pickle_bytes, entries = _parse(data)
    table_start = 40 + len(pickle_bytes)
    array_start = entries[0]["offset"]
    cases = {
        12: "header checksum does not match",
        45: "checksum of its pickle stream and array table does not match",
        table_start + 3: "checksum of its pickle stream and array table does not match",
        array_start - 1: "padding before array 0 is not zero",
        array_start + 17: "bytes of array 0 .* do not match their checksum",
        1: "is not a parajob or joblib file",
    }
    path = tmp_path / "damaged.pj"
    for index, message in cases.items():
        damaged = bytearray(data)
        damaged[index] ^= 0x10
        path.write_bytes(damaged)
        with pytest.raises(CorruptFileError, match=message) as caught:
            load(path)
        assert str(path) in str(caught.value)


def test_metadata_damage_is_detected_with_mmap_mode_too(tmp_path: pathlib.Path) -> None:
    data = dumps({"arr": np.arange(100)})
    path = tmp_path / "mapped.pj"
    for index in range(8, 40 + 20):
        damaged = bytearray(data)
        damaged[index] ^= 0x04
        path.write_bytes(damaged)
        with pytest.raises(CorruptFileError):
            load(path, mmap_mode="r")


def test_damage_inside_a_compressed_file_is_reported(tmp_path: pathlib.Path) -> None:
    for compress in ("zlib", "gzip", "bz2", "xz", "lz4", "zstd"):
        data = dumps(_small_value(), compress=compress)
        for index in range(len(data) // 2, len(data), 5):
            damaged = bytearray(data)
            damaged[index] ^= 0x55
            try:
                loaded = loads(bytes(damaged))
            except CorruptFileError:
                continue
            # A flip that the compressor's format ignores (e.g. lz4's unchecked frame
            # trailer) must still give the exact object: never wrong data.
            _assert_same(loaded, _small_value())


# -- foreign files ------------------------------------------------------------------------------


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text\n", r"is not a parajob or joblib file \(starts with b'just som'\)"),
        (b'{"json": true}', "is not a parajob or joblib file"),
        (_png(), r"starts with b'\\x89PNG"),
        (_zip(), r"starts with b'PK\\x03\\x04"),
        (bytes(range(256)), "is not a parajob or joblib file"),
        (b"", "is empty"),
        (MAGIC[:5], "ends after 5 bytes, inside the parajob header"),
        (b"ZF0x00000001", "joblib older than 0.10"),
    ],
)
def test_foreign_files_are_named_and_described(
    tmp_path: pathlib.Path, content: bytes, message: str
) -> None:
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=message) as caught:
        load(path)
    assert str(path) in str(caught.value)
    with pytest.raises(CorruptFileError, match=message):
        loads(content)


def test_a_text_mode_mangled_file_is_not_mistaken(tmp_path: pathlib.Path) -> None:
    data = dumps({"arr": np.arange(10)})
    mangled = data.replace(b"\r\n", b"\n")
    with pytest.raises(CorruptFileError):
        loads(mangled)


# -- hostile metadata with valid checksums ------------------------------------------------------


def _entry(**changes: Any) -> dict[str, Any]:
    payload = np.arange(4, dtype=np.int64).tobytes()
    entry = {
        "dtype": "<i8",
        "shape": [4],
        "order": "C",
        "offset": 0,
        "nbytes": 32,
        "xxh3": xxhash.xxh3_64_hexdigest(payload),
    }
    entry.update(changes)
    return entry


def _ref_pickle(index: int = 0) -> bytes:
    # A stream that calls parajob.persistence._format._array_ref(index).
    return (
        b"\x80\x05\x8c\x1bparajob.persistence._format\x94\x8c\n_array_ref\x94\x93\x94"
        + b"K"
        + bytes([index])
        + b"\x85\x94R\x94."
    )


def _with_offset(entry: dict[str, Any], pickle_bytes: bytes) -> bytes:
    # Place the entry at the canonical offset (computed with the table's final length).
    for _ in range(3):
        table_len = len(json.dumps([entry], separators=(",", ":")).encode())
        entry["offset"] = -(-(40 + len(pickle_bytes) + table_len + 8) // 64) * 64
    return build(pickle_bytes, [entry], [np.arange(4, dtype=np.int64).tobytes()])


def test_the_hand_built_container_is_valid() -> None:
    assert loads(_with_offset(_entry(), _ref_pickle())).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": "|O"}, "dtype object, which is not stored raw"),
        ({"dtype": "<i8", "shape": [-4]}, "invalid shape"),
        ({"shape": [4.0]}, "not JSON: unexpected number 4.0"),
        ({"shape": "4"}, "invalid shape"),
        ({"shape": [2]}, "nbytes 32, which does not match shape"),
        ({"nbytes": 31}, "nbytes 31"),
        ({"order": "K"}, "invalid order 'K'"),
        ({"xxh3": "zz" * 8}, "invalid checksum"),
        ({"xxh3": 12345}, "invalid checksum"),
        ({"dtype": "not a dtype"}, "invalid dtype"),
        ({"dtype": [["a", "<i4", [[[]]]]]}, "invalid dtype"),
        ({"extra": 1}, "is not an array description"),
    ],
)
def test_invalid_tables_are_refused(changes: dict[str, Any], message: str) -> None:
    data = _with_offset(_entry(**changes), _ref_pickle())
    with pytest.raises(CorruptFileError, match=message):
        loads(data)


def test_an_offset_outside_the_canonical_layout_is_refused() -> None:
    data = build(_ref_pickle(), [_entry(offset=4096)], [])
    with pytest.raises(CorruptFileError, match="offset 4096, expected"):
        loads(data)


@pytest.mark.parametrize("table", [b"{}", b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b"null"])
def test_malformed_tables_are_refused(table: bytes) -> None:
    header = struct.pack("<HHIQQ", 1, 0, 0, 1, len(table))
    header += struct.pack("<Q", xxhash.xxh3_64_intdigest(MAGIC + header))
    body = header + b"N" + table
    data = MAGIC + body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    with pytest.raises(CorruptFileError, match="array table is invalid"):
        loads(data)


def test_an_impossible_array_size_in_a_compressed_stream_is_refused() -> None:
    shape = [2**31, 2**31, 2**10]
    entry = _entry(shape=shape, nbytes=8 * 2**72)
    data = _with_offset(entry, _ref_pickle())
    with pytest.raises(CorruptFileError, match="more than this machine can address"):
        loads(zlib.compress(data))


def test_a_reference_to_a_missing_array_is_refused() -> None:
    with pytest.raises(CorruptFileError, match="refers to array 3 but the file holds 1"):
        loads(_with_offset(_entry(), _ref_pickle(3)))


def test_a_newer_format_version_asks_for_an_upgrade() -> None:
    data = bytearray(dumps(1))
    struct.pack_into("<H", data, 8, 2)
    struct.pack_into("<Q", data, 32, xxhash.xxh3_64_intdigest(bytes(data[:32])))
    with pytest.raises(
        CorruptFileError, match=r"version 2, written by a newer parajob .*; upgrade parajob"
    ):
        loads(bytes(data))


def test_an_older_unknown_format_version_is_corrupt() -> None:
    data = bytearray(dumps(1))
    struct.pack_into("<H", data, 8, 0)
    struct.pack_into("<Q", data, 32, xxhash.xxh3_64_intdigest(bytes(data[:32])))
    with pytest.raises(CorruptFileError, match="version 0, which no parajob writes"):
        loads(bytes(data))


def test_unknown_flags_ask_for_an_upgrade() -> None:
    data = bytearray(dumps(1))
    struct.pack_into("<H", data, 10, 4)
    struct.pack_into("<Q", data, 32, xxhash.xxh3_64_intdigest(bytes(data[:32])))
    with pytest.raises(CorruptFileError, match="flags=0x4"):
        loads(bytes(data))


def test_a_huge_declared_pickle_length_in_a_stream_costs_only_the_real_data() -> None:
    # Valid header checksum, a pickle length of 2**62: the reader must not try to allocate it.
    header = struct.pack("<HHIQQ", 1, 0, 0, 2**62, 0)
    header += struct.pack("<Q", xxhash.xxh3_64_intdigest(MAGIC + header))
    data = MAGIC + header + b"\x80\x05N."
    with pytest.raises(TruncatedFileError):
        loads(data)
    with pytest.raises(TruncatedFileError):
        load(io.BufferedReader(_NonSeekable(data)))


def test_errors_pickle_for_crossing_processes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.pj"
    path.write_bytes(b"nonsense")
    with pytest.raises(CorruptFileError) as caught:
        load(path)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is type(caught.value) and str(again) == str(caught.value)


def test_array_ref_with_mmap_mode_r_plus_after_damage_is_reported(tmp_path: pathlib.Path) -> None:
    # Writable maps mark digests as unverifiable; the metadata is still verified.
    path = tmp_path / "rplus.pj"
    dump({"arr": np.arange(10)}, path)
    load(path, mmap_mode="r+")
    data = bytearray(path.read_bytes())
    data[45] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(CorruptFileError, match="checksum"):
        load(path)
