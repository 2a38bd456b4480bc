"""Small helpers over torch.fx graphs shared by the front end, the analyses and the passes."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from ..errors import TraceError


def get_module(gm: fx.GraphModule, node: fx.Node) -> torch.nn.Module | None:
    """The submodule a ``call_module`` node calls, else ``None``."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def node_shape(node: fx.Node) -> torch.Size | None:
    """The output shape recorded by shape propagation, or ``None`` for non-tensor / unknown outputs."""
    tm = node.meta.get("tensor_meta")
    return tm.shape if isinstance(tm, TensorMetadata) else None


def replace_module(gm: fx.GraphModule, target: str, new_module: torch.nn.Module) -> None:
    """Replace the submodule at dotted path ``target`` (which must exist) with ``new_module``."""
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    if not hasattr(parent, attr):
        raise KeyError(f"no submodule '{target}' in the graph module")
    setattr(parent, attr, new_module)


def unique_name(gm: fx.GraphModule, base: str) -> str:
    """A submodule name under the root that is not taken yet (``base``, ``base_1``, ...)."""
    base = base.replace(".", "_")
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def input_shapes(gm: fx.GraphModule) -> list[tuple[int, ...]]:
    """Shapes of the example inputs the graph was traced / last propagated with."""
    shapes = gm.meta.get("input_shapes")
    if shapes is None:
        raise TraceError("this GraphModule carries no example input shapes; trace it with gcompiler.trace(model, "
                         "*example_inputs) or call gcompiler.fx.propagate_shapes(gm, *inputs)")
    return [tuple(s) for s in shapes]


def input_specs(gm: fx.GraphModule) -> list[tuple[tuple[int, ...], torch.dtype]]:
    specs = gm.meta.get("input_specs")
    if specs is not None:
        return [(tuple(s), d) for s, d in specs]
    return [(s, torch.float32) for s in input_shapes(gm)]


def random_inputs(gm: fx.GraphModule, *, seed: int = 0, batch: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs matching the recorded example inputs (normal floats, random ints for integer inputs)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in input_specs(gm):
        if batch is not None and len(shape) > 0:
            shape = (batch,) + tuple(shape[1:])
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g, dtype=dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=g).bool())
        else:
            out.append(torch.randint(0, 2, shape, generator=g).to(dtype))
    return tuple(out)


def module_path_of(node: fx.Node) -> str:
    """Best human name for where a node comes from: its module path, else the enclosing module stack."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0] if isinstance(list(stack.values())[-1], tuple) else str(list(stack)[-1])
    return node.name


def tensor_meta_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _extract_tensor_metadata(value)
    return None


def iter_nodes(gm: fx.GraphModule, ops: Iterable[str]) -> Iterable[fx.Node]:
    ops = set(ops)
    return (n for n in gm.graph.nodes if n.op in ops)
