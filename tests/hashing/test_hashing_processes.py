"""Hashes agree between this process and fresh interpreters under other hash seeds."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import hashing_corpus
import pytest

import parajob.hashing
from parajob.hashing import hash as pj_hash

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(parajob.hashing.__file__).resolve().parents[1]

CHILD = """
import json, sys
import hashing_corpus
from parajob.hashing import hash
with_numpy = sys.argv[1] == "numpy"
corpus = hashing_corpus.python_corpus()
if with_numpy:
    corpus.update(hashing_corpus.numpy_corpus())
out = {name: hash(value) for name, value in corpus.items()}
out.update({f"md5:{name}": hash(value, "md5") for name, value in corpus.items()})
out.update({f"sha1:{name}": hash(value, "sha1") for name, value in corpus.items()})
out["numpy imported"] = "numpy" in sys.modules
print(json.dumps(out))
"""


def _run_child(seed: str, mode: str) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = seed
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _expected(with_numpy: bool) -> dict[str, object]:
    corpus = hashing_corpus.python_corpus()
    if with_numpy:
        corpus.update(hashing_corpus.numpy_corpus())
    out: dict[str, object] = {name: pj_hash(value) for name, value in corpus.items()}
    out.update({f"md5:{name}": pj_hash(value, "md5") for name, value in corpus.items()})
    out.update({f"sha1:{name}": pj_hash(value, "sha1") for name, value in corpus.items()})
    return out


@pytest.mark.parametrize("seed", ["0", "1", "12345", "random"])
def test_corpus_hashes_match_fresh_interpreters_under_any_hash_seed(seed: str) -> None:
    child = _run_child(seed, "numpy")
    assert child.pop("numpy imported") is True
    expected = _expected(with_numpy=True)
    mismatched = sorted(name for name in expected if child.get(name) != expected[name])
    assert not mismatched, f"hashes differ from the parent's under PYTHONHASHSEED={seed}"


def test_hashes_do_not_depend_on_numpy_being_imported() -> None:
    # The child never imports numpy; the parent has. Plain objects must hash the same.
    child = _run_child("777", "plain")
    assert child.pop("numpy imported") is False, "hashing plain objects imported numpy"
    assert child == _expected(with_numpy=False)


def test_importing_the_hashing_module_does_not_import_numpy() -> None:
    code = "import sys, parajob.hashing; print('numpy' in sys.modules)"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
