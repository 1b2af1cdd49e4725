"""Hostile, absurd and damaged joblib-style files: refused with a clear error, nothing runs.

Every stream here starts with a pickle's ``\\x80`` like a joblib file, so parajob.load hands it
to the joblib reader.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import zlib
from typing import Any

import joblib_writer as writer
import numpy as np
import pytest

import parajob
from parajob.errors import CorruptFileError, ParajobError, TruncatedFileError, UnsafeLoadError

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


GOLDEN: pathlib.Path = writer.GOLDEN

HEADER_GLOBAL = b"\x8c\x13joblib.numpy_pickle\x8c\x11NumpyArrayWrapper\x93"
NEWOBJ_EMPTY = b")\x81"


def _ops(obj: Any) -> bytes:
    """The opcodes that push ``obj``: no protocol header, no STOP, no frames, no memo."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=3)
    pickler.fast = True  # no memo, so fragments can be concatenated freely
    pickler.dump(obj)
    data = out.getvalue()
    assert data[:2] == b"\x80\x03" and data[-1:] == b"."
    return data[2:-1]


def _state(**changes: Any) -> dict[str, Any]:
    state = {
        "subclass": np.ndarray,
        "shape": (3,),
        "order": "C",
        "dtype": np.dtype("<f8"),
        "allow_mmap": True,
        "numpy_array_alignment_bytes": 16,
    }
    state.update(changes)
    return state


def _header_stream(state: Any, tail: bytes = b"", *, state_ops: bytes | None = None) -> bytes:
    """A joblib stream holding one array header with ``state``, then ``tail`` and STOP."""
    ops = state_ops if state_ops is not None else _ops(state)
    return b"\x80\x04" + HEADER_GLOBAL + NEWOBJ_EMPTY + ops + pickle.BUILD + tail + pickle.STOP


def _data(array: np.ndarray, padding: int = 7) -> bytes:
    return bytes([padding]) + b"\xff" * padding + array.tobytes()


def _call(module: str, name: str, *args: Any) -> bytes:
    """A stream that calls ``module.name(*args)`` (GLOBAL + REDUCE), as a hostile file would."""
    return (
        b"\x80\x04"
        + b"c"
        + f"{module}\n{name}\n".encode()
        + _ops(args)
        + pickle.REDUCE
        + pickle.STOP
    )


def _load(data: bytes, tmp_path: pathlib.Path, **kwargs: Any) -> Any:
    path = tmp_path / "hostile.pkl"
    path.write_bytes(data)
    return parajob.load(path, **kwargs)


