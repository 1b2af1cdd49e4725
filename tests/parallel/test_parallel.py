"""Parallel and delayed: joblib's semantics on every backend, and parajob's additions."""

from __future__ import annotations

import io
import pickle
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from parajob import (
    Parallel,
    ParallelBackendBase,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from parajob.errors import ParallelTimeoutError, TaskTimeoutError
from parajob.parallel import worker_id
from parajob.parallel._backend import BACKENDS
from parajob.parallel.backends import SequentialBackend, ThreadingBackend
from parajob.progress import ProgressReporter, TextProgress
from parajob.testing import check_parallel_backend

WAIT = 10  # seconds any single blocking wait in this file may take before the test fails


def square(x):
    return x * x


def boom(x, bad):
    if x == bad:
        raise KeyError("boom", x)
    return x


@pytest.mark.parametrize(
    "name", ["sequential", "threading", "processes", "loky", "multiprocessing"]
)
def test_backend_conforms(name):
    check_parallel_backend(name)


class _ExecutorBackend(ParallelBackendBase):
    """A user's backend written against the documented contract: two methods."""

    def effective_n_jobs(self, n_jobs):
        return 2 if n_jobs < 0 else n_jobs

    def configure(self, n_jobs=1, parallel=None, **kwargs):
        self.pool = ThreadPoolExecutor(self.effective_n_jobs(n_jobs))
        return super().configure(n_jobs=n_jobs, parallel=parallel, **kwargs)

    def submit(self, func, callback=None):
        future = self.pool.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def terminate(self):
        self.pool.shutdown(wait=True)


def test_a_users_backend_registers_and_passes_the_kit():
    register_parallel_backend("kit-user", _ExecutorBackend)
    try:
        check_parallel_backend("kit-user")
    finally:
        BACKENDS.unregister("kit-user")


def test_delayed_builds_a_picklable_task_triple():
    task = delayed(square)(3)
    assert task == (square, (3,), {})
    fn, args, kwargs = delayed(divmod)(7, 2)
    assert fn(*args, **kwargs) == (3, 1)
    wrapped = pickle.loads(pickle.dumps(delayed(square)))
    assert wrapped(2) == (square, (2,), {})
    assert delayed(square).__name__ == "square"
    with pytest.raises(TypeError, match="needs a callable"):
        delayed(3)


def test_n_jobs_zero_is_an_error_that_says_what_to_use():
    with pytest.raises(ValueError, match=r"n_jobs must be a non-zero int, got 0; use 1"):
        Parallel(n_jobs=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"return_as": "tuple"}, "return_as must be one of"),
        ({"batch_size": 0}, "batch_size must be 'auto' or an int >= 1, got 0"),
        ({"pre_dispatch": "__import__('os').getpid()"}, "pre_dispatch must be"),
        ({"pre_dispatch": "0 * n_jobs"}, "at least 1"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"task_timeout": 0}, "task_timeout must be a positive number"),
        ({"progress": "bars"}, "progress must be True"),
        ({"backend": "nope"}, "unknown backend 'nope'"),
        ({"mmap_mode": "x"}, "mmap_mode must be one of"),
        ({"max_nbytes": "lots"}, "max_nbytes must be"),
    ],
)
def test_bad_arguments_name_the_parameter_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Parallel(**kwargs)


def test_n_jobs_one_runs_in_the_calling_thread_without_pickling():
    class Unpicklable:
        def __reduce__(self):
            raise TypeError("must not be pickled")

    caller = threading.get_ident()
    out = Parallel(n_jobs=1)(
        delayed(lambda o: (o, threading.get_ident()))(Unpicklable()) for _ in range(3)
    )
    assert all(ident == caller for _, ident in out)


def test_settings_resolve_argument_then_innermost_config_then_default():
    assert Parallel().n_jobs is None
    with parallel_config(n_jobs=3, verbose=2):
        assert Parallel().n_jobs == 3
        with parallel_config(n_jobs=2):
            p = Parallel()
            assert (p.n_jobs, p.verbose) == (2, 2)
            assert Parallel(n_jobs=1).n_jobs == 1
        assert Parallel().n_jobs == 3
    assert Parallel().n_jobs is None


def test_parallel_config_is_local_to_its_thread():
    seen = {}
    inside = threading.Event()
    checked = threading.Event()

    def other_thread():
        assert inside.wait(WAIT)
        seen["backend"] = type(Parallel()._backend).__name__
        checked.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with parallel_config(backend="threading", n_jobs=2):
        inside.set()
        assert checked.wait(WAIT)
        assert isinstance(Parallel()._backend, ThreadingBackend)
    t.join(WAIT)
    assert seen["backend"] != "ThreadingBackend"


