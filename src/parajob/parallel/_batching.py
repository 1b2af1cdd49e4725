"""Batch sizing and the ``pre_dispatch`` expression.

Tiny tasks are grouped so that the cost of sending a batch to a worker is paid once for many
tasks; slow tasks go one at a time so that work stays balanced. :class:`AutoBatchSizer` aims at
batches of about ``target`` seconds of compute, measured in the workers, and never makes a
batch so large that the remaining known work could not be spread over every worker.
"""

from __future__ import annotations

import ast
import math
import numbers
from typing import Any

from parajob.errors import InvalidParameterError

__all__ = ["AutoBatchSizer", "parse_pre_dispatch"]


class AutoBatchSizer:
    """Choose batch sizes from measured compute times.

    Parameters
    ----------
    n_jobs : int
        The number of workers that batches are spread over.
    target : float
        The compute time, in seconds, one batch should take.
    max_growth : float
        How much larger the next batch may be than the current size (shrinking is immediate),
        so that one unrepresentative fast task cannot produce a huge batch of slow ones.
    max_size : int
        An upper bound, which keeps the results held in memory at once (and the latency of a
        progress bar) bounded even for the tiniest tasks.
    """

    def __init__(
        self,
        n_jobs: int,
        target: float = 0.02,
        max_growth: float = 10.0,
        max_size: int = 10_000,
    ) -> None:
        self.n_jobs = max(n_jobs, 1)
        self.max_size = max_size
        self.target = target
        self.max_growth = max_growth
        self.size = 1
        self._task_time: float | None = None

    def record(self, n_tasks: int, duration: float) -> None:
        """Learn from a batch of ``n_tasks`` that took ``duration`` seconds of compute."""
        if n_tasks <= 0:
            return
        per_task = max(duration / n_tasks, 1e-7)
        # Weighted by batch size: a large batch is a better measurement than a single task.
        if self._task_time is None:
            self._task_time = per_task
        else:
            weight = min(n_tasks / (n_tasks + self.size), 0.8)
            self._task_time = (1 - weight) * self._task_time + weight * per_task
        ideal = self.target / self._task_time
        grown = min(ideal, self.size * self.max_growth, self.max_size)
        self.size = max(int(grown), 1)

    def next_size(self, remaining: int | None) -> int:
        """The size of the next batch, given how many tasks remain (None if unknown)."""
        size = self.size
        if remaining is not None:
            # Leave enough batches that every worker gets about two of what remains.
            size = min(size, max(math.ceil(remaining / (2 * self.n_jobs)), 1))
        return max(size, 1)


_ALLOWED_OPS: dict[type, Any] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Div: lambda a, b: a / b,
}


def _evaluate(node: ast.AST, n_jobs: int, text: str) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, n_jobs, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id == "n_jobs":
        return n_jobs
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_OPS:
        left = _evaluate(node.left, n_jobs, text)
        right = _evaluate(node.right, n_jobs, text)
        if isinstance(node.op, (ast.FloorDiv, ast.Div)) and right == 0:
            raise InvalidParameterError(f"pre_dispatch={text!r} divides by zero")
        return float(_ALLOWED_OPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, n_jobs, text)
    raise InvalidParameterError(
        f"pre_dispatch must be an int, 'all', or an arithmetic expression in n_jobs such as "
        f"'2 * n_jobs', got {text!r}"
    )


def parse_pre_dispatch(pre_dispatch: Any, n_jobs: int) -> int | None:
    """Turn ``pre_dispatch`` into a number of batches in flight (None means "all")."""
    if pre_dispatch == "all":
        return None
    if isinstance(pre_dispatch, bool):
        raise InvalidParameterError(
            f"pre_dispatch must be an int, 'all' or an expression, got {pre_dispatch}"
        )
    if isinstance(pre_dispatch, numbers.Integral):
        value: float = int(pre_dispatch)
    elif isinstance(pre_dispatch, str):
        try:
            tree = ast.parse(pre_dispatch.strip(), mode="eval")
        except SyntaxError:
            raise InvalidParameterError(
                f"pre_dispatch must be an int, 'all', or an arithmetic expression in n_jobs "
                f"such as '2 * n_jobs', got {pre_dispatch!r}"
            ) from None
        value = _evaluate(tree, n_jobs, pre_dispatch)
    else:
        raise InvalidParameterError(
            f"pre_dispatch must be an int, 'all' or an expression such as '2 * n_jobs', got "
            f"{pre_dispatch!r}"
        )
    if value < 1:
        raise InvalidParameterError(
            f"pre_dispatch must come to at least 1, got {pre_dispatch!r} = {value}"
        )
    return int(value)
