"""Code, dependency and constant changes invalidate entries; explain() says why; opt-outs work."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from parajob.errors import FunctionChangedWarning
from parajob.memory import Memory


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module into tmp_path and (re-)import it fresh, as an edited user module."""
    folder = tmp_path / "src"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    loaded: list[str] = []

    def load(source: str) -> ModuleType:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        module = importlib.import_module(name)
        loaded.append(name)
        return module

    yield load
    for mod in loaded:
        sys.modules.pop(mod, None)


def cache_all(memory: Memory, module: ModuleType, **kwargs: Any) -> Any:
    return memory.cache(module.compute, **kwargs)


V1 = """
    CALLS = []
    SCALE = 2
    def helper(x):
        return x + 1
    def compute(x):
        CALLS.append(x)
        return helper(x) * SCALE
"""


def test_code_change_invalidates_with_warning(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    m1 = modules(V1)
    f1 = cache_all(memory, m1)
    assert f1(1) == 4
    assert f1(1) == 4
    assert m1.CALLS == [1]
    m2 = modules(V1.replace("return helper(x) * SCALE", "return helper(x) * SCALE + 100"))
    f2 = cache_all(memory, m2)
    explanation = f2.explain(1)
    assert not explanation.hit and explanation.reason == "code-changed"
    with pytest.warns(FunctionChangedWarning, match="code changed"):
        assert f2(1) == 104
    assert m2.CALLS == [1]
    assert f2(1) == 104
    after = f2.explain(1)
    assert after.hit, after.message


def test_comment_only_edit_keeps_entries(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    f1 = cache_all(memory, modules(V1))
    f1(1)
    m2 = modules(
        "    # a comment on top\n" + V1.replace("    def helper", "    # note\n    def helper")
    )
    f2 = cache_all(memory, m2)
    assert f2(1) == 4
    assert m2.CALLS == []


@pytest.mark.parametrize(
    ("edit", "dependency"),
    [
        (("return x + 1", "return x + 5"), "helper"),
        (("SCALE = 2", "SCALE = 3"), "SCALE"),
    ],
)
def test_dependency_change_invalidates_and_is_named(
    tmp_path: Path, modules: Any, edit: tuple[str, str], dependency: str
) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    f1 = cache_all(memory, modules(V1))
    f1(1)
    m2 = modules(V1.replace(*edit))
    f2 = cache_all(memory, m2)
    explanation = f2.explain(1)
    assert explanation.reason == "dependency-changed"
    assert dependency in explanation.message
    with pytest.warns(FunctionChangedWarning, match=dependency):
        f2(1)
    assert m2.CALLS == [1]


def test_code_only_mode_ignores_dependencies(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0, invalidation="code")
    cache_all(memory, modules(V1))(1)
    m2 = modules(V1.replace("SCALE = 2", "SCALE = 3"))
    assert cache_all(memory, m2)(1) == 4  # the stale value, as asked
    assert m2.CALLS == []


def test_opt_out_keeps_entries_across_code_edits(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    cache_all(memory, modules(V1), invalidation="none")(1)
    m2 = modules(V1.replace("* SCALE", "* SCALE * 10"))
    f2 = cache_all(memory, m2, invalidation="none")
    assert f2(1) == 4
    assert m2.CALLS == []
    assert f2.explain(1).hit


def test_depends_on_values_and_functions(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    m = modules(V1)
    f = memory.cache(m.compute, depends_on=[{"model": "v1"}])
    f(1)
    g = memory.cache(m.compute, depends_on=[{"model": "v2"}])
    assert g.explain(1).reason == "dependency-changed"
    assert "depends_on[0]" in g.explain(1).message
    with pytest.warns(FunctionChangedWarning):
        g(1)
    assert m.CALLS == [1, 1]


def test_rebinding_a_dependency_in_process_is_seen(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    m = modules(V1)
    f = cache_all(memory, m)
    assert f(1) == 4
    m.SCALE = 10  # rebinding the global: the identity check on the next call notices
    with pytest.warns(FunctionChangedWarning, match="SCALE"):
        assert f(1) == 20
    assert m.CALLS == [1, 1]


def test_installed_packages_are_not_dependencies(tmp_path: Path, modules: Any) -> None:
    from parajob.memory._deps import fingerprint

    m = modules(
        """
        import json
        import os.path
        def compute(x):
            return json.dumps(os.path.join("a", str(x)))
        """
    )
    fp, _ = fingerprint(m.compute, [], True)
    assert fp.deps == {}


def test_explain_reports_new_arguments_and_eviction(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0, max_items=1)

    @memory.cache
    def square(x):
        return x * x

    assert square.explain(2).reason == "new-arguments"
    square(2)
    assert square.explain(2).hit
    assert bool(square.explain(2)) is True
    square(3)  # evicts 2
    explanation = square.explain(2)
    assert explanation.reason == "evicted"
    assert "evicted" in str(explanation)
    square.clear(warn=False)
    assert square.explain(3).reason == "cleared"


# Edits that change results without changing the bytecode of ``compute`` or of a plain
# function it calls: each one must still invalidate (each was once a wrong cache hit).
HIDDEN_V1 = {
    "default of a helper": """
        def helper(x, k=2):
            return x * k
        def compute(x):
            return helper(x)
    """,
    "keyword-only default of a helper": """
        def helper(x, *, k=2):
            return x * k
        def compute(x):
            return helper(x)
    """,
    "helper under functools.lru_cache": """
        import functools
        @functools.lru_cache
        def helper(x):
            return x * 2
        def compute(x):
            return helper(x)
    """,
    "helper under a functools.wraps decorator": """
        import functools
        def logged(g):
            @functools.wraps(g)
            def wrapper(*args):
                return g(*args)
            return wrapper
        @logged
        def helper(x):
            return x * 2
        def compute(x):
            return helper(x)
    """,
    "cached function under a functools.wraps decorator": """
        import functools
        def logged(g):
            @functools.wraps(g)
            def wrapper(*args):
                return g(*args)
            return wrapper
        @logged
        def compute(x):
            return x * 2
    """,
    "class attribute": """
        class Scaler:
            K = 2
            def apply(self, x):
                return x * self.K
        def compute(x):
            return Scaler().apply(x)
    """,
    "method of a base class": """
        class Base:
            def apply(self, x):
                return x * 2
        class Scaler(Base):
            pass
        def compute(x):
            return Scaler().apply(x)
    """,
    "helper made by a factory": """
        def make(k):
            def scale(x):
                return x * k
            return scale
        helper = make(2)
        def compute(x):
            return helper(x)
    """,
}


@pytest.mark.parametrize("case", sorted(HIDDEN_V1))
def test_hidden_dependency_edits_invalidate(tmp_path: Path, modules: Any, case: str) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    source = HIDDEN_V1[case]
    assert memory.cache(modules(source).compute)(5) == 10
    edited = source.replace("k=2", "k=3").replace("x * 2", "x * 3").replace("K = 2", "K = 3")
    edited = edited.replace("make(2)", "make(3)")
    assert edited != source
    f2 = memory.cache(modules(edited).compute)
    assert not f2.explain(5).hit
    with pytest.warns(FunctionChangedWarning):
        assert f2(5) == 15


def test_closures_of_one_factory_do_not_share_results(tmp_path: Path, modules: Any) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)
    m = modules(
        """
        import numpy as np
        def double(x):
            return 2 * x
        def negate(x):
            return -x
        def make(transform, memory):
            @memory.cache
            def apply(x):
                return transform(x)
            return apply
        """
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no invalidation ping-pong between the two
        twice, minus, sine = m.make(m.double, memory), m.make(m.negate, memory), None
        import numpy as np

        sine, cosine = m.make(np.sin, memory), m.make(np.cos, memory)
        for _ in range(2):
            assert (twice(3), minus(3)) == (6, -3)
            assert (sine(0.0), cosine(0.0)) == (0.0, 1.0)


def test_switching_invalidation_modes_keeps_tracking(tmp_path: Path, modules: Any) -> None:
    # Entries written with invalidation="none" have no fingerprint; turning tracking back on
    # must adopt the current one rather than stop tracking for good.
    memory = Memory(tmp_path / "cache", verbose=0)
    cache_all(memory, modules(V1), invalidation="none")(1)
    m2 = modules(V1)
    assert cache_all(memory, m2, invalidation="code")(1) == 4  # same code: the entry stays
    assert m2.CALLS == []
    m3 = modules(V1.replace("* SCALE", "* SCALE * 10"))
    f3 = cache_all(memory, m3, invalidation="code")
    with pytest.warns(FunctionChangedWarning, match="code changed"):
        assert f3(1) == 40


def test_code_mode_and_dependency_mode_share_entries_without_ping_pong(
    tmp_path: Path, modules: Any
) -> None:
    import warnings

    memory = Memory(tmp_path / "cache", verbose=0)
    m = modules(V1)
    deps, code = cache_all(memory, m), cache_all(memory, m, invalidation="code")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert code(1) == 4
        assert deps(1) == 4
        assert code(1) == 4
        fresh_code = cache_all(Memory(tmp_path / "cache", verbose=0), m, invalidation="code")
        assert fresh_code(1) == 4
    assert m.CALLS == [1]
    # The dependency-mode fingerprint was recorded: a dependency edit is still seen.
    m2 = modules(V1.replace("SCALE = 2", "SCALE = 3"))
    with pytest.warns(FunctionChangedWarning, match="SCALE"):
        assert cache_all(Memory(tmp_path / "cache", verbose=0), m2)(1) == 6


def test_entries_written_after_a_clear_record_the_code_that_made_them(
    tmp_path: Path, modules: Any
) -> None:
    # A process that keeps running after another cleared the cache (the CLI, memory.clear)
    # writes new entries: they must be tied to its code, so an edited version sees them
    # as stale instead of serving them.
    m1 = modules(V1)
    f1 = cache_all(Memory(tmp_path / "cache", verbose=0), m1)
    f1(1)
    Memory(tmp_path / "cache", verbose=0).clear(warn=False)
    assert f1(2) == 6
    m2 = modules(V1.replace("return helper(x) * SCALE", "return helper(x) * SCALE + 100"))
    f2 = cache_all(Memory(tmp_path / "cache", verbose=0), m2)
    with pytest.warns(FunctionChangedWarning, match="code changed"):
        assert f2(2) == 106
