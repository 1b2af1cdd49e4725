"""Settings for Parallel: ``parallel_config``, ``parallel_backend`` and how settings resolve.

A setting's value comes from, in order: the argument given to ``Parallel``, the innermost
active ``parallel_config`` that set it, the default. The active configs live in a
:class:`contextvars.ContextVar`, so two threads (or two asyncio tasks) configuring parajob at
the same time never see each other's settings.
"""

from __future__ import annotations

import contextvars
import numbers
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final

from parajob._units import parse_size
from parajob.errors import InvalidParameterError

__all__ = [
    "UNSET",
    "active_config",
    "parallel_backend",
    "parallel_config",
    "resolve",
    "validate_setting",
]


class _Unset:
    """Marks a parameter that the caller did not give (so a config or the default applies)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "backend": None,
        "n_jobs": None,
        "verbose": 0,
        "temp_folder": None,
        "max_nbytes": "1M",
        "mmap_mode": "r",
        "prefer": None,
        "require": None,
        "inner_max_num_threads": None,
        "backend_params": MappingProxyType({}),
        # parajob's own settings
        "progress": False,
        "on_error": "raise",
        "retries": 0,
        "task_timeout": None,
        "initializer": None,
        "initargs": (),
    }
)

_CONFIG: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "parajob_parallel_config", default=MappingProxyType({})
)


def parse_nbytes(value: int | str | None, name: str = "max_nbytes") -> int | None:
    """Turn ``"1M"``-style sizes (K, M, G, T; powers of 1024) or ints into a byte count."""
    return parse_size(value, name)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {choices!r}, got {value!r}")


def validate_setting(name: str, value: Any) -> Any:
    """Check one setting's value; return it (normalised) or raise a ValueError naming it."""
    if name == "n_jobs":
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidParameterError(
                f"n_jobs must be an int or None, got {value!r}; use 1 for sequential or -1 "
                f"for all CPUs"
            )
        if value == 0:
            raise InvalidParameterError(
                "n_jobs must be a non-zero int, got 0; use 1 for sequential or -1 for all CPUs"
            )
        return int(value)
    if name == "verbose":
        if isinstance(value, bool):
            return int(value)
        if not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidParameterError(f"verbose must be an int >= 0, got {value!r}")
        return int(value)
    if name == "max_nbytes":
        parse_nbytes(value)
        return value
    if name == "mmap_mode":
        _check_choice(name, value, (None, "r+", "r", "w+", "c"))
        return value
    if name == "prefer":
        _check_choice(name, value, (None, "processes", "threads"))
        return value
    if name == "require":
        _check_choice(name, value, (None, "sharedmem"))
        return value
    if name == "on_error":
        _check_choice(name, value, ("raise", "return"))
        return value
    if name == "retries":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidParameterError(f"retries must be an int >= 0, got {value!r}")
        return int(value)
    if name == "task_timeout":
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
            raise InvalidParameterError(
                f"task_timeout must be a positive number of seconds or None, got {value!r}"
            )
        return float(value)
    if name == "inner_max_num_threads":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
        ):
            raise InvalidParameterError(
                f"inner_max_num_threads must be an int >= 1 or None, got {value!r}"
            )
        return value
    if name == "initializer":
        if value is not None and not callable(value):
            raise InvalidParameterError(f"initializer must be callable or None, got {value!r}")
        return value
    if name == "initargs":
        if not isinstance(value, tuple):
            raise InvalidParameterError(
                f"initargs must be a tuple, got {type(value).__name__}: {value!r}"
            )
        return value
    if name == "progress":
        if value in (True, False, None, "tqdm", "rich", "text") or callable(value):
            return value
        from parajob.progress import ProgressReporter

        if isinstance(value, ProgressReporter):
            return value
        raise InvalidParameterError(
            f"progress must be True, False, 'tqdm', 'rich', 'text', a callable or a "
            f"ProgressReporter, got {value!r}"
        )
    return value


def active_config() -> Mapping[str, Any]:
    """The settings made explicit by the active ``parallel_config`` blocks (innermost wins)."""
    return _CONFIG.get()


def resolve(name: str, argument: Any = UNSET) -> Any:
    """Resolve one setting: ``argument`` if given, else the innermost config, else the default."""
    if argument is not UNSET:
        return argument
    config = _CONFIG.get()
    if name in config:
        return config[name]
    return DEFAULTS[name]


