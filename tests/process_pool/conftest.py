"""Fixtures of the pool tests: a shared warm pool that never outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from parajob.process_pool import ProcessPool, get_executor, shutdown_executor


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    """The shared pool with two workers, shut down (workers reaped) after the test."""
    try:
        yield get_executor(2)
    finally:
        shutdown_executor(kill_workers=True)
