"""Helpers for the shared-memory tests: what any process holds in a folder."""

from __future__ import annotations

import os
import time
from pathlib import Path


def held_in(folder: Path) -> list[str]:
    """Every open descriptor or mapping, of any process, on a file in ``folder``."""
    prefix = str(folder)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    found.append(f"pid {pid} fd {fd}: {target}")
            with open(f"/proc/{pid}/maps") as fh:
                found += [f"pid {pid} map: {line.strip()}" for line in fh if prefix in line]
        except OSError:
            continue
    return found


def wait_until_released(folder: Path, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    held = held_in(folder)
    while held and time.monotonic() < deadline:
        time.sleep(0.05)
        held = held_in(folder)
    return held
