"""What the channel analysis knows about ops: the extension point (:func:`register_channel_rule`), the op
tables (which modules, functions and methods are pass-through, elementwise, casts, pools, reductions...) and
small helpers over nodes shared by the solver and the op rules."""
from __future__ import annotations

import operator
from typing import Any, Callable, Iterator

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["register_channel_rule"]


# --------------------------------------------------------------------------------------------------
# Extension point
# --------------------------------------------------------------------------------------------------

_CUSTOM_RULES: dict[Any, str] = {}
_RULES = ("passthrough", "pin")


def register_channel_rule(target: type | Callable[..., Any] | str, rule: str) -> None:
    """Tell the analysis how a module type, function, or method name maps channels.

    ``rule`` is ``"passthrough"`` (output channel c depends only on input channel c, the op holds at
    most per-channel state, e.g. a mask or a fake-quant module) or ``"pin"`` (pin every channel it
    touches).  A module class may instead define ``gcompiler_channel_rule = "passthrough"``.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown channel rule {rule!r}; valid rules: {', '.join(_RULES)}")
    _CUSTOM_RULES[target] = rule


# --------------------------------------------------------------------------------------------------
# Op tables
# --------------------------------------------------------------------------------------------------

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.RReLU, nn.Identity,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_PADS = (
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
_UPSAMPLES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
_SOFTMAXES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)

# Functions / method names whose output channel c depends only on channel c of their tensor operands
# (with broadcasting): the operands are coupled where their channel counts agree.
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.mod, operator.neg, operator.pos, operator.abs, operator.gt, operator.ge, operator.lt,
    operator.le, operator.eq, operator.ne, operator.and_, operator.or_, operator.xor, operator.invert,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.floor_divide, torch.pow, torch.maximum, torch.minimum, torch.fmax, torch.fmin,
    torch.where, torch.lerp, torch.addcmul, torch.addcdiv, torch.clamp, torch.clip, torch.relu, torch.sigmoid,
    torch.tanh, torch.exp, torch.log, torch.log1p, torch.expm1, torch.abs, torch.neg, torch.sqrt, torch.rsqrt,
    torch.sin, torch.cos, torch.sign, torch.square, torch.erf, torch.round, torch.floor, torch.ceil,
    torch.reciprocal, torch.nan_to_num, torch.gt, torch.ge, torch.lt, torch.le, torch.eq, torch.ne,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.threshold, F.rrelu,
    F.hardshrink, F.softshrink, F.tanhshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "pow", "maximum", "minimum", "clamp",
    "clip", "relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "sqrt", "rsqrt", "sign", "square",
    "reciprocal", "round", "floor", "ceil", "lerp", "addcmul", "addcdiv", "where", "gt", "ge", "lt", "le",
    "eq", "ne", "masked_fill",
    "add_", "sub_", "mul_", "div_", "pow_", "clamp_", "clip_", "relu_", "sigmoid_", "tanh_", "exp_",
    "abs_", "neg_", "sqrt_", "lerp_", "addcmul_", "addcdiv_",
}
_ELEMENTWISE_METHODS |= {f"__{n}__" for n in ("add", "sub", "mul", "truediv", "radd", "rsub", "rmul",
                                               "rtruediv", "neg", "pow", "rpow")}
# Ops that only read their first operand's values (other tensor arguments give a dtype or device).
_CAST_METHODS = {"contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type_as",
                 "type", "requires_grad_", "cpu", "cuda"}
_CAST_FUNCS = {torch.clone, torch.Tensor.contiguous, torch.Tensor.detach}
_INTERP_FUNCS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
_POOL_FUNCS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2, torch.avg_pool1d: 1,
}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
                 torch.prod}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_CONV_FUNCS = {F.conv1d: False, F.conv2d: False, F.conv3d: False, torch.conv1d: False, torch.conv2d: False,
               torch.conv3d: False, F.conv_transpose1d: True, F.conv_transpose2d: True,
               F.conv_transpose3d: True, torch.conv_transpose1d: True, torch.conv_transpose2d: True,
               torch.conv_transpose3d: True}
_SPLIT_FUNCS = {torch.split, torch.chunk, torch.tensor_split}
_SPLIT_METHODS = {"split", "chunk", "tensor_split"}
_FLATTEN_FUNCS = {torch.flatten}
_SHAPE_HARMLESS_ATTRS = {"dtype", "device", "ndim", "is_cuda", "requires_grad"}


def _is_tensor_meta(meta: Any) -> bool:
    return meta is not None and hasattr(meta, "shape") and hasattr(meta, "dtype")


def _flatten_nodes(obj: Any) -> Iterator[torch.fx.Node]:
    if isinstance(obj, torch.fx.Node):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten_nodes(o)
    elif isinstance(obj, slice):
        for o in (obj.start, obj.stop, obj.step):
            yield from _flatten_nodes(o)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(node: torch.fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return str(t)
    if node.op == "call_method":
        return f".{t}()"
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", None) or str(t)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


def _spatial_dims(module: nn.Module) -> int | None:
    name = type(module).__name__
    for d in (1, 2, 3):
        if name.endswith(f"{d}d"):
            return d
    return None
