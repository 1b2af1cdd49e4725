"""How loaded numpy arrays meet this machine: memory-mapping a file, and byte order.

:func:`parajob.load`'s ``mmap_mode`` and ``ensure_native_byte_order`` must mean the same for a
parajob container and for a joblib file, so both readers (``_format_reader`` and
``_joblib_format``) take these rules from here rather than each keeping a copy: which modes
exist, how a file is mapped for one, and which arrays count as stored in the other byte order.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any

__all__ = ["MMAP_MODES", "is_foreign_byte_order", "map_file"]

MMAP_MODES = (None, "r", "r+", "c", "w+")
_MMAP_ACCESS = {"r": mmap.ACCESS_READ, "c": mmap.ACCESS_COPY, "r+": mmap.ACCESS_WRITE}


def map_file(path: str, mmap_mode: str) -> mmap.mmap:
    """Map the whole file at ``path`` for ``mmap_mode`` ("r", "c" or "r+")."""
    access = _MMAP_ACCESS[mmap_mode]
    with open(path, "r+b" if mmap_mode == "r+" else "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=access)


def is_foreign_byte_order(dtype: Any) -> bool:
    """Tell whether ``dtype`` is stored in the other byte order than this machine's.

    A structured dtype counts as foreign only when every one of its fields is (joblib's rule);
    mixed structured dtypes are left as they are.
    """
    foreign = ">" if sys.byteorder == "little" else "<"
    if dtype.byteorder == foreign:
        return True
    if dtype.byteorder == "|" and dtype.fields:
        return all(field[0].byteorder == foreign for field in dtype.fields.values())
    return False
