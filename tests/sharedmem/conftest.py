"""Each test that starts the shared warm pool stops it (and frees the array copies kept for
later calls), so no worker or copy outlives its test; ``shm_dir`` gives a test its own shm
folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from parajob.process_pool import _shm, shutdown_executor


@pytest.fixture(autouse=True)
def stop_shared_pool() -> Iterator[None]:
    yield
    shutdown_executor(wait=True, kill_workers=True)


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private shm folder, so the test can see exactly what is held in it."""
    d = tmp_path / "shm"
    d.mkdir()
    monkeypatch.setenv(_shm.SHM_DIR_ENV, str(d))
    return d
