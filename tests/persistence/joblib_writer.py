"""A writer of joblib's file format for the tests (test_joblib_writer.py proves its output).

The reader's tests need joblib files beyond the golden ones (other dtypes, protocols, damaged
and hostile variants) without joblib installed. :func:`joblib_bytes` writes them from the
format's facts: each numpy array becomes a ``joblib.numpy_pickle.NumpyArrayWrapper`` header,
the pickle frame ends after its BUILD, and the array follows (alignment byte, 0xFF padding,
raw bytes; or a nested protocol-5 pickle for object dtypes). The tests below show its output is
byte for byte that of joblib 1.6, on the golden files and, when joblib is installed, on more
(see test_joblib_writer.py).
"""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import pickle
import sys
from types import ModuleType
from typing import Any

import numpy as np

GOLDEN = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "joblib-1.6"
HEADER_MODULE = "joblib.numpy_pickle"
HEADER_NAME = "NumpyArrayWrapper"


def load_helper_module(name: str, path: pathlib.Path) -> ModuleType:
    """Import a module from its path (the golden files' expected.py lives outside the repo)."""
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
