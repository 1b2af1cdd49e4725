"""Proof that the test-side joblib writer (joblib_writer.py) writes what joblib 1.6 writes."""

from __future__ import annotations

import copyreg
import pathlib

import numpy as np
import pytest
from joblib_writer import GOLDEN, FakeHeaderClass, golden_manifest, golden_objects, joblib_bytes


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
