"""Tasks and batches: ``delayed``, the batch callable that backends run, and task outcomes.

A task is joblib's triple ``(function, args, kwargs)``. Parallel groups consecutive tasks into a
:class:`Batch`, the unit a backend runs. A batch never raises for a task's exception: it
returns one outcome per task (value or captured error) and its own compute time, so Parallel
can apply the error policy per task and size the next batches from real compute times.
"""

from __future__ import annotations

import functools
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = [
    "Batch",
    "BatchResult",
    "RemoteTraceback",
    "TaskError",
    "delayed",
    "wrap_non_picklable_objects",
]

Task = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _DelayedCall:
    """What ``delayed(f)`` returns: calling it records ``(f, args, kwargs)`` instead of running."""

    __slots__ = ("__wrapped__",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Task:
        return self.__wrapped__, args, kwargs

    def __getattr__(self, name: str) -> Any:
        # __name__, __doc__, __module__, ... of the wrapped function, as functools.wraps gives.
        return getattr(self.__wrapped__, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (delayed, (self.__wrapped__,))

    def __repr__(self) -> str:
        return f"delayed({self.__wrapped__!r})"


def delayed(function: Callable[..., Any]) -> Callable[..., Task]:
    """Capture a function's arguments instead of calling it, for use with Parallel.

    ``delayed(f)(x, y=1)`` returns the task ``(f, (x,), {"y": 1})``.

    Examples
    --------
    >>> from parajob import delayed
    >>> delayed(pow)(2, 10)
    (<built-in function pow>, (2, 10), {})
    """
    if not callable(function):
        raise TypeError(f"delayed() needs a callable, got {type(function).__name__}: {function!r}")
    return _DelayedCall(function)


class _CloudpickledCallable:
    """Carries a callable through cloudpickle so that it crosses process boundaries."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        import cloudpickle

        return (_load_cloudpickled, (cloudpickle.dumps(self.function),))


def _load_cloudpickled(data: bytes) -> _CloudpickledCallable:
    return _CloudpickledCallable(pickle.loads(data))


def wrap_non_picklable_objects(obj: Callable[..., Any], keep_wrapper: bool = True) -> Any:
    """Make a function (or a class, as a constructor) picklable with cloudpickle.

    joblib's decorator. parajob already sends lambdas, closures and ``__main__`` functions
    with cloudpickle, so this is only needed for callables nested inside arguments that plain
    pickle refuses. ``keep_wrapper`` is accepted for joblib compatibility.
    """
    if not callable(obj):
        raise TypeError(f"wrap_non_picklable_objects() takes a function or a class, got {obj!r}")
    return _CloudpickledCallable(obj)


class RemoteTraceback(Exception):
    """Holds a worker's formatted traceback; set as ``__cause__`` of a re-raised task error."""

    def __init__(self, tb_text: str) -> None:
        super().__init__(tb_text)
        self.tb_text = tb_text

    def __str__(self) -> str:
        return f'\n"""\n{self.tb_text}"""'


class TaskError:
    """A task's exception, with its traceback as text when it ran in another process."""

    __slots__ = ("exception", "tb_text")

    def __init__(self, exception: BaseException, tb_text: str | None) -> None:
        self.exception = exception
        self.tb_text = tb_text

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exception
        tb_text = self.tb_text
        if tb_text is None:
            tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickle.dumps(exc)
        except Exception as why:
            exc = UnpicklableTaskError(
                f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                f"(the original exception could not be pickled: {why})"
            )
        return (TaskError, (exc, tb_text))


class UnpicklableTaskError(Exception):
    """Stands in for a task's exception that could not be sent back from its worker."""


class BatchResult:
    """What running a :class:`Batch` returns: the values, the errors and the compute time.

    ``values[i]`` is task ``i``'s result (None where it failed); ``errors`` maps the position
    of each failed task to its :class:`TaskError` (None when nothing failed). After a failure
    with ``stop_on_error``, ``values`` ends at the failed task. The shape is the process pool's
    own, so its results need no conversion task by task.
    """

    __slots__ = ("duration", "errors", "values")

    def __init__(
        self, values: list[Any], errors: dict[int, TaskError] | None, duration: float
    ) -> None:
        self.values = values
        self.errors = errors
        self.duration = duration

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchResult, (self.values, self.errors, self.duration))


class Batch:
    """Consecutive tasks run as one unit by a backend.

    Parameters
    ----------
    tasks : list of (function, args, kwargs)
    first_index : int
        The index of the first task in the user's input (for messages).
    stop_on_error : bool
        Skip the rest of the batch after a task fails (``on_error="raise"``).
    """

    __slots__ = ("cancel_event", "first_index", "started", "stop_on_error", "tasks")

    def __init__(self, tasks: list[Task], first_index: int, stop_on_error: bool) -> None:
        self.tasks = tasks
        self.first_index = first_index
        self.stop_on_error = stop_on_error
        # Thread backends share this event so a cancelled call stops between tasks; it is
        # never pickled (process workers are stopped by their pool instead).
        self.cancel_event: threading.Event | None = None
        # When the batch began to run (time.monotonic); visible to the caller for thread
        # backends, which is where Parallel itself has to watch task_timeout.
        self.started: float | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Batch, (self.tasks, self.first_index, self.stop_on_error))

    def describe(self) -> str:
        """'task 17 (f)' or 'tasks 16-31 (f)', for error messages."""
        name = _function_name(self.tasks[0][0]) if self.tasks else "?"
        last = self.first_index + len(self.tasks) - 1
        if last == self.first_index:
            return f"task {self.first_index} ({name})"
        return f"tasks {self.first_index}-{last} ({name})"

    def __call__(self) -> BatchResult:
        self.started = time.monotonic()
        start = time.perf_counter()
        values: list[Any] = []
        errors: dict[int, TaskError] | None = None
        cancel = self.cancel_event
        for function, args, kwargs in self.tasks:
            if cancel is not None and cancel.is_set():
                break
            try:
                values.append(function(*args, **kwargs))
            except Exception as exc:
                if errors is None:
                    errors = {}
                errors[len(values)] = TaskError(exc, None)
                values.append(None)
                if self.stop_on_error:
                    break
        return BatchResult(values, errors, time.perf_counter() - start)


def _function_name(function: Any) -> str:
    inner = getattr(function, "func", None)  # functools.partial
    if inner is not None and not hasattr(function, "__qualname__"):
        function = inner
    return str(
        getattr(function, "__qualname__", None)
        or getattr(function, "__name__", None)
        or type(function).__name__
    )
