"""From a searched supernet to a plain student: ``derive-architecture``, ``fix-architecture``, architecture JSON.

* :func:`architecture` — the argmax architecture of a supernet as a readable dict (operator and width per
  cell, plus the ``substitute-ops`` options), written by ``gcompiler compress --method agd`` to
  ``agd_architecture.json``;
* ``fix-architecture{arch=PATH}`` (changes-semantics) — set every cell's logits so that its argmax is the
  architecture in a JSON file;
* ``derive-architecture`` (**exact** with respect to the supernet in eval mode, which runs each cell's argmax
  operator at its argmax width) — replace every cell with plain ``torch.nn`` modules (convs, norms, ReLUs,
  adds, channel slices / zero-pads for skips across a width change) holding the supernet's sliced weights,
  and cut the input channels of the plain convolutions that read a narrowed cell output. The result saves
  and loads with :func:`gcompiler.save` / :func:`gcompiler.load` and profiles like any graph;
* :func:`build_student` — teacher + architecture JSON -> the derived student (fresh operator weights).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, PassError
from ..fx.trace import propagate_shapes
from ..fx.utils import input_specs, replace_module
from ..passes.registry import Contract, register_pass
from .mixed import Cell, MixedOp
from .ops import GraphBuilder

ARCH_FORMAT = "gcompiler-agd-architecture"

_PASS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d,
                 nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.Identity, nn.Dropout, nn.Tanh,
                 nn.Hardtanh, nn.SiLU, nn.GELU, nn.ELU)
_PASS_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu, F.interpolate, torch.tanh)


def _mod(gm: fx.GraphModule, n: Any) -> nn.Module | None:
    if isinstance(n, fx.Node) and n.op == "call_module":
        return gm.get_submodule(str(n.target))
    return None


def is_passthrough(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A one-input, channel-agnostic op mapping an all-zero channel to an all-zero channel (ReLU, pads,
    upsampling, ...): a narrowed tensor may flow through it unchanged."""
    if len(n.all_input_nodes) != 1:
        return False
    m = _mod(gm, n)
    if m is not None:
        if isinstance(m, nn.PReLU):
            return m.num_parameters == 1
        return isinstance(m, _PASS_MODULES)
    if n.op == "call_function" and n.target in _PASS_FUNCTIONS:
        return True
    return (n.op == "call_function" and n.target is F.pad and (len(n.args) < 3 or n.args[2] == "constant")
            and (len(n.args) < 4 or n.args[3] in (0, 0.0, None)) and not n.kwargs.get("value"))


def source_cell(gm: fx.GraphModule, n: Any) -> str | None:
    """The cell whose (possibly narrowed) output ``n`` is, through pass-through ops; None if none."""
    while isinstance(n, fx.Node):
        m = _mod(gm, n)
        if isinstance(m, Cell):
            return str(n.target)
        if not is_passthrough(gm, n):
            return None
        n = n.all_input_nodes[0]
    return None


def cell_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The ``call_module`` nodes of the searchable cells, in graph order."""
    return [n for n in gm.graph.nodes if isinstance(_mod(gm, n), Cell)]


def architecture(gm: fx.GraphModule) -> dict[str, Any]:
    """The argmax architecture of a supernet: ``{"cells": [{name, kind, op, width, ...}], "substitute": opts}``."""
    nodes = cell_nodes(gm)
    if not nodes:
        raise PassError("architecture(): the graph has no searchable cells (run substitute-ops first)")
    out = []
    for n in nodes:
        c = gm.get_submodule(str(n.target))
        rec: dict[str, Any] = {"name": str(n.target), "kind": "op" if isinstance(c, MixedOp) else "width",
                               "width": c.width(), "c_in": c.c_in, "c_out": c.c_out, "widths": list(c.widths)}
        if isinstance(c, MixedOp):
            rec["op"] = c.op_name()
            rec["candidates"] = list(c.candidates)
            rec["op_probs"] = [round(float(p), 4) for p in c.op_probs().detach()]
        rec["width_probs"] = [round(float(p), 4) for p in c.width_probs().detach()]
        out.append(rec)
    nas = gm.meta.get("nas") or {}
    meta = {r.get("name"): r for r in nas.get("cells", [])}
    for rec in out:
        rec["replaced"] = meta.get(rec["name"], {}).get("replaced")
    return {"format": ARCH_FORMAT, "version": 1, "substitute": dict(nas.get("options", {})), "cells": out}


def apply_architecture(gm: fx.GraphModule, arch: Mapping[str, Any]) -> None:
    """Set the cells' logits so that their argmax is ``arch`` (a dict from :func:`architecture`)."""
    if arch.get("format") != ARCH_FORMAT:
        raise ConfigError(f"not an AGD architecture (format {arch.get('format')!r}, expected {ARCH_FORMAT!r})")
    have = {str(n.target): gm.get_submodule(str(n.target)) for n in cell_nodes(gm)}
    want = {c["name"]: c for c in arch.get("cells", [])}
    if set(have) != set(want):
        raise ConfigError(f"the architecture names cells {sorted(want)}, the graph has {sorted(have)} (were "
                          f"substitute-ops's options the same?)")
    for name, c in have.items():
        rec = want[name]
        try:
            c.fix_width(int(rec["width"]))
            if isinstance(c, MixedOp):
                c.fix_op(str(rec["op"]))
        except ValueError as exc:
            raise ConfigError(f"architecture cell {name!r}: {exc}") from None


