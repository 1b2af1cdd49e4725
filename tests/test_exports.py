"""joblib's public names all exist in parajob, and importing parajob stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import parajob

# Every public name of joblib 1.6's top-level module.
JOBLIB_PUBLIC = [
    "Memory",
    "MemorizedResult",
    "expires_after",
    "Parallel",
    "delayed",
    "cpu_count",
    "effective_n_jobs",
    "wrap_non_picklable_objects",
    "parallel_config",
    "parallel_backend",
    "ParallelBackendBase",
    "StoreBackendBase",
    "register_compressor",
    "register_parallel_backend",
    "register_store_backend",
    "PrintTime",
    "Logger",
    "hash",
    "dump",
    "load",
]


@pytest.mark.parametrize("name", JOBLIB_PUBLIC)
def test_joblib_public_name_is_exported(name):
    assert name in parajob.__all__
    assert getattr(parajob, name) is not None


def test_all_is_sorted_and_resolves():
    names = [n for n in parajob.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in parajob.__all__:
        assert hasattr(parajob, name), name


def test_import_starts_nothing_and_imports_no_optional_dependency():
    code = (
        "import sys, threading, parajob\n"
        "heavy = {'numpy', 'lz4', 'zstandard', 'psutil', 'tqdm', 'rich', 'dask', 'ray', "
        "'fsspec', 'joblib'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "print(threading.active_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[0] == "[]", f"import parajob pulled in optional dependencies: {out[0]}"
    assert out[1] == "1", "import parajob started a thread"


def test_every_lazy_export_resolves_to_its_module():
    for name, module in parajob._EXPORTS.items():
        assert name in parajob.__all__
        assert getattr(parajob, name) is getattr(__import__(module, fromlist=[name]), name)
    assert set(parajob.__all__) == {*parajob._EXPORTS, "__version__", "errors"}
