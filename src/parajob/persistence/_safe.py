"""The allow-list behind ``load(..., allow_pickle=False)``.

A pickle stream can only reach code through the globals it names (the ``GLOBAL`` and
``STACK_GLOBAL`` opcodes, and the copyreg extension codes, which the unpickler resolves through
``find_class`` too). Restricting ``find_class`` to the callables below therefore bounds what a
hostile file can run: these build numbers, containers and numpy arrays of non-object dtypes and
nothing else. Anything more is refused with :class:`~parajob.errors.UnsafeLoadError` before it
is called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parajob.errors import UnsafeLoadError

__all__ = ["safe_find_class"]

_BUILTINS: dict[str, Any] = {
    "complex": complex,
    "set": set,
    "frozenset": frozenset,
    "bytearray": bytearray,
    "list": list,
    "tuple": tuple,
    "dict": dict,
    "bytes": bytes,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}

# numpy moved its private modules from numpy.core to numpy._core in 2.0; files from either era
# name either one.
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric")


def _refuse(module: str, name: str, why: str) -> UnsafeLoadError:
    return UnsafeLoadError(
        f"refused to load the global {module}.{name} with allow_pickle=False: {why}; "
        f"load the file with allow_pickle=True only if you trust whoever wrote it"
    )


def _checked_dtype(dtype: Any) -> Any:
    if dtype.hasobject:
        raise UnsafeLoadError(
            f"refused a numpy array of dtype {dtype} with allow_pickle=False: object arrays "
            f"hold arbitrary pickled objects; load the file with allow_pickle=True only if "
            f"you trust whoever wrote it"
        )
    return dtype


def _numpy_global(name: str) -> Callable[..., Any] | None:
    import numpy as np

    if name == "dtype":

        def safe_dtype(*args: Any) -> Any:
            return _checked_dtype(np.dtype(*args))

        return safe_dtype
    if name == "ndarray":
        return np.ndarray
    if name == "scalar":
        # numpy's private callables are taken from its own reductions, which works for both
        # numpy.core (1.x) and numpy._core (2.x).
        scalar = np.float64(0).__reduce__()[0]

        def safe_scalar(dtype: Any, *args: Any) -> Any:
            if not isinstance(dtype, np.dtype):
                raise UnsafeLoadError(f"refused numpy scalar with dtype {dtype!r}")
            return scalar(_checked_dtype(dtype), *args)

        return safe_scalar
    if name == "_reconstruct":
        _reconstruct = np.zeros(1).__reduce__()[0]

        def safe_reconstruct(cls: Any, *args: Any) -> Any:
            if cls is not np.ndarray:
                raise UnsafeLoadError(f"refused to rebuild an array of class {cls!r}")
            return _reconstruct(cls, *args)

        return safe_reconstruct
    if name == "_frombuffer":
        _frombuffer = np.zeros(1).__reduce_ex__(5)[0]

        def safe_frombuffer(buf: Any, dtype: Any, *args: Any) -> Any:
            return _frombuffer(buf, _checked_dtype(np.dtype(dtype)), *args)

        return safe_frombuffer
    return None


def safe_find_class(module: str, name: str) -> Any:
    """Return the allowed global ``module.name`` or raise :class:`UnsafeLoadError`."""
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return _BUILTINS[name]
    if module in _NUMPY_MODULES:
        try:
            found = _numpy_global(name)
        except ImportError:
            raise _refuse(module, name, "numpy is not installed") from None
        if found is not None:
            return found
    raise _refuse(module, name, "only numbers, str, bytes, containers and numpy arrays of "
                  "non-object dtypes are allowed")
