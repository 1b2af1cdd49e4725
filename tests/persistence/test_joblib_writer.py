"""A writer of joblib's file format for the tests, and proof that it writes what joblib writes.

The reader's tests need joblib files beyond the golden ones (other dtypes, protocols, damaged
and hostile variants) without joblib installed. :func:`joblib_bytes` writes them from the
format's facts: each numpy array becomes a ``joblib.numpy_pickle.NumpyArrayWrapper`` header,
the pickle frame ends after its BUILD, and the array follows (alignment byte, 0xFF padding,
raw bytes; or a nested protocol-5 pickle for object dtypes). The tests below show its output is
byte for byte that of joblib 1.6, on the golden files and, when joblib is installed, on more.
"""

from __future__ import annotations

import copyreg
import importlib.util
import io
import json
import pathlib
import pickle
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest

GOLDEN = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "joblib-1.6"
HEADER_MODULE = "joblib.numpy_pickle"
HEADER_NAME = "NumpyArrayWrapper"


def load_helper_module(name: str, path: pathlib.Path) -> ModuleType:
    """Import a module from its path (the test folders are not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def golden_manifest() -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = json.loads((GOLDEN / "MANIFEST.json").read_text())["files"]
    return files


def golden_objects() -> dict[str, Any]:
    objects: dict[str, Any] = load_helper_module(
        "_joblib_golden_expected", GOLDEN / "expected.py"
    ).OBJECTS
    return objects


class FakeHeaderClass:
    """Pickled under joblib's name for its array header, without importing joblib."""


FakeHeaderClass.__module__ = HEADER_MODULE
FakeHeaderClass.__qualname__ = HEADER_NAME
FakeHeaderClass.__name__ = HEADER_NAME


class _Writer(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler (it can write raw bytes between frames), with arrays swapped."""

    def __init__(
        self,
        file: io.BufferedIOBase | io.BytesIO,
        protocol: int,
        alignment: int | None,
        header_state: dict[str, Any] | None,
    ) -> None:
        super().__init__(file, protocol=protocol)
        self.out = file
        self.alignment = alignment
        self.header_state = header_state

    def save_global(self, obj: Any, name: Any = None) -> None:
        if obj is not FakeHeaderClass:
            super().save_global(obj, name)
            return
        # What pickle writes for any class, minus the check that the module can be imported.
        if self.proto >= 4:
            self.save(HEADER_MODULE)
            self.save(HEADER_NAME)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{HEADER_MODULE}\n{HEADER_NAME}\n".encode())
        self.memoize(obj)

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) not in (np.ndarray, np.matrix, np.memmap):
            super().save(obj, save_persistent_id)
            return
        array = np.asanyarray(obj)
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        header = FakeHeaderClass()
        header.__dict__.update(
            self.header_state
            or {
                "subclass": type(array),
                "shape": array.shape,
                "order": order,
                "dtype": array.dtype,
                "allow_mmap": not array.dtype.hasobject,
                "numpy_array_alignment_bytes": self.alignment,
            }
        )
        super().save(header, save_persistent_id)
        if self.proto >= 4:
            self.framer.commit_frame(force=True)
        if array.dtype.hasobject:
            pickle.dump(array, self.out, protocol=5)
            return
        if self.alignment is not None:
            padding = self.alignment - (self.out.tell() + 1) % self.alignment
            self.out.write(bytes([padding]) + b"\xff" * padding)
        self.out.write(array.tobytes(order=order))


def dump_joblib(
    obj: Any,
    file: Any,
    *,
    protocol: int = 4,
    alignment: int | None = 16,
    header_state: dict[str, Any] | None = None,
) -> None:
    """Write to ``file`` what ``joblib.dump(obj, file, protocol=protocol)`` writes.

    ``alignment=None`` gives the layout of joblib <= 1.1 (or of a target that cannot tell its
    position); ``header_state`` replaces every array header's state, to craft damaged files.
    """
    _Writer(file, protocol, alignment, header_state).dump(obj)


def joblib_bytes(obj: Any, **options: Any) -> bytes:
    """Return the bytes :func:`dump_joblib` writes."""
    out = io.BytesIO()
    dump_joblib(obj, out, **options)
    return out.getvalue()


def test_fake_header_pickles_as_new_object_of_joblibs_class() -> None:
    # The header goes through pickle's default object reduction, as joblib's does.
    reduced = FakeHeaderClass().__reduce_ex__(4)
    assert reduced[0] is copyreg.__newobj__
    assert reduced[1] == (FakeHeaderClass,)


@pytest.mark.parametrize(
    "name",
    sorted(
        f
        for f, spec in golden_manifest().items()
        # object arrays are pickled with numpy's private module names, which vary by version
        if spec["compress"] == 0 and spec["object"] != "object_array"
    ),
)
def test_writer_reproduces_the_golden_files_byte_for_byte(name: str) -> None:
    obj = golden_objects()[golden_manifest()[name]["object"]]
    assert joblib_bytes(obj) == (GOLDEN / name).read_bytes()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_writer_matches_joblib_for_every_protocol(protocol: int, tmp_path: pathlib.Path) -> None:
    joblib = pytest.importorskip("joblib")
    value = {
        "objects": np.array([1, "a", None], dtype=object),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "big": np.arange(20_000, dtype=">i4"),
        "twice": [np.arange(3)] * 2,
        "matrix": np.matrix([[1, 2], [3, 4]]),
        "text": "x" * 70_000,  # makes the pickler end frames at its size target, too
    }
    path = tmp_path / "value.pkl"
    joblib.dump(value, path, protocol=protocol)
    assert joblib_bytes(value, protocol=protocol) == path.read_bytes()
