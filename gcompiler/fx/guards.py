"""Guards: Python-level decisions that tracing answered from the example inputs, re-checked at run time.

When a model's ``forward`` reads a tensor attribute in Python (``if x.is_cuda:``, ``assert h % 8 == 0``,
``range(x.size(0))``, ``if x.size()[2:] != self.res:``), :func:`gcompiler.trace` answers the question from
the example inputs and records the answer twice:

* as a ``call_function`` node calling :func:`check_guard` on the traced expression, so every later run of
  the graph (after passes, ``recompile``, ``copy.deepcopy``, ``gcompiler.save`` / ``load``, lowering)
  re-checks it and raises :class:`~gcompiler.errors.GuardError` when it no longer holds;
* as a JSON-friendly list in ``gm.meta["guards"]`` (what :func:`guards` returns for a graph).

The node is flagged side-effectful, so ``Graph.eliminate_dead_code`` keeps it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..errors import GuardError

__all__ = ["check_guard", "guards", "GUARD_FUNCTIONS"]


@fx.node.has_side_effect
def check_guard(value: Any, expected: Any, description: str) -> None:
    """Raise :class:`GuardError` unless ``value`` (``bool(value)`` when ``expected`` is a bool) equals ``expected``."""
    actual = bool(value) if isinstance(expected, bool) else value
    if isinstance(actual, torch.Size):
        actual = tuple(actual)
    if isinstance(expected, list):
        expected = tuple(expected)
    if actual != expected:
        raise GuardError(f"guard failed: {description}: it was {expected!r} on the example inputs the graph was "
                         f"traced with, now it is {actual!r}. The graph is specialized to that answer; trace the "
                         f"model again with example inputs like the ones you run it on")


GUARD_FUNCTIONS = (check_guard,)


def guards(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """The guards a graph checks: one dict per guard node (``node``, ``expected``, ``description``)."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is check_guard:
            expected = n.args[1] if len(n.args) > 1 else n.kwargs.get("expected")
            desc = n.args[2] if len(n.args) > 2 else n.kwargs.get("description", "")
            out.append({"node": n.name, "expected": _jsonable(expected), "description": desc})
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list, torch.Size)):
        return [_jsonable(x) for x in v]
    return str(v)