def test_parallel_backend_defaults_to_all_cpus_as_in_joblib():
    with parallel_backend("threading") as config:
        assert config["n_jobs"] == -1
        assert effective_n_jobs() >= 1


def test_prefer_and_require_choose_threads():
    assert isinstance(Parallel(prefer="threads")._backend, ThreadingBackend)
    assert isinstance(Parallel(require="sharedmem")._backend, ThreadingBackend)
    with pytest.raises(ValueError, match="does not share memory"):
        Parallel(backend="multiprocessing", require="sharedmem")


def test_require_sharedmem_lets_tasks_mutate_the_callers_objects():
    shared = []
    Parallel(n_jobs=2, require="sharedmem")(delayed(shared.append)(i) for i in range(20))
    assert sorted(shared) == list(range(20))


@pytest.mark.parametrize("backend", ["sequential", "threading"])
def test_an_error_in_the_input_iterator_is_re_raised(backend):
    def tasks():
        yield delayed(square)(1)
        yield delayed(square)(2)
        raise RuntimeError("the input broke")

    with pytest.raises(RuntimeError, match="the input broke"):
        Parallel(n_jobs=2, backend=backend)(tasks())


def test_a_non_task_item_is_a_clear_type_error():
    with pytest.raises(
        TypeError, match=r"delayed\(f\)\(\*args, \*\*kwargs\), got int 5 at index 1"
    ):
        Parallel(n_jobs=2, backend="threading")([delayed(square)(1), 5])


def test_first_failure_cancels_the_rest():
    ran = []
    lock = threading.Lock()

    def task(i):
        with lock:
            ran.append(i)
        if i == 0:
            raise KeyError("first")
        return i

    with pytest.raises(KeyError):
        Parallel(n_jobs=2, backend="threading", batch_size=1, pre_dispatch=2)(
            delayed(task)(i) for i in range(1000)
        )
    assert len(ran) < 20


def test_an_abandoned_generator_stops_dispatching():
    ran = []
    gen = Parallel(
        n_jobs=2, backend="threading", batch_size=1, pre_dispatch=2, return_as="generator"
    )(delayed(ran.append)(i) for i in range(1000))
    next(gen)
    gen.close()
    assert len(ran) < 20


def test_generator_memory_is_bounded_by_pre_dispatch():
    started = []
    gen = Parallel(
        n_jobs=2, backend="threading", batch_size=1, pre_dispatch=2, return_as="generator"
    )(delayed(started.append)(i) for i in range(10_000))
    for _ in range(5):
        next(gen)
    # Dispatch follows consumption: far from all 10,000 tasks have been read.
    assert len(started) < 30
    gen.close()


def test_unordered_generator_yields_fast_results_before_slow_ones():
    release = threading.Event()

    def slow_then_fast(i):
        if i == 0:
            assert release.wait(WAIT)
        return i

    gen = Parallel(n_jobs=2, backend="threading", batch_size=1, return_as="generator_unordered")(
        delayed(slow_then_fast)(i) for i in range(4)
    )
    first = [next(gen) for _ in range(3)]
    release.set()
    assert sorted(first) == [1, 2, 3]
    assert list(gen) == [0]


def test_task_error_keeps_type_args_and_names_the_task():
    with pytest.raises(KeyError) as info:
        Parallel(n_jobs=2, backend="threading")(delayed(boom)(i, 5) for i in range(10))
    assert info.value.args == ("boom", 5)
    assert "raised by task 5 (boom) of Parallel" in info.value.__notes__


def test_on_error_return_and_retries():
    out = Parallel(n_jobs=2, backend="threading", on_error="return")(
        delayed(boom)(i, 1) for i in range(3)
    )
    assert out[0] == 0 and out[2] == 2 and isinstance(out[1], KeyError)
    attempts = []

    def flaky(i):
        attempts.append(i)
        if attempts.count(i) < 3:
            raise OSError("transient")
        return i

    assert Parallel(n_jobs=1, retries=2)(delayed(flaky)(i) for i in range(3)) == [0, 1, 2]
    attempts.clear()
    with pytest.raises(OSError, match="transient"):
        Parallel(n_jobs=1, retries=1)(delayed(flaky)(i) for i in range(3))


