"""Fake-quant convolution leaves: ``QConv2d`` and ``QConvTranspose2d``.

Each is a subclass of the torch module it replaces; :meth:`from_float` *shares* that module's ``weight`` /
``bias`` parameters (state-dict keys stay ``<path>.weight`` / ``<path>.bias``), so training, the profiler's
MAC count and any pass that understands convolutions keep working. It adds two optional quantizers:

* ``input_quant``: an :class:`~gcompiler.quant.quantizers.ActFakeQuant` applied to the conv input
  (``None`` for the image input of the first conv and for layers whose activations stay float);
* ``weight_quant``: a :class:`~gcompiler.quant.quantizers.WeightFakeQuant` applied to the weight on every
  forward (``None`` keeps float weights).

``forward(x) = conv(input_quant(x), weight_quant(weight), bias)``, with the straight-through gradients of
:mod:`gcompiler.quant.quantizers`. ``weight_bits`` (32 when the weight is float) feeds
``Profile.size_bytes(bits=None)``; ``count_params()`` counts weight and bias only (a learnable clip is a
training hyper-parameter, not model storage). Both classes are trace leaves and saveable with
:func:`gcompiler.serialize.save` (the quantizer configuration is part of the constructor arguments, the
clip value part of the state dict).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fx.trace import register_leaf
from ..serialize import register_module_type
from .quantizers import ActFakeQuant, ActRange, WeightFakeQuant


class _QuantConvMixin:
    weight: nn.Parameter
    bias: nn.Parameter | None
    input_quant: ActFakeQuant | None
    weight_quant: WeightFakeQuant | None

    def _init_quant(self, weight_bits: int | None, per_channel: bool, act_bits: int | None, act_range: ActRange,
                    act_clip: float, learn_clip: bool, transposed: bool) -> None:
        self.weight_quant = (WeightFakeQuant(weight_bits, per_channel=per_channel, transposed=transposed,
                                             groups=self.groups)  # type: ignore[attr-defined]
                             if weight_bits is not None else None)
        self.input_quant = (ActFakeQuant(act_bits, act_range, act_clip, learn_clip=learn_clip)
                            if act_bits is not None else None)

    @property
    def weight_bits(self) -> int:
        """Bit width the weight is stored at (32 when not quantized)."""
        return self.weight_quant.bits if self.weight_quant is not None else 32

    @property
    def act_bits(self) -> int | None:
        """Bit width of the input activation (``None`` when the input stays float)."""
        return self.input_quant.bits if self.input_quant is not None else None

    def count_params(self) -> int:
        return self.weight.numel() + (self.bias.numel() if self.bias is not None else 0)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight) if self.weight_quant is not None else self.weight

    def _quant_args(self) -> dict[str, Any]:
        wq, aq = self.weight_quant, self.input_quant
        return {"weight_bits": wq.bits if wq is not None else None,
                "per_channel": wq.per_channel if wq is not None else False,
                "act_bits": aq.bits if aq is not None else None,
                "act_range": aq.act_range if aq is not None else "unsigned",
                "act_clip": float(aq.clip.detach()) if aq is not None else 4.0,
                "learn_clip": aq.learn_clip if aq is not None else False}

    def _share(self, src: nn.Module) -> None:
        self.weight = src.weight
        self.bias = src.bias
        self.train(src.training)


@register_module_type
@register_leaf
class QConv2d(_QuantConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input and weight (see the module docstring).

    ``weight_bits=None`` / ``act_bits=None`` leave that part in float.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 weight_bits: int | None = 8, per_channel: bool = False, act_bits: int | None = 8,
                 act_range: ActRange = "unsigned", act_clip: float = 4.0, learn_clip: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_quant(weight_bits, per_channel, act_bits, act_range, act_clip, learn_clip, transposed=False)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **quant: Any) -> "QConv2d":
        """Wrap ``conv`` (sharing its parameters); ``quant`` are the keyword options of the constructor."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device="meta", **quant)
        q._share(conv)
        return q

    def constructor_args(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "groups": self.groups, "bias": self.bias is not None,
                "padding_mode": self.padding_mode, **self._quant_args()}

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this module's parameters (quantizers dropped)."""
        c = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                      self.dilation, self.groups, self.bias is not None, self.padding_mode, device="meta")
        c.weight, c.bias = self.weight, self.bias
        return c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


@register_module_type
@register_leaf
class QConvTranspose2d(_QuantConvMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with fake-quantized input and weight; weights quantize per output channel (dim 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", *, weight_bits: int | None = 8, per_channel: bool = False,
                 act_bits: int | None = 8, act_range: ActRange = "unsigned", act_clip: float = 4.0,
                 learn_clip: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device=device, dtype=dtype)
        self._init_quant(weight_bits, per_channel, act_bits, act_range, act_clip, learn_clip, transposed=True)

    @classmethod
    def from_float(cls, conv: nn.ConvTranspose2d, **quant: Any) -> "QConvTranspose2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.output_padding, conv.groups, conv.bias is not None, conv.dilation, conv.padding_mode,
                device="meta", **quant)
        q._share(conv)
        return q

    def constructor_args(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "output_padding": self.output_padding, "groups": self.groups, "bias": self.bias is not None,
                "dilation": self.dilation, "padding_mode": self.padding_mode, **self._quant_args()}

    def to_float(self) -> nn.ConvTranspose2d:
        c = nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                               self.output_padding, self.groups, self.bias is not None, self.dilation,
                               self.padding_mode, device="meta")
        c.weight, c.bias = self.weight, self.bias
        return c

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, list(self.stride), list(self.padding),
                                              list(self.kernel_size), 2, list(self.dilation))
        if self.input_quant is not None:
            x = self.input_quant(x)
        return F.conv_transpose2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)


QUANT_CONV_TYPES = (QConv2d, QConvTranspose2d)
