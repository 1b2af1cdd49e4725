"""The dispatcher: one Parallel call from the first batch to the last result.

Moving parts::

    caller's thread                                   backend threads / pool manager
    ───────────────                                   ──────────────────────────────
    _Call.results() generator
      ├─ _fill(): read tasks lazily, cut batches ──► backend.submit(batch, callback)
      ├─ _wait_one(): done.get(timeout) ◄─────────── callback: done.put((batch_id, future))
      ├─ _complete(): store a batch's values; per failed task: retry or fail (error policy)
      └─ yield results: input order (held by index) or completion order

Everything but the callbacks runs in the caller's thread, so the call's state needs no lock:
the callbacks only put ``(batch_id, future)`` on a thread-safe queue. A batch that is retried,
timed out or abandoned keeps its id out of ``_in_flight``, so its late callback is ignored.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import operator
import queue
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parajob.errors import ParallelTimeoutError, TaskTimeoutError
from parajob.parallel._batching import AutoBatchSizer
from parajob.parallel._tasks import Batch, BatchResult, RemoteTraceback, Task, TaskError

if TYPE_CHECKING:
    from parajob.parallel._backend import ParallelBackendBase
    from parajob.progress import ProgressReporter

__all__ = ["Call", "Results"]

# What backends raise for "not ready in time": the builtin (concurrent.futures' own on 3.11+),
# concurrent.futures' on 3.10, and multiprocessing's (AsyncResult.get).
_TIMEOUT_ERRORS = (TimeoutError, concurrent.futures.TimeoutError, multiprocessing.TimeoutError)

# The longest the caller's thread sleeps at once while waiting for results (seconds).
_WAKE_EVERY = 0.1


@dataclass
class _Flight:
    batch: Batch
    indices: list[int]
    submitted: float
    future: Any = None


@dataclass
class _Settings:
    n_jobs: int
    return_as: str
    batch_size: int | str
    pre_dispatch: int | None
    timeout: float | None
    task_timeout: float | None
    on_error: str
    retries: int
    verbose: int
    reporter: ProgressReporter | None
    name: str = field(default="Parallel")


class Call:
    """One run of ``Parallel.__call__`` over an iterable of tasks."""

    def __init__(
        self,
        backend: ParallelBackendBase,
        tasks: Iterable[Any],
        settings: _Settings,
        on_close: Callable[[bool], None],
    ) -> None:
        self.backend = backend
        self.s = settings
        self._on_close = on_close
        try:
            self.total: int | None = len(tasks)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self._tasks = iter(tasks)
        self._next_index = 0
        self._exhausted = False
        self._last_tasks: list[Task] = []  # read after the input ended, not yet batched
        self._last_size = 1  # the size of their batches
        self._done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._in_flight: dict[int, _Flight] = {}
        self._retry: deque[tuple[int, Task]] = deque()
        self._attempts: dict[int, int] = {}
        # Results of consecutive tasks by the index of the first: one entry per batch in the
        # common case, so storing and ordering cost nothing per task.
        self._chunks: dict[int, list[Any]] = {}
        self._ready_unordered: deque[Any] = deque()
        self._next_yield = 0
        self._n_done = 0
        self._start = time.perf_counter()
        self._closed = False
        self._fixed_batch = settings.batch_size if isinstance(settings.batch_size, int) else None
        if settings.task_timeout is not None and self._fixed_batch is None:
            # A time limit is per task, so each task travels alone.
            self._fixed_batch = 1
        self._sizer = AutoBatchSizer(settings.n_jobs)
        if settings.pre_dispatch is None:
            self._max_in_flight: int | None = None
        else:
            self._max_in_flight = settings.pre_dispatch
        # In input order, completed results wait for the slow ones before them; bounding the
        # batches not yet yielded bounds that memory (return_as="generator" stays flat).
        self._ordered_bound = settings.return_as == "generator"
        self._unyielded_batches: dict[int, int] = {}  # first index -> last index, per batch
        if settings.reporter is not None:
            settings.reporter.start(self.total)
        self._print_start()

    # -- reading and dispatching ------------------------------------------------------------

    def _take_batch(self) -> tuple[list[Task], int] | None:
        first = self._next_index
        if self._last_tasks:
            # The input ended inside a batch: its last tasks go out as one batch per worker,
            # so that every worker gets a share instead of one worker all of them (and not as
            # many small batches: each costs a message, which on a cluster is not cheap).
            size = self._last_size
            tasks = self._last_tasks[:size]
            del self._last_tasks[:size]
            self._next_index += len(tasks)
            return tasks, first
        if self._exhausted:
            return None
        if self._fixed_batch is not None:
            size = self._fixed_batch
        else:
            remaining = None if self.total is None else self.total - self._next_index
            size = self._sizer.next_size(remaining)
        tasks = list(itertools.islice(self._tasks, size))
        _check_tasks(tasks, first)
        if len(tasks) < size:
            self._exhausted = True
            if self._fixed_batch is None and len(tasks) > 1:
                self._last_tasks = tasks
                self._last_size = -(-len(tasks) // self._sizer.n_jobs)
                return self._take_batch()
        if not tasks:
            return None
        self._next_index += len(tasks)
        return tasks, first

    def _may_dispatch(self) -> bool:
        if self._max_in_flight is not None and len(self._in_flight) >= self._max_in_flight:
            return False
        if self._ordered_bound and self._max_in_flight is not None:
            return len(self._unyielded_batches) < 2 * self._max_in_flight
        return True

    def _fill(self) -> None:
        while self._may_dispatch():
            if self._retry:
                index, task = self._retry.popleft()
                self._submit([task], [index])
                continue
            taken = self._take_batch()
            if taken is None:
                return
            tasks, first = taken
            self._submit(tasks, list(range(first, first + len(tasks))))

    def _submit(self, tasks: list[Task], indices: list[int]) -> None:
        batch = Batch(
            tasks, indices[0], stop_on_error=self.s.on_error == "raise" and self.s.retries == 0
        )
        batch_id = next(self._ids)
        flight = _Flight(batch, indices, time.monotonic())
        self._in_flight[batch_id] = flight
        if self._ordered_bound:
            self._unyielded_batches.setdefault(indices[0], indices[-1])
        done = self._done

        def callback(future: Any, _id: int = batch_id) -> None:
            done.put((_id, future))

        flight.future = self.backend.submit(batch, callback=callback)

    # -- waiting and completing -------------------------------------------------------------

    def _deadline(self) -> tuple[float | None, str]:
        nearest: float | None = None
        kind = ""
        now = time.monotonic()
        for flight in self._in_flight.values():
            since = self._timeout_origin(flight)
            if self.s.timeout is not None and since is not None:
                d = since + self.s.timeout
                if nearest is None or d < nearest:
                    nearest, kind = d, "timeout"
            if self.s.task_timeout is not None and not self.backend.supports_task_timeout:
                started = flight.batch.started
                if started is not None:
                    d = started + self.s.task_timeout
                    if nearest is None or d < nearest:
                        nearest, kind = d, "task_timeout"
        if nearest is None:
            return None, kind
        return max(nearest - now, 0.0), kind

    def _timeout_origin(self, flight: _Flight) -> float | None:
        """When the call's ``timeout`` starts to count for a batch (None: not watched here).

        Backends that can stop a batch watch it themselves, from when the batch starts to
        run. Thread backends show their start time; others count from submission.
        """
        if self.backend.supports_task_timeout:
            return None
        if self.backend.uses_threads:
            return flight.batch.started
        return flight.submitted

    def _wait_one(self) -> None:
        watch_deadlines = self.s.timeout is not None or self.s.task_timeout is not None
        while True:
            wait: float | None = None
            if watch_deadlines:
                wait, kind = self._deadline()
                if wait is not None and self.s.task_timeout is not None and kind != "timeout":
                    # A thread batch's start time is only known once it starts: look again.
                    wait = min(wait, self.s.task_timeout / 4)
            # Never block without a bound: a Ctrl-C that the OS delivers to another thread
            # only interrupts this one when it wakes up, so it wakes up often enough.
            slice_ = _WAKE_EVERY if wait is None else min(wait, _WAKE_EVERY)
            try:
                with self.backend.retrieval_context():
                    if self.backend.supports_retrieve_callback:
                        batch_id, future = self._done.get(timeout=slice_)
                    else:
                        batch_id, future = self._retrieve_without_callback(slice_)
                break
            except queue.Empty:
                if wait is not None and slice_ >= wait:
                    self._expire()
                    return
        flight = self._in_flight.pop(batch_id, None)
        if flight is None:
            return  # abandoned earlier (timed out or retried); its result is dropped
        self._complete(flight, future)

    def _retrieve_without_callback(self, wait: float | None) -> tuple[int, Any]:
        # Older joblib-style backends: results are fetched in submission order.
        batch_id = min(self._in_flight)
        flight = self._in_flight[batch_id]
        try:
            value = self.backend.retrieve_result(flight.future, timeout=wait)
        except _TIMEOUT_ERRORS:
            raise queue.Empty from None
        return batch_id, _Resolved(value)

    def _expire(self) -> None:
        now = time.monotonic()
        for batch_id, flight in list(self._in_flight.items()):
            since = self._timeout_origin(flight)
            if self.s.timeout is not None and since is not None and now >= since + self.s.timeout:
                raise ParallelTimeoutError(
                    f"{flight.batch.describe()} did not finish within timeout="
                    f"{self.s.timeout:g} s; the call was stopped (raise timeout= or use "
                    f"task_timeout= to fail only the slow tasks)"
                )
            started = flight.batch.started
            if (
                self.s.task_timeout is not None
                and started is not None
                and now >= started + self.s.task_timeout
            ):
                del self._in_flight[batch_id]
                error = TaskTimeoutError(
                    f"{flight.batch.describe()} ran past task_timeout={self.s.task_timeout:g} s;"
                    f" the {self.backend.__class__.__name__} cannot stop a running task, so it "
                    f"was abandoned and its result will be dropped"
                )
                finals = sum(
                    self._task_failed(index, task, TaskError(error, ""))
                    for index, task in zip(flight.indices, flight.batch.tasks, strict=True)
                )
                self._advance(finals)

    def _complete(self, flight: _Flight, future: Any) -> None:
        batch = flight.batch
        try:
            result = self.backend.retrieve_result_callback(future)
        except Exception as exc:
            if (
                isinstance(exc, _TIMEOUT_ERRORS)
                and self.s.timeout is not None
                and (
                    self.s.task_timeout is None or self.s.timeout < self.s.task_timeout * len(batch)
                )
            ):
                # The backend stopped the batch for the call's timeout: stop the call.
                raise ParallelTimeoutError(
                    f"{batch.describe()} did not finish within timeout={self.s.timeout:g} s; "
                    f"the call was stopped (raise timeout= or use task_timeout= to fail only "
                    f"the slow tasks)"
                ) from exc
            # The batch as a whole failed: its worker died, it timed out in the pool, or it
            # could not be sent. Every task of it shares the error.
            error = TaskError(exc, None)
            finals = sum(
                self._task_failed(index, task, error)
                for index, task in zip(flight.indices, batch.tasks, strict=True)
            )
            self._advance(finals)
            return
        if not isinstance(result, BatchResult):
            raise TypeError(
                f"backend {self.backend.__class__.__name__} returned {type(result).__name__} for "
                f"a batch; a backend must return what the batch callable returned"
            )
        values, errors = result.values, result.errors
        n_run = len(values)  # fewer than the batch when it stopped at its first error
        if n_run < len(batch) and not errors:
            # Stopped without an error: cancelled before these tasks ran (by an abort that
            # raced with this batch). Never drop them silently.
            errors = {
                pos: TaskError(
                    concurrent.futures.CancelledError(
                        f"task {flight.indices[pos]} was cancelled before it ran"
                    ),
                    "",
                )
                for pos in range(n_run, len(batch))
            }
            values = [*values, *([None] * (len(batch) - n_run))]
            n_run = len(batch)
        self._sizer.record(n_run, result.duration)
        self.backend.batch_completed(n_run, result.duration)
        if (
            n_run == 1
            and not errors
            and self.s.task_timeout is not None
            and not self.backend.supports_task_timeout
            and result.duration > self.s.task_timeout
        ):
            # The backend could not stop the task (sequential): fail it after the fact, so
            # task_timeout means the same thing on every backend.
            errors = {
                0: TaskError(
                    TaskTimeoutError(
                        f"{batch.describe()} took {result.duration:.3g} s, past task_timeout="
                        f"{self.s.task_timeout:g} s"
                    ),
                    "",
                )
            }
        if not errors:
            self._store(flight.indices[0], values)  # the common case: the whole batch at once
            self._advance(n_run)
            return
        finals = 0
        for pos in range(n_run):
            index, task = flight.indices[pos], batch.tasks[pos]
            failure = errors.get(pos)
            if failure is None:
                self._store(index, [values[pos]])
                finals += 1
            else:
                finals += self._task_failed(index, task, failure)
        self._advance(finals)

    def _store(self, first: int, values: list[Any]) -> None:
        """Keep the results of consecutive tasks ``first``, ``first + 1``, ..."""
        if self.s.return_as == "generator_unordered":
            self._ready_unordered.extend(values)
        else:
            self._chunks[first] = values

    def _task_failed(self, index: int, task: Task, error: TaskError) -> bool:
        """Apply the error policy to a failed task; False when it goes back for a retry."""
        attempts = self._attempts.get(index, 0)
        if attempts < self.s.retries:
            self._attempts[index] = attempts + 1
            self._retry.append((index, task))
            return False
        exc = error.exception
        _add_note(exc, f"raised by task {index} ({_name(task[0])}) of {self.s.name}")
        if error.tb_text and exc.__cause__ is None:
            exc.__cause__ = RemoteTraceback(error.tb_text)
        if self.s.on_error == "return":
            self._store(index, [exc])
            return True
        raise exc

    def _advance(self, n: int) -> None:
        self._n_done += n
        if self.s.reporter is not None:
            self.s.reporter.advance(n)
        if self.s.verbose:
            self._print_progress()

    # -- yielding ---------------------------------------------------------------------------

    def _pop_ready(self) -> Iterator[Any]:
        if self.s.return_as == "generator_unordered":
            while self._ready_unordered:
                yield self._ready_unordered.popleft()
            return
        chunks = self._chunks
        while self._next_yield in chunks:
            first = self._next_yield
            values = chunks.pop(first)
            self._next_yield += len(values)
            if self._ordered_bound:
                self._unyielded_batches.pop(first, None)
            yield from values

    def _finished(self) -> bool:
        return self._exhausted and not self._last_tasks and not self._in_flight and not self._retry

    def start_results(self) -> Results:
        """Dispatch the first batches now, and return the iterator of results."""
        try:
            self._fill()
        except BaseException:
            self.close(False)
            raise
        return Results(self)

    def _generate(self) -> Generator[Any, None, None]:
        """Yield the results (input order or completion order); close the call at the end."""
        ok = False
        try:
            while True:
                self._fill()
                yield from self._pop_ready()
                if self._finished():
                    break
                if not self._in_flight:
                    continue
                self._wait_one()
            yield from self._pop_ready()
            ok = True
        finally:
            self.close(ok)

    def collect(self) -> list[Any]:
        """Run to the end and return the results as a list in input order."""
        ok = False
        try:
            while True:
                self._fill()
                if self._finished():
                    break
                if not self._in_flight:
                    continue
                self._wait_one()
            ok = True
        finally:
            self.close(ok)
        out: list[Any] = []
        chunks = self._chunks
        while self._next_yield in chunks:
            values = chunks.pop(self._next_yield)
            self._next_yield += len(values)
            out.extend(values)
        return out

    def close(self, ok: bool) -> None:
        """End the call: on failure, cancel pending batches and stop running ones."""
        if self._closed:
            return
        self._closed = True
        try:
            if not ok:
                for flight in self._in_flight.values():
                    cancel = getattr(flight.future, "cancel", None)
                    if cancel is not None:
                        cancel()
                self._in_flight.clear()
                self.backend.abort_everything(ensure_ready=True)
            if self.s.verbose:
                self._print_done(ok)
        finally:
            if self.s.reporter is not None:
                self.s.reporter.finish()
            self._on_close(ok)

    # -- verbose output, joblib style -------------------------------------------------------

    def _print(self, message: str) -> None:
        print(f"[{self.s.name}(n_jobs={self.s.n_jobs})]: {message}", file=sys.stderr, flush=True)

    def _print_start(self) -> None:
        if self.s.verbose:
            self._print(
                f"Using backend {self.backend.__class__.__name__} with {self.s.n_jobs} "
                f"concurrent workers."
            )

    def _print_progress(self) -> None:
        n = self._n_done
        # Every completion at verbose >= 10; otherwise at powers of two, to keep logs short.
        if self.s.verbose >= 10 or n & (n - 1) == 0:
            elapsed = time.perf_counter() - self._start
            total = f" out of {self.total:4d}" if self.total is not None else ""
            self._print(f"Done {n:4d}{total} tasks      | elapsed: {elapsed:6.1f}s")

    def _print_done(self, ok: bool) -> None:
        elapsed = time.perf_counter() - self._start
        state = "Done" if ok else "Stopped after"
        self._print(f"{state} {self._n_done:4d} tasks      | elapsed: {elapsed:6.1f}s finished")


class Results:
    """The iterator that ``return_as="generator"`` (or ``"generator_unordered"``) returns.

    A plain generator runs its cleanup only once iteration has started; this one also ends
    the call (cancelling what is pending) when it is closed or dropped before its first item.
    """

    def __init__(self, call: Call) -> None:
        self._gen = call._generate()
        self._finalizer = weakref.finalize(self, call.close, False)

    def __iter__(self) -> Results:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Stop: cancel the tasks still pending and release the workers."""
        self._gen.close()
        self._finalizer()


