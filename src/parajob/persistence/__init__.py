"""Persistence: store Python objects, numpy arrays included, in one file and load them back.

:func:`dump` and :func:`load` keep joblib's signatures and read joblib's files; :func:`dumps`
and :func:`loads` do the same in memory. numpy arrays are stored raw and 64-byte aligned
outside the pickle stream, so ``load(path, mmap_mode="r")`` maps them without copying, and
every file carries checksums, so damage is reported instead of returned. Compressors are
plug-ins (:class:`Compressor`, :func:`register_compressor`). ``load(..., allow_pickle=False)``
rebuilds plain data and arrays only, for files from someone you do not trust.
"""

from __future__ import annotations

from parajob.persistence._api import dump, dumps, load, loads
from parajob.persistence._compressors import Compressor, register_compressor

__all__ = ["Compressor", "dump", "dumps", "load", "loads", "register_compressor"]
