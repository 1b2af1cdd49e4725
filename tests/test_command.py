"""The parajob command: the demo runs end to end, and a second run is answered from the cache."""

from __future__ import annotations

import subprocess
import sys

import parajob


def _parajob(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parajob", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version():
    out = _parajob("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"parajob {parajob.__version__}"


def test_demo_runs_and_its_second_run_hits_the_cache(tmp_path):
    folder = tmp_path / "demo"
    first = _parajob("demo", "--dir", str(folder), "--size-mb", "8")
    assert first.returncode == 0, first.stderr
    for section in ("1. Persistence", "2. Hashing", "3. Parallel", "4. Memory"):
        assert section in first.stdout
    assert "All results were checked equal to the originals." in first.stdout
    assert not list(folder.glob("*.pj")), "the demo removes its large files"
    second = _parajob("demo", "--dir", str(folder), "--size-mb", "8")
    assert second.returncode == 0, second.stderr
    assert "answered from the cache an earlier run left" in second.stdout


def test_demo_rejects_a_bad_size():
    out = _parajob("demo", "--size-mb", "0")
    assert out.returncode == 2 and "--size-mb must be a positive number of MB, got 0" in out.stderr
