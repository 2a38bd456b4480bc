"""Integer leaf modules: the reference executor of quantized graphs (the oracle for the Triton kernels).

``convert-to-int`` turns a fake-quant graph (``QConv2d`` / ``QConvTranspose2d``) into a graph of these modules.
They run on CPU in PyTorch with *exact* integer accumulation and compute what the fake-quant graph computes up
to float rounding. Module format (everything a lowering needs; all tensors are buffers, on the module's device):

``QuantizeActivation`` (float tensor -> integer tensor)
    ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` cast to :attr:`int_dtype`, the narrowest of
    ``uint8`` / ``int8`` / ``int16`` / ``int32`` that holds ``[qmin, qmax]``. ``round`` is half-to-even
    (``torch.round``, like ONNX ``QuantizeLinear``); the division is a float32 division by ``scale``.
    Buffers: ``scale`` float32 ``[1]``. Attributes: ``zero_point``, ``qmin``, ``qmax`` (ints).
    GS unsigned activations at ``m`` bits: ``zero_point = 0``, ``[qmin, qmax] = [0, 2^m - 1]``, uint8 for m <= 8;
    signed symmetric: ``zero_point = 0``, ``[-(2^(m-1) - 1), 2^(m-1) - 1]``, int8 for m <= 8.
    The real value of an integer is ``(q - zero_point) * scale``.

``IntConv2d`` (integer input -> float output; or float input for a *weight-only* layer)
    Attributes: ``in_channels``, ``out_channels``, ``kernel_size`` (kh, kw), ``stride`` (sh, sw),
    ``dilation`` (dh, dw), ``groups``, ``padding`` = (left, right, top, bottom) and ``padding_mode`` in
    ``zeros`` / ``reflect`` / ``replicate``: the input is padded by that many pixels in that mode *before*
    a padding-free convolution (a ``ReflectionPad2d`` that fed the conv is absorbed here by ``convert-to-int``;
    reflect means PyTorch's ``ReflectionPad2d``, edge pixel not repeated). Zero padding pads with the
    *real* value 0, i.e. the integer ``input_zero_point``. ``weight_bits``; ``input_quantized`` (False: weight-only
    layer, float input, e.g. the first conv on the RGB image); ``input_zero_point`` (int).

    Buffers:

    * ``weight_q``: the integer weights, PyTorch layout ``[C_out, C_in/groups, kh, kw]``, int8 for
      ``weight_bits`` 5..8, int16 for 9..16; for ``weight_bits <= 4`` *packed int4*: uint8 of length
      ``ceil(numel / 2)``, element ``2i`` of the flattened (row-major) weight in the low nibble and ``2i+1`` in the
      high nibble, each a 4-bit two's complement value. :meth:`int_weight` returns the unpacked int8 tensor and
      :meth:`weight_ohwi` the ``[C_out, kh, kw, C_in/groups]`` layout an NHWC implicit GEMM wants (BRIEF 6).
      Weights are symmetric: integers in ``[-L, L]``, ``L = 2^(weight_bits-1) - 1``, no weight zero point.
    * ``weight_scale``: float32 ``[C_out]`` (per output channel; a per-tensor scale is repeated).
    * ``input_scale``: float32 ``[1]`` (1.0 for a weight-only layer).
    * ``out_scale``: float32 ``[C_out]`` = ``input_scale * weight_scale`` (rounded to float32 once).
    * ``bias``: float32 ``[C_out]`` or absent (``has_bias``).

    Computation (``input_quantized``)::

        acc[n, c, y, x] = sum_{ci, i, j} W_q[c, ci, i, j] * (X_pad[n, g(c) * C_in/g + ci, y*sh + i*dh, x*sw + j*dw]
                                                          - input_zero_point)           # exact integer
        out = float32(acc) * out_scale[c] + bias[c]                                     # float32 epilogue

    ``acc`` fits int32 for weight and activation bits <= 8 (|acc| <= 127 * 255 * K); a kernel computing
    ``sum W_q * X_q`` on the raw integers subtracts ``input_zero_point * sum_k W_q[c, k]`` per channel
    (exact when padding pixels hold ``input_zero_point``). :meth:`accumulate` returns ``acc`` as int32 (int64 when
    it would not fit). The reference computes it with a float64 convolution of the integer-valued tensors, which
    is exact while ``|acc| < 2^53``. Weight-only layers compute
    ``conv(pad(x), float32(W_q) * weight_scale[c]) + bias`` in float32. No activation, norm or residual add is
    part of the module: the float ops that follow in the graph (InstanceNorm, ReLU, add, tanh, the next
    ``QuantizeActivation``) are ordinary nodes a lowering may fuse into its epilogue.

``IntConvTranspose2d``
    As ``IntConv2d`` with transposed-conv semantics: ``weight_q`` is ``[C_in, C_out/groups, kh, kw]`` (output
    channel on dim 1, per group), ``padding`` = (ph, pw) is the usual transposed-conv *crop*, plus
    ``output_padding``; no pre-padding is absorbed (``padding_mode`` is always ``zeros``). ``acc`` is
    ``conv_transpose2d(X_q - input_zero_point, W_q)``; the epilogue is the same. MACs are counted at output
    resolution (BRIEF 5).

Every module exposes ``weight_bits``, ``count_params()`` (weight + bias elements) and ``count_macs(...)`` for
:mod:`gcompiler.profiler`, and is a trace leaf and saveable with :mod:`gcompiler.serialize`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KernelError
from ..fx.trace import register_leaf
from ..serialize import register_module_type

PADDING_MODES = ("zeros", "reflect", "replicate")


def int_dtype_for(qmin: int, qmax: int) -> torch.dtype:
    """The narrowest integer dtype holding ``[qmin, qmax]``."""
    for dt in (torch.uint8, torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    raise KernelError(f"integer range [{qmin}, {qmax}] does not fit int32")


def weight_storage_dtype(bits: int) -> torch.dtype:
    if not 2 <= bits <= 16:
        raise KernelError(f"weight_bits must be in [2, 16], got {bits}")
    return torch.uint8 if bits <= 4 else torch.int8 if bits <= 8 else torch.int16


def pack_int4(w: torch.Tensor) -> torch.Tensor:
    """Pack integers in ``[-8, 7]`` two per byte (element 2i low nibble, 2i+1 high nibble; two's complement)."""
    flat = w.reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < -8 or int(flat.max()) > 7):
        raise KernelError("pack_int4: values outside [-8, 7]")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nib = (flat & 0xF).reshape(-1, 2)
    return (nib[:, 0] | (nib[:, 1] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the first ``numel`` values as int8."""
    p = packed.to(torch.int16)
    nib = torch.stack([p & 0xF, (p >> 4) & 0xF], dim=1).reshape(-1)[:numel]
    return torch.where(nib >= 8, nib - 16, nib).to(torch.int8)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise KernelError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@register_module_type
@register_leaf
class QuantizeActivation(nn.Module):
    """Float -> integer activation quantization (format in the module docstring)."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0, qmin: int = 0, qmax: int = 255) -> None:
        super().__init__()
        if not qmin < qmax:
            raise KernelError(f"QuantizeActivation: qmin {qmin} must be < qmax {qmax}")
        if not (qmin <= zero_point <= qmax):
            raise KernelError(f"QuantizeActivation: zero_point {zero_point} outside [{qmin}, {qmax}]")
        if not (math.isfinite(scale) and scale > 0):
            raise KernelError(f"QuantizeActivation: scale must be finite and > 0, got {scale}")
        self.zero_point, self.qmin, self.qmax = int(zero_point), int(qmin), int(qmax)
        self.int_dtype = int_dtype_for(self.qmin, self.qmax)
        self.register_buffer("scale", torch.tensor([float(scale)], dtype=torch.float32))

    def constructor_args(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}

    def count_macs(self, input_shapes: Sequence[Any], output_shape: Any) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise KernelError(f"QuantizeActivation expects a float tensor, got {x.dtype}")
        q = torch.round(x / self.scale.to(x.dtype))
        if self.zero_point:
            q = q + self.zero_point
        return torch.clamp(q, self.qmin, self.qmax).to(self.int_dtype)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """The real values ``(q - zero_point) * scale`` (float32)."""
        return (q.to(torch.float32) - self.zero_point) * self.scale

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}, zero_point={self.zero_point}, range=[{self.qmin}, {self.qmax}]"


class _IntConvBase(nn.Module):
    transposed = False

    def _init_common(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any, dilation: Any,
                     groups: int, bias: bool, weight_bits: int, input_quantized: bool, input_zero_point: int,
                     weight_shape: tuple[int, ...]) -> None:
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.groups = int(groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise KernelError(f"{type(self).__name__}: channels ({self.in_channels}, {self.out_channels}) are not "
                              f"divisible by groups={self.groups}")
        self.weight_bits = int(weight_bits)
        self.input_quantized = bool(input_quantized)
        self.input_zero_point = int(input_zero_point)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        numel = math.prod(self.weight_shape)
        dt = weight_storage_dtype(self.weight_bits)
        self.register_buffer("weight_q", torch.zeros((numel + 1) // 2 if self.weight_bits <= 4 else self.weight_shape,
                                                     dtype=dt))
        self.register_buffer("weight_scale", torch.ones(self.out_channels))
        self.register_buffer("input_scale", torch.ones(1))
        self.register_buffer("out_scale", torch.ones(self.out_channels))
        self.register_buffer("bias", torch.zeros(self.out_channels) if bias else None)

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def packed_int4(self) -> bool:
        return self.weight_bits <= 4

    def set_quantized(self, w_int: torch.Tensor, weight_scale: torch.Tensor, input_scale: float | torch.Tensor,
                      bias: torch.Tensor | None) -> None:
        """Load integer weights (any integer-valued tensor of :attr:`weight_shape`) and the scales."""
        if tuple(w_int.shape) != self.weight_shape:
            raise KernelError(f"{type(self).__name__}: weight shape {tuple(w_int.shape)} != {self.weight_shape}")
        level = 2 ** (self.weight_bits - 1) - 1
        if w_int.numel() and float(w_int.abs().max()) > level:
            raise KernelError(f"{type(self).__name__}: integer weights exceed +-{level} ({self.weight_bits} bits)")
        with torch.no_grad():
            if self.packed_int4:
                self.weight_q.copy_(pack_int4(w_int.round()))
            else:
                self.weight_q.copy_(w_int.round().to(self.weight_q.dtype))
            self.weight_scale.copy_(weight_scale.detach().to(torch.float32).reshape(-1))
            s_in = torch.as_tensor(input_scale, dtype=torch.float32).reshape(1)
            self.input_scale.copy_(s_in if self.input_quantized else torch.ones(1))
            self.out_scale.copy_(self.input_scale * self.weight_scale)
            if bias is not None:
                if self.bias is None:
                    raise KernelError(f"{type(self).__name__} was built without a bias")
                self.bias.copy_(bias.detach().to(torch.float32))

    def int_weight(self) -> torch.Tensor:
        """The integer weights, unpacked, in the PyTorch layout (int8, or int16 above 8 bits)."""
        if self.packed_int4:
            return unpack_int4(self.weight_q, math.prod(self.weight_shape)).reshape(self.weight_shape)
        return self.weight_q

    def dequantized_weight(self) -> torch.Tensor:
        """``float32(W_q) * weight_scale[c]`` (what a weight-only layer and the fake-quant graph use)."""
        from .quantizers import grouped_weight, out_channel_view

        w = self.int_weight().to(torch.float32)
        gw = grouped_weight(w, transposed=self.transposed, groups=self.groups)
        s = out_channel_view(self.weight_scale, w.shape, transposed=self.transposed, groups=self.groups)
        return (gw * s).reshape(w.shape)

    def count_params(self) -> int:
        return math.prod(self.weight_shape) + (self.out_channels if self.bias is not None else 0)

    def count_macs(self, input_shapes: Sequence[Any], output_shape: Any) -> int:
        if output_shape is None:
            return 0
        return math.prod(output_shape) * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def _check_int_input(self, x: torch.Tensor) -> None:
        if self.input_quantized and x.is_floating_point():
            raise KernelError(f"{type(self).__name__} expects the integer tensor of a QuantizeActivation, got "
                              f"{x.dtype}; a weight-only layer has input_quantized=False")
        if not self.input_quantized and not x.is_floating_point():
            raise KernelError(f"{type(self).__name__} is weight-only (float input) but got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise KernelError(f"{type(self).__name__}({self.in_channels} -> {self.out_channels}) got an input of "
                              f"shape {tuple(x.shape)}; expected [N, {self.in_channels}, H, W]")

    def epilogue(self, acc: torch.Tensor) -> torch.Tensor:
        """``float32(acc) * out_scale[c] + bias[c]``."""
        y = acc.to(torch.float32) * self.out_scale.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def accumulate(self, x_q: torch.Tensor) -> torch.Tensor:
        """The exact integer accumulator ``acc`` as int32 (int64 when out of int32 range)."""
        self._check_int_input(x_q)
        acc = self._acc64(x_q)
        info = torch.iinfo(torch.int32)
        if acc.numel() and (float(acc.min()) < info.min or float(acc.max()) > info.max):
            return acc.to(torch.int64)
        return acc.to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_int_input(x)
        if self.input_quantized:
            return self.epilogue(self._acc64(x))
        return self._float_forward(x)

    def _acc64(self, x_q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _repr_options(self) -> str:
        """The non-default options that both integer conv reprs print after their geometry."""
        s = ""
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.has_bias:
            s += ", bias=False"
        if not self.input_quantized:
            s += ", weight-only"
        elif self.input_zero_point:
            s += f", input_zero_point={self.input_zero_point}"
        return s


@register_module_type
@register_leaf
class IntConv2d(_IntConvBase):
    """Integer 2-d convolution with pre-padding and a float32 epilogue (format in the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Sequence[int] = (0, 0, 0, 0), dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", weight_bits: int = 8, input_quantized: bool = True,
                 input_zero_point: int = 0) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise KernelError(f"IntConv2d: padding_mode {padding_mode!r} is not one of {PADDING_MODES}")
        pad = tuple(int(p) for p in padding)
        if len(pad) != 4 or min(pad) < 0:
            raise KernelError(f"IntConv2d: padding must be (left, right, top, bottom) >= 0, got {padding!r}")
        self.padding: tuple[int, int, int, int] = pad  # type: ignore[assignment]
        self.padding_mode = padding_mode
        kh, kw = _pair(kernel_size)
        self._init_common(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, weight_bits,
                          input_quantized, input_zero_point, (int(out_channels), int(in_channels) // int(groups), kh, kw))

    def constructor_args(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "bias": self.has_bias, "padding_mode": self.padding_mode, "weight_bits": self.weight_bits,
                "input_quantized": self.input_quantized, "input_zero_point": self.input_zero_point}

    def weight_ohwi(self) -> torch.Tensor:
        """Integer weights as ``[C_out, kh, kw, C_in/groups]`` (contiguous), the NHWC implicit-GEMM layout."""
        return self.int_weight().permute(0, 2, 3, 1).contiguous()

    def _pad(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        if not any(self.padding):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, self.padding, mode="constant", value=value)
        return F.pad(x, self.padding, mode="reflect" if self.padding_mode == "reflect" else "replicate")

    def _acc64(self, x_q: torch.Tensor) -> torch.Tensor:
        xi = x_q.to(torch.float64)
        if self.input_zero_point:
            xi = xi - self.input_zero_point
        xi = self._pad(xi)
        return F.conv2d(xi, self.int_weight().to(torch.float64), None, self.stride, 0, self.dilation, self.groups)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        l, r, t, b = self.padding
        if self.padding_mode == "zeros" and l == r and t == b:
            return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, (t, l), self.dilation, self.groups)
        return F.conv2d(self._pad(x), self.dequantized_weight(), self.bias, self.stride, 0, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, padding_mode={self.padding_mode}, w{self.weight_bits}")
        return s + self._repr_options()


@register_module_type
@register_leaf
class IntConvTranspose2d(_IntConvBase):
    """Integer transposed 2-d convolution with a float32 epilogue (format in the module docstring)."""

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 weight_bits: int = 8, input_quantized: bool = True, input_zero_point: int = 0) -> None:
        super().__init__()
        self.padding = _pair(padding)
        self.output_padding = _pair(output_padding)
        self.padding_mode = "zeros"
        kh, kw = _pair(kernel_size)
        self._init_common(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, weight_bits,
                          input_quantized, input_zero_point,
                          (int(in_channels), int(out_channels) // int(groups), kh, kw))

    def constructor_args(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "output_padding": self.output_padding,
                "groups": self.groups, "bias": self.has_bias, "dilation": self.dilation,
                "weight_bits": self.weight_bits, "input_quantized": self.input_quantized,
                "input_zero_point": self.input_zero_point}

    def _acc64(self, x_q: torch.Tensor) -> torch.Tensor:
        xi = x_q.to(torch.float64)
        if self.input_zero_point:
            xi = xi - self.input_zero_point
        return F.conv_transpose2d(xi, self.int_weight().to(torch.float64), None, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, output_padding={self.output_padding}, w{self.weight_bits}")
        return s + self._repr_options()


INT_CONV_TYPES = (IntConv2d, IntConvTranspose2d)


def _subpixel_taps(kernel: int, stride: int, padding: int) -> tuple[int, list[list[int | None]]]:
    """For one spatial dim: ``(delta_min, table)`` where ``table[r][u]`` is the transposed-conv tap ``k`` that
    phase ``r`` applies to ``x[m + delta_min + u]`` (``None`` for no tap)."""
    deltas = {r: {} for r in range(stride)}
    for r in range(stride):
        for k in range(kernel):
            if (k - r - padding) % stride == 0:
                t = (k - r - padding) // stride
                deltas[r][-t] = k
    all_d = [d for r in deltas for d in deltas[r]]
    if not all_d:
        return 0, [[None] for _ in range(stride)]
    lo, hi = min(all_d), max(all_d)
    return lo, [[deltas[r].get(lo + u) for u in range(hi - lo + 1)] for r in range(stride)]


def subpixel_decomposition(weight: torch.Tensor, stride: Any, padding: Any, output_padding: Any,
                           in_size: tuple[int, int]) -> dict[str, Any] | None:
    """Rewrite a transposed conv (groups 1, dilation 1) as one stride-1 conv followed by a pixel shuffle.

    ``conv_transpose2d(x, weight, stride=s, padding=p, output_padding=op)`` equals
    ``pixel_shuffle(conv2d(pad(x, pads), sub_weight), s)[..., :out_h, :out_w]`` exactly (the same products
    are summed, so integer inputs give identical integers). ``weight`` is ``[C_in, C_out, kh, kw]``; the result
    holds ``weight`` ``[C_out * sh * sw, C_in, Lh, Lw]`` (output channel ``c * sh * sw + a * sw + b`` computes
    output pixel phase ``(a, b)`` of channel ``c``, the order ``pixel_shuffle`` / ONNX ``DepthToSpace`` CRD
    expects), ``pads`` (left, right, top, bottom; zeros), ``stride`` (sh, sw) and ``out_size``. Returns
    ``None`` when the geometry needs cropping of the input (never for the usual k3 s2 p1 / k4 s2 p1).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    oph, opw = _pair(output_padding)
    c_in, c_out, kh, kw = weight.shape
    h, w = in_size
    out_h = (h - 1) * sh - 2 * ph + kh + oph
    out_w = (w - 1) * sw - 2 * pw + kw + opw
    dh, tab_h = _subpixel_taps(kh, sh, ph)
    dw, tab_w = _subpixel_taps(kw, sw, pw)
    lh, lw = len(tab_h[0]), len(tab_w[0])
    mh, mw = -(-out_h // sh), -(-out_w // sw)
    top, left = -dh, -dw
    bottom, right = mh - h - top + lh - 1, mw - w - left + lw - 1
    if min(top, left, bottom, right) < 0:
        return None
    sub = weight.new_zeros((c_out, sh, sw, c_in, lh, lw))
    for a in range(sh):
        for u, ka in enumerate(tab_h[a]):
            if ka is None:
                continue
            for b in range(sw):
                for v, kb in enumerate(tab_w[b]):
                    if kb is not None:
                        sub[:, a, b, :, u, v] = weight[:, :, ka, kb].t()
    return {"weight": sub.reshape(c_out * sh * sw, c_in, lh, lw), "pads": (left, right, top, bottom),
            "stride": (sh, sw), "out_size": (out_h, out_w)}


def phase_weight(w: torch.Tensor, r: int = 2) -> torch.Tensor:
    """The weight of the ``r x r`` phase decomposition of a stride-1 conv with weight ``w`` ``[O, I, k, k]``.

    With ``x_rs = x[:, :, rr::r, s::r]`` concatenated in ``(rr, s)`` order along channels, ``conv(x, w)`` equals
    ``pixel_shuffle(conv(cat(x_rs), W), r)`` where ``W[(o, p, q), (rr, s, i), du, dv] = w[o, i, r*du + rr - p,
    r*dv + s - q]`` (zero outside the kernel): the same sums, each output phase ``(p, q)`` its own channel.
    """
    o, i, kh, kw = w.shape
    kh2, kw2 = (kh - 1) // r + 1, (kw - 1) // r + 1
    out = w.new_zeros(o, r, r, r, r, i, kh2, kw2)
    for p in range(r):
        for q in range(r):
            for rr in range(r):
                for s in range(r):
                    for du in range(kh2):
                        a = r * du + rr - p
                        if not 0 <= a < kh:
                            continue
                        for dv in range(kw2):
                            b = r * dv + s - q
                            if 0 <= b < kw:
                                out[:, p, q, rr, s, :, du, dv] = w[:, :, a, b]
    return out.reshape(o * r * r, r * r * i, kh2, kw2)
