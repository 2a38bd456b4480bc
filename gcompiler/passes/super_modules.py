"""The super modules of ``make-supernet``: subclasses of torch's conv / linear / norm modules that compute
with a slice of their channels.

``_to_super(mod)`` returns an instance of ``Super<Class>`` (e.g. ``SuperConv2d``, a subclass of
``nn.Conv2d`` created once per base class) sharing ``mod``'s parameters, buffers and attributes, so the
state-dict keys do not change. ``set_slices(out, in)`` selects the active output / input channels: ``None``
(all), an int ``k`` (the first ``k``) or a LongTensor of channel indices. At full width (both ``None``) the
forward is the base class's own, so the result is bit-identical; otherwise it is the same functional call
(``F.conv2d``, ``F.batch_norm`` ...) on the sliced tensors. ``count_macs`` reports the active MACs to the
profiler. ``_plain_copy`` builds an ordinary module of the base class holding copies of the active slices.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PassError
from ..fx.trace import register_leaf

__all__ = ["SuperModule", "Slice"]

# index state of a super module: None (all channels), an int k (the first k), or a LongTensor of channels
Slice = Any


def _take(t: torch.Tensor | None, dim: int, sl: Slice) -> torch.Tensor | None:
    if t is None or sl is None:
        return t
    if isinstance(sl, int):
        return t.narrow(dim, 0, sl)
    return t.index_select(dim, sl.to(t.device))


def _count(sl: Slice, full: int) -> int:
    if sl is None:
        return full
    return sl if isinstance(sl, int) else int(sl.numel())


class SuperModule:
    """Mixin of the super modules: ``_sl_out`` / ``_sl_in`` hold the active channel slices."""

    _sl_out: Slice = None
    _sl_in: Slice = None

    def set_slices(self, out: Slice, inp: Slice) -> None:
        self._sl_out, self._sl_in = out, inp

    def full_width(self) -> bool:
        return self._sl_out is None and self._sl_in is None


def _conv_fn(mod: nn.Module):
    return {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[_base(mod)]


def _convt_fn(mod: nn.Module):
    return {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
            nn.ConvTranspose3d: F.conv_transpose3d}[_base(mod)]


def _base(mod: nn.Module) -> type:
    return getattr(type(mod), "_super_base", type(mod))


class _SuperConv(SuperModule):
    """Forward of a sliced ``nn.ConvNd`` (ordinary or depthwise), as ``nn.ConvNd._conv_forward`` computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return _base(self).forward(self, x)
        depthwise = self.groups > 1
        w = _take(self.weight, 0, self._sl_out)
        if not depthwise:
            w = _take(w, 1, self._sl_in)
        w = w.contiguous()
        b = _take(self.bias, 0, self._sl_out)
        groups = _count(self._sl_in, self.in_channels) if depthwise else 1
        fn = _conv_fn(self)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return fn(x, w, b, self.stride, tuple(0 for _ in self.kernel_size), self.dilation, groups)
        return fn(x, w, b, self.stride, self.padding, self.dilation, groups)

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        if output_shape is None:
            return 0
        per_out = 1 if self.groups > 1 else _count(self._sl_in, self.in_channels)
        return math.prod(output_shape) * per_out * math.prod(self.kernel_size)


class _SuperConvTranspose(SuperModule):
    """Forward of a sliced ``nn.ConvTransposeNd`` (groups = 1; weight ``[in, out, k...]``)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return _base(self).forward(self, x, output_size)
        w = _take(_take(self.weight, 0, self._sl_in), 1, self._sl_out).contiguous()
        b = _take(self.bias, 0, self._sl_out)
        nd = len(self.kernel_size)
        op = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, nd, self.dilation)
        return _convt_fn(self)(x, w, b, self.stride, self.padding, op, self.groups, self.dilation)

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        if output_shape is None:
            return 0
        return math.prod(output_shape) * _count(self._sl_in, self.in_channels) * math.prod(self.kernel_size)


class _SuperLinear(SuperModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return nn.Linear.forward(self, x)
        w = _take(_take(self.weight, 0, self._sl_out), 1, self._sl_in).contiguous()
        return F.linear(x, w, _take(self.bias, 0, self._sl_out))

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        return 0 if output_shape is None else math.prod(output_shape) * _count(self._sl_in, self.in_features)


class _SuperBatchNorm(SuperModule):
    """``_BatchNorm.forward`` on the active channels; running statistics are updated in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return _base(self).forward(self, x)
        sl = self._sl_out
        eaf = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            eaf = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        rm = _take(self.running_mean, 0, sl) if use_stats else None
        rv = _take(self.running_var, 0, sl) if use_stats else None
        y = F.batch_norm(x, rm, rv, _take(self.weight, 0, sl), _take(self.bias, 0, sl), bn_training, eaf, self.eps)
        if bn_training and rm is not None and not isinstance(sl, int):  # index_select copied: write back
            with torch.no_grad():
                self.running_mean.index_copy_(0, sl.to(rm.device), rm)
                self.running_var.index_copy_(0, sl.to(rv.device), rv)
        return y


