"""Proofs that a channel is *fixed* (the same values for every input), propagated symbolically.

A channel is fixed only by one of these sources, never because random probes happened to agree:

* a :class:`ChannelMask` whose scale for the channel's unit is exactly 0 (the channel is then exactly 0);
* a channel norm whose ``gamma`` is exactly 0 (the channel is then ``beta``, eval semantics);
* a producer (conv / transposed conv / linear) or depthwise member whose weights for the channel are all
  exactly 0 (the channel is then its bias);

and it stays fixed through ops that compute each output channel from the same channel of their inputs
deterministically (norms, activations, dropout in eval, casts, padding, pooling, interpolation, depthwise
convs, elementwise ops whose every operand is fixed there, ``x * 0``) and through data-movement ops (cat,
pixel shuffle, split, slicing) by the channel map they apply. Anything else (an op this module does not
know, a random op, a per-tensor op) makes its output *not* fixed. An instance-style norm of a spatially
constant channel is exactly its shift (``beta`` or 0), a rule applied symbolically rather than by
computing a variance of rounding noise.

The *values* of fixed channels are computed by running the ops on a template tensor (batch 1, the
traced shape), with zeros in the channels that are not fixed; since every rule above is channel-wise,
the fixed channels' values do not depend on that filler. Each fixed channel carries a human-readable
proof (its source and the rules applied), reported by ``eliminate-dead-channels``.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ...errors import PassError
from ...fx.utils import not_plain_reason
from ..masks import ChannelBias, ChannelMask, _is_channel_norm

_CONV = nn.modules.conv._ConvNd
_CONVT = nn.modules.conv._ConvTransposeNd
_SPREAD_TOL = 1e-6  # relative spatial spread tolerated in a "constant" map (interpolation rounding)

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    ChannelBias,
)
_PAD_MODULES = (
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
_MOVE_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RANDOM_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                 F.rrelu}
_POINTWISE_FUNCS = {
    operator.neg, operator.pos, operator.abs, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log,
    torch.log1p, torch.expm1, torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.sin, torch.cos, torch.sign,
    torch.square, torch.erf, torch.round, torch.floor, torch.ceil, torch.reciprocal, torch.nan_to_num,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.threshold,
    F.hardshrink, F.softshrink, F.tanhshrink, torch.clone, torch.Tensor.contiguous, torch.Tensor.detach,
}
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, torch.add, torch.sub,
    torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide, torch.true_divide, torch.pow,
    torch.maximum, torch.minimum, torch.fmax, torch.fmin, torch.where, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.clamp, torch.clip,
}
_MUL = {operator.mul, torch.mul, torch.multiply, "mul", "__mul__", "__rmul__"}
_POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "sqrt", "rsqrt", "sign", "square", "reciprocal",
    "round", "floor", "ceil", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to",
    "type_as", "type", "cpu", "cuda", "__neg__",
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "true_divide", "pow", "maximum", "minimum", "clamp", "clip", "lerp",
    "addcmul", "addcdiv", "where", "__add__", "__sub__", "__mul__", "__truediv__", "__radd__", "__rsub__",
    "__rmul__", "__rtruediv__", "__pow__", "__rpow__",
}
_SPATIAL_FUNCS = {
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch.max_pool2d, torch.avg_pool1d,
}
_MOVE_FUNCS = {torch.cat, torch.concat, torch.concatenate, F.pixel_shuffle, torch.pixel_shuffle,
               F.pixel_unshuffle, torch.pixel_unshuffle, operator.getitem, torch.split, torch.chunk,
               torch.tensor_split}
_MOVE_METHODS = {"split", "chunk", "tensor_split"}


@dataclasses.dataclass
class Facts:
    """What is proven about one tensor node (batch 1): which channels are fixed, their values, and why."""

    fixed: torch.Tensor            # bool [C]
    value: torch.Tensor            # template (1, C, ...); entries of channels that are not fixed are filler
    proof: list[str | None]        # per channel: the proof (None when not fixed)


def is_constant(m: torch.Tensor) -> bool:
    """Is a flattened map spatially constant (up to interpolation rounding)?"""
    if m.numel() <= 1:
        return True
    spread = float(m.max() - m.min())
    return spread <= _SPREAD_TOL * float(m.abs().max()) + 1e-30


def _batch1(shape: Any) -> tuple[int, ...]:
    s = tuple(shape)
    return (1,) + s[1:] if s else s


def _is_tm(tm: Any) -> bool:
    return tm is not None and hasattr(tm, "shape") and hasattr(tm, "dtype")


def _filler(tm: Any) -> Any:
    if not _is_tm(tm):  # (TensorMetadata is itself a NamedTuple: test it first)
        return [_filler(t) for t in tm] if isinstance(tm, (list, tuple)) else None
    shape = _batch1(tm.shape)
    value = torch.zeros((), dtype=tm.dtype).expand(shape)  # no memory: written only after a clone
    c = shape[1] if len(shape) >= 2 else 0
    return Facts(torch.zeros(c, dtype=torch.bool), value, [None] * c)


def _join(proofs: list[str | None]) -> str | None:
    seen: list[str] = []
    for p in proofs:
        if p and p not in seen:
            seen.append(p)
    if not seen:
        return None
    return " & ".join(seen[:3]) + (f" & {len(seen) - 3} more" if len(seen) > 3 else "")


class Prover:
    """Propagates :class:`Facts` through one channel group's nodes (see the module docstring).

    ``overrides`` maps a module target to the per-unit scale its mask should be taken to have (a
    :class:`ChannelMask` target: its ``scale``; a norm used as a GS mask: its ``gamma``); the cost model
    uses it to prove a mask setting without editing the graph.
    """

    def __init__(self, gm: fx.GraphModule, nodes: dict[str, fx.Node], concrete: Callable[[fx.Node], Any],
                 overrides: dict[str, torch.Tensor] | None = None) -> None:
        self.gm = gm
        self.nodes = nodes
        self.concrete = concrete
        self.overrides = overrides or {}
        self.facts: dict[str, Any] = {}

    # ------------------------------------------------------------------ values of arguments
    def facts_of(self, node: fx.Node, members: set[str], producers: set[str]) -> Any:
        if node.name in self.facts:
            return self.facts[node.name]
        if node.name in producers:
            f = self._producer(node)
        elif node.name in members:
            f = self._member(node, members, producers)
        elif node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor) and obj.dim() >= 2:
                v = obj.detach()
                f = Facts(torch.ones(v.shape[1], dtype=torch.bool), v, ["constant tensor"] * v.shape[1])
            else:
                f = obj
        else:
            tm = node.meta.get("tensor_meta")
            if _is_tm(tm) or (isinstance(tm, (list, tuple)) and tm and all(_is_tm(t) for t in tm)):
                f = _filler(tm)
            else:
                f = self.concrete(node)
        self.facts[node.name] = f
        return f

    def _module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def _producer(self, node: fx.Node) -> Facts:
        """A producer reads data from outside the group: an output channel is fixed exactly when its weights
        are all zero (it is then its bias)."""
        f = _filler(node.meta["tensor_meta"])
        mod = self._module(node)
        zero = _zero_rows(mod)
        if bool(zero.any()):
            f.value = f.value.clone()
            bias = mod.bias.detach() if getattr(mod, "bias", None) is not None else None
            for c in torch.nonzero(zero).flatten().tolist():
                f.value[:, c] = bias[c] if bias is not None else 0
                f.fixed[c] = True
                f.proof[c] = f"producer '{node.target}': weights of output channel {c} exactly 0 -> bias"
        return f

    # ------------------------------------------------------------------ members
    def _member(self, node: fx.Node, members: set[str], producers: set[str]) -> Any:
        get = lambda n: self.facts_of(n, members, producers)  # noqa: E731
        args = fx.node.map_arg(node.args, get)
        kwargs = fx.node.map_arg(node.kwargs, get)
        tm = node.meta.get("tensor_meta")
        rule = self._rule(node)
        if rule == "unknown":
            return _filler(tm)
        if rule == "move":
            return self._move(node, args, kwargs, tm)
        tensors = [a for a in _flat(args, kwargs) if isinstance(a, Facts)]
        x = tensors[0] if tensors else None
        if x is None:
            return _filler(tm)
        out_c = _batch1(tm.shape)[1] if _is_tm(tm) and len(tm.shape) >= 2 else None
        if out_c is None:
            return _filler(tm)
        fixed = torch.zeros(out_c, dtype=torch.bool)
        proof: list[str | None] = [None] * out_c
        new: dict[int, str] = {}
        mod = self._module(node) if node.op == "call_module" else None
        if rule in ("pointwise", "spatial", "pad", "norm", "mask", "depthwise"):
            if x.fixed.numel() == out_c:
                fixed |= x.fixed
                proof = list(x.proof)
            elif rule == "depthwise" and out_c % max(x.fixed.numel(), 1) == 0:
                mult = out_c // x.fixed.numel()
                fixed |= x.fixed.repeat_interleave(mult)
                proof = [x.proof[c // mult] for c in range(out_c)]
            if rule == "mask":
                s = self._mask_scale(node, mod)
                for c in torch.nonzero(s == 0).flatten().tolist():
                    u = int(mod.index[c])
                    new[c] = f"mask '{node.target}'.scale[{u}] == 0"
            elif rule == "norm":
                w = self._norm_weight(node, mod)
                if w is not None:
                    for c in torch.nonzero(w == 0).flatten().tolist():
                        new[c] = f"norm '{node.target}'.weight[{c}] == 0 -> beta"
            elif rule == "depthwise":
                for c in torch.nonzero(_zero_rows(mod)).flatten().tolist():
                    new[c] = f"depthwise '{node.target}': weights of channel {c} exactly 0 -> bias"
        elif rule == "elementwise":
            fixed[:] = True
            per_channel: list[list[str | None]] = [[] for _ in range(out_c)]
            zero_of: list[str | None] = [None] * out_c
            for a in _flat(args, kwargs):
                if isinstance(a, Facts):
                    if a.value.dim() == len(tm.shape) and a.fixed.numel() == out_c:
                        fixed &= a.fixed
                        for c in range(out_c):
                            per_channel[c].append(a.proof[c])
                        if self._is_mul(node):
                            for c in torch.nonzero(a.fixed).flatten().tolist():
                                if zero_of[c] is None and bool((a.value[:, c] == 0).all()):
                                    zero_of[c] = a.proof[c]
                    elif not bool(a.fixed.all()):  # broadcast along the channels
                        fixed[:] = False
                elif isinstance(a, torch.Tensor):
                    continue  # a python-side constant tensor
                elif isinstance(a, (list, tuple)) and any(isinstance(t, Facts) for t in a):
                    fixed[:] = False
            proof = [_join(per_channel[c]) if fixed[c] else None for c in range(out_c)]
            for c, p in enumerate(zero_of):
                if p is not None and not fixed[c]:
                    new[c] = f"{p} -> x * 0"
        else:  # pragma: no cover - every rule is handled above
            raise PassError(f"internal: unknown proof rule {rule!r}")
        for c, why in new.items():
            fixed[c] = True
            proof[c] = why
        if not bool(fixed.any()):
            return _filler(tm)
        value = self._evaluate(node, mod, args, kwargs, rule)
        if not isinstance(value, torch.Tensor) or value.shape[1] != out_c:
            return _filler(tm)
        value = value.detach()
        if not value.is_contiguous() and value.stride(1) == 0:
            value = value.clone()
        if rule == "norm" and _per_instance(mod) and x.fixed.numel() == out_c:
            # an instance norm of a spatially constant channel is exactly its shift (beta, or 0)
            flat = x.value.reshape(x.value.shape[0], out_c, -1)
            shift = mod.bias.detach() if getattr(mod, "bias", None) is not None else None
            for c in torch.nonzero(x.fixed).flatten().tolist():
                if c in new or not is_constant(flat[0, c].double()):
                    continue
                value[:, c] = shift[c] if shift is not None else 0
                proof[c] = f"{proof[c]} -> constant: {type(mod).__name__} '{node.target}' of a constant -> " + \
                    ("beta" if shift is not None else "0")
        idx = torch.nonzero(fixed).flatten()
        finite = torch.isfinite(value[:, idx].reshape(value.shape[0], idx.numel(), -1)).all(dim=2).all(dim=0)
        fixed[idx[~finite]] = False
        proof = [p if fixed[c] else None for c, p in enumerate(proof)]
        return Facts(fixed, value, proof)

    def _rule(self, node: fx.Node) -> str:
        if node.op == "call_module":
            mod = self._module(node)
            if isinstance(mod, ChannelMask):
                return "mask"
            if not isinstance(mod, ChannelBias) and not_plain_reason(mod) is not None:
                return "unknown"  # a subclass with its own forward / hooks: its math is not torch's
            if isinstance(mod, _POINTWISE_MODULES):
                return "pointwise"
            if _is_channel_norm(mod) or (isinstance(mod, nn.LayerNorm) and not mod.elementwise_affine):
                return "norm"
            if isinstance(mod, _PAD_MODULES):
                return "pad"
            if isinstance(mod, _SPATIAL_MODULES):
                return "spatial" if not getattr(mod, "return_indices", False) else "unknown"
            if isinstance(mod, _MOVE_MODULES):
                return "move"
            if type(mod) in _PLAIN_CONVS and mod.groups == mod.in_channels and mod.groups > 1:
                return "depthwise"
            return "unknown"
        t = node.target
        if node.op == "call_function":
            if t in _RANDOM_FUNCS:
                training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else
                                           (t is not F.rrelu))
                if training is not False:
                    return "unknown"
                return "pointwise"
            if t in _POINTWISE_FUNCS:
                return "pointwise"
            if t in _ELEMENTWISE_FUNCS:
                return "elementwise"
            if t in _SPATIAL_FUNCS:
                return "spatial"
            if t is F.pad:
                return "pad"
            if t in _MOVE_FUNCS:
                return "move"
            return "unknown"
        if node.op == "call_method":
            if t in _POINTWISE_METHODS:
                return "pointwise"
            if t in _ELEMENTWISE_METHODS:
                return "elementwise"
            if t in _MOVE_METHODS:
                return "move"
        return "unknown"

    @staticmethod
    def _is_mul(node: fx.Node) -> bool:
        return node.target in _MUL

    def _mask_scale(self, node: fx.Node, mod: ChannelMask) -> torch.Tensor:
        scale = self.overrides.get(str(node.target))
        if scale is None:
            return mod.per_channel().detach()
        padded = torch.cat([scale.to(mod.scale.dtype), scale.new_ones(1).to(mod.scale.dtype)])
        return padded[mod.index]

    def _norm_weight(self, node: fx.Node, mod: nn.Module) -> torch.Tensor | None:
        w = self.overrides.get(str(node.target))
        if w is not None:
            return w
        return mod.weight.detach() if isinstance(getattr(mod, "weight", None), torch.Tensor) else None

    def _evaluate(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any, rule: str) -> Any:
        vargs = _values(args)
        vkwargs = _values(kwargs)
        with torch.no_grad():
            if mod is not None:
                if rule == "mask":
                    s = self._mask_scale(node, mod)
                    x = vargs[0]
                    return x * s.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2))
                override = self.overrides.get(str(node.target)) if rule == "norm" else None
                was = mod.training
                mod.eval()
                try:
                    if override is not None:
                        return torch.func.functional_call(mod, {"weight": override.to(mod.weight.dtype)},
                                                          tuple(vargs), dict(vkwargs))
                    return mod(*vargs, **vkwargs)
                finally:
                    mod.train(was)
            if node.op == "call_function":
                return node.target(*vargs, **vkwargs)
            return getattr(vargs[0], str(node.target))(*vargs[1:], **vkwargs)

    def _move(self, node: fx.Node, args: Any, kwargs: Any, tm: Any) -> Any:
        """A data-movement op: values by running it; fixedness and proofs by running it on channel ids."""
        facts = [a for a in _flat(args, kwargs) if isinstance(a, Facts)]
        if not any(bool(f.fixed.any()) for f in facts):
            return _filler(tm)
        ids: list[tuple[Facts, int]] = []
        offsets: dict[int, int] = {}
        for f in facts:
            offsets[id(f)] = len(ids)
            ids.extend((f, c) for c in range(f.fixed.numel()))

        def ident(a: Any) -> Any:
            if not isinstance(a, Facts):
                return a
            base = offsets[id(a)]
            tag = torch.arange(base + 1, base + 1 + a.fixed.numel(), dtype=torch.float64)
            tag = torch.where(a.fixed, tag, torch.zeros_like(tag))
            return tag.view((1, -1) + (1,) * (a.value.dim() - 2)).expand(a.value.shape).clone()

        try:
            value = self._evaluate(node, None if node.op != "call_module" else self._module(node), args, kwargs,
                                   "move")
            with torch.no_grad():
                if node.op == "call_module":
                    tag_out = self._module(node)(*_map(args, ident), **_map(kwargs, ident))
                elif node.op == "call_function":
                    tag_out = node.target(*_map(args, ident), **_map(kwargs, ident))
                else:
                    a = _map(args, ident)
                    tag_out = getattr(a[0], str(node.target))(*a[1:], **_map(kwargs, ident))
        except Exception:  # noqa: BLE001 - an op the prover cannot replay proves nothing
            return _filler(tm)

        def facts_from(v: Any, t: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [facts_from(a, b) for a, b in zip(v, t)]
            if not isinstance(v, torch.Tensor) or v.dim() < 2:
                return v
            c = v.shape[1]
            flat = t.reshape(t.shape[0], c, -1)
            lo = flat.amin(dim=(0, 2))
            fixed = lo > 0  # every position of the channel comes from some fixed input channel
            proof: list[str | None] = [None] * c
            for ch in torch.nonzero(fixed).flatten().tolist():
                f, src = ids[int(lo[ch]) - 1]
                proof[ch] = f.proof[src]
            idx = torch.nonzero(fixed).flatten()
            finite = torch.isfinite(v[:, idx].reshape(v.shape[0], idx.numel(), -1)).all(dim=2).all(dim=0)
            fixed[idx[~finite]] = False
            return Facts(fixed, v.detach(), proof)

        return facts_from(value, tag_out)


def _zero_rows(mod: nn.Module) -> torch.Tensor:
    """Output channels of a conv / transposed conv / linear whose weights are all exactly 0."""
    w = mod.weight.detach()
    if isinstance(mod, _CONVT):
        per_in, per_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
        wg = w.reshape(mod.groups, per_in, per_out, -1)
        return (wg == 0).all(dim=3).all(dim=1).reshape(-1)
    return (w.reshape(w.shape[0], -1) == 0).all(dim=1)


def _per_instance(mod: nn.Module | None) -> bool:
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return not mod.track_running_stats  # evaluated in eval mode: running stats, when tracked, are used
    if isinstance(mod, nn.GroupNorm):
        return mod.num_groups == mod.num_channels
    return isinstance(mod, nn.LayerNorm)


def _flat(args: Any, kwargs: Any) -> list[Any]:
    out: list[Any] = []

    def walk(a: Any) -> None:
        if isinstance(a, (list, tuple)) and not isinstance(a, Facts):
            for b in a:
                walk(b)
        elif isinstance(a, dict):
            for b in a.values():
                walk(b)
        else:
            out.append(a)

    walk(args)
    walk(kwargs)
    return out


def _map(a: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(a, Facts):
        return fn(a)
    if isinstance(a, tuple):
        return tuple(_map(b, fn) for b in a)
    if isinstance(a, list):
        return [_map(b, fn) for b in a]
    if isinstance(a, dict):
        return {k: _map(v, fn) for k, v in a.items()}
    return a


def _values(a: Any) -> Any:
    return _map(a, lambda f: f.value)
