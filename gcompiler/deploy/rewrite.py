"""Inference-only graph rewrites that ``deploy`` measures as CPU candidates.

Both rewrites work on a copy of a traced float graph and keep its function exactly (the caller verifies
numerically before a rewritten graph can be chosen):

* :func:`fuse_for_inference` — ``fold-norms`` (eval BatchNorm and channel masks into the preceding conv),
  Dropout / Identity removed, ``InstanceNorm2d -> activation`` replaced by one :class:`InstanceNormAct`
  module (the activation runs in place on the norm's fresh output: one pass and one allocation fewer), an
  activation directly after a conv (sole reader) run in place, and a residual ``a + b`` accumulated in place
  into an operand that is a fresh, single-use conv/norm output.
* :func:`pad_channels` — every prunable channel group whose width is not a multiple of ``multiple`` gets
  zero channels appended (``channels -> ceil(channels / multiple) * multiple``): producers get zero filters
  and zero bias, consumers zero input weights, norms identity parameters (BatchNorm mean 0 / var 1, affine
  weight 1 / bias 0), PReLU slopes any value. Each padded channel is therefore exactly 0 at every tensor of
  the group (every allowed member maps 0 to 0), and the consumers ignore it: the function is unchanged.
  Groups with anything else in them (concat slices, pixel-shuffle blocks, grouped convs, shared modules,
  unknown ops) are left alone with the reason recorded.
* :func:`split_phases` — a conv with few output channels (the RGB head: 3 of the 16 lanes AVX-512 kernels
  block output channels by) becomes a conv over the input's 2x2 pixel phases with 4x the output channels and
  a half-size kernel, then ``pixel_shuffle``: the same products, ~2x faster on the 7x7 head.
"""
from __future__ import annotations

import copy
import logging
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..fx.trace import propagate_shapes
from ..fx.utils import get_module
from ..quant.int_ops import phase_weight

_INPLACE_ACT = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_}
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}
_FN_ACT = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.leaky_relu: "leaky_relu"}
_FRESH = (nn.Conv2d, nn.ConvTranspose2d, nn.modules.instancenorm._InstanceNorm)


class InstanceNormAct(nn.Module):
    """``act(instance_norm(x))`` with the activation applied in place on the norm's (fresh) output."""

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm, act: str, slope: float = 0.01) -> None:
        super().__init__()
        self.norm = norm
        self.act = act
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if self.act == "relu":
            return torch.relu_(y)
        if self.act == "tanh":
            return torch.tanh_(y)
        return F.leaky_relu_(y, self.slope)

    def extra_repr(self) -> str:
        return self.act if self.act != "leaky_relu" else f"leaky_relu({self.slope})"


def _act_kind(gm: fx.GraphModule, node: fx.Node) -> tuple[str, float] | None:
    m = get_module(gm, node)
    if isinstance(m, nn.ReLU):
        return "relu", 0.0
    if isinstance(m, nn.Tanh):
        return "tanh", 0.0
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", float(m.negative_slope)
    if node.op == "call_function" and node.target in _FN_ACT and len(node.args) >= 1 and not node.kwargs.get("inplace"):
        kind = _FN_ACT[node.target]
        if kind == "leaky_relu":
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return (kind, float(slope)) if isinstance(slope, (int, float)) else None
        return kind, 0.0
    return None


def _fresh_single_use(gm: fx.GraphModule, node: Any) -> bool:
    """``node`` is a conv / norm / fused output (a new tensor, no alias) read by exactly one node."""
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return False
    m = get_module(gm, node)
    return isinstance(m, _FRESH + (InstanceNormAct,))