class _Resolved:
    """A finished future holding ``value`` (for backends without completion callbacks)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


def _check_tasks(tasks: list[Any], first: int) -> None:
    """Check that each task is ``(callable, args tuple, kwargs dict)``.

    The hot path for many tiny tasks: the usual batch is checked with C-level passes
    (``map`` over builtins); only an unusual one is looked at task by task.
    """
    try:
        # (The types of args and kwargs are left to the call itself: a wrong one fails that
        # task with Python's own message, and a note naming the task.)
        if (
            set(map(type, tasks)) <= _TUPLE
            and set(map(len, tasks)) <= _THREE
            and all(map(callable, set(map(_first, tasks))))
        ):
            return
    except TypeError:  # an unhashable callable: check one by one
        pass
    for offset, task in enumerate(tasks):
        _check_task(task, first + offset)


_TUPLE = frozenset({tuple})
_THREE = frozenset({3})
_first = operator.itemgetter(0)


def _check_task(task: Any, index: int) -> None:
    if (
        isinstance(task, tuple)
        and len(task) == 3
        and callable(task[0])
        and isinstance(task[1], tuple)
        and isinstance(task[2], dict)
    ):
        return
    raise TypeError(
        f"Parallel expects tasks made with delayed(f)(*args, **kwargs), got "
        f"{type(task).__name__} {task!r:.80} at index {index}"
    )


def _name(function: Any) -> str:
    return str(
        getattr(function, "__qualname__", None)
        or getattr(function, "__name__", None)
        or type(function).__name__
    )


def _add_note(exc: BaseException, note: str) -> None:
    notes = getattr(exc, "__notes__", None) or []
    if note in notes:
        return
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: keep the note where 3.11's traceback would look for it
        exc.__notes__ = [*notes, note]  # type: ignore[attr-defined]
