"""How far fake quantization moves a graph's output, bounded per input.

:func:`quantization_error_bound` splits what ``insert-fake-quant`` does to a network into two parts and
treats each as what it is:

* the **systematic** part, known exactly: weights replaced by their quantized values ``W_q`` and every
  quantized activation clamped to its range ``[lo, hi]``, i.e. the network the fake-quant graph computes
  with an infinitely fine activation grid. It is *run* (the same graph, every quantizer replaced by
  ``conv(clamp(x, lo, hi), W_q)``), not estimated, so clips that cut the activations and weight rounding
  count exactly, through every nonlinearity. The weight quantizers are checked on the way: no weight may
  move by more than half a step of its tensor's grid (``max|W| / (2 L)``), else the evaluation fails loudly.
* the **rounding noise**: each activation quantizer rounds to a grid of step ``s``, modelled as
  independent noise uniform on ``[-s/2, s/2]`` (standard deviation ``s / sqrt(12)``), carried as a standard
  deviation ``sd`` along the systematic network: through convolutions and linear layers as
  ``sqrt(W^2 * sd^2)``, through additions as ``sqrt(sd_a^2 + sd_b^2)``, through products as
  ``|a| sd_b + |b| sd_a``, through moves and averages by the op itself, through element-wise maps with their
  slope at the systematic value (kinked maps with the larger slope within ``K sd`` of a kink), through
  normalizations with ``|gamma| / sigma``.

The bound, on the given inputs, is ``max(|y_sys - y| + K * sd) / max|y|`` over the output (``K`` =
:data:`NOISE_SIGMAS`, ``y`` the float network), plus :data:`ROUNDING_SLACK` for float32 rounding. It depends
on the bits through every grid step and weight, on the clips, and on the weights and activations of the
network on these inputs. The noise part is a model, not a worst case: a worst-case (interval) propagation
through ``|W|`` is sound but useless on generators (1e13 to 1e39 x the real error on the zoo, infinite
through InstanceNorm), because rounding errors do not line up. ``tests/test_quant_bound.py`` checks the
bound against measured errors on generated graphs and on every zoo model at 4 to 16 bits and fixed clips,
and how tight it is.

An op without a noise rule makes the bound infinite, with the node named, where noise reaches it (ops that
only see systematic changes need no rule: they are run). Where the noise itself is large (``max sd`` above
:data:`NOISE_LIMIT` x ``max|y|``, e.g. 4-bit activations) its linear model is not valid and the bound is
infinite too, saying why. The pass ``insert-fake-quant`` states this bound, evaluated on the inputs the
verifier checks with, as its contract; the verifier logs every infinite one.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import VerificationError
from ..fx.utils import not_plain_reason
from ..passes.masks import ChannelMask
from .qmodules import QUANT_CONV_TYPES

#: Standard deviations of rounding noise allowed at every output element (see the module docstring).
NOISE_SIGMAS = 8.0
#: Noise (one standard deviation) above this fraction of ``max|y|``: its linear model does not hold.
NOISE_LIMIT = 0.25
#: Added to every relative bound: float32 rounding of the two networks (what an exact pass may also differ by).
ROUNDING_SLACK = 1e-5

_SQRT12 = math.sqrt(12.0)


class Unbounded(Exception):
    """Noise reached an op that has no rule (``reason`` names the node; torch.fx appends its own notes to the
    message of an exception raised inside an interpreter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Err:
    """A value's systematic counterpart ``sys`` (same structure as the value) and its noise ``sd`` (or ``None``)."""

    __slots__ = ("sys", "sd")

    def __init__(self, sys: Any, sd: Any) -> None:
        self.sys, self.sd = sys, sd


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [t for u in v for t in _leaves(u)]
    if isinstance(v, dict):
        return [t for u in v.values() for t in _leaves(u)]
    return [v]


def _has_sd(sd: Any) -> bool:
    return any(isinstance(t, torch.Tensor) for t in _leaves(sd))


def _rss(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else (a ** 2 + b ** 2).sqrt()


# Ops that move, copy, select, sum or average values: applied to sd they carry the noise.
_STRUCTURAL_FUNCS = {
    torch.cat, torch.stack, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
    torch.unsqueeze, torch.narrow, torch.chunk, torch.split, torch.flip, torch.roll, operator.getitem,
    F.pad, F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle, F.avg_pool2d,
    F.adaptive_avg_pool2d, torch.mean, torch.sum, torch.repeat_interleave, torch.tile, torch.movedim,
}
_STRUCTURAL_METHODS = {
    "view", "reshape", "permute", "transpose", "contiguous", "flatten", "squeeze", "unsqueeze", "expand",
    "expand_as", "repeat", "narrow", "chunk", "split", "flip", "roll", "mean", "sum", "clone", "detach",
    "float", "to", "type_as", "movedim", "unflatten", "__getitem__",
}
_STRUCTURAL_MODULES = (nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d, nn.PixelShuffle,
                       nn.PixelUnshuffle, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Identity)
_LINEAR_RESAMPLE = ("nearest", "nearest-exact", "bilinear", "linear", "trilinear", "area")
_SMOOTH_MODULES = (nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Mish, nn.Softplus, nn.Softsign)
_SMOOTH_FUNCS = {torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.silu, F.gelu, F.mish, F.softplus}
_SMOOTH_METHODS = {"tanh", "sigmoid"}


def _slope(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``|f'(x)|`` by autograd (element-wise ``fn``)."""
    with torch.enable_grad():
        t = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t).sum(), t)
    return g.abs()


def _kinked(x: torch.Tensor, sd: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor | float,
            kinks: tuple[float | None, ...]) -> torch.Tensor:
    """Noise through a piecewise-linear map whose slope is ``inside`` here and ``outside`` across a kink: the
    larger of the two within ``K sd`` of a kink (the value may cross it)."""
    pts = [p for p in kinks if p is not None]
    k = inside
    if pts:
        dist = torch.stack([(x - p).abs() for p in pts]).amin(0)
        other = outside if isinstance(outside, torch.Tensor) else torch.full_like(x, float(outside))
        k = torch.where(dist <= NOISE_SIGMAS * sd, k.maximum(other), k)
    return sd * k


def _clamp_sd(x: torch.Tensor, sd: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    inside = ((x >= (-math.inf if lo is None else lo)) & (x <= (math.inf if hi is None else hi))).to(x.dtype)
    return _kinked(x, sd, inside, 1.0, (lo, hi))


def _leaky_sd(x: torch.Tensor, sd: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    a = a.abs() if isinstance(a, torch.Tensor) else abs(a)
    inside = torch.where(x > 0, torch.ones_like(x), a * torch.ones_like(x))
    big = torch.maximum(torch.ones_like(x), a * torch.ones_like(x))
    return _kinked(x, sd, inside, big, (0.0,))


def _norm_sd(x: torch.Tensor, sd: torch.Tensor, dims: tuple[int, ...], eps: float,
             gamma: torch.Tensor | None) -> torch.Tensor:
    sigma = (x.var(dim=dims, unbiased=False, keepdim=True) + eps).sqrt()
    out = sd / sigma
    return out if gamma is None else out * gamma.abs()


class _Propagator(fx.Interpreter):
    """Runs the float network; ``self.err[node]`` is each value's :class:`Err` (``None``: unchanged)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.err: dict[str, Err | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        ea = fx.node.map_arg(n.args, lambda a: self.err.get(a.name))
        ek = fx.node.map_arg(n.kwargs, lambda a: self.err.get(a.name))
        qconv = n.op == "call_module" and isinstance(self.module.get_submodule(str(n.target)), QUANT_CONV_TYPES)
        if qconv:  # the float network: the conv with its float weight and input
            e = ea[0] if ea and isinstance(ea[0], Err) else None
            value, self.err[n.name] = self._qconv(n, self.module.get_submodule(str(n.target)), args[0], e)
            return value
        value = super().run_node(n)
        if n.op == "output":  # an Err, or a list / tuple / dict of them (and None) for several outputs
            self.err[n.name] = ea[0] if ea else None
        elif any(isinstance(e, Err) for e in _leaves((ea, ek))):
            self.err[n.name] = self._propagate(n, args, kwargs, ea, ek, value)
        else:
            self.err[n.name] = None
        return value

    def _fail(self, n: fx.Node, what: str) -> Unbounded:
        return Unbounded(f"node '{n.name}' ({what}) has no rule for rounding noise")

    @staticmethod
    def _sub(args: Any, errs: Any, part: str) -> Any:
        """``args`` with every value that has an :class:`Err` replaced by its ``sys`` (``part="sys"``) or by its
        noise, zeros for float tensors without one (``part="sd"``)."""
        if isinstance(errs, Err):
            got = getattr(errs, part)
            if part == "sd" and got is None:
                return _Propagator._sub(args, None, part)
            return got
        if isinstance(args, (list, tuple)):
            errs = errs if isinstance(errs, (list, tuple)) else [None] * len(args)
            out = [_Propagator._sub(a, e, part) for a, e in zip(args, errs)]
            return type(args)(out) if isinstance(args, tuple) else out
        if isinstance(args, dict):
            errs = errs if isinstance(errs, dict) else {}
            return {k: _Propagator._sub(v, errs.get(k), part) for k, v in args.items()}
        if part == "sd" and isinstance(args, torch.Tensor) and args.is_floating_point():
            return torch.zeros_like(args)
        return args

    def _call(self, n: fx.Node, args: Any, kwargs: Any) -> Any:
        if n.op == "call_module":
            return self.module.get_submodule(str(n.target))(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)

    # -- the systematic network, run; noise by rules ------------------------------------------------------
    def _propagate(self, n: fx.Node, args: tuple, kwargs: dict, ea: Any, ek: Any, value: Any) -> Err | None:
        sys_args, sys_kwargs = self._sub(args, ea, "sys"), self._sub(kwargs, ek, "sys")
        sys_value = self._call(n, sys_args, sys_kwargs)
        noisy = _has_sd([e.sd for e in _leaves((ea, ek)) if isinstance(e, Err)])
        if not noisy:
            return Err(sys_value, None)
        floats = [t for t in _leaves(value) if isinstance(t, torch.Tensor)]
        if not any(t.is_floating_point() for t in floats):
            if floats:
                raise self._fail(n, f"{getattr(n.target, '__name__', n.target)} gives a non-float tensor from a "
                                    "value with rounding noise")
            return None  # shapes, sizes, dtypes: not moved by noise
        sd = self._noise(n, sys_args, sys_kwargs, ea, ek, sys_value)
        return Err(sys_value, sd)

    def _qconv(self, n: fx.Node, mod: nn.Module, x: torch.Tensor, e: Err | None) -> tuple[torch.Tensor, Err]:
        """(the float conv's output, its systematic counterpart and noise)."""
        if isinstance(mod, nn.ConvTranspose2d):
            out_pad = mod._output_padding(x, None, list(mod.stride), list(mod.padding), list(mod.kernel_size), 2,
                                          list(mod.dilation))

            def conv(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
                return F.conv_transpose2d(t, weight, bias, mod.stride, mod.padding, out_pad, mod.groups, mod.dilation)
        else:
            def conv(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
                return mod._conv_forward(t, weight, bias)
        w, wq = mod.weight, mod.quantized_weight()
        if mod.weight_quant is not None:
            half_step = float(w.detach().abs().max()) / (2 * (2 ** (mod.weight_quant.bits - 1) - 1))
            moved = float((wq - w).abs().max())
            if moved > half_step * 1.01 + 1e-12:  # 1 %: float rounding of w / s and back
                raise VerificationError(f"fake-quant conv '{n.target}': its weight quantizer moved a weight by "
                                        f"{moved:.3g}, more than half a step of its {mod.weight_quant.bits}-bit grid "
                                        f"({half_step:.3g})")
        xs = x if e is None else e.sys
        sd = None if e is None else e.sd
        aq = mod.input_quant
        if aq is not None:
            s = aq.scale().to(x.dtype)
            lo, hi = float(aq.qmin * s), float(aq.qmax * s)
            if sd is not None:
                sd = _clamp_sd(xs, sd, lo, hi)
            xs = xs.clamp(lo, hi)
            sd = _rss(sd, (s / _SQRT12).expand_as(xs))
        sys_out = conv(xs, wq, mod.bias)
        sd_out = None if sd is None else conv(sd ** 2, wq ** 2).clamp_min(0).sqrt()
        return conv(x, w, mod.bias), Err(sys_out, sd_out)

    def _noise(self, n: fx.Node, args: tuple, kwargs: dict, ea: Any, ek: Any, value: Any) -> Any:
        """The noise of ``n``'s result; ``args`` / ``value`` are the systematic network's."""
        sds = [e.sd if isinstance(e, Err) else None for e in (ea if isinstance(ea, (list, tuple)) else [ea])]
        sd0 = sds[0] if sds else None
        x = args[0] if args else None
        if n.op == "call_module":
            mod = self.module.get_submodule(str(n.target))
            if any(_has_sd(s) for s in sds[1:]) or _has_sd([e.sd for e in _leaves(ek) if isinstance(e, Err)]):
                raise self._fail(n, f"{type(mod).__name__} with noise in an argument other than its input")
            return self._module_noise(n, mod, x, sd0, value)
        if n.op == "call_function":
            return self._function_noise(n, n.target, args, kwargs, ea, ek, sds, value)
        return self._method_noise(n, str(n.target), args, kwargs, ea, ek, sds, value)

    def _structural(self, fn: Callable, args: Any, kwargs: Any, ea: Any, ek: Any) -> Any:
        return fn(*self._sub(args, ea, "sd"), **self._sub(kwargs, ek, "sd"))

    @staticmethod
    def _linear(sd: torch.Tensor, apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                w: torch.Tensor) -> torch.Tensor:
        return apply(sd ** 2, w ** 2).clamp_min(0).sqrt()

    def _module_noise(self, n: fx.Node, mod: nn.Module, x: torch.Tensor, sd: torch.Tensor, value: Any) -> Any:
        plain = not_plain_reason(mod) is None
        t = type(mod)
        if plain and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self._linear(sd, lambda u, w: mod._conv_forward(u, w, None), mod.weight)
        if plain and isinstance(mod, nn.ConvTranspose2d):
            pad = mod._output_padding(x, None, list(mod.stride), list(mod.padding), list(mod.kernel_size), 2,
                                      list(mod.dilation))
            return self._linear(sd, lambda u, w: F.conv_transpose2d(u, w, None, mod.stride, mod.padding, pad,
                                                                    mod.groups, mod.dilation), mod.weight)
        if plain and isinstance(mod, nn.Linear):
            return self._linear(sd, lambda u, w: F.linear(u, w), mod.weight)
        if t is nn.Dropout and not mod.training or t in _STRUCTURAL_MODULES:
            return mod(sd)
        if isinstance(mod, ChannelMask):  # y[:, c] = x[:, c] * scale: a diagonal linear map
            return mod(sd).abs()
        if t in (nn.MaxPool2d, nn.AdaptiveMaxPool2d):  # the max moves by at most the largest noise in a window
            return mod(sd)
        if t is nn.ReLU:
            return _clamp_sd(x, sd, 0.0, None)
        if t is nn.ReLU6:
            return _clamp_sd(x, sd, 0.0, 6.0)
        if t is nn.Hardtanh:
            return _clamp_sd(x, sd, mod.min_val, mod.max_val)
        if t is nn.LeakyReLU:
            return _leaky_sd(x, sd, float(mod.negative_slope))
        if t is nn.PReLU:
            w = mod.weight.detach()
            a = w.reshape([1, -1] + [1] * (x.dim() - 2)) if w.numel() > 1 else w
            return _leaky_sd(x, sd, a)
        if t in (nn.ELU, nn.CELU):
            return _leaky_sd(x, sd, float(mod.alpha))  # slope alpha * exp(x) <= alpha below 0
        if t in _SMOOTH_MODULES or t in (nn.Hardswish, nn.Hardsigmoid):
            return sd * _slope(mod, x)
        if t is nn.Upsample:
            return self._resample(n, mod.mode, mod, sd)
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
                            nn.LayerNorm)):
            return self._normalization(mod, x, sd)
        if t is nn.Softmax:
            return self._softmax(value, sd, mod.dim)
        raise self._fail(n, t.__name__)

    @staticmethod
    def _normalization(mod: nn.Module, x: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        bshape = [1, -1] + [1] * (x.dim() - 2)
        gamma = getattr(mod, "weight", None)
        gamma = None if gamma is None else gamma.detach()
        if getattr(mod, "track_running_stats", False) and not mod.training and mod.running_var is not None:
            scale = (mod.running_var + mod.eps).rsqrt()
            if gamma is not None:
                scale = scale * gamma.abs()
            return sd * scale.reshape(bshape)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return _norm_sd(x, sd, (0,) + tuple(range(2, x.dim())), mod.eps,
                            None if gamma is None else gamma.reshape(bshape))
        if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
            return _norm_sd(x, sd, tuple(range(2, x.dim())), mod.eps, None if gamma is None else gamma.reshape(bshape))
        if isinstance(mod, nn.GroupNorm):
            g, shape = mod.num_groups, x.shape
            out = _norm_sd(x.reshape(shape[0], g, -1), sd.reshape(shape[0], g, -1), (2,), mod.eps, None)
            out = out.reshape(shape)
            return out if gamma is None else out * gamma.abs().reshape(bshape)
        dims = tuple(range(x.dim() - len(mod.normalized_shape), x.dim()))
        return _norm_sd(x, sd, dims, mod.eps, gamma)

    @staticmethod
    def _softmax(p: torch.Tensor, sd: torch.Tensor, dim: int) -> torch.Tensor:
        return p * (sd + (p * sd).sum(dim=dim, keepdim=True))

    def _resample(self, n: fx.Node, mode: str, fn: Callable, sd: torch.Tensor) -> torch.Tensor:
        if mode in _LINEAR_RESAMPLE:
            return fn(sd)
        if mode == "bicubic":  # negative weights: the largest noise x the largest sum of |weights| (1.25^2)
            return torch.full_like(fn(sd), float(sd.max()) * 1.5625)
        raise self._fail(n, f"interpolation mode {mode!r}")

    @staticmethod
    def _product(a: Any, b: Any, sa: Any, sb: Any, op: Callable) -> torch.Tensor:
        if not isinstance(a, torch.Tensor):
            return abs(a) * sb
        if not isinstance(b, torch.Tensor):
            return sa * abs(b)
        out = None
        if sb is not None:
            out = op(a.abs(), sb)
        if sa is not None:
            out = op(sa, b.abs()) if out is None else out + op(sa, b.abs())
        return out

    def _function_noise(self, n: fx.Node, fn: Any, args: tuple, kwargs: dict, ea: Any, ek: Any, sds: list,
                        value: Any) -> Any:
        sd0 = sds[0] if sds else None
        sd1 = sds[1] if len(sds) > 1 else None
        x = args[0] if args else None
        if fn in _STRUCTURAL_FUNCS:
            return self._structural(fn, args, kwargs, ea, ek)
        if fn in (F.max_pool2d, F.adaptive_max_pool2d):
            return fn(sd0, *args[1:], **kwargs)
        if fn is F.interpolate:
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            return self._resample(n, mode, lambda t: fn(t, *args[1:], **kwargs), sd0)
        if sd0 is None and fn not in (operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul,
                                      operator.matmul, torch.matmul, torch.bmm):
            raise self._fail(n, f"{getattr(fn, '__name__', fn)} with noise in an argument other than its input")
        if fn in (torch.relu, F.relu):
            return _clamp_sd(x, sd0, 0.0, None)
        if fn in (torch.clamp, torch.clip, F.hardtanh, F.relu6):
            default_lo = 0.0 if fn is F.relu6 else -1.0 if fn is F.hardtanh else None
            default_hi = 6.0 if fn is F.relu6 else 1.0 if fn is F.hardtanh else None
            lo = kwargs.get("min", kwargs.get("min_val", args[1] if len(args) > 1 else default_lo))
            hi = kwargs.get("max", kwargs.get("max_val", args[2] if len(args) > 2 else default_hi))
            if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
                raise self._fail(n, "clamp with tensor bounds")
            return _clamp_sd(x, sd0, lo, hi)
        if fn is F.leaky_relu:
            return _leaky_sd(x, sd0, float(kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)))
        if fn in _SMOOTH_FUNCS:
            return sd0 * _slope(lambda t: fn(t, *args[1:], **kwargs), x)
        if fn in (operator.neg, torch.neg, torch.abs, operator.pos):
            return sd0
        if fn in (operator.add, torch.add, operator.iadd, operator.sub, torch.sub, operator.isub):
            alpha = abs(float(kwargs.get("alpha", 1.0)))
            return _rss(sd0, None if sd1 is None else sd1 * alpha)  # two branches' rounding: independent
        if fn in (operator.mul, torch.mul, operator.imul):
            return self._product(args[0], args[1], sd0, sd1, lambda u, v: u * v)
        if fn in (operator.truediv, torch.div) and sd1 is None:
            d = args[1]
            return sd0 / (d.abs() if isinstance(d, torch.Tensor) else abs(d))
        if fn in (torch.matmul, operator.matmul, torch.bmm):
            return self._product(args[0], args[1], sd0, sd1, lambda u, v: u @ v)
        if fn in (F.softmax, torch.softmax):
            return self._softmax(value, sd0, kwargs.get("dim", args[1] if len(args) > 1 else None))
        raise self._fail(n, getattr(fn, "__name__", repr(fn)))

    def _method_noise(self, n: fx.Node, name: str, args: tuple, kwargs: dict, ea: Any, ek: Any, sds: list,
                      value: Any) -> Any:
        sd0 = sds[0] if sds else None
        sd1 = sds[1] if len(sds) > 1 else None
        if name in _STRUCTURAL_METHODS:
            return self._structural(lambda t, *a, **k: getattr(t, name)(*a, **k), args, kwargs, ea, ek)
        x = args[0]
        if name in ("add", "__add__", "__radd__", "sub", "__sub__", "__rsub__"):
            return _rss(sd0, sd1)
        if name in ("mul", "__mul__", "__rmul__"):
            return self._product(args[0], args[1], sd0, sd1, lambda u, v: u * v)
        if sd0 is None:
            raise self._fail(n, f"method .{name}() with noise in an argument other than its tensor")
        if name == "relu":
            return _clamp_sd(x, sd0, 0.0, None)
        if name in ("clamp", "clip", "clamp_min", "clamp_max"):
            lo = kwargs.get("min", args[1] if len(args) > 1 and name != "clamp_max" else None)
            hi = kwargs.get("max", args[2] if len(args) > 2 else (args[1] if name == "clamp_max" else None))
            return _clamp_sd(x, sd0, lo, hi)
        if name in _SMOOTH_METHODS:
            return sd0 * _slope(lambda t: getattr(t, name)(), x)
        if name in ("neg", "abs"):
            return sd0
        if name in ("div", "__truediv__") and sd1 is None:
            d = args[1]
            return sd0 / (d.abs() if isinstance(d, torch.Tensor) else abs(d))
        if name == "softmax":
            return self._softmax(value, sd0, kwargs.get("dim", args[1] if len(args) > 1 else None))
        raise self._fail(n, f"method .{name}()")


def _output_rows(value: Any, err: Any) -> list[tuple[Any, Any, Any]]:
    """``(float value, systematic value, noise or None)`` for every leaf of a graph output (a tensor, or lists /
    tuples / dicts of them), walking the value and its error structure together."""
    if isinstance(err, Err):
        sds = _leaves(err.sd) if err.sd is not None else None
        vals, syss = _leaves(value), _leaves(err.sys)
        return [(v, ys, None if sds is None else sds[i]) for i, (v, ys) in enumerate(zip(vals, syss))]
    if isinstance(value, (list, tuple)):
        errs = err if isinstance(err, (list, tuple)) else [None] * len(value)
        return [row for v, e in zip(value, errs) for row in _output_rows(v, e)]
    if isinstance(value, dict):
        errs = err if isinstance(err, dict) else {}
        return [row for k, v in value.items() for row in _output_rows(v, errs.get(k))]
    return [(value, value, None)]  # untouched by quantization


@torch.no_grad()
def quantization_error_bound(gm: fx.GraphModule, *inputs: torch.Tensor) -> tuple[float, str | None]:
    """``(bound, reason)``: on ``inputs``, ``max|gm(x) - float(gm)(x)| <= bound * max|float(gm)(x)|`` under the
    model of the module docstring, where ``float(gm)`` is ``gm`` with every fake quantizer bypassed (the
    network ``insert-fake-quant`` started from). ``bound`` is ``inf`` with a ``reason`` when noise reaches an
    op without a rule or is too large for its model. Raises
    :class:`~gcompiler.errors.VerificationError` when a weight quantizer moves a weight by more than half a step.
    """
    prop = _Propagator(gm)
    try:
        out = prop.run(*inputs)
    except Unbounded as exc:
        return math.inf, exc.reason
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    rows = [(y, ys, sd) for y, ys, sd in _output_rows(out, prop.err.get(out_node.name))
            if isinstance(y, torch.Tensor) and y.is_floating_point() and y.numel()]
    if not rows:
        return ROUNDING_SLACK, None
    scale = max(float(y.abs().max()) for y, _, _ in rows)
    worst, noise = 0.0, 0.0
    for y, ys, sd in rows:
        band = (ys - y).abs()
        if isinstance(sd, torch.Tensor):
            band = band + NOISE_SIGMAS * sd
            noise = max(noise, float(sd.max()))
        worst = max(worst, float(band.max()))
    if not math.isfinite(worst):
        return math.inf, "the propagated noise overflowed"
    if noise > NOISE_LIMIT * scale:
        return math.inf, (f"rounding noise of about {noise / max(scale, 1e-12):.3g} x max|y| (one standard "
                          f"deviation) on these inputs: above {NOISE_LIMIT:g} x max|y| its linear model is not valid "
                          "(too few activation bits)")
    return worst / max(scale, 1e-12) + ROUNDING_SLACK, None
