"""The wire format between the pool and its workers, and how values cross it.

Every message is one ``Connection.send_bytes`` frame: a fixed header (kind, flags, task id)
followed by a pickle. The header is outside the pickle on purpose: when a task's pickle cannot
be loaded in the worker, the worker still knows which task failed and says so.

Serialization: the C pickler handles data fastest; cloudpickle is only needed for callables
that plain pickle refers to by a name the worker cannot import (lambdas, closures, functions
defined in ``__main__`` or in an interactive session). So a payload is pickled with the C
pickler when its functions are importable, and with cloudpickle otherwise or when the C
pickler fails. Both produce ordinary pickles, so the worker always loads with ``pickle.loads``.
"""

from __future__ import annotations

import pickle
import struct
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any

from parajob.errors import (
    ParajobError,
    RemoteTaskError,
    SharedMemoryError,
    SharedMemoryWarning,
    TaskPicklingError,
)
from parajob.process_pool import _sharer, _shm

__all__ = [
    "HEADER",
    "RemoteTraceback",
    "callable_name",
    "dumps_payload",
    "format_exception",
    "frame",
    "load_errors",
]

# kind (B), flags (B), task id (Q)
HEADER = struct.Struct("<BBQ")

# parent -> worker
K_TASK = 1
K_EXIT = 2
K_FORGET = 3  # body: ids of kept shared copies the parent freed (see _shm.forget_copies)
# worker -> parent
K_READY = 10
K_RESULT = 11
K_TASK_FAILED = 12
K_LOG = 13
K_WARNING = 14
K_INIT_FAILED = 15

# flags on K_RESULT
F_RETIRE = 1
F_FDS = 2  # shared-memory descriptors follow the frame on the socket (see _results.send_fds)

PROTOCOL = 5


class RemoteTraceback(ParajobError):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``.

    Its ``str`` is the traceback text as formatted in the worker, so a re-raised task error
    prints where it really happened.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def frame(kind: int, task_id: int, body: bytes = b"", flags: int = 0) -> bytes:
    """Build one message: header then body."""
    return HEADER.pack(kind, flags, task_id) + body


def callable_name(fn: Any) -> str:
    """Name a callable for messages: ``module.qualname`` where possible."""
    if isinstance(fn, types.MethodType):
        return callable_name(fn.__func__)
    inner = getattr(fn, "func", None)  # functools.partial and look-alikes
    if inner is not None and callable(inner) and not hasattr(fn, "__qualname__"):
        return f"partial({callable_name(inner)})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return f"{type(fn).__qualname__} instance"
    module = getattr(fn, "__module__", None)
    if module and module not in ("builtins", "__main__", "__mp_main__"):
        return f"{module}.{name}"
    return str(name)


def _main_is_importable() -> bool:
    # Workers re-import the main module from its file; without a file (python -c, a REPL,
    # a notebook), anything pickled by reference to __main__ cannot be found there.
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is not None


def _needs_by_value(fn: Any) -> bool:
    if isinstance(fn, types.FunctionType):
        module = fn.__module__
        return module in ("__main__", "__mp_main__") or "<" in fn.__qualname__
    return False


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def dumps_payload(payload: Any, functions: Sequence[Any]) -> bytes:
    """Pickle ``payload``, whose callables are ``functions``, the fastest way that works.

    Inside :func:`parajob.process_pool._sharer.sharing` (a Parallel call on the processes
    backend), large numpy arrays are shared instead of pickled, and a task payload (a tuple)
    gets the call's sharing settings appended, so the worker shares large results too.

    Raises
    ------
    Exception
        Whatever cloudpickle raised when nothing could pickle the payload; the caller turns it
        into a :class:`~parajob.errors.TaskPicklingError` naming the task.
    """
    hook = None
    sharer = _sharer.current_sharer()
    if sharer is not None:
        if isinstance(payload, tuple):
            payload = (*payload, sharer.settings)
        hook = _sharer.payload_hook(sharer)
    if _main_is_importable() and not any(_needs_by_value(f) for f in functions):
        try:
            if hook is None:
                return pickle.dumps(payload, protocol=PROTOCOL)
            return _shm.dumps_with(payload, hook, by_value=False)
        except (SharedMemoryError, SharedMemoryWarning):
            # No room for an array (or its fallback warning, raised under -W error):
            # cloudpickle would meet the same.
            raise
        except Exception:
            pass  # e.g. a lambda among the arguments: cloudpickle below handles it
    if hook is None:
        return _cloudpickle_dumps(payload)
    return _shm.dumps_with(payload, hook, by_value=True)


def find_unpicklable(
    calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
) -> tuple[int, str, BaseException] | None:
    """Return (position, what, error) of the first part of ``calls`` that does not pickle."""
    for pos, (fn, args, kwargs) in enumerate(calls):
        parts: list[tuple[str, Any]] = [("the function", fn)]
        parts += [(f"argument {i}", a) for i, a in enumerate(args)]
        parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for what, obj in parts:
            try:
                _cloudpickle_dumps(obj)
            except Exception as exc:
                return pos, what, exc
    return None


def format_exception(exc: BaseException) -> str:
    """Format ``exc`` with its traceback, as the worker sends it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__", "__mp_main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def picklable_exception(exc: BaseException, tb_text: str, task: str) -> tuple[BaseException, str]:
    """Return ``exc`` if it survives a pickle round trip, else a RemoteTaskError describing it.

    The round trip (not just dumps) is checked: exceptions with a custom ``__init__`` often
    pickle fine but fail to rebuild, which would otherwise surface as a confusing error in
    the parent.
    """
    try:
        pickle.loads(pickle.dumps(exc, protocol=PROTOCOL))
        return exc, tb_text
    except Exception:
        pass
    try:
        import cloudpickle

        pickle.loads(cloudpickle.dumps(exc, protocol=PROTOCOL))
        return exc, tb_text
    except Exception:
        pass
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception failed>"
    replacement = RemoteTaskError(
        f"{task} raised {_type_name(exc)}({text!r}), which cannot be sent back to the parent "
        "process (it does not pickle); its traceback is below. Make the exception class "
        "picklable (pass every __init__ argument to super().__init__) to get it as is",
        _type_name(exc),
        tb_text,
    )
    return replacement, tb_text


def result_unpicklable_error(task: str, exc: BaseException) -> TaskPicklingError:
    """Describe a result that could not be pickled in the worker."""
    return TaskPicklingError(
        f"the result of {task} could not be pickled to send it back: "
        f"{type(exc).__name__}: {exc}; return plain data (numbers, strings, arrays, "
        "dataclasses), or make the returned object picklable"
    )


def load_errors(
    raw: dict[int, tuple[BaseException, str]] | None,
) -> dict[int, BaseException]:
    """Attach each worker traceback as the ``__cause__`` of its exception."""
    if not raw:
        return {}
    out: dict[int, BaseException] = {}
    for pos, (exc, tb_text) in raw.items():
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb_text}"""')
        out[pos] = exc
    return out
