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


# ---------------------------------------------------------------------------------------- plain modules

_TORCH_LAYER_PREFIXES = ("torch.nn.modules.", "torch.ao.nn.")
_COMPUTE_METHODS = ("forward", "_conv_forward", "__call__", "_call_impl")


def torch_base_class(cls: type) -> type | None:
    """The first class of ``cls``'s MRO defined by ``torch.nn`` (``torch.nn.modules.*``), or ``None`` when that
    is ``nn.Module`` itself (a user module, not a torch layer)."""
    for k in cls.__mro__:
        if k.__module__.startswith(_TORCH_LAYER_PREFIXES):
            return None if k is torch.nn.Module else k
    return None


def not_plain_reason(m: torch.nn.Module) -> str | None:
    """Why ``m`` does not compute exactly what its ``torch.nn`` base class computes, or ``None`` if it does.

    A module is *plain* when its class is a ``torch.nn`` layer class, or a subclass of one that does not
    redefine ``forward`` / ``_conv_forward`` (e.g. one that only changes ``__init__``), it carries no
    parametrization (``torch.nn.utils.parametrize``) and no forward (pre-)hooks (``weight_norm`` /
    ``spectral_norm`` recompute the weight in a pre-hook). gcompiler's own subclasses (``QConv2d``...) are
    not plain: passes that know them test for them by type.
    """
    cls = type(m)
    base = torch_base_class(cls)
    if base is None:
        return f"{cls.__name__} is not a torch.nn layer"
    for k in cls.__mro__[: cls.__mro__.index(base)]:
        for meth in _COMPUTE_METHODS:
            if meth in k.__dict__:
                return (f"{k.__module__}.{k.__qualname__} subclasses nn.{base.__name__} and redefines {meth}; "
                        f"what it computes is not known")
    try:
        from torch.nn.utils import parametrize
        if parametrize.is_parametrized(m):
            return f"nn.{base.__name__} with a parametrization (torch.nn.utils.parametrize) computes its weights"
    except ImportError:  # pragma: no cover
        pass
    if getattr(m, "_forward_pre_hooks", None) or getattr(m, "_forward_hooks", None):
        return (f"nn.{base.__name__} with forward hooks (weight_norm / spectral_norm / user hooks) may change "
                f"its weights, inputs or outputs")
    return None


def is_plain_module(m: torch.nn.Module, classes: type | tuple[type, ...] = torch.nn.Module) -> bool:
    """``isinstance(m, classes)`` and ``m`` computes exactly what its torch.nn class does (see
    :func:`not_plain_reason`). Use it instead of ``isinstance`` wherever a pass relies on the math of a
    torch layer (slicing conv weights, folding norms, counting MACs, quantizing)."""
    return isinstance(m, classes) and not_plain_reason(m) is None


def is_plain_conv(m: torch.nn.Module) -> bool:
    """A ``torch.nn`` convolution or transposed convolution (any dims) computing torch's own conv."""
    return is_plain_module(m, torch.nn.modules.conv._ConvNd)


def is_plain_linear(m: torch.nn.Module) -> bool:
    """A ``torch.nn.Linear`` computing torch's own linear map."""
    return is_plain_module(m, torch.nn.Linear)