def test_timeout_stops_the_call_with_a_timeout_error():
    release = threading.Event()
    try:
        with pytest.raises(ParallelTimeoutError, match=r"did not finish within timeout=0.2") as e:
            Parallel(n_jobs=2, backend="threading", timeout=0.2)(
                delayed(release.wait)(WAIT) for _ in range(2)
            )
        assert isinstance(e.value, TimeoutError)
    finally:
        release.set()


def test_task_timeout_on_threads_fails_only_the_late_task():
    release = threading.Event()
    try:
        out = Parallel(n_jobs=2, backend="threading", task_timeout=0.3, on_error="return")(
            delayed(release.wait)(t) for t in (0, WAIT, 0)
        )
    finally:
        release.set()
    assert out[0] is False and out[2] is False
    assert isinstance(out[1], TaskTimeoutError)
    assert "task 1 (Event.wait) ran past task_timeout=0.3 s" in str(out[1])


def test_task_timeout_in_the_caller_fails_the_task_after_the_fact():
    stop = threading.Event()
    with pytest.raises(TaskTimeoutError, match=r"past task_timeout=0\.05 s"):
        Parallel(n_jobs=1, task_timeout=0.05)(delayed(stop.wait)(0.2) for _ in range(1))


class _Recorder(ProgressReporter):
    def __init__(self):
        self.events = []

    def start(self, total):
        self.events.append(("start", total))

    def advance(self, n):
        self.events.append(("advance", n))

    def finish(self):
        self.events.append(("finish",))


@pytest.mark.parametrize("backend", ["sequential", "threading"])
def test_progress_counts_tasks_not_batches(backend):
    rec = _Recorder()
    Parallel(n_jobs=2, backend=backend, batch_size=5, progress=rec)(
        [delayed(square)(i) for i in range(20)]
    )
    assert rec.events[0] == ("start", 20)
    assert rec.events[-1] == ("finish",)
    steps = [e[1] for e in rec.events if e[0] == "advance"]
    assert sum(steps) == 20 and set(steps) == {5}


def test_progress_callable_and_unknown_length():
    seen = []
    Parallel(n_jobs=1, progress=lambda done, total: seen.append((done, total)))(
        delayed(square)(i) for i in range(7)
    )
    assert seen[-1] == (7, None)


def test_progress_finishes_when_the_call_fails():
    rec = _Recorder()
    with pytest.raises(KeyError):
        Parallel(n_jobs=2, backend="threading", progress=rec)(delayed(boom)(i, 0) for i in range(4))
    assert rec.events[-1] == ("finish",)


def test_text_progress_renders_count_rate_and_eta():
    stream = io.StringIO()
    bar = TextProgress(stream=stream)
    bar.start(10)
    bar.advance(5)
    line = bar.render(bar._start + 1.0)
    assert "50%" in line and "5/10 tasks" in line and "5.0 tasks/s" in line and "<00:01" in line
    bar.finish()
    assert stream.getvalue().endswith("\n")


def test_verbose_prints_joblib_style_lines(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10)(delayed(square)(i) for i in range(4))
    err = capsys.readouterr().err
    assert "[Parallel(n_jobs=2)]: Using backend ThreadingBackend with 2 concurrent workers." in err
    assert "finished" in err


def test_threads_get_worker_ids_and_an_initializer():
    inits = []
    ids = Parallel(
        n_jobs=2, backend="threading", batch_size=1, initializer=inits.append, initargs=("init",)
    )(delayed(worker_id)() for _ in range(20))
    assert set(ids) <= {0, 1}
    assert inits == ["init"] * len(inits) and 1 <= len(inits) <= 2
    assert worker_id() is None


