"""The manager thread: starts, feeds, watches, times out and reaps the workers of a run."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from multiprocessing.connection import wait
from typing import Any, cast

from parajob.errors import (
    PoolClosedError,
    TaskPicklingError,
    TaskTimeoutError,
    TerminatedWorkerError,
    WorkerStartError,
)
from parajob.process_pool import _messages as m
from parajob.process_pool import _results
from parajob.process_pool._core import PoolCore, register_at_exit
from parajob.process_pool._cpu import thread_cap_env
from parajob.process_pool._state import (
    BROKEN,
    CLOSED,
    CLOSING,
    EXIT_GRACE,
    MAX_REQUEUES,
    MAX_START_FAILURES,
    OPEN,
    BatchResult,
    Resolution,
    Run,
    WorkerHandle,
    close_wake_pipe,
    describe_exit,
    resolve,
)
from parajob.process_pool._worker import (
    EXIT_INIT_FAILED,
    ChildName,
    WorkerConfig,
    worker_main,
)

_log = logging.getLogger("parajob.process_pool")

__all__ = ["Manager"]


class Manager(PoolCore):
    """The manager thread's side of the pool; one thread per run."""

    def _start_run_locked(self) -> Run:
        register_at_exit(self)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        alive_r, alive_w = self._ctx.Pipe(duplex=False)
        run = Run(wake_r, wake_w, alive_r, alive_w)
        self._runs = [r for r in self._runs if r.thread is not None and r.thread.is_alive()]
        self._runs.append(run)
        self._run = run
        run.thread = threading.Thread(
            target=self._manage, args=(run,), name="parajob-pool-manager", daemon=True
        )
        run.thread.start()
        return run

    def _spawn(self, run: Run, slot: int) -> WorkerHandle:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        status = self._ctx.RawArray(ctypes.c_int64, 3)
        env = dict(os.environ)
        env.update(thread_cap_env(self._max_workers, threads=self._inner_threads))
        root = logging.getLogger()
        levels = {
            name: lg.level
            for name, lg in root.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
        }
        config = WorkerConfig(
            worker_id=slot,
            initializer=self._init_blob,
            root_level=root.level,
            log_levels=levels,
            max_tasks=self._max_tasks,
            max_rss=self._max_rss,
            kill_with_forkserver=self._start_method == "forkserver",
        )
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, run.alive_r, status, config),
            name=ChildName(f"ParajobWorker-{slot}", env),
            daemon=False,
        )
        try:
            process.start()
        finally:
            child_end.close()
        assert process.pid is not None
        return WorkerHandle(slot, process, parent_end, status, process.pid)

    def _manage(self, run: Run) -> None:
        kill = False
        try:
            kill = self._manage_loop(run)
        except BaseException as exc:  # a bug here must fail loudly, never hang callers
            kill = True
            _log.critical("parajob process pool manager failed", exc_info=True)
            self._break(run, f"the pool's manager thread failed: {type(exc).__name__}: {exc}")
        finally:
            _flush(run)
            self._reap(run, kill)

    def _manage_loop(self, run: Run) -> bool:
        """Serve ``run`` until it ends; return True if its workers must be killed."""
        poller = _Poller(run.wake_r)
        to_resolve = run.resolutions
        while True:
            with self._lock:
                if self._run is not run:
                    return self._state == BROKEN
                self._send_forgets_locked(run)
                slots = self._slots_to_fill_locked(run)
                if not slots:
                    done, timeout = self._plan_wait_locked(run, to_resolve)
                    if done:
                        return False
            if slots:
                # Starting a process waits on the forkserver: do it without the lock.
                started = []
                try:
                    for slot in slots:
                        started.append(self._spawn(run, slot))
                except Exception as exc:
                    self._break(run, f"a worker process could not be started: {exc}")
                    return True
                with self._lock:
                    run.workers.extend(started)
                    run.version += 1
                    if self._run is not run:
                        return True
                    done, timeout = self._plan_wait_locked(run, to_resolve)
                    if done:
                        return False
            # Futures are resolved last, just before the wait: a caller woken by its result
            # then finds the pool lock free instead of waiting for this loop to go round.
            _flush(run)
            # Only this thread changes run.workers, so it may read them without the lock.
            if poller.version != run.version:
                poller.sync(run)
            exited: list[WorkerHandle] = []
            for w, is_conn in poller.wait(timeout):
                if is_conn:
                    self._read_one(run, w)
                else:
                    exited.append(w)
            for w in exited:
                self._drain(run, w)
                self._on_exit(run, w)
            if run.deadlines:
                self._enforce_deadlines(run)

    def _plan_wait_locked(
        self, run: Run, to_resolve: list[Resolution]
    ) -> tuple[bool, float | None]:
        # Every event that frees capacity dispatches on its own; this catch-all costs nothing
        # when nothing is pending and guarantees no work waits while a worker could take it.
        self._dispatch_locked(run, to_resolve)
        now = time.monotonic()
        if self._end_run_if_done_locked(run, now):
            return True, None
        timeout = self._next_timeout_locked(run, now)
        run.next_wake = math.inf if timeout is None else now + timeout
        return False, timeout

    def _slots_to_fill_locked(self, run: Run) -> list[int]:
        # While closing, workers are still (re)started for work submitted before shutdown().
        if self._state != OPEN and not (self._state == CLOSING and self._pending):
            return []
        taken = {w.slot for w in run.workers if w.active}
        return [s for s in range(self._max_workers) if s not in taken]

    def _next_timeout_locked(self, run: Run, now: float) -> float | None:
        deadline = math.inf
        run.deadlines = False
        for w in run.workers:
            if w.inflight and w.ready and not w.stopping:
                head = w.inflight[0]
                if head.timeout is not None:
                    run.deadlines = True
                    deadline = min(deadline, head.head_since + head.timeout)
        busy = self._pending or any(w.inflight for w in run.workers)
        if busy:
            run.idle_since = now
        elif self._idle_timeout is not None and self._state == OPEN:
            deadline = min(deadline, run.idle_since + self._idle_timeout)
        if deadline == math.inf:
            return None
        return max(deadline - now, 0.0)

    def _end_run_if_done_locked(self, run: Run, now: float) -> bool:
        busy = bool(self._pending) or any(w.inflight for w in run.workers)
        if busy:
            return False
        if self._state == CLOSING:
            self._state = CLOSED
            self._run = None
            return True
        if (
            self._state == OPEN
            and self._idle_timeout is not None
            and now - run.idle_since >= self._idle_timeout
        ):
            self._run = None  # dormant: the next submission starts a new run
            return True
        return False

    def _read_one(self, run: Run, w: WorkerHandle) -> bool:
        fds = None
        try:
            buf = w.conn.recv_bytes()
            if buf[0] == m.K_RESULT and buf[1] & m.F_FDS:
                # The result's shared arrays: their descriptors follow the frame at once.
                fds = _results.receive_fds(w.conn)
        except (EOFError, OSError):
            # The worker is gone; stop polling its pipe (it would report EOF forever) and
            # let its sentinel tell how it ended.
            if not w.eof:
                w.eof = True
                run.version += 1
            return False
        self._on_message(run, w, buf, fds)
        return True

    def _drain(self, run: Run, w: WorkerHandle) -> None:
        # A worker may have written results (or its initializer error) just before exiting.
        try:
            while w.conn.poll():
                if not self._read_one(run, w):
                    break
        except (EOFError, OSError):
            pass

    def _on_message(
        self, run: Run, w: WorkerHandle, buf: bytes, fds: list[int] | None = None
    ) -> None:
        kind, flags, task_id = m.HEADER.unpack_from(buf)
        body = memoryview(buf)[m.HEADER.size :]
        if kind == m.K_RESULT or kind == m.K_TASK_FAILED:
            try:
                self._on_result(run, w, kind, flags, task_id, body, fds)
            finally:
                # Mapped arrays keep their memory; a dropped result's segments vanish here.
                _results.close_fds(fds)
        elif kind == m.K_LOG:
            self._on_log(body)
        elif kind == m.K_WARNING:
            self._on_warning(body)
        elif kind == m.K_READY:
            to_resolve = run.resolutions  # delivered before the next wait
            with self._lock:
                w.ready = True
                run.start_failures = 0
                if w.inflight:
                    w.inflight[0].head_since = time.monotonic()
                # Large frames wait for a ready worker: this one may take them now.
                self._dispatch_locked(run, to_resolve)
        elif kind == m.K_INIT_FAILED:
            description, tb_text = pickle.loads(body)
            name = m.callable_name(self._initializer)
            err = WorkerStartError(
                f"the initializer {name} raised {description} in worker {w.slot} "
                f"(pid {w.pid}); fix the initializer or its initargs; the pool was shut down, "
                "and get_executor() builds a new one"
            )
            err.__cause__ = m.RemoteTraceback(f'\n"""\n{tb_text}"""')
            self._break(run, str(err), err)

    def _on_result(
        self,
        run: Run,
        w: WorkerHandle,
        kind: int,
        flags: int,
        task_id: int,
        body: memoryview,
        fds: list[int] | None = None,
    ) -> None:
        outcome: tuple[bool, Any]
        with self._lock:
            head = w.inflight[0] if w.inflight else None
        if head is None or head.task_id != task_id:
            return  # work already failed (timeout/cancel) while its result was on the way
        if kind == m.K_TASK_FAILED:
            description, tb_text = pickle.loads(body)
            err: BaseException = TaskPicklingError(
                f"{head.label()} could not be unpickled in worker {w.slot} (pid {w.pid}): "
                f"{description}; check that the arguments' classes are importable in a fresh "
                "process and that their __setstate__/__reduce__ work"
            )
            err.__cause__ = m.RemoteTraceback(f'\n"""\n{tb_text}"""')
            outcome = (False, err)
        else:
            try:
                with _results.receiving(fds):
                    values, raw_errors, duration = pickle.loads(body)
                errors = m.load_errors(raw_errors)
            except Exception as exc:
                err = TaskPicklingError(
                    f"the result of {head.label()} could not be unpickled in the parent: "
                    f"{type(exc).__name__}: {exc}; make sure the result's classes are "
                    "importable here"
                )
                err.__cause__ = exc
                outcome = (False, err)
            else:
                if head.single:
                    outcome = (False, errors[0]) if errors else (True, values[0])
                else:
                    outcome = (True, BatchResult(values, errors, duration))
        to_resolve = run.resolutions  # delivered before the next wait
        with self._lock:
            if not w.inflight or w.inflight[0] is not head:
                return
            w.inflight.popleft()
            if flags & m.F_RETIRE:
                w.retiring = True
            if w.inflight:
                w.inflight[0].head_since = time.monotonic()
            if not head.cancelled:
                to_resolve.append((head.future, outcome[0], outcome[1]))
            self._dispatch_locked(run, to_resolve)
            self._exit_if_idle_locked(w) if w.retiring else None

    def _on_log(self, body: memoryview) -> None:
        try:
            record = logging.makeLogRecord(pickle.loads(body))
            logging.getLogger(record.name).handle(record)
        except Exception:
            _log.debug("could not re-emit a worker's log record", exc_info=True)

    def _on_warning(self, body: memoryview) -> None:
        try:
            text, module, qualname, filename, lineno = pickle.loads(body)
            category: type[Warning] = UserWarning
            owner = sys.modules.get("__main__" if module == "__mp_main__" else module)
            found: Any = owner
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if isinstance(found, type) and issubclass(found, Warning):
                category = found
            warnings.warn_explicit(
                text, category, filename, lineno, registry=self._warning_registry
            )
        except Exception:
            # e.g. the parent turned warnings into errors: there is no caller to raise to.
            _log.debug("could not re-emit a worker's warning", exc_info=True)

    def _on_exit(self, run: Run, w: WorkerHandle) -> None:
        w.process.join(timeout=EXIT_GRACE)
        exitcode = w.process.exitcode
        to_resolve = run.resolutions  # delivered before the next wait
        with self._lock:
            if w in run.workers:
                run.workers.remove(w)
                run.version += 1
            with contextlib.suppress(OSError):
                w.conn.close()
            if w.stopping is not None or not w.inflight:
                if exitcode == EXIT_INIT_FAILED and self._state != BROKEN:
                    run.start_failures += 1
                self._requeue_locked(w, to_resolve)
            elif not w.ready:
                run.start_failures += 1
                self._requeue_locked(w, to_resolve)
                if run.start_failures >= MAX_START_FAILURES:
                    how, _ = describe_exit(exitcode)
                    message = (
                        f"{run.start_failures} workers in a row died while starting (last: "
                        f"pid {w.pid}, {how}); their stderr above says why, often the main "
                        "module failing to import in a new process (guard the script's entry "
                        "point with `if __name__ == '__main__':`)"
                    )
                    self._fail_all_locked(run, WorkerStartError(message), to_resolve)
                    self._state = BROKEN
                    self._broken_message = message
                    self._run = None
            else:
                head = w.inflight.popleft()
                pos = self._position(w, head)
                if pos == -3 and head.requeues < MAX_REQUEUES:
                    # It died between tasks: this work never started there.
                    head.requeues += 1
                    w.inflight.appendleft(head)
                    self._requeue_locked(w, to_resolve)
                else:
                    how, cause = describe_exit(exitcode)
                    if pos == -2:
                        when = f"while loading the arguments of {head.label()}"
                    elif pos == -1:
                        when = f"while sending back the result of {head.label()}"
                    else:
                        when = f"while running {head.label(pos, self._span(w, head))}"
                    err = TerminatedWorkerError(
                        f"a worker died {when} (worker {w.slot}, pid {w.pid}, {how}); "
                        f"{cause}; the worker was replaced and the next call starts fresh"
                    )
                    # Attributes in the instance dict travel with the pickled error.
                    err.__dict__.update(
                        task_index=head.indices[pos] if 0 <= pos < len(head.indices) else None,
                        pid=w.pid,
                        exitcode=exitcode,
                    )
                    if not head.cancelled:
                        to_resolve.append((head.future, False, err))
                    self._requeue_locked(w, to_resolve)
            self._dispatch_locked(run, to_resolve)

    def _enforce_deadlines(self, run: Run) -> None:
        now = time.monotonic()
        to_resolve = run.resolutions  # delivered before the next wait
        with self._lock:
            for w in list(run.workers):
                if not w.inflight or not w.ready or w.stopping:
                    continue
                head = w.inflight[0]
                if head.timeout is None or now < head.head_since + head.timeout:
                    continue
                pos = self._position(w, head)
                label = head.label(pos, self._span(w, head))
                err = TaskTimeoutError(
                    f"{label} ran past its task_timeout of {head.timeout:g} s; its worker "
                    f"(worker {w.slot}, pid {w.pid}) was killed and replaced, other tasks were "
                    "not affected"
                )
                err.__dict__.update(
                    task_index=head.indices[pos] if 0 <= pos < len(head.indices) else None,
                    pid=w.pid,
                )
                head.cancelled = True  # its result, if it races in, is dropped
                to_resolve.append((head.future, False, err))
                self._kill_locked(run, w, "timeout", to_resolve)
            self._dispatch_locked(run, to_resolve)

    def _reap(self, run: Run, kill: bool) -> None:
        """Stop every worker of ``run`` and release its pipes (manager thread, at run end)."""
        to_resolve: list[Resolution] = []
        with self._lock:
            workers = list(run.workers)
            for w in workers:
                if kill:
                    w.stopping = w.stopping or "shutdown"
                    with contextlib.suppress(OSError):
                        os.kill(w.pid, signal.SIGKILL)
                else:
                    self._exit_if_idle_locked(w)
            self._fail_all_locked(
                run, PoolClosedError("the pool stopped before this task ran"), to_resolve
            )
            if self._run is None and self._state == CLOSING:
                self._state = CLOSED
        resolve(to_resolve)
        deadline = time.monotonic() + EXIT_GRACE
        for w in workers:
            w.process.join(max(deadline - time.monotonic(), 0.01))
            if w.process.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGKILL)
                w.process.join(EXIT_GRACE)
            with contextlib.suppress(OSError):
                w.conn.close()
            with contextlib.suppress(Exception):
                w.process.close()
        # Closing our end of the alive pipe ends any worker we could not reach.
        for closer in (run.alive_w.close, run.alive_r.close):
            with contextlib.suppress(OSError):
                closer()
        close_wake_pipe(run)
        run.workers.clear()


