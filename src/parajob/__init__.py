"""parajob: joblib's API, faster and sturdier.

Parallel loops (``Parallel``/``delayed``), on-disk memoization (``Memory``), persistence
(``dump``/``load``) and fast, stable hashing (``hash``). Code written for joblib runs by
changing the import.
"""

from __future__ import annotations

from parajob import errors
from parajob.hashing import hash
from parajob.persistence import dump, dumps, load, loads, register_compressor

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "dump",
    "dumps",
    "errors",
    "hash",
    "load",
    "loads",
    "register_compressor",
]
