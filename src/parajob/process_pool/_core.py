"""The pool's state machine: work queue, dispatch to workers, cancellation, shutdown.

Moving parts
------------
::

    caller threads ──submit()──► pickle the work (caller's thread, no lock)
         │                        └─ lock ─► pending deque ─► idle worker? send now (no hop)
         │                                                       │
         ▼                                                       ▼  one duplex Pipe per worker
    Future ◄── resolved outside the lock ── manager thread ◄── results, logs, warnings
                                              │  waits on: every worker pipe, every worker
                                              │  sentinel, a wake-up pipe, with a timeout of
                                              │  the nearest task deadline or idle deadline
                                              └─ starts, replaces, times out and reaps workers

* A *run* is one generation of the pool's machinery: the manager thread, the workers, the
  wake-up pipe and the "parent alive" pipe. A pool starts a run on first use; the run ends at
  idle timeout (the pool becomes dormant and starts a new run when used again), at shutdown,
  or when the pool breaks (an initializer failed). Each run reaps its own workers.
* Each worker has a FIFO of in-flight work: at most one running task and, when both frames
  are small, one queued behind it so the worker never waits for the manager between tasks.
  The FIFO is how a death or a timeout is pinned on exactly one task; a small shared-memory
  status (task id, position in the batch) pins it on one call of a batch.
* Who owns what: the manager thread is the only reader of worker pipes and the only one that
  starts or reaps processes. Writers to a worker pipe hold the pool lock, so frames never
  interleave. A frame larger than the pipe buffer is only written to a ready, idle worker,
  which is reading; so a writer never blocks on a worker that is itself blocked writing to
  the manager.
* Lock order: the pool lock, then (briefly, inside ``Future``) a future's condition. Futures
  are resolved and callbacks run *after* the pool lock is released, so a done-callback may
  call ``submit()``. Unpickling results (user code: ``__setstate__``) also happens unlocked.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any

from parajob.errors import (
    PoolClosedError,
    WorkerStartError,
)
from parajob.process_pool import _mapping
from parajob.process_pool import _messages as m
from parajob.process_pool._state import (
    BROKEN,
    CLOSED,
    CLOSING,
    OPEN,
    Resolution,
    Run,
    Work,
    WorkerHandle,
    resolve,
    wake,
)

__all__ = ["PoolCore"]

# Ids per K_FORGET frame (8 bytes each): a frame stays far below a socket's buffer.
_FORGET_PER_FRAME = 2048


class PoolCore:
    """State shared by the public API and the manager thread, and the moves on it.

    Everything here that ends in ``_locked`` must be called with ``self._lock`` held.
    """

    # Set by ProcessPool.__init__ after it validated its arguments.
    _ctx: Any
    _start_method: str
    _max_workers: int
    _initializer: Callable[..., Any] | None
    _initargs: tuple[Any, ...]
    _init_blob: bytes | None
    _idle_timeout: float | None
    _max_tasks: int | None
    _max_rss: int | None
    _inner_threads: int | None
    _prefetch: bool
    _lock: threading.Lock
    _pending: deque[Work]
    _run: Run | None
    _runs: list[Run]
    _state: str
    _broken_message: str
    _warning_registry: dict[Any, Any]
    _forget_outbox: deque[int]

    def forget_copies(self, ids: Iterable[int]) -> None:
        """Kept shared copies (ids) were freed: their workers' mappings must go.

        Called from any thread, weak-reference callbacks included, so it takes no pool lock:
        the manager thread passes the ids on (``_send_forgets_locked``).
        """
        run = self._run
        if run is None:
            return  # no run, no workers: nothing maps the copies
        self._forget_outbox.extend(ids)
        wake(run)

    def _capacity_for(self, w: WorkerHandle, work: Work) -> bool:
        if not w.active or (self._max_tasks is not None and w.sent >= self._max_tasks):
            return False
        n = len(w.inflight)
        if n == 0:
            return w.ready or work.small
        return n == 1 and self._prefetch and work.small and w.inflight[0].small

    def send_forgets_now(self) -> None:
        """Pass on freed kept copies to idle workers now (a new copy waits for their room).

        Takes the pool lock: never call it from a weak-reference callback.
        """
        with self._lock:
            run = self._run
            if run is not None:
                self._send_forgets_locked(run)

    def _send_forgets_locked(self, run: Run) -> None:
        """Pass on the kept shared copies the parent freed (see :meth:`forget_copies`).

        The ids are queued for every worker that was ever sent work (only those can map a
        copy), and sent once the worker is ready and idle: it is then reading its pipe, so a
        K_FORGET frame never waits behind a long task or an initializer, and never fills the
        pipe while the manager holds the pool lock.
        """
        outbox = self._forget_outbox
        if outbox:
            ids = [outbox.popleft() for _ in range(len(outbox))]
            for w in run.workers:
                if w.sent and not (w.eof or w.exit_sent):
                    w.forget.extend(ids)
        for w in run.workers:
            if w.forget and w.ready and not w.inflight and not (w.eof or w.exit_sent):
                ids, w.forget = w.forget, []
                # An idle worker is reading, and each frame stays far below a socket's buffer.
                for at in range(0, len(ids), _FORGET_PER_FRAME):
                    body = b"".join(map(_mapping.COPY_ID.pack, ids[at : at + _FORGET_PER_FRAME]))
                    with contextlib.suppress(OSError):  # a dead worker's mappings are gone
                        w.conn.send_bytes(m.frame(m.K_FORGET, 0, body))

    def _dispatch_locked(self, run: Run, to_resolve: list[Resolution]) -> None:
        pending = self._pending
        while pending:
            work = pending[0]
            target = None
            # Idle workers first, so a queued-behind slot is only used when all are busy.
            for w in run.workers:
                if not w.inflight and self._capacity_for(w, work):
                    target = w
                    break
            if target is None:
                for w in run.workers:
                    if self._capacity_for(w, work):
                        target = w
                        break
            if target is None:
                return
            pending.popleft()
            if not work.started:
                if not work.future.set_running_or_notify_cancel():
                    continue  # cancelled by its owner before it started
                work.started = True
            try:
                target.conn.send_bytes(work.frame)
            except OSError:
                # The worker just died; its sentinel will tell how. Keep the work.
                pending.appendleft(work)
                target.stopping = target.stopping or "broken pipe"
                continue
            target.sent += 1
            target.inflight.append(work)
            if len(target.inflight) == 1:
                work.head_since = time.monotonic() if target.ready else 0.0

    def _exit_if_idle_locked(self, w: WorkerHandle) -> None:
        if not w.inflight and not w.exit_sent and (w.retiring or w.stopping is None):
            w.exit_sent = True
            with contextlib.suppress(OSError):
                w.conn.send_bytes(m.frame(m.K_EXIT, 0))

    def _kill_locked(
        self, run: Run, w: WorkerHandle, reason: str, to_resolve: list[Resolution]
    ) -> None:
        """Kill ``w`` now; fail its running work unless already failed, requeue the rest."""
        w.stopping = reason
        with contextlib.suppress(OSError):
            os.kill(w.pid, signal.SIGKILL)
        if w.inflight:
            head = w.inflight.popleft()
            if not head.cancelled and reason == "shutdown":
                label = head.label(self._position(w, head), self._span(w, head))
                err = PoolClosedError(
                    f"{label} was stopped because the pool was shut down with kill_workers=True"
                )
                to_resolve.append((head.future, False, err))
            self._requeue_locked(w, to_resolve)

    def _requeue_locked(self, w: WorkerHandle, to_resolve: list[Resolution]) -> None:
        # Work queued behind a dead worker's task never started: give it to another worker.
        while w.inflight:
            work = w.inflight.pop()
            if work.cancelled:
                continue
            if self._state != OPEN and w.stopping == "shutdown":
                to_resolve.append((work.future, False, CancelledError()))
            else:
                self._pending.appendleft(work)

    def _span(self, w: WorkerHandle, work: Work) -> int:
        # How many calls the worker was running as one block (see _worker._run_calls).
        try:
            return max(int(w.status[2]), 1) if int(w.status[1]) == work.task_id else 1
        except Exception:
            return 1

    def _position(self, w: WorkerHandle, work: Work) -> int:
        try:
            if int(w.status[1]) == work.task_id:
                return int(w.status[0])
        except Exception:
            pass
        return -3  # never reached the worker's loop

    def _fail_all_locked(
        self, run: Run | None, err: BaseException, to_resolve: list[Resolution]
    ) -> None:
        while self._pending:
            work = self._pending.popleft()
            to_resolve.append((work.future, False, err))
        if run is not None:
            for w in run.workers:
                while w.inflight:
                    work = w.inflight.popleft()
                    if not work.cancelled:
                        to_resolve.append((work.future, False, err))

    def _break(self, run: Run, message: str, err: BaseException | None = None) -> None:
        to_resolve: list[Resolution] = []
        with self._lock:
            self._fail_all_locked(run, err or WorkerStartError(message), to_resolve)
            if self._run is run or self._run is None:
                self._state = BROKEN
                self._broken_message = message
                self._run = None
        resolve(to_resolve)

    def cancel(
        self, futures: Iterable[Future[Any]] | None = None, *, kill_running: bool = False
    ) -> int:
        """Cancel work that has not started; with ``kill_running``, stop running work too.

        Parameters
        ----------
        futures : iterable of Future, optional
            The work to cancel; default all of this pool's work.
        kill_running : bool, default False
            Also kill the workers running any of it (they are replaced); those futures fail
            with ``concurrent.futures.CancelledError``.

        Returns
        -------
        int
            How many futures were cancelled or stopped.
        """
        targets = None if futures is None else set(futures)
        to_resolve: list[Resolution] = []
        count = 0
        with self._lock:
            keep: deque[Work] = deque()
            for work in self._pending:
                if targets is None or work.future in targets:
                    to_resolve.append((work.future, False, CancelledError()))
                    count += 1
                else:
                    keep.append(work)
            self._pending = keep
            run = self._run
            if kill_running and run is not None:
                for w in run.workers:
                    for work in list(w.inflight):
                        if work.cancelled or not (targets is None or work.future in targets):
                            continue
                        work.cancelled = True
                        count += 1
                        to_resolve.append(
                            (work.future, False, CancelledError(f"{work.label()} was cancelled"))
                        )
                    if w.inflight and w.inflight[0].cancelled and not w.stopping:
                        self._kill_locked(run, w, "cancel", to_resolve)
                wake(run)
        resolve(to_resolve)
        return count

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill_workers: bool = False
    ) -> None:
        """Stop the pool; safe to call more than once.

        Parameters
        ----------
        wait : bool, default True
            Return only when the workers have exited (after finishing the submitted work,
            unless it is cancelled or killed).
        cancel_futures : bool, default False
            Cancel the work that has not started.
        kill_workers : bool, default False
            Kill the workers now; running work fails with
            :class:`~parajob.errors.PoolClosedError` and pending work is cancelled.
        """
        to_resolve: list[Resolution] = []
        with self._lock:
            if self._state == OPEN:
                self._state = CLOSING
            run = self._run
            if cancel_futures or kill_workers or run is None:
                while self._pending:
                    work = self._pending.popleft()
                    to_resolve.append((work.future, False, CancelledError()))
            if kill_workers and run is not None:
                for w in run.workers:
                    if not w.stopping:
                        self._kill_locked(run, w, "shutdown", to_resolve)
            if run is None and self._state == CLOSING:
                self._state = CLOSED
            elif run is not None:
                wake(run)
            runs = list(self._runs)
        resolve(to_resolve)
        if wait:
            for r in runs:
                if r.thread is not None and r.thread is not threading.current_thread():
                    r.thread.join()

    def _closed_error(self) -> PoolClosedError:
        if self._state == BROKEN:
            return PoolClosedError(
                f"this pool is broken: {self._broken_message}; call get_executor() again for "
                "a new pool"
            )
        return PoolClosedError(
            "cannot submit work to a pool that was shut down; use get_executor() for the "
            "shared pool or create a new ProcessPool"
        )


_preload_lock = threading.Lock()
_live_pools: weakref.WeakSet[PoolCore] = weakref.WeakSet()
_at_exit_registered = False


def register_at_exit(pool: PoolCore) -> None:
    global _at_exit_registered
    _live_pools.add(pool)
    if not _at_exit_registered:
        # Registered after multiprocessing's own exit hook (imported earlier), so it runs
        # first (atexit is last-in, first-out) and that hook, which joins every child
        # process, finds no worker left to wait for.
        atexit.register(_stop_all_at_exit)
        _at_exit_registered = True


def _disown_after_fork() -> None:
    # A child forked from a process with pools inherits the pool objects but not their
    # threads, and their workers belong to the parent. Mark every pool closed in the child,
    # with a fresh lock (the parent's may have been held at the fork), so using one raises a
    # clear error instead of waiting forever; get_executor() in the child builds its own.
    for pool in list(_live_pools):
        pool._lock = threading.Lock()
        pool._run = None
        pool._runs = []
        pool._pending = deque()
        pool._forget_outbox = deque()
        pool._state = BROKEN
        pool._broken_message = (
            "it was created in the parent process of this fork; pools do not survive a fork"
        )
    _live_pools.clear()
    shared = sys.modules.get("parajob.process_pool._shared")
    if shared is not None:
        shared.forget_after_fork()
    # multiprocessing's forkserver handle is not fork-aware either: the child would ask the
    # parent's forkserver for workers and then fail on waitpid (ECHILD). Re-initialising
    # the handle makes the child start a forkserver of its own when it needs one.
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        with contextlib.suppress(Exception):
            server.__init__()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


def _stop_all_at_exit() -> None:
    # Nothing can collect results after exit: stop running work rather than hang on it.
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True, kill_workers=True)


def preload_forkserver(ctx: Any) -> None:
    # The forkserver imports these once; each worker forked from it starts with them loaded.
    # Only the light worker module: numpy must not be imported before the worker's thread caps
    # are set. Calling this after the forkserver started has no effect, which is fine.
    with _preload_lock:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        if server is not None and getattr(server, "_forkserver_pid", None) is not None:
            return
        ctx.set_forkserver_preload(["parajob.process_pool._worker"])