def _flush(run: Run) -> None:
    items = run.resolutions[:]
    run.resolutions.clear()
    resolve(items)


class _Poller:
    """Wait on worker pipes, worker sentinels and the wake-up pipe, with one ``poll`` object.

    The set of file descriptors only changes when workers come and go, so it is kept between
    waits instead of being rebuilt for every result (``multiprocessing.connection.wait``
    builds a new selector per call, a measurable share of a warm call's latency).
    """

    def __init__(self, wake_fd: int) -> None:
        self.wake_fd = wake_fd
        self.version = -1
        self.targets: dict[int, tuple[WorkerHandle, bool]] = {}
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(wake_fd, select.POLLIN)

    def sync(self, run: Run) -> None:
        want: dict[int, tuple[WorkerHandle, bool]] = {}
        for w in run.workers:
            if not w.eof:
                want[w.conn.fileno()] = (w, True)
            want[w.process.sentinel] = (w, False)
        if self._poll is not None:
            for fd in self.targets.keys() - want.keys():
                with contextlib.suppress(KeyError, ValueError):
                    self._poll.unregister(fd)
            for fd in want.keys() - self.targets.keys():
                self._poll.register(fd, select.POLLIN)
        self.targets = want
        self.version = run.version

    def wait(self, timeout: float | None) -> list[tuple[WorkerHandle, bool]]:
        if self._poll is not None:
            ms = None if timeout is None else math.ceil(timeout * 1000)
            ready = [fd for fd, _ in self._poll.poll(ms)]
        else:
            ready = cast(list[int], wait([self.wake_fd, *self.targets], timeout))
        out = []
        for fd in ready:
            if fd == self.wake_fd:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self.wake_fd, 4096)
                continue
            target = self.targets.get(fd)
            if target is not None:
                out.append(target)
        return out