def read_architecture(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as f:
            arch = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the architecture file {path}: {exc}") from exc
    if not isinstance(arch, dict):
        raise ConfigError(f"{path} is not an AGD architecture (a JSON object)")
    return arch


@register_pass("fix-architecture", contract=Contract.changes_semantics())
def fix_architecture(gm: fx.GraphModule, *, arch: str = "") -> fx.GraphModule:
    """Make the architecture in the JSON file ``arch`` every cell's argmax choice (the logits change)."""
    if not arch:
        raise PassError("fix-architecture needs arch=PATH (an agd_architecture.json)")
    try:
        apply_architecture(gm, read_architecture(arch))
    except ConfigError as exc:
        raise PassError(f"fix-architecture{{arch={arch}}}: {exc}") from None
    return gm


def _slice_input(mod: nn.Module, c: int) -> nn.Module:
    bias = mod.bias is not None
    if isinstance(mod, nn.ConvTranspose2d):
        new = nn.ConvTranspose2d(c, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.output_padding,
                                 1, bias, mod.dilation)
        w = mod.weight[:c]
    else:
        new = nn.Conv2d(c, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation, 1, bias,
                        mod.padding_mode)
        w = mod.weight[:, :c]
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(mod.bias)
    new.train(mod.training)
    return new


@register_pass("derive-architecture", contract=Contract.exact())
def derive_architecture(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace every searchable cell by its argmax operator at its argmax width, as plain modules (exact)."""
    if not cell_nodes(gm):
        raise PassError("derive-architecture: the graph has no searchable cells (run substitute-ops first)")
    arch = architecture(gm)
    width_of: dict[fx.Node, int] = {}
    for node in list(gm.graph.nodes):
        mod = _mod(gm, node)
        if isinstance(mod, Cell):
            x = node.args[0]
            c_in = width_of.get(x, mod.c_in)
            with gm.graph.inserting_before(node):
                out = mod.derive(GraphBuilder(gm, str(node.target)), x, c_in)
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            if mod.width() < mod.c_out:
                width_of[out] = mod.width()
            continue
        narrowed = [a for a in node.all_input_nodes if a in width_of]
        if not narrowed:
            continue
        if is_passthrough(gm, node):
            width_of[node] = width_of[narrowed[0]]
            continue
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) and mod.groups == 1 and len(node.all_input_nodes) == 1:
            replace_module(gm, str(node.target), _slice_input(mod, width_of[narrowed[0]]))
            continue
        raise PassError(f"derive-architecture: node '{node.name}' reads the narrowed output of a cell but is neither "
                        f"a cell, a convolution nor a channel-agnostic op; substitute-ops should have pinned that "
                        f"cell's width")
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    propagate_shapes(gm, *[torch.zeros(s, dtype=d) for s, d in input_specs(gm)], fake=True)
    gm.meta.pop("nas", None)
    gm.meta["architecture"] = arch
    return gm


def substitute_pipeline(options: Mapping[str, Any]) -> str:
    """The ``substitute-ops{...}`` pipeline text that recreates a supernet from recorded options."""
    parts = [f"{k}={v}" for k, v in options.items() if v is not None and str(v) != ""]
    return "substitute-ops{" + ",".join(parts) + "}" if parts else "substitute-ops"


def build_student(teacher: nn.Module, example_input: torch.Tensor, arch: Mapping[str, Any] | str | os.PathLike,
                  *, verify: str | None = None) -> fx.GraphModule:
    """The derived student of ``arch`` (dict or JSON path) for ``teacher``: trace, ``substitute-ops`` with the
    recorded options, fix the architecture, ``derive-architecture``. Operator weights are freshly initialised
    (width-only layers keep the teacher's sliced weights)."""
    from ..fx.trace import trace
    from ..passes.manager import run_pipeline

    if not isinstance(arch, Mapping):
        arch = read_architecture(arch)
    gm = trace(teacher, example_input)
    gm, _ = run_pipeline(gm, substitute_pipeline(arch.get("substitute", {})), verify=verify)
    apply_architecture(gm, arch)
    gm, _ = run_pipeline(gm, "derive-architecture", verify=verify)
    return gm


__all__ = ["architecture", "apply_architecture", "read_architecture", "build_student", "derive_architecture",
           "fix_architecture", "is_passthrough", "source_cell", "cell_nodes", "substitute_pipeline"]