class _Calls:
    """Pickles as a call of ``func(*args)``; used to put hostile calls inside joblib files."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


# -- nothing runs with allow_pickle=False -------------------------------------------------------


def _attacks(marker: pathlib.Path) -> dict[str, tuple[str, str, tuple[Any, ...]]]:
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": ("os", "system", (f"touch {marker}",)),
        "posix.system": ("posix", "system", (f"touch {marker}",)),
        "builtins.eval": ("builtins", "eval", (touch,)),
        "builtins.exec": ("builtins", "exec", (touch,)),
        "subprocess.call": ("subprocess", "call", (["touch", str(marker)],)),
        "builtins.__import__": ("builtins", "__import__", ("os",)),
        "builtins.getattr": ("builtins", "getattr", (0, "__class__")),
        "numpy.load": ("numpy", "load", (str(marker),)),
        "numpy.memmap": ("numpy", "memmap", (str(marker), "uint8", "w+", 0, (8,))),
    }


@pytest.mark.parametrize("attack", list(_attacks(pathlib.Path("m"))))
def test_safe_load_refuses_a_call_to_a_dangerous_global_before_it_runs(
    attack: str, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "ran"
    module, name, args = _attacks(marker)[attack]
    with pytest.raises(UnsafeLoadError) as info:
        _load(_call(module, name, *args), tmp_path, allow_pickle=False)
    assert f"{module}.{name}" in str(info.value)
    assert "hostile.pkl" in str(info.value)
    assert not marker.exists()


def test_safe_load_refuses_a_call_hidden_deep_inside_a_joblib_file(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    value = {
        "weights": np.arange(5.0),
        "meta": [{"ok": 1}, ("fine", [_Calls(os.system, f"touch {marker}")])],
    }
    with pytest.raises(UnsafeLoadError, match=r"(posix|os|nt)\.system"):
        _load(writer.joblib_bytes(value), tmp_path, allow_pickle=False)
    assert not marker.exists()


def test_safe_load_refuses_a_call_placed_in_an_array_header(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    touch = f"open({str(marker)!r}, 'w').close()"
    for field in ("subclass", "dtype", "shape"):
        data = writer.joblib_bytes(
            np.arange(3.0), header_state=_state(**{field: _Calls(eval, touch)})
        )
        with pytest.raises(UnsafeLoadError, match=r"builtins\.eval"):
            _load(data, tmp_path, allow_pickle=False)
    assert not marker.exists()


def test_safe_load_refuses_text_protocol_instance_opcodes(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    # INST: protocol 0's "call module.name with the marked arguments".
    data = b"\x80\x02(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."
    with pytest.raises(UnsafeLoadError, match=r"os\.system"):
        _load(data, tmp_path, allow_pickle=False)
    assert not marker.exists()


def test_safe_load_never_reads_the_nested_pickle_of_an_object_array(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "ran"
    nested = pickle.dumps(_Calls(os.system, f"touch {marker}"), protocol=5)
    data = _header_stream(_state(dtype=np.dtype(object), allow_mmap=False), nested)
    with pytest.raises(UnsafeLoadError, match="dtype object"):
        _load(data, tmp_path, allow_pickle=False)
    assert not marker.exists()


def test_header_fields_are_data_never_called(tmp_path: pathlib.Path) -> None:
    # With allow_pickle=True the globals resolve, but the reader only looks at them.
    marker = tmp_path / "ran"
    for field, value in [("subclass", os.system), ("dtype", os.system), ("order", os.system)]:
        data = _header_stream(_state(**{field: value}), _data(np.arange(3.0)))
        with pytest.raises(CorruptFileError, match=field if field != "subclass" else "class"):
            _load(data, tmp_path)
    assert not marker.exists()


def test_unknown_extension_code_is_corrupt(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CorruptFileError):
        _load(b"\x80\x04\x82\xfe.", tmp_path, allow_pickle=False)


# -- absurd sizes are refused before memory is allocated for them -------------------------------


@pytest.mark.parametrize("allow_pickle", [True, False])
def test_header_larger_than_any_address_space_is_corrupt(
    allow_pickle: bool, tmp_path: pathlib.Path
) -> None:
    data = _header_stream(_state(shape=(2**40, 2**40)), _data(np.arange(3.0)))
    with pytest.raises(CorruptFileError, match="more than this machine can address"):
        _load(data, tmp_path, allow_pickle=allow_pickle)


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_header_larger_than_the_file_is_truncated_before_allocating(
    mmap_mode: str | None, tmp_path: pathlib.Path
) -> None:
    data = _header_stream(_state(shape=(2**31,)), _data(np.arange(3.0)))
    with pytest.raises(TruncatedFileError, match=f"needed {2**34} bytes but only 25 were left"):
        _load(data, tmp_path, mmap_mode=mmap_mode)


@pytest.mark.parametrize(
    ("opcode", "error"),
    [
        (b"\x95", TruncatedFileError),  # FRAME
        (b"\x8d", TruncatedFileError),  # BINUNICODE8
        (b"\x8b", TruncatedFileError),  # LONG4 (4-byte length)
        (b"\x8e", CorruptFileError),  # BINBYTES8: the C unpickler allocates before reading
    ],
)
def test_absurd_pickle_length_fields_are_refused(
    opcode: bytes, error: type[Exception], tmp_path: pathlib.Path
) -> None:
    length = (2**31 - 1).to_bytes(4, "little") if opcode == b"\x8b" else struct.pack("<Q", 2**40)
    with pytest.raises(error):
        _load(b"\x80\x04" + opcode + length + b"\x00" * 32, tmp_path)


def test_absurd_sizes_in_compressed_streams_cost_no_memory(tmp_path: pathlib.Path) -> None:
    # A compressed stream's length is unknown until it ends, so the reader must let memory
    # grow only with the data that arrives. Measured in a fresh interpreter.
    cases = {
        "array.pkl": _header_stream(_state(shape=(2**30,)), _data(np.arange(3.0))),
        "frame.pkl": b"\x80\x04\x95" + struct.pack("<Q", 2**33) + b"\x00" * 64,
        "text.pkl": b"\x80\x04\x8d" + struct.pack("<Q", 2**33) + b"\x00" * 64,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(zlib.compress(data, 3))
    code = textwrap.dedent(
        f"""
        import pathlib, psutil, numpy, parajob
        import parajob.persistence._joblib_format  # imports are not what this measures
        from parajob.errors import CorruptFileError
        before = psutil.Process().memory_info().rss
        for name in {sorted(cases)!r}:
            try:
                parajob.load(pathlib.Path({str(tmp_path)!r}) / name)
            except CorruptFileError:
                pass
            else:
                raise AssertionError(name + " loaded")
        with open("/proc/self/status") as f:
            peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
        print((peak - before) // 2**20)
        """
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("the peak of a process's own memory (VmHWM) is read from Linux's /proc")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 64  # MiB, against the 8 GiB the files ask for


# -- damaged headers and structure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shape": (-1,)}, "shape"),
        ({"shape": (True, 2)}, "shape"),
        ({"shape": [3]}, "shape"),
        ({"shape": (1,) * 65}, "shape"),
        ({"order": "K"}, "order"),
        ({"dtype": "<f8"}, "dtype"),
        ({"allow_mmap": "yes"}, "allow_mmap"),
        ({"numpy_array_alignment_bytes": 0}, "alignment"),
        ({"numpy_array_alignment_bytes": 300}, "alignment"),
        ({"subclass": list}, "class"),
    ],
)
def test_damaged_header_field_is_named_in_the_error(
    changes: dict[str, Any], message: str, tmp_path: pathlib.Path
) -> None:
    data = _header_stream(_state(**changes), _data(np.arange(3.0)))
    with pytest.raises(CorruptFileError, match=message) as info:
        _load(data, tmp_path)
    assert "hostile.pkl" in str(info.value)


def test_header_state_that_is_not_a_dict_is_corrupt(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CorruptFileError, match="not a dict"):
        _load(_header_stream([1, 2, 3], _data(np.arange(3.0))), tmp_path)
    with pytest.raises(CorruptFileError, match="lacks"):
        _load(_header_stream({"shape": (3,)}, _data(np.arange(3.0))), tmp_path)


@pytest.mark.parametrize(
    ("padding", "message"),
    [
        (b"\x00", "outside 1..16"),
        (b"\x11" + b"\xff" * 17, "outside 1..16"),
        (b"\x03\xff\x00\xff", "other than 0xFF"),
    ],
)
def test_damaged_alignment_padding_is_corrupt(
    padding: bytes, message: str, tmp_path: pathlib.Path
) -> None:
    data = _header_stream(_state(), padding + np.arange(3.0).tobytes())
    with pytest.raises(CorruptFileError, match=message):
        _load(data, tmp_path)


def test_array_header_that_does_not_end_its_frame_is_corrupt(tmp_path: pathlib.Path) -> None:
    # joblib ends the pickle frame right after every header; here more opcodes (NONE, POP)
    # share the frame, so the array data could not follow the header.
    body = HEADER_GLOBAL + NEWOBJ_EMPTY + _ops(_state()) + pickle.BUILD + b"N0"
    frame = b"\x95" + struct.pack("<Q", len(body)) + body
    data = b"\x80\x04" + frame + _data(np.arange(3.0)) + pickle.STOP
    with pytest.raises(CorruptFileError, match="does not end its pickle frame"):
        _load(data, tmp_path)


def test_persistent_ids_are_corrupt(tmp_path: pathlib.Path) -> None:
    for data in (b"\x80\x04Pid\n.", b"\x80\x04N" + pickle.BINPERSID + b"."):
        with pytest.raises(CorruptFileError, match="persistent id"):
            _load(data, tmp_path)


@pytest.mark.parametrize(
    "module", ["joblib.numpy_pickle", "joblib.numpy_pickle_compat"], ids=["new", "compat"]
)
@pytest.mark.parametrize("name", ["NDArrayWrapper", "ZNDArrayWrapper"])
def test_headers_of_joblib_before_0_10_are_refused_with_a_way_out(
    module: str, name: str, tmp_path: pathlib.Path
) -> None:
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")\x81."
    with pytest.raises(CorruptFileError, match=r"joblib < 0\.10.*dump it again"):
        _load(data, tmp_path)


@pytest.mark.parametrize(
    "nested",
    [
        pickle.dumps([1, 2, 3], protocol=5),
        pickle.dumps(np.array([1, 2], dtype=object), protocol=5),  # wrong shape
        b"\x80\x05" + HEADER_GLOBAL + b".",
    ],
    ids=["list", "wrong-shape", "header-inside"],
)
def test_object_array_whose_nested_pickle_disagrees_with_its_header_is_corrupt(
    nested: bytes, tmp_path: pathlib.Path
) -> None:
    data = _header_stream(_state(dtype=np.dtype(object), allow_mmap=False), nested)
    with pytest.raises(CorruptFileError, match="nested pickle"):
        _load(data, tmp_path)


def test_two_headers_in_a_row_are_corrupt(tmp_path: pathlib.Path) -> None:
    # A second header right where the first one's data should be.
    header = HEADER_GLOBAL + NEWOBJ_EMPTY + _ops(_state()) + pickle.BUILD
    data = b"\x80\x04" + header + header + pickle.STOP
    with pytest.raises(CorruptFileError):
        _load(data, tmp_path)


def test_flipped_bits_in_golden_files_give_data_or_a_parajob_error() -> None:
    # Without checksums in joblib's format a flip inside array data cannot be seen; anything
    # else must end in a clear error (allow_pickle=False: no foreign import can even start).
    rng = random.Random(20261129)
    outcomes = {"loaded": 0, "refused": 0}
    for path in sorted(GOLDEN.glob("*.pkl")):
        data = path.read_bytes()
        if data[:1] != b"\x80":
            continue
        for _ in range(40):
            damaged = bytearray(data)
            damaged[rng.randrange(min(len(data), 600))] ^= 1 << rng.randrange(8)
            try:
                parajob.load(io.BytesIO(bytes(damaged)), allow_pickle=False)
                outcomes["loaded"] += 1
            except ParajobError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > outcomes["loaded"] > 0


def test_structural_nonsense_is_corrupt_not_an_attribute_error(tmp_path: pathlib.Path) -> None:
    # APPEND on a dict: the C unpickler calls dict.append, which does not exist.
    with pytest.raises(CorruptFileError, match="damaged"):
        _load(b"\x80\x04}K\x01a.", tmp_path)


def test_a_class_missing_here_keeps_its_error_type_and_names_the_file(
    tmp_path: pathlib.Path,
) -> None:
    data = _call("parajob_no_such_module", "Thing")
    with pytest.raises(ModuleNotFoundError, match="parajob_no_such_module") as info:
        _load(data, tmp_path)
    if sys.version_info >= (3, 11):
        assert any("hostile.pkl" in note for note in info.value.__notes__)