class parallel_config:
    """Set default settings for the :class:`~parajob.Parallel` calls made inside a block.

    Usable as a context manager (the usual way) or called on its own, in which case the
    settings hold until :meth:`unregister` is called. Settings not given here keep the value of
    the enclosing block or their default; arguments given to ``Parallel`` itself win over both.
    The settings are local to the thread (or asyncio task) that makes them.

    Parameters
    ----------
    backend : str or ParallelBackendBase, optional
        ``"processes"`` (the default; also answers to joblib's ``"loky"``), ``"threading"``,
        ``"sequential"``, ``"multiprocessing"`` or any registered backend name, or an instance.
    n_jobs : int, optional
        Number of workers; negative counts from the number of CPUs (-1: all of them).
    verbose, temp_folder, max_nbytes, mmap_mode, prefer, require : optional
        As in :class:`~parajob.Parallel`.
    inner_max_num_threads : int, optional
        Cap on native thread pools (OpenMP, BLAS) inside the workers.
    progress, on_error, retries, task_timeout, initializer, initargs : optional
        parajob's own settings, as in :class:`~parajob.Parallel`.

        .. versionadded:: 0.1
    **backend_params
        Passed to the backend's constructor when ``backend`` is a name.

    Examples
    --------
    >>> from parajob import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    def __init__(
        self,
        backend: Any = UNSET,
        *,
        n_jobs: Any = UNSET,
        verbose: Any = UNSET,
        temp_folder: Any = UNSET,
        max_nbytes: Any = UNSET,
        mmap_mode: Any = UNSET,
        prefer: Any = UNSET,
        require: Any = UNSET,
        inner_max_num_threads: Any = UNSET,
        progress: Any = UNSET,
        on_error: Any = UNSET,
        retries: Any = UNSET,
        task_timeout: Any = UNSET,
        initializer: Any = UNSET,
        initargs: Any = UNSET,
        **backend_params: Any,
    ) -> None:
        given = {
            "n_jobs": n_jobs,
            "verbose": verbose,
            "temp_folder": temp_folder,
            "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode,
            "prefer": prefer,
            "require": require,
            "inner_max_num_threads": inner_max_num_threads,
            "progress": progress,
            "on_error": on_error,
            "retries": retries,
            "task_timeout": task_timeout,
            "initializer": initializer,
            "initargs": initargs,
        }
        new = {k: validate_setting(k, v) for k, v in given.items() if v is not UNSET}
        if backend is UNSET or backend is None:
            if new.get("inner_max_num_threads") is not None:
                raise InvalidParameterError(
                    "inner_max_num_threads applies to a backend's workers: name the backend, "
                    "e.g. parallel_config(backend='processes', inner_max_num_threads=2)"
                )
            if backend_params:
                raise InvalidParameterError(
                    f"backend parameters {sorted(backend_params)} were given without a "
                    f"backend; name the backend they are for, e.g. "
                    f"parallel_config(backend='processes', ...)"
                )
        else:
            from parajob.parallel._backend import check_backend_spec

            instance = check_backend_spec(backend, backend_params)
            threads = new.get("inner_max_num_threads")
            if threads is not None:
                if not instance.supports_inner_max_num_threads:
                    raise InvalidParameterError(
                        f"backend {type(instance).__name__} does not cap its workers' native "
                        f"threads, so inner_max_num_threads={threads} cannot apply; use "
                        f"backend='processes'"
                    )
                instance.inner_max_num_threads = threads
            new["backend"] = instance
            new["backend_params"] = MappingProxyType(dict(backend_params))
        merged = dict(_CONFIG.get())
        merged.update(new)
        self.config: Mapping[str, Any] = MappingProxyType(merged)
        self._token: contextvars.Token[Mapping[str, Any]] | None = _CONFIG.set(self.config)

    def __enter__(self) -> Mapping[str, Any]:
        return self.config

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Restore the settings that were active before this config."""
        if self._token is not None:
            try:
                _CONFIG.reset(self._token)
            except ValueError:
                # Reset from another context (e.g. a generator resumed elsewhere): fall back
                # to restoring the previous value directly.
                old = self._token.old_value
                _CONFIG.set(MappingProxyType({}) if old is contextvars.Token.MISSING else old)
            self._token = None


class parallel_backend(parallel_config):
    """Set the default backend for the :class:`~parajob.Parallel` calls inside a block.

    The older spelling of :class:`parallel_config`, kept for joblib compatibility; unlike it,
    ``n_jobs`` defaults to -1 (all CPUs), as in joblib.
    """

    def __init__(
        self,
        backend: Any,
        n_jobs: int = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        super().__init__(
            backend,
            n_jobs=n_jobs,
            inner_max_num_threads=(
                UNSET if inner_max_num_threads is None else inner_max_num_threads
            ),
            **backend_params,
        )


def config_snapshot() -> dict[str, Any]:
    """All settings as they resolve here and now (for copying into worker contexts)."""
    return {name: resolve(name) for name in DEFAULTS}
