"""What the quantization passes know about value ranges: where a conv reads the image, and where its input
is non-negative by construction.

* :func:`image_input_convs` -- convs whose input is a graph input seen through value-preserving ops (their
  input stays float in ``insert-fake-quant``);
* :func:`nonnegative_input` -- a conservative sign analysis (``act_range=auto``: ``[0, p]`` where it holds,
  ``[-p, p]`` elsewhere).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

PAD_MODULES = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d)

# Ops through which a value keeps its sign and its values (for the image-input and sign rules below).
_VALUE_PRESERVING_MODULES = PAD_MODULES + (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                           nn.AlphaDropout)
_VALUE_PRESERVING_FUNCTIONS = (F.pad, F.dropout, F.dropout2d, torch.clone, torch.Tensor.contiguous)
_VALUE_PRESERVING_METHODS = ("to", "float", "double", "half", "bfloat16", "type", "type_as", "contiguous",
                             "clone", "detach", "cpu", "cuda")
# Ops whose output is >= 0 whatever their input, and ops that keep a non-negative input non-negative.
_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax)
_NONNEG_FUNCTIONS = (torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus,
                     torch.abs, torch.softmax, F.softmax, torch.exp, torch.square)
_NONNEG_METHODS = ("relu", "sigmoid", "abs", "exp", "softmax", "square")
_SIGN_PRESERVING_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                            nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle)
_SIGN_PRESERVING_FUNCTIONS = (F.interpolate, F.pixel_shuffle, F.pixel_unshuffle, F.max_pool2d, F.avg_pool2d,
                              F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten, torch.reshape)
_SIGN_PRESERVING_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "repeat", "expand")
_CLAMP_FUNCTIONS = (torch.clamp, torch.clip, F.hardtanh)


def _const(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _clamp_bounds(gm: fx.GraphModule, node: fx.Node) -> tuple[float | None, float | None] | None:
    """``(min, max)`` of a clamp / hardtanh node with constant bounds, else ``None``."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return (float(mod.min_val), float(mod.max_val)) if isinstance(mod, nn.Hardtanh) else None
    if node.op == "call_function" and node.target in _CLAMP_FUNCTIONS:
        names = ("min_val", "max_val") if node.target is F.hardtanh else ("min", "max")
        default = (-1.0, 1.0) if node.target is F.hardtanh else (None, None)
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get(names[0], default[0])
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get(names[1], default[1])
        return _const(lo), _const(hi)
    if node.op == "call_method" and node.target in ("clamp", "clip", "clamp_"):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        return _const(lo), _const(hi)
    return None


def _see_through(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The tensor input of ``node`` when ``node`` passes its values on unchanged (padding, identity, dropout,
    casts, copies), else ``None``. A cast between float types may round, but keeps what the data is."""
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if src is None:
        return None
    if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _VALUE_PRESERVING_MODULES):
        return src
    if node.op == "call_function" and node.target in _VALUE_PRESERVING_FUNCTIONS:
        return src
    if node.op == "call_method" and node.target in _VALUE_PRESERVING_METHODS:
        return src
    return None


def image_input_convs(gm: fx.GraphModule) -> set[fx.Node]:
    """Conv nodes whose input is a graph input seen through value-preserving ops only.

    Value-preserving: padding (modules and ``F.pad``), identity, dropout, casts and copies (``.to``,
    ``.float()``, ``.type_as``, ``.contiguous``, ...) and a clamp / hardtanh to a range that holds images
    (``clamp(-1, 1)``, ``clamp(0, 1)``, ``clamp(0, 255)``: constant bounds with ``min <= 0 < max``).
    """
    out: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)),
                                                     (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        src = node.args[0] if node.args else None
        while isinstance(src, fx.Node):
            if src.op == "placeholder":
                out.add(node)
                break
            nxt = _see_through(gm, src)
            if nxt is None:
                bounds = _clamp_bounds(gm, src)
                if bounds is not None and bounds[0] is not None and bounds[1] is not None \
                        and bounds[0] <= 0 < bounds[1] and isinstance(src.args[0], fx.Node):
                    nxt = src.args[0]
            src = nxt
    return out


def nonnegative_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the first input of ``node`` is >= 0 by construction (a conservative sign analysis).

    Non-negative: the output of ReLU / ReLU6 / sigmoid / softplus / softmax / abs / exp, a clamp with
    ``min >= 0``; kept non-negative through value-preserving ops (padding with zeros or reflection,
    identity, dropout, casts), pooling, upsampling, pixel (un)shuffle, reshapes, and by ``cat`` / ``+`` /
    ``*`` of non-negative tensors. Anything else (LeakyReLU, PReLU, norms, convs, residual sums with a
    signed branch) may be negative.
    """
    seen: dict[fx.Node, bool] = {}

    def nonneg(v: object, depth: int = 0) -> bool:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v >= 0
        if not isinstance(v, fx.Node) or depth > 200:
            return False
        if v in seen:
            return seen[v]
        seen[v] = False  # cycles cannot occur in a DAG; this also bounds the work
        seen[v] = r = _nonneg_node(v, depth)
        return r

    def _nonneg_node(v: fx.Node, depth: int) -> bool:
        first = v.args[0] if v.args else None
        if v.op == "call_module":
            mod = gm.get_submodule(str(v.target))
            if isinstance(mod, _NONNEG_MODULES):
                return True
            if isinstance(mod, nn.ConstantPad2d) and mod.value < 0:
                return False
            if isinstance(mod, _VALUE_PRESERVING_MODULES + _SIGN_PRESERVING_MODULES):
                return nonneg(first, depth + 1)
            if isinstance(mod, nn.Hardtanh):
                return float(mod.min_val) >= 0 or nonneg(first, depth + 1)
            return False
        if v.op == "call_function":
            if v.target in _NONNEG_FUNCTIONS:
                return True
            if v.target is F.pad and len(v.args) > 3 and _const(v.args[3]) is not None and v.args[3] < 0:
                return False
            if v.target in _VALUE_PRESERVING_FUNCTIONS + _SIGN_PRESERVING_FUNCTIONS:
                return nonneg(first, depth + 1)
            if v.target in (torch.cat, torch.stack):
                return isinstance(first, (list, tuple)) and all(nonneg(a, depth + 1) for a in first)
            if v.target in (operator.add, torch.add, operator.mul, torch.mul):
                return all(nonneg(a, depth + 1) for a in v.args[:2])
        if v.op == "call_method":
            if v.target in _NONNEG_METHODS:
                return True
            if v.target in _VALUE_PRESERVING_METHODS + _SIGN_PRESERVING_METHODS:
                return nonneg(first, depth + 1)
            if v.target in ("add", "mul"):
                return all(nonneg(a, depth + 1) for a in v.args[:2])
        bounds = _clamp_bounds(gm, v)
        if bounds is not None:
            return (bounds[0] is not None and bounds[0] >= 0) or nonneg(first, depth + 1)
        return False

    return nonneg(node.args[0] if node.args else None)
