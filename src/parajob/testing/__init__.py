"""Conformance kits: check that a parallel backend or a store backend behaves as parajob expects.

Our own backends pass these checks in our test suite; run them on yours too.
"""

from __future__ import annotations

from parajob.testing._parallel_kit import check_parallel_backend
from parajob.testing._store_kit import check_store_backend

__all__ = ["check_parallel_backend", "check_store_backend"]
