"""Each test that starts the shared warm pool stops it, so no worker outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from parajob.process_pool import shutdown_executor


@pytest.fixture(autouse=True)
def stop_shared_pool() -> Iterator[None]:
    yield
    shutdown_executor(wait=True, kill_workers=True)
