"""The operators of the AGD search space, as width-slimmable modules, and their plain (derived) form.

Every operator maps a tensor of ``c_in`` *nominal* channels to ``w`` output channels, ``w`` chosen per call
from the owning cell's width list. Weights are allocated at the widest setting and sliced
(``weight[:w, :c_in]``, universally-slimmable style). Input channels beyond the producer's chosen width are
exactly zero in the supernet (cells zero-pad their outputs to the nominal width), so they contribute
nothing: computing on the nominal input equals computing on the sliced one, which is what the derived
network does.

Operators (AGD, Fu et al. ICML 2020; ``genotypes.py`` / ``operations.py`` of the public code):

* ``conv1x1``: 1x1 conv -> norm -> ReLU (the public code's ``skip``);
* ``conv3x3``: 3x3 conv -> norm -> ReLU;
* ``residual``: 3x3 conv (c_in -> w) -> norm -> ReLU -> 3x3 conv (w -> w) -> norm, plus skip, ReLU after the add;
* ``dwsblock``: MobileNetV2 inverted residual with fixed expansion 4 of the nominal input width:
  1x1 (c_in -> 4 c_in) -> norm -> ReLU -> depthwise 3x3 -> norm -> ReLU -> 1x1 (-> w) -> norm, plus skip,
  ReLU after the add;
* ``original``: the teacher's own block (its subgraph and weights), whose output is cut to ``w`` channels.

Skip across a width change: the first ``min(c_in, w)`` input channels pass (zero-padded to ``w``), not the
public code's 1x1 conv + norm; it costs no MACs and the supernet computes the same function as the derived
net. Normalization: ``"instance"`` (InstanceNorm without affine, image translation) or ``"none"`` (SR).
Convs carry a bias only without normalization. Padding ``"zeros"`` or ``"reflect"`` (follow the teacher).
"""
from __future__ import annotations

import copy
import math
import operator
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

OPERATORS = ("conv1x1", "conv3x3", "residual", "dwsblock")
NORMS = ("instance", "none")
PADDINGS = ("zeros", "reflect")
AGD_RATIOS = (4 / 12, 6 / 12, 8 / 12, 10 / 12, 1.0)
EXPANSION = 4


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet rounding: nearest multiple of ``divisor`` (at least ``min_value``), never 10 % below ``v``."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return int(new)


def agd_widths(base: int, ratios: tuple[float, ...] = AGD_RATIOS, divisor: int = 8) -> tuple[int, ...]:
    """The distinct widths ``make_divisible(base * r, divisor)`` for the AGD ratios, capped at ``base``, sorted.

    256 -> (88, 128, 168, 216, 256); 64 -> (24, 32, 40, 56, 64); 32 -> (16, 24, 32).
    """
    ws = sorted({min(base, make_divisible(base * r, divisor)) for r in ratios} | {base})
    return tuple(ws)


# ------------------------------------------------------------------------------------------------ helpers

def _pad_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int, mode: str,
              groups: int = 1) -> torch.Tensor:
    if pad and mode == "reflect":
        return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), weight, bias, groups=groups)
    return F.conv2d(x, weight, bias, padding=pad, groups=groups)


def _norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    return F.instance_norm(x) if norm == "instance" else x


def _skip(x: torch.Tensor, w: int) -> torch.Tensor:
    s = x[:, :w]
    if s.shape[1] < w:
        s = F.pad(s, (0, 0, 0, 0, 0, w - s.shape[1]))
    return s