class _SuperInstanceNorm(SuperModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return _base(self).forward(self, x)
        sl = self._sl_out
        rm = _take(self.running_mean, 0, sl)
        rv = _take(self.running_var, 0, sl)
        y = F.instance_norm(x, rm, rv, _take(self.weight, 0, sl), _take(self.bias, 0, sl),
                            self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
        if rm is not None and self.training and not isinstance(sl, int):
            with torch.no_grad():
                self.running_mean.index_copy_(0, sl.to(rm.device), rm)
                self.running_var.index_copy_(0, sl.to(rv.device), rv)
        return y


class _SuperGroupNorm(SuperModule):
    """GroupNorm with one channel per group (the only kind the channel analysis lets through)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return nn.GroupNorm.forward(self, x)
        sl = self._sl_out
        return F.group_norm(x, _count(sl, self.num_channels), _take(self.weight, 0, sl), _take(self.bias, 0, sl),
                            self.eps)


class _SuperPReLU(SuperModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.full_width():
            return nn.PReLU.forward(self, x)
        return F.prelu(x, _take(self.weight, 0, self._sl_out))


_MIXINS: dict[type, type] = {}
for _b in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    _MIXINS[_b] = _SuperConv
for _b in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    _MIXINS[_b] = _SuperConvTranspose
_MIXINS[nn.Linear] = _SuperLinear
for _b in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    _MIXINS[_b] = _SuperBatchNorm
for _b in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    _MIXINS[_b] = _SuperInstanceNorm
_MIXINS[nn.GroupNorm] = _SuperGroupNorm
_MIXINS[nn.PReLU] = _SuperPReLU

_SUPER_CLASSES: dict[type, type] = {}


def _super_class(base: type) -> type:
    cls = _SUPER_CLASSES.get(base)
    if cls is None:
        cls = type(f"Super{base.__name__}", (_MIXINS[base], base), {"_super_base": base, "__module__": __name__})
        register_leaf(cls)
        _SUPER_CLASSES[base] = cls
    return cls


def _to_super(mod: nn.Module) -> nn.Module:
    """A super module sharing ``mod``'s parameters, buffers and attributes (same state-dict keys)."""
    cls = _super_class(type(mod))
    new = cls.__new__(cls)
    new.__dict__.update(mod.__dict__)
    new._sl_out = None
    new._sl_in = None
    return new



def _plain_copy(mod: nn.Module) -> nn.Module:
    """A plain module of the super module's base class holding copies of the active slices."""
    base = _base(mod)
    out_sl, in_sl = mod._sl_out, mod._sl_in
    dev, dtype = None, None
    for p in list(mod.parameters(recurse=False)) + [b for b in mod.buffers(recurse=False) if b is not None]:
        dev = p.device
        if p.is_floating_point():
            dtype = p.dtype
            break
    kw = {"device": dev, "dtype": dtype}
    if issubclass(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = mod.groups > 1
        cin, cout = _count(in_sl, mod.in_channels), _count(out_sl, mod.out_channels)
        new = base(cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                   groups=cin if depthwise else 1, bias=mod.bias is not None, padding_mode=mod.padding_mode, **kw)
        w = _take(mod.weight, 0, out_sl)
        if not depthwise:
            w = _take(w, 1, in_sl)
    elif issubclass(base, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        cin, cout = _count(in_sl, mod.in_channels), _count(out_sl, mod.out_channels)
        new = base(cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                   output_padding=mod.output_padding, groups=1, bias=mod.bias is not None, dilation=mod.dilation,
                   padding_mode=mod.padding_mode, **kw)
        w = _take(_take(mod.weight, 0, in_sl), 1, out_sl)
    elif base is nn.Linear:
        new = base(_count(in_sl, mod.in_features), _count(out_sl, mod.out_features), bias=mod.bias is not None, **kw)
        w = _take(_take(mod.weight, 0, out_sl), 1, in_sl)
    elif issubclass(base, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        n = _count(out_sl, mod.num_features)
        new = base(n, eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                   track_running_stats=mod.track_running_stats, **kw)
        for name in ("running_mean", "running_var"):
            buf = getattr(mod, name, None)
            if buf is not None:
                getattr(new, name).copy_(_take(buf, 0, out_sl))
        if getattr(mod, "num_batches_tracked", None) is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(mod.num_batches_tracked)
        w = _take(mod.weight, 0, out_sl) if mod.weight is not None else None
    elif base is nn.GroupNorm:
        n = _count(out_sl, mod.num_channels)
        new = base(n, n, eps=mod.eps, affine=mod.affine, **kw)
        w = _take(mod.weight, 0, out_sl) if mod.weight is not None else None
    elif base is nn.PReLU:
        new = base(_count(out_sl, mod.num_parameters), **kw)
        w = _take(mod.weight, 0, out_sl)
    else:  # pragma: no cover - _MIXINS lists every base
        raise PassError(f"cannot extract a plain module from {type(mod).__name__}")
    with torch.no_grad():
        if w is not None:
            new.weight.copy_(w)
        b = getattr(mod, "bias", None)
        if isinstance(b, torch.Tensor) and getattr(new, "bias", None) is not None:
            new.bias.copy_(_take(b, 0, out_sl))
    new.train(mod.training)
    for p_new, p_old in zip(new.parameters(), mod.parameters(recurse=False)):
        p_new.requires_grad_(p_old.requires_grad)
    return new
