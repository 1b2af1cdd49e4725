"""Helpers of the pool tests: fresh interpreters that run scripts, and waiting for exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    for key, value in (extra or {}).items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)  # an empty value means: unset it
    return env


def run_script(
    code: str,
    *,
    path: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import parajob.

    With ``path``, the code is saved there and run as a file, so it is a real main module
    (workers re-import it); otherwise it runs with ``-c``.
    """
    code = textwrap.dedent(code)
    if path is None:
        argv = [sys.executable, "-c", code]
    else:
        path.write_text(code)
        argv = [sys.executable, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(env))


def start_script(path: Path, code: str) -> subprocess.Popen[str]:
    """Start ``code`` saved as ``path`` (a real main module) in a fresh interpreter."""
    path.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
    )


def assert_gone(pids: list[int], timeout: float = 5.0) -> None:
    """Assert every process in ``pids`` exits within ``timeout`` seconds."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes still running: {[p.pid for p in alive]}"