def _init_conv(out_c: int, in_c: int, k: int, bias: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
    conv = nn.Conv2d(in_c, out_c, k, bias=bias)
    return conv.weight, conv.bias


class GraphBuilder:
    """Adds plain modules and nodes to ``gm``'s graph before a node (the derive step of every operator)."""

    def __init__(self, gm: fx.GraphModule, prefix: str) -> None:
        self.gm = gm
        self.prefix = prefix
        self.count = 0

    def module(self, name: str, mod: nn.Module, *args: object) -> fx.Node:
        target = f"{self.prefix}_{name}"
        self.gm.add_submodule(target, mod)
        return self.gm.graph.call_module(target, tuple(args))

    def function(self, fn: Callable, *args: object) -> fx.Node:
        return self.gm.graph.call_function(fn, tuple(args))


def _plain_conv(weight: torch.Tensor, bias: torch.Tensor | None, pad: int, mode: str, groups: int = 1) -> nn.Conv2d:
    out_c, in_pg, k, _ = weight.shape
    conv = nn.Conv2d(in_pg * groups, out_c, k, padding=pad, groups=groups, bias=bias is not None,
                     padding_mode="reflect" if (pad and mode == "reflect") else "zeros")
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _plain_norm(b: GraphBuilder, name: str, x: fx.Node, norm: str, width: int) -> fx.Node:
    if norm == "instance":
        return b.module(name, nn.InstanceNorm2d(width, affine=False, track_running_stats=False), x)
    return x


def derive_skip(b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:
    """The skip of a block whose input has ``c_in`` channels and output ``w``: identity, a slice or a zero-pad."""
    if c_in == w:
        return x
    if c_in > w:
        return b.function(operator.getitem, x, (slice(None), slice(None, w)))
    return b.function(F.pad, x, (0, 0, 0, 0, 0, w - c_in))


# ------------------------------------------------------------------------------------------------ operators

class SearchOp(nn.Module):
    """Base of the slimmable operators: ``forward(x, w)``, ``macs(c_in, w, hw)`` and ``derive(...)``."""

    name = "op"

    def __init__(self, c_in: int, c_out: int, *, norm: str = "instance", padding: str = "zeros") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.c_in, self.c_out, self.norm, self.padding = int(c_in), int(c_out), norm, padding
        self.bias = norm == "none"

    def macs(self, c_in: int, w: int, hw: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:  # pragma: no cover - abstract
        raise NotImplementedError


class ConvOp(SearchOp):
    """``conv{k}x{k}``: conv -> norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, **kw: str) -> None:
        super().__init__(c_in, c_out, **kw)
        self.k = k
        self.name = f"conv{k}x{k}"
        self.weight, self.b = _init_conv(c_out, c_in, k, self.bias)

    def forward(self, x: torch.Tensor, w: int) -> torch.Tensor:
        bias = self.b[:w] if self.b is not None else None
        return F.relu(_norm(_pad_conv(x, self.weight[:w], bias, self.k // 2, self.padding), self.norm))

    def macs(self, c_in: int, w: int, hw: int) -> int:
        return hw * w * c_in * self.k * self.k

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:
        bias = self.b[:w].detach() if self.b is not None else None
        y = b.module("conv", _plain_conv(self.weight[:w, :c_in].detach(), bias, self.k // 2, self.padding), x)
        y = _plain_norm(b, "norm", y, self.norm, w)
        return b.module("relu", nn.ReLU(), y)


class ResidualOp(SearchOp):
    """``residual``: conv3x3 -> norm -> ReLU -> conv3x3 -> norm, + skip, ReLU."""

    name = "residual"

    def __init__(self, c_in: int, c_out: int, **kw: str) -> None:
        super().__init__(c_in, c_out, **kw)
        self.w1, self.b1 = _init_conv(c_out, c_in, 3, self.bias)
        self.w2, self.b2 = _init_conv(c_out, c_out, 3, self.bias)

    def forward(self, x: torch.Tensor, w: int) -> torch.Tensor:
        b1 = self.b1[:w] if self.b1 is not None else None
        b2 = self.b2[:w] if self.b2 is not None else None
        h = F.relu(_norm(_pad_conv(x, self.w1[:w], b1, 1, self.padding), self.norm))
        h = _norm(_pad_conv(h, self.w2[:w, :w], b2, 1, self.padding), self.norm)
        return F.relu(h + _skip(x, w))

    def macs(self, c_in: int, w: int, hw: int) -> int:
        return hw * 9 * (w * c_in + w * w)

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:
        b1 = self.b1[:w].detach() if self.b1 is not None else None
        b2 = self.b2[:w].detach() if self.b2 is not None else None
        h = b.module("conv1", _plain_conv(self.w1[:w, :c_in].detach(), b1, 1, self.padding), x)
        h = b.module("relu1", nn.ReLU(), _plain_norm(b, "norm1", h, self.norm, w))
        h = b.module("conv2", _plain_conv(self.w2[:w, :w].detach(), b2, 1, self.padding), h)
        h = _plain_norm(b, "norm2", h, self.norm, w)
        y = b.function(operator.add, h, derive_skip(b, x, c_in, w))
        return b.module("relu2", nn.ReLU(), y)


class DwsBlockOp(SearchOp):
    """``dwsblock``: 1x1 expand (x4 of the nominal input) -> norm -> ReLU -> dw3x3 -> norm -> ReLU -> 1x1 -> norm,
    + skip, ReLU."""

    name = "dwsblock"

    def __init__(self, c_in: int, c_out: int, **kw: str) -> None:
        super().__init__(c_in, c_out, **kw)
        self.hidden = EXPANSION * self.c_in
        self.w1, self.b1 = _init_conv(self.hidden, c_in, 1, self.bias)
        dw = nn.Conv2d(self.hidden, self.hidden, 3, groups=self.hidden, bias=self.bias)
        self.wd, self.bd = dw.weight, dw.bias
        self.w2, self.b2 = _init_conv(c_out, self.hidden, 1, self.bias)

    def forward(self, x: torch.Tensor, w: int) -> torch.Tensor:
        h = F.relu(_norm(_pad_conv(x, self.w1, self.b1, 0, self.padding), self.norm))
        h = F.relu(_norm(_pad_conv(h, self.wd, self.bd, 1, self.padding, groups=self.hidden), self.norm))
        b2 = self.b2[:w] if self.b2 is not None else None
        h = _norm(_pad_conv(h, self.w2[:w], b2, 0, self.padding), self.norm)
        return F.relu(h + _skip(x, w))

    def macs(self, c_in: int, w: int, hw: int) -> int:
        e = self.hidden
        return hw * (e * c_in + e * 9 + w * e)

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:
        e = self.hidden
        det = lambda t: t.detach() if t is not None else None  # noqa: E731
        b2 = self.b2[:w].detach() if self.b2 is not None else None
        h = b.module("expand", _plain_conv(self.w1[:, :c_in].detach(), det(self.b1), 0, self.padding), x)
        h = b.module("relu1", nn.ReLU(), _plain_norm(b, "norm1", h, self.norm, e))
        h = b.module("dw", _plain_conv(self.wd.detach(), det(self.bd), 1, self.padding, groups=e), h)
        h = b.module("relu2", nn.ReLU(), _plain_norm(b, "norm2", h, self.norm, e))
        h = b.module("project", _plain_conv(self.w2[:w].detach(), b2, 0, self.padding), h)
        h = _plain_norm(b, "norm3", h, self.norm, w)
        y = b.function(operator.add, h, derive_skip(b, x, c_in, w))
        return b.module("relu3", nn.ReLU(), y)


class OriginalOp(SearchOp):
    """``original``: the teacher's block (a sub-GraphModule with the teacher's weights), output cut to ``w``.

    Its MACs do not depend on the widths: the derived net zero-pads a narrowed input back to the block's
    input width and runs the block whole (``macs_fixed`` is measured once by the profiler).
    """

    name = "original"

    def __init__(self, c_in: int, c_out: int, block: fx.GraphModule, macs_fixed: int, **kw: str) -> None:
        super().__init__(c_in, c_out, **kw)
        self.block = block
        self.macs_fixed = int(macs_fixed)

    def forward(self, x: torch.Tensor, w: int) -> torch.Tensor:
        y = self.block(x)
        return y if w == y.shape[1] else y[:, :w]

    def macs(self, c_in: int, w: int, hw: int) -> int:
        return self.macs_fixed

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, w: int) -> fx.Node:
        if c_in < self.c_in:
            x = b.function(F.pad, x, (0, 0, 0, 0, 0, self.c_in - c_in))
        sub = copy.deepcopy(self.block)
        env: dict[fx.Node, fx.Node] = {}
        out = None
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                out = fx.map_arg(node.args[0], lambda n: env[n])
            elif node.op == "call_module":
                b.count += 1
                mod = sub.get_submodule(str(node.target))
                name = f"orig{b.count}_" + str(node.target).replace(".", "_")
                env[node] = b.module(name, mod, *fx.map_arg(node.args, lambda n: env[n]))
                if node.kwargs:
                    env[node].kwargs = fx.map_arg(node.kwargs, lambda n: env[n])
            elif node.op == "get_attr":
                b.count += 1
                name = f"{b.prefix}_orig{b.count}_" + str(node.target).replace(".", "_")
                val = sub
                for part in str(node.target).split("."):
                    val = getattr(val, part)
                if isinstance(val, nn.Parameter):
                    b.gm.register_parameter(name, nn.Parameter(val.detach().clone()))
                else:
                    b.gm.register_buffer(name, val.detach().clone() if isinstance(val, torch.Tensor) else val)
                env[node] = b.gm.graph.get_attr(name)
            else:
                env[node] = b.gm.graph.create_node(node.op, node.target, fx.map_arg(node.args, lambda n: env[n]),
                                                   fx.map_arg(node.kwargs, lambda n: env[n]))
        assert isinstance(out, fx.Node)
        if w < self.c_out:
            out = b.function(operator.getitem, out, (slice(None), slice(None, w)))
        return out


def build_op(name: str, c_in: int, c_out: int, *, norm: str, padding: str, block: fx.GraphModule | None = None,
             block_macs: int = 0) -> SearchOp:
    """The operator ``name`` (one of :data:`OPERATORS` or ``"original"``) for a cell ``c_in -> c_out``."""
    if name == "conv1x1":
        return ConvOp(c_in, c_out, 1, norm=norm, padding=padding)
    if name == "conv3x3":
        return ConvOp(c_in, c_out, 3, norm=norm, padding=padding)
    if name == "residual":
        return ResidualOp(c_in, c_out, norm=norm, padding=padding)
    if name == "dwsblock":
        return DwsBlockOp(c_in, c_out, norm=norm, padding=padding)
    if name == "original":
        if block is None:
            raise ValueError("the 'original' operator needs the block's subgraph")
        return OriginalOp(c_in, c_out, block, block_macs, norm=norm, padding=padding)
    raise ValueError(f"unknown operator {name!r}; known: {', '.join(OPERATORS + ('original',))}")


def conv_macs_per_out(mod: nn.Module) -> int:
    """MACs per output element of a conv module (``C_in / groups x k_h x k_w``)."""
    return mod.in_channels // mod.groups * math.prod(mod.kernel_size)
