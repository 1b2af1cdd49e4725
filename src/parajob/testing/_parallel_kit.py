"""The conformance kit for parallel backends: ``check_parallel_backend``.

Each check runs real Parallel calls on the backend and states what it expects. The task
functions live at module level here so that every kind of worker (threads, processes,
cluster workers) can import them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_parallel_backend"]


class KitError(ValueError):
    """Raised by the kit's failing task; carries its arguments for the check to compare."""


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def add(x: int, y: int = 0, *, z: int = 0) -> int:
    """Return ``x + y + z``."""
    return x + y + z


def fail_on(x: int, bad: int) -> int:
    """Return ``x``, or raise :class:`KitError` when ``x == bad``."""
    if x == bad:
        raise KitError("kit failure", x)
    return x


def fail_first_time(x: int, marker_dir: str) -> int:
    """Raise the first time it runs for ``x`` (a marker file remembers), then return ``x``."""
    marker = Path(marker_dir) / f"ran-{x}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.close(fd)
    raise KitError("first attempt fails", x)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"backend check failed: {what}")


def check_parallel_backend(backend: Any, n_jobs: int = 2, **backend_params: Any) -> None:
    """Check that a parallel backend behaves as Parallel expects; raise AssertionError if not.

    Parameters
    ----------
    backend : str or ParallelBackendBase
        A registered backend name or an instance.
    n_jobs : int, default=2
        The number of workers to check with.
    **backend_params
        Passed to the backend's constructor when ``backend`` is a name.

    Examples
    --------
    >>> from parajob.testing import check_parallel_backend
    >>> check_parallel_backend("threading")
    """
    from parajob import Parallel, delayed, effective_n_jobs, parallel_config

    def run(**kwargs: Any) -> Parallel:
        return Parallel(backend=backend, n_jobs=n_jobs, **backend_params, **kwargs)

    checks: list[tuple[str, Callable[[], None]]] = []

    def check(fn: Callable[[], None]) -> Callable[[], None]:
        checks.append((fn.__name__, fn))
        return fn

    @check
    def results_come_back_in_input_order() -> None:
        out = run()(delayed(square)(i) for i in range(50))
        _expect(out == [i * i for i in range(50)], f"list results in order, got {out[:10]}...")

    @check
    def empty_input_gives_empty_list() -> None:
        _expect(run()([]) == [], "an empty input gives []")

    @check
    def args_and_kwargs_reach_the_function() -> None:
        out = run()(delayed(add)(i, y=1, z=10) for i in range(5))
        _expect(out == [i + 11 for i in range(5)], f"args and kwargs, got {out}")

    @check
    def generator_yields_in_input_order() -> None:
        gen = run(return_as="generator")(delayed(square)(i) for i in range(30))
        _expect(list(gen) == [i * i for i in range(30)], "generator keeps input order")

    @check
    def unordered_generator_yields_everything() -> None:
        gen = run(return_as="generator_unordered")(delayed(square)(i) for i in range(30))
        _expect(sorted(gen) == [i * i for i in range(30)], "unordered generator yields all")

    @check
    def fixed_batch_size_works() -> None:
        out = run(batch_size=3)(delayed(square)(i) for i in range(20))
        _expect(out == [i * i for i in range(20)], "batch_size=3 keeps results")

    @check
    def task_error_is_raised_with_its_type_args_and_index() -> None:
        try:
            run()(delayed(fail_on)(i, 7) for i in range(20))
        except KitError as exc:
            _expect(exc.args == ("kit failure", 7), f"original args, got {exc.args}")
            notes = getattr(exc, "__notes__", [])
            _expect(any("task 7" in n for n in notes), f"a note naming task 7, got {notes}")
        else:
            raise AssertionError("backend check failed: a failing task must raise")

    @check
    def on_error_return_puts_errors_in_place() -> None:
        out = run(on_error="return")(delayed(fail_on)(i, 2) for i in range(5))
        _expect(isinstance(out[2], KitError), f"the error stands in place, got {out}")
        _expect([out[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4], f"the rest ran, got {out}")

    @check
    def retries_rerun_a_failed_task() -> None:
        with tempfile.TemporaryDirectory(prefix="parajob-kit-") as tmp:
            out = run(retries=1)(delayed(fail_first_time)(i, tmp) for i in range(4))
        _expect(out == [0, 1, 2, 3], f"each task succeeded on its retry, got {out}")

    @check
    def context_manager_reuses_workers_across_calls() -> None:
        with run() as parallel:
            first = parallel(delayed(square)(i) for i in range(10))
            second = parallel(delayed(square)(i) for i in range(10, 20))
        _expect(first + second == [i * i for i in range(20)], "two calls in one context")

    @check
    def a_failed_call_leaves_the_backend_ready() -> None:
        with run() as parallel:
            try:
                parallel(delayed(fail_on)(i, 0) for i in range(20))
            except KitError:
                pass
            else:
                raise AssertionError("backend check failed: a failing task must raise")
            out = parallel(delayed(square)(i) for i in range(20))
        _expect(out == [i * i for i in range(20)], f"the call after a failure, got {out}")

    @check
    def parallel_config_selects_the_backend() -> None:
        from parajob.parallel._backend import check_backend_spec

        expected = type(check_backend_spec(backend, backend_params))
        with parallel_config(backend=backend, n_jobs=n_jobs, **backend_params):
            parallel = Parallel()
            out = parallel(delayed(square)(i) for i in range(10))
            n = effective_n_jobs()
        chosen = type(parallel._backend)
        _expect(
            chosen is expected or n_jobs == 1,
            f"Parallel() inside parallel_config runs on {expected.__name__}, got {chosen.__name__}",
        )
        _expect(out == [i * i for i in range(10)], "Parallel() inside parallel_config")
        _expect(isinstance(n, int) and n >= 1, f"effective_n_jobs gives an int >= 1, got {n}")

    for name, fn in checks:
        try:
            fn()
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"backend check {name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