def fuse_for_inference(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[str]]:
    """A fused copy of the float graph ``gm`` (module docstring) and one note per rewrite kind applied."""
    from ..passes.manager import run_pipeline

    gm = copy.deepcopy(gm)
    gm.eval()
    notes: list[str] = []
    quant_log = logging.getLogger("gcompiler.quant")
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)  # fold-norms warns that InstanceNorm cannot fold: expected here
    try:
        gm, _ = run_pipeline(gm, "fold-norms", verify="lint", check=False)
    finally:
        quant_log.setLevel(level)
    counts = {"dropout/identity removed": 0, "instance-norm+act fused": 0, "in-place act": 0, "in-place add": 0}
    g = gm.graph
    for node in list(g.nodes):
        m = get_module(gm, node)
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            counts["dropout/identity removed"] += 1
    for node in list(g.nodes):
        m = get_module(gm, node)
        if not isinstance(m, nn.InstanceNorm2d) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        kind = _act_kind(gm, user)
        if kind is None or user.args[0] is not node:
            continue
        name = f"{str(node.target).replace('.', '_')}_act"
        gm.add_submodule(name, InstanceNormAct(m, *kind))
        with g.inserting_before(user):
            fused = g.call_module(name, (node.args[0],))
        fused.meta = dict(user.meta)
        user.replace_all_uses_with(fused)
        g.erase_node(user)
        g.erase_node(node)
        counts["instance-norm+act fused"] += 1
    for node in list(g.nodes):
        m = get_module(gm, node)
        if type(m) in _INPLACE_ACT and _fresh_single_use(gm, node.args[0]):
            with g.inserting_before(node):
                new = g.call_function(_INPLACE_ACT[type(m)], (node.args[0],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            g.erase_node(node)
            counts["in-place act"] += 1
    for node in list(g.nodes):
        if node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2 \
                and not node.kwargs:
            a, b = node.args
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
                continue
            if a.meta.get("tensor_meta") is None or b.meta.get("tensor_meta") is None or \
                    a.meta["tensor_meta"].shape != b.meta["tensor_meta"].shape:
                continue  # broadcasting: the in-place target must already have the output's shape
            target = b if _fresh_single_use(gm, b) else a if _fresh_single_use(gm, a) else None
            if target is None:
                continue
            other = a if target is b else b
            with g.inserting_before(node):
                new = g.call_method("add_", (target, other))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            g.erase_node(node)
            counts["in-place add"] += 1
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    notes += [f"{k}: {v}" for k, v in counts.items() if v]
    return gm, notes


# ------------------------------------------------------------------------------------------ padding

_ZERO_KEEPING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Hardtanh, nn.ELU, nn.GELU, nn.SiLU, nn.Identity,
                 nn.Dropout, nn.Dropout2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.Upsample,
                 nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.MaxPool2d, nn.AvgPool2d)
_ZERO_KEEPING_FN = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, F.relu, torch.relu,
                    torch.tanh, F.leaky_relu, F.interpolate, F.gelu, F.silu}


def _pad_param(t: torch.Tensor, dim: int, extra: int, value: float) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.detach(), t.new_full(shape, value)], dim=dim)