def test_nested_calls_share_one_cpu_budget():
    from parajob.process_pool import cpu_count

    def inner(_):
        return effective_n_jobs(-1)

    outer_n = cpu_count()
    shares = Parallel(n_jobs=outer_n, backend="threading")(delayed(inner)(i) for i in range(4))
    # Each of outer_n workers gets cpu_count() // outer_n CPUs for its own inner calls.
    assert set(shares) == {max(cpu_count() // outer_n, 1)}


def test_a_parallel_object_keeps_its_workers_in_a_with_block():
    with Parallel(n_jobs=2, backend="threading") as parallel:
        backend = parallel._backend
        pool = backend._pool
        assert parallel(delayed(square)(i) for i in range(3)) == [0, 1, 4]
        assert parallel(delayed(square)(i) for i in range(3)) == [0, 1, 4]
        assert backend._pool is pool
    assert backend._pool is None


def test_subclassing_parallel_and_overriding_call_still_works():
    # scikit-learn's pattern: a Parallel subclass that wraps the tasks and calls super().
    class SkParallel(Parallel):
        def __call__(self, iterable):
            wrapped = ((f, args, kwargs) for f, args, kwargs in iterable)
            return super().__call__(wrapped)

    assert SkParallel(n_jobs=2, backend="threading")(delayed(square)(i) for i in range(4)) == [
        0,
        1,
        4,
        9,
    ]


def test_a_second_call_while_a_generator_is_open_is_refused():
    parallel = Parallel(n_jobs=2, backend="threading", return_as="generator")
    gen = parallel(delayed(square)(i) for i in range(3))
    with pytest.raises(RuntimeError, match="already running a call"):
        parallel(delayed(square)(i) for i in range(3))
    assert list(gen) == [0, 1, 4]
    assert list(parallel(delayed(square)(i) for i in range(2))) == [0, 1]


def test_auto_batching_groups_fast_tasks():
    sizes = []

    class Spy(SequentialBackend):
        def submit(self, func, callback=None):
            sizes.append(len(func))
            return super().submit(func, callback)

    Parallel(backend=Spy())(delayed(square)(i) for i in range(20_000))
    assert sizes[0] == 1 and max(sizes) > 100 and sum(sizes) == 20_000


def test_the_last_tasks_of_a_generator_are_spread_over_the_workers():
    # When the input ends inside a batch, its last tasks go out as one batch per worker, not
    # as one batch for one worker (nor as many small batches, each a message to pay for).
    sizes = []

    class TwoWorkersTimed(SequentialBackend):
        def effective_n_jobs(self, n_jobs):
            return 2

        def submit(self, func, callback=None):
            sizes.append(len(func))
            return super().submit(func, callback)

        def retrieve_result_callback(self, out):
            result = super().retrieve_result_callback(out)
            result.duration = 0.001 * len(result.values)  # every task "takes" 1 ms
            return result

    out = Parallel(backend=TwoWorkersTimed(), n_jobs=2)(delayed(square)(i) for i in range(100))
    assert out == [i * i for i in range(100)]
    assert sizes == [1, 1, 1, 1, 10, 20, 20, 20, 20, 3, 3]  # the input ended with 6 left


def test_backend_without_retrieve_callback_is_served_in_order():
    class OldStyle(ParallelBackendBase):
        supports_retrieve_callback = False

        def effective_n_jobs(self, n_jobs):
            return 1

        def submit(self, func, callback=None):
            future = Future()
            future.set_result(func())
            return future

    assert Parallel(backend=OldStyle())(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_a_generator_dropped_before_its_first_item_releases_the_call():
    import gc

    parallel = Parallel(n_jobs=2, backend="threading", return_as="generator")
    gen = parallel(delayed(square)(i) for i in range(100))
    del gen
    gc.collect()
    # The call ended: the Parallel object takes a new one.
    assert parallel(delayed(square)(i) for i in range(3)) is not None
    closed = parallel(delayed(square)(i) for i in range(100))
    closed.close()
    assert list(parallel(delayed(square)(i) for i in range(3))) == [0, 1, 4]


def test_a_failed_call_does_not_poison_the_next_one_in_a_with_block():
    with Parallel(n_jobs=2, backend="threading") as parallel:
        with pytest.raises(KeyError):
            parallel(delayed(boom)(i, 0) for i in range(20))
        assert parallel(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_progress_counts_each_task_once_with_retries():
    seen = []
    attempts = []

    def flaky(i):
        attempts.append(i)
        if attempts.count(i) < 2:
            raise OSError("transient")
        return i

    Parallel(n_jobs=1, retries=2, progress=lambda done, total: seen.append(done))(
        delayed(flaky)(i) for i in range(4)
    )
    assert seen[-1] == 4


def test_an_initializer_on_a_backend_that_cannot_run_it_is_an_error():
    class NoInit(_ExecutorBackend):
        supports_initializer = False

    with pytest.raises(ValueError, match="cannot run an initializer"):
        Parallel(backend=NoInit(), n_jobs=2, initializer=print)(
            delayed(square)(i) for i in range(2)
        )


def test_a_task_whose_args_are_not_a_tuple_fails_with_its_index():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2, backend="threading")([(square, 1, {})])
    assert "raised by task 0 (square) of Parallel" in info.value.__notes__
