"""Counting MACs, parameters and model size (BRIEF section 5 conventions).

* MACs of a convolution: ``output elements x C_in/groups x k_h x k_w``; bias not counted.
* Transposed convolutions are counted at *output* resolution (the convention of published GAN tables),
  i.e. ``output elements x C_in/groups x k_h x k_w``.
* Linear: ``output elements x in_features``. Norms, activations, additions: 0.
* Size: ``parameters x bits / 8`` bytes; ``bits=None`` uses each layer's own weight bit width
  (a module attribute ``weight_bits``, set by the quantization passes) and 32 elsewhere.

A leaf module of our own may define ``count_macs(input_shapes, output_shape) -> int`` and
``count_params() -> int`` to take part in the count (the integer and fake-quant modules do).

Shapes come from fake-tensor propagation, so profiling a 1-TMAC network computes nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import GCompilerError, TraceError
from .fx.trace import propagate_shapes, trace
from torch.fx.passes.shape_prop import TensorMetadata

from .fx.utils import node_shape


@dataclasses.dataclass
class NodeCost:
    node: str
    op: str
    shape: tuple[int, ...] | None
    macs: int
    params: int
    bits: int = 32


@dataclasses.dataclass
class Profile:
    """MACs / parameter / size totals of a graph and one row per node."""

    rows: list[NodeCost]
    params: int
    input_shapes: list[tuple[int, ...]]

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    def size_bytes(self, bits: int | None = 32) -> float:
        """Model size in bytes: ``params x bits / 8``; ``bits=None`` sums each layer at its own width."""
        if bits is not None:
            return self.params * bits / 8
        counted = sum(r.params for r in self.rows)
        rest = self.params - counted  # parameters not owned by any node row (e.g. shared) stay fp32
        return sum(r.params * r.bits / 8 for r in self.rows) + rest * 4

    def size_mib(self, bits: int | None = 32) -> float:
        return self.size_bytes(bits) / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params, "size_bytes_fp32": self.size_bytes(32),
                "input_shapes": [list(s) for s in self.input_shapes],
                "nodes": [dataclasses.asdict(r) for r in self.rows]}

    def table(self, *, all_nodes: bool = False) -> str:
        """Per-node table (only nodes with MACs or parameters unless ``all_nodes``) and totals."""
        rows = [r for r in self.rows if all_nodes or r.macs or r.params]
        head = ("node", "op", "output shape", "MACs", "params")
        body = [(r.node, r.op, "x".join(map(str, r.shape)) if r.shape else "-", f"{r.macs:,}", f"{r.params:,}")
                for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'>' if i >= 3 else '<'}{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*head), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*b) for b in body]
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        return (f"input {shapes}: {self.macs / 1e9:.2f} G MACs ({self.macs / 2**30:.2f} GiMACs), "
                f"{self.params:,} params ({self.params / 1e6:.3f} M), "
                f"{self.size_mib(32):.2f} MiB fp32 / {self.size_mib(8):.2f} MiB int8")

    def __str__(self) -> str:
        return self.table()


def module_macs(mod: nn.Module, in_shapes: list[torch.Size | None], out_shape: torch.Size | None) -> int:
    """MACs of one leaf module call, by the conventions in the module docstring."""
    hook = getattr(mod, "count_macs", None)
    if callable(hook):
        return int(hook(in_shapes, out_shape))
    if out_shape is None:
        return 0
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return _conv_macs(out_shape, mod.in_channels, mod.groups, mod.kernel_size)
    if isinstance(mod, nn.Linear):
        return math.prod(out_shape) * mod.in_features
    return 0


def _conv_macs(out_shape: torch.Size, in_channels: int, groups: int, kernel: Iterable[int]) -> int:
    return math.prod(out_shape) * (in_channels // groups) * math.prod(kernel)


_CONVS = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
_CONV_TRANSPOSES = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, torch.conv_transpose1d,
                    torch.conv_transpose2d, torch.conv_transpose3d)


def _function_macs(node: fx.Node, gm: fx.GraphModule) -> int:
    """MACs of a functional conv / linear, from the recorded shapes only.

    Arguments computed from the data (``groups=x.shape[1]``, a weight produced by another node) are never
    read: a conv's weight ``[C_out, C_in/g, k...]`` already holds ``C_in/g``, and a transposed conv's
    ``g = C_out / w.shape[1]`` follows from its output shape. A shape that is not recorded is an error
    naming the node, never a silent 0.
    """
    is_conv, is_tconv = node.target in _CONVS, node.target in _CONV_TRANSPOSES
    if not (is_conv or is_tconv or node.target is F.linear):
        return 0
    out = node_shape(node)
    w = _arg_shape(node, 1, "weight", gm)
    if out is None or w is None:
        missing = "output" if out is None else "weight"
        raise GCompilerError(f"profile: cannot count the MACs of node '{node.name}' ({_op_name(node)}): its "
                             f"{missing} shape is not recorded; run gcompiler.propagate_shapes(gm, *inputs) first")
    if node.target is F.linear:
        return math.prod(out) * w[-1]
    if is_conv:
        return math.prod(out) * w[1] * math.prod(w[2:])
    groups = out[1] // w[1]  # [C_in, C_out/g, k...]
    if groups < 1 or out[1] % w[1]:
        raise GCompilerError(f"profile: node '{node.name}' ({_op_name(node)}): output channels {out[1]} are not a "
                             f"multiple of the weight's {w[1]} per group")
    return math.prod(out) * (w[0] // groups) * math.prod(w[2:])


def _op_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _lowered_conv(node: fx.Node, gm: fx.GraphModule) -> tuple[int, list[str]] | None:
    """MACs and weight/bias attribute names of a ``torch.ops.gcompiler`` conv op (see gcompiler.kernels.ops)."""
    name = getattr(node.target, "name", lambda: "")()
    if not name.startswith("gcompiler::") or "conv" not in name:
        return None
    meta = node.meta.get("tensor_meta")
    out = meta[0] if isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata) else meta
    w = _arg_shape(node, 1, "w", gm)
    if out is None or w is None:
        return 0, []
    if name == "gcompiler::conv2d_dequant":  # PyTorch layout; transposed weights are [C_in, C_out/g, k, k]
        groups = node.args[9] if len(node.args) > 9 else node.kwargs.get("groups", 1)
        transposed = node.args[10] if len(node.args) > 10 else node.kwargs.get("transposed", False)
        per_out = (w[0] // groups if transposed else w[1]) * math.prod(w[2:])
        bias_idx = 2
    else:  # [C_out, KH, KW, C_in/groups]
        per_out = w[1] * w[2] * w[3]
        bias_idx = 4 if name == "gcompiler::qconv2d" else 3
    attrs = [a.target for a in (node.args[1], node.args[bias_idx] if len(node.args) > bias_idx else None)
             if isinstance(a, fx.Node) and a.op == "get_attr"]
    return math.prod(out.shape) * per_out, [str(t) for t in attrs]


def _arg_shape(node: fx.Node, idx: int, name: str, gm: fx.GraphModule) -> torch.Size | None:
    a = node.args[idx] if len(node.args) > idx else node.kwargs.get(name)
    if isinstance(a, fx.Node):
        if a.op == "get_attr":
            return _get_attr(gm, str(a.target)).shape
        return node_shape(a)
    return None


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_params(mod: nn.Module) -> int:
    hook = getattr(mod, "count_params", None)
    if callable(hook):
        return int(hook())
    return sum(p.numel() for p in mod.parameters())


def profile(model_or_graph: nn.Module, *example_inputs: torch.Tensor) -> Profile:
    """Count MACs, parameters and size of a model or traced graph.

    A plain module is traced first (without computing anything); a GraphModule is counted at the given
    inputs' shapes (propagated on a view of it that shares its modules: ``gm``'s own recorded shapes and
    meta are left as they were), or at its recorded shapes when none are given.

    Raises:
        TraceError: no shapes to count with. GCompilerError: a node whose MACs cannot be counted (named).
    """
    if isinstance(model_or_graph, fx.GraphModule):
        gm = model_or_graph
        if example_inputs:
            gm = fx.GraphModule(model_or_graph, copy.deepcopy(model_or_graph.graph),
                                class_name=type(model_or_graph).__name__)
            gm.meta.update({k: v for k, v in model_or_graph.meta.items() if k not in ("input_shapes", "input_specs")})
            propagate_shapes(gm, *example_inputs, fake=True)
        elif "input_shapes" not in gm.meta:
            raise TraceError("profile() got a GraphModule without recorded shapes: pass example inputs")
    else:
        if not example_inputs:
            raise TraceError(f"profile({type(model_or_graph).__name__}) needs example inputs, e.g. "
                             "gcompiler.profile(model, torch.randn(1, 3, 256, 256))")
        gm = trace(model_or_graph, *example_inputs, propagate=False)
        propagate_shapes(gm, *example_inputs, fake=True)
    rows: list[NodeCost] = []
    owned: set[int] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        macs, params, bits = 0, 0, 32
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            ins = [node_shape(a) if isinstance(a, fx.Node) else None for a in node.args]
            macs = module_macs(mod, ins, node_shape(node))
            fresh = [p for p in mod.parameters() if id(p) not in owned]
            owned.update(id(p) for p in fresh)
            params = _module_params(mod) if hasattr(mod, "count_params") else sum(p.numel() for p in fresh)
            bits = int(getattr(mod, "weight_bits", 32) or 32)
            op = type(mod).__name__
        elif node.op == "call_function":
            lowered = _lowered_conv(node, gm)
            if lowered is not None:
                macs, attrs = lowered
                for t in attrs:  # lowered weights are buffers: count them as this node's parameters
                    val = _get_attr(gm, t)
                    if id(val) not in owned:
                        owned.add(id(val))
                        params += val.numel()
                bits = 8
            else:
                macs = _function_macs(node, gm)
            op = getattr(node.target, "__name__", str(node.target))
        elif node.op == "get_attr":
            val = _get_attr(gm, str(node.target))
            if isinstance(val, nn.Parameter) and id(val) not in owned:
                owned.add(id(val))
                params = val.numel()
            op = "get_attr"
        else:
            op = str(node.target)
        shape = node_shape(node)
        rows.append(NodeCost(node.name, op, tuple(shape) if shape is not None else None, int(macs), params, bits))
    total_params = sum(r.params for r in rows)
    total_params += sum(p.numel() for p in gm.parameters() if id(p) not in owned)
    return Profile(rows, total_params, [tuple(s) for s in gm.meta.get("input_shapes", [])])
