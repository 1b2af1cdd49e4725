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


def _from_content(kind: type) -> Callable[..., Any]:
    # bytes(n) and bytearray(n) allocate and zero n bytes: a file could ask for terabytes with
    # a few bytes of pickle. Pickles only ever build them from content, so refuse a size.
    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise UnsafeLoadError(
                f"refused {kind.__name__}({args[0]!r}) with allow_pickle=False: a pickle builds "
                f"{kind.__name__} from its content, never from a size"
            )
        return kind(*args)

    return build


_BUILTINS: dict[str, Any] = {
    "complex": complex,
    "set": set,
    "frozenset": frozenset,
    "bytearray": _from_content(bytearray),
    "list": list,
    "tuple": tuple,
    "dict": dict,
    "bytes": _from_content(bytes),
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}

# numpy moved its private modules from numpy.core to numpy._core in 2.0; files from either era
# name either one.
_NUMPY_MODULES = (
    "numpy",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)


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
        scalar: Any = np.float64(0).__reduce__()[0]

        def safe_scalar(dtype: Any, *args: Any) -> Any:
            if not isinstance(dtype, np.dtype):
                raise UnsafeLoadError(f"refused numpy scalar with dtype {dtype!r}")
            return scalar(_checked_dtype(dtype), *args)

        return safe_scalar
    if name == "_reconstruct":
        _reconstruct: Any = np.zeros(1).__reduce__()[0]

        def safe_reconstruct(cls: Any, *args: Any) -> Any:
            if cls is not np.ndarray:
                raise UnsafeLoadError(f"refused to rebuild an array of class {cls!r}")
            return _reconstruct(cls, *args)

        return safe_reconstruct
    if name == "_frombuffer":
        _frombuffer: Any = np.zeros(1).__reduce_ex__(5)[0]

        def safe_frombuffer(buf: Any, dtype: Any, *args: Any) -> Any:
            return _frombuffer(buf, _checked_dtype(np.dtype(dtype)), *args)

        return safe_frombuffer
    return None


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # Pickle protocols 0-2 store bytes as _codecs.encode(text, "latin1"); nothing else.
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise UnsafeLoadError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}) with "
            f"allow_pickle=False: pickles only use it to rebuild bytes from latin-1 text"
        )
    return text.encode("latin1")


def safe_find_class(module: str, name: str) -> Any:
    """Return the allowed global ``module.name`` or raise :class:`UnsafeLoadError`."""
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return _BUILTINS[name]
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module in _NUMPY_MODULES:
        try:
            found = _numpy_global(name)
        except ImportError:
            raise _refuse(module, name, "numpy is not installed") from None
        if found is not None:
            return found
    raise _refuse(
        module,
        name,
        "only numbers, str, bytes, containers and numpy arrays of non-object dtypes are allowed",
    )