def _set(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(mod, name)
    if isinstance(old, nn.Parameter):
        setattr(mod, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        mod.register_buffer(name, value)


def _group_blocker(gm: fx.GraphModule, g: Any, nodes: dict[str, fx.Node], uses: dict[str, int]) -> str:
    """Why group ``g`` cannot be padded ('' when it can)."""
    if not g.prunable:
        return f"pinned ({g.reason})"
    for t, rows in g.index.items():
        flat = [c for row in rows for c in row]
        shape = nodes[t].meta.get("tensor_meta")
        if any(len(r) != 1 for r in rows) or shape is None or flat != list(range(shape.shape[1])):
            return f"'{t}' does not hold the group's channels alone and in order (concat / pixel shuffle)"
    if g.equal_removal:
        return "grouped conv"
    for name in set(g.producers) | set(g.consumers) | set(g.members):
        node = nodes[name]
        m = get_module(gm, node)
        if node.op == "call_module" and uses.get(str(node.target), 0) > 1:
            return f"module '{node.target}' is called more than once"
        if name in g.producers or name in g.consumers:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups == 1:
                continue
            if name in g.members and isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels:
                continue  # depthwise, multiplier 1
            return f"'{name}' is not a plain conv ({type(m).__name__ if m is not None else node.target})"
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels:
            continue
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            continue
        if isinstance(m, nn.PReLU) or isinstance(m, _ZERO_KEEPING):
            if isinstance(m, (nn.Upsample,)) and m.mode not in ("nearest", "bilinear", "bicubic"):
                return f"'{name}': upsampling mode {m.mode}"
            continue
        if node.op == "call_function" and node.target in _ZERO_KEEPING_FN:
            if node.target in (operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul):
                if not all(isinstance(a, fx.Node) and a.name in g.index for a in node.args[:2]):
                    return f"'{name}': an operand outside the group (a constant would make padded channels non-zero)"
            continue
        return f"'{name}' ({type(m).__name__ if m is not None else node.target}) is not known to map 0 to 0"
    return ""


def pad_channels(gm: fx.GraphModule, multiple: int, *example_inputs: torch.Tensor
                 ) -> tuple[fx.GraphModule, dict[str, str]]:
    """A copy of ``gm`` with every paddable group widened to a multiple of ``multiple`` (module docstring).

    Returns ``(graph, notes)`` with ``notes[group] = "63 -> 64"`` or the reason the group stayed as it was.
    Groups already at a multiple are not listed. Shapes are re-propagated on ``example_inputs``.
    """
    from ..analysis import channel_groups

    if multiple < 2:
        raise ValueError(f"pad_channels: multiple must be >= 2, got {multiple}")
    gm = copy.deepcopy(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    uses: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            uses[str(n.target)] = uses.get(str(n.target), 0) + 1
    notes: dict[str, str] = {}
    plans = []
    for g in channel_groups(gm):
        if g.channels % multiple == 0:
            continue
        why = _group_blocker(gm, g, nodes, uses)
        if why:
            notes[g.name] = f"kept {g.channels}: {why}"
            continue
        extra = -(-g.channels // multiple) * multiple - g.channels
        plans.append((g, extra))
        notes[g.name] = f"{g.channels} -> {g.channels + extra}"
    for g, extra in plans:
        for name in g.producers:
            m = get_module(gm, nodes[name])
            with torch.no_grad():
                if isinstance(m, nn.ConvTranspose2d):
                    _set(m, "weight", _pad_param(m.weight, 1, extra, 0.0))
                else:
                    _set(m, "weight", _pad_param(m.weight, 0, extra, 0.0))
                if m.bias is not None:
                    _set(m, "bias", _pad_param(m.bias, 0, extra, 0.0))
            m.out_channels += extra
        for name in g.consumers:
            m = get_module(gm, nodes[name])
            with torch.no_grad():
                _set(m, "weight", _pad_param(m.weight, 0 if isinstance(m, nn.ConvTranspose2d) else 1, extra, 0.0))
            m.in_channels += extra
        for name in g.members:
            m = get_module(gm, nodes[name])
            with torch.no_grad():
                if isinstance(m, nn.Conv2d):  # depthwise
                    _set(m, "weight", _pad_param(m.weight, 0, extra, 0.0))
                    if m.bias is not None:
                        _set(m, "bias", _pad_param(m.bias, 0, extra, 0.0))
                    m.in_channels += extra
                    m.out_channels += extra
                    m.groups += extra
                elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
                    m.num_features += extra
                    if m.weight is not None:
                        _set(m, "weight", _pad_param(m.weight, 0, extra, 1.0))
                        _set(m, "bias", _pad_param(m.bias, 0, extra, 0.0))
                    if getattr(m, "running_mean", None) is not None:
                        _set(m, "running_mean", _pad_param(m.running_mean, 0, extra, 0.0))
                        _set(m, "running_var", _pad_param(m.running_var, 0, extra, 1.0))
                elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
                    _set(m, "weight", _pad_param(m.weight, 0, extra, 0.25))
                    m.num_parameters += extra
    gm.recompile()
    if example_inputs:
        propagate_shapes(gm, *example_inputs)
    return gm, notes


# ------------------------------------------------------------------------------------------ phase split

def split_phases(gm: fx.GraphModule, *example_inputs: torch.Tensor, max_out: int = 4, r: int = 2
                 ) -> tuple[fx.GraphModule, list[str]]:
    """Rewrite convs with few output channels (an RGB head) as an ``r x r`` phase-decomposed conv (exact).

    A conv producing ``<= max_out`` channels fills a fraction of the SIMD lanes that CPU conv kernels block
    output channels by (3 of 16 with AVX-512). Applies to stride-1, undilated, ungrouped 2-D convs with an odd
    kernel >= 3 and an even padded input size (the conv's own padding becomes an explicit ``F.pad``): the
    input is split into its ``r*r`` pixel phases (strided slices, concatenated on channels), a conv with ``r*r`` times the output channels and a
    ``ceil(k/r)`` kernel computes every output phase, and ``pixel_shuffle`` interleaves them. The same
    products are summed (re-associated), at ``r*r*o`` output channels. Returns a copy and notes.
    """
    gm = copy.deepcopy(gm)
    g = gm.graph
    notes: list[str] = []
    for node in list(g.nodes):
        m = get_module(gm, node)
        if type(m) is not nn.Conv2d or m.out_channels > max_out:
            continue
        shape = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        k = m.kernel_size
        if (shape is None or m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1
                or not isinstance(m.padding, tuple) or m.padding_mode not in _PAD_MODES
                or k[0] != k[1] or k[0] < 3 or k[0] % 2 == 0):
            continue
        ph, pw = m.padding
        if (shape.shape[2] + 2 * ph) % r or (shape.shape[3] + 2 * pw) % r:
            continue
        new = nn.Conv2d(r * r * m.in_channels, r * r * m.out_channels, (k[0] - 1) // r + 1, bias=m.bias is not None)
        with torch.no_grad():
            new.weight.copy_(phase_weight(m.weight.detach(), r))
            if m.bias is not None:
                new.bias.copy_(m.bias.detach().repeat_interleave(r * r))
        name = f"{str(node.target).replace('.', '_')}_phases"
        gm.add_submodule(name, new)
        x = node.args[0]
        with g.inserting_before(node):
            if ph or pw:  # the conv's own padding, made explicit so that the phases see the padded input
                x = g.call_function(F.pad, (x, (pw, pw, ph, ph)), {"mode": _PAD_MODES[m.padding_mode]})
            parts = [g.call_function(operator.getitem, (x, (slice(None), slice(None), slice(a, None, r),
                                                            slice(b, None, r))))
                     for a in range(r) for b in range(r)]
            cat = g.call_function(torch.cat, (parts, 1))
            y = g.call_module(name, (cat,))
            out = g.call_function(F.pixel_shuffle, (y, r))
        node.replace_all_uses_with(out)
        g.erase_node(node)
        notes.append(f"{node.target}: {m.in_channels}->{m.out_channels} k{k[0]} as {r}x{r} phases "
                     f"({new.in_channels}->{new.out_channels} k{new.kernel_size[0]})")
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    if notes and example_inputs:
        propagate_shapes(gm, *example_inputs)
    return gm, notes

