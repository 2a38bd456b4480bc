"""Pure-PyTorch reference implementations of the int8 kernels: the test oracle and the CPU fallback.

The accumulator is computed exactly: the centered input ``x - x_zero_point`` and the weight are converted to
float64 and convolved with ``torch.nn.functional.conv2d`` / ``conv_transpose2d``. Every product is an integer
of magnitude <= 255 * 128 and every partial sum stays far below 2**53 (the kernels reject K > ``MAX_K``),
so float64 represents all of them exactly whatever the summation order, and the rounded result is the exact
integer sum ``sum_k W[c, k] * (x[k] - zp)``. Zero padding pads the *centered* input with 0 (the real value 0);
reflect / replicate padding pads the input with ``F.pad`` before the convolution.

The float epilogue is evaluated in float32 with the same operation order as the Triton kernels:
``y = acc.float() * scale + bias``; ``residual`` added before or after the activation;
``q = clamp(round_half_even(y / out_scale) + out_zero_point, qmin, qmax)`` (``torch.round`` rounds half to even).
Stats (``return_stats``) are summed in float64 and returned as float32.

Layout helpers convert between PyTorch's layouts and the kernels' (NHWC activations, OHWI weights).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..errors import KernelError
from ._common import (QRANGES, ConvGeometry, ConvResult, Epilogue, IntPair, conv_geometry,
                      conv_transpose_geometry, epilogue_spec, pack_result)

__all__ = [
    "nchw_to_nhwc", "nhwc_to_nchw", "weight_oihw_to_ohwi", "weight_ohwi_to_oihw",
    "conv_transpose_weight_to_ohwi", "conv_transpose_weight_from_ohwi",
    "conv2d_int8_ref", "depthwise_conv2d_int8_ref", "conv_transpose2d_int8_ref", "instance_norm_act_quant_ref",
]


# ----------------------------------------------------------------------------------------------- layouts

def _need_4d(t: torch.Tensor, name: str, where: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise KernelError(f"{where}: {name} must be a 4-D tensor, got {shape}")


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W] -> [N, H, W, C]`` contiguous (a copy unless already channels-last in memory)."""
    _need_4d(x, "x", "nchw_to_nhwc")
    return x.permute(0, 2, 3, 1).contiguous()


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W, C] -> [N, C, H, W]`` contiguous."""
    _need_4d(x, "x", "nhwc_to_nchw")
    return x.permute(0, 3, 1, 2).contiguous()


def weight_oihw_to_ohwi(w: torch.Tensor) -> torch.Tensor:
    """Conv weight ``[C_out, C_in/g, KH, KW]`` (PyTorch) -> ``[C_out, KH, KW, C_in/g]`` (the kernels' K order
    ``(kh, kw, ci)``, ci fastest)."""
    _need_4d(w, "w", "weight_oihw_to_ohwi")
    return w.permute(0, 2, 3, 1).contiguous()


def weight_ohwi_to_oihw(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`weight_oihw_to_ohwi`."""
    _need_4d(w, "w", "weight_ohwi_to_oihw")
    return w.permute(0, 3, 1, 2).contiguous()


def conv_transpose_weight_to_ohwi(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Transposed-conv weight ``[C_in, C_out/g, KH, KW]`` (PyTorch) -> ``[C_out, KH, KW, C_in/g]``.

    ``out[g*Cog + co, kh, kw, ci] = w[g*Cig + ci, co, kh, kw]``: in/out are swapped within each group and the
    taps are *not* flipped, because the kernel gathers ``x[(oh + pad - kh*dil) / stride]`` directly.
    """
    _need_4d(w, "w", "conv_transpose_weight_to_ohwi")
    C_in, cog, KH, KW = w.shape
    if groups < 1 or C_in % groups:
        raise KernelError(f"conv_transpose_weight_to_ohwi: C_in={C_in} is not divisible by groups={groups}")
    cig = C_in // groups
    return w.reshape(groups, cig, cog, KH, KW).permute(0, 2, 3, 4, 1).reshape(groups * cog, KH, KW, cig) \
        .contiguous()


def conv_transpose_weight_from_ohwi(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Inverse of :func:`conv_transpose_weight_to_ohwi`."""
    _need_4d(w, "w", "conv_transpose_weight_from_ohwi")
    C_out, KH, KW, cig = w.shape
    if groups < 1 or C_out % groups:
        raise KernelError(f"conv_transpose_weight_from_ohwi: C_out={C_out} is not divisible by groups={groups}")
    cog = C_out // groups
    return w.reshape(groups, cog, KH, KW, cig).permute(0, 4, 1, 2, 3).reshape(groups * cig, cog, KH, KW) \
        .contiguous()


# ------------------------------------------------------------------------------------------ accumulators

def _exact_int32(acc64: torch.Tensor) -> torch.Tensor:
    acc = torch.round(acc64)
    if acc.numel() and acc.abs().max() >= 2**31:  # cannot happen for K <= MAX_K; kept as a guard
        raise KernelError("reference: accumulator overflows int32")
    return acc.to(torch.int32)


def conv2d_acc(x: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, x_zero_point: int) -> torch.Tensor:
    """Exact int32 accumulator ``[N, OH, OW, C_out]`` of a forward conv (see the module docstring)."""
    xc = x.permute(0, 3, 1, 2).to(torch.float64) - float(x_zero_point)
    if max(geo.pad4) > 0:
        mode = "constant" if geo.pad_mode == "zeros" else geo.pad_mode
        xc = F.pad(xc, geo.pad4, mode=mode)
    wf = w.permute(0, 3, 1, 2).to(torch.float64)
    acc = F.conv2d(xc, wf, None, geo.stride, 0, geo.dilation, geo.groups)
    return _exact_int32(acc.permute(0, 2, 3, 1).contiguous())


def conv_transpose2d_acc(x: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, x_zero_point: int) -> torch.Tensor:
    """Exact int32 accumulator of a transposed conv whose weight is ``[C_out, KH, KW, C_in/g]``."""
    xc = x.permute(0, 3, 1, 2).to(torch.float64) - float(x_zero_point)
    wt = conv_transpose_weight_from_ohwi(w, geo.groups).to(torch.float64)
    acc = F.conv_transpose2d(xc, wt, None, geo.stride, geo.padding, geo.output_padding, geo.groups, geo.dilation)
    return _exact_int32(acc.permute(0, 2, 3, 1).contiguous())


# ------------------------------------------------------------------------------------------------ epilogue

def _f32(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def finish_epilogue(y: torch.Tensor, epi: Epilogue):
    """Activation, residual, stats and requantization on the float32 pre-activation ``y`` (NHWC).

    Returns ``(out, sums, sumsq, out_float)``.
    """
    dev = y.device
    r = None
    if epi.residual is not None:
        r = epi.residual
        if epi.residual_is_int:
            r = (r.to(torch.float32) - float(epi.residual_zero_point)) * _f32(epi.residual_scale, dev)
    if r is not None and epi.residual_before_act:
        y = y + r
    if epi.activation == "relu":
        y = torch.clamp_min(y, 0.0)
    elif epi.activation == "leaky_relu":
        y = torch.where(y >= 0, y, y * _f32(epi.negative_slope, dev))
    elif epi.activation == "tanh":
        y = torch.tanh(y)
    if r is not None and not epi.residual_before_act:
        y = y + r
    sums = sumsq = None
    if epi.return_stats:
        y64 = y.to(torch.float64)
        sums = y64.sum(dim=(1, 2)).to(torch.float32)
        sumsq = (y64 * y64).sum(dim=(1, 2)).to(torch.float32)
    if not epi.quantized:
        return y, sums, sumsq, None
    lo, hi = epi.qmin, epi.qmax
    q = torch.round(y / _f32(epi.out_scale, dev)) + float(epi.out_zero_point)
    q = torch.clamp(q, lo, hi).to(epi.out_dtype)
    return q, sums, sumsq, y


def conv_epilogue(acc: torch.Tensor, epi: Epilogue) -> Union[torch.Tensor, ConvResult]:
    """The full conv epilogue on an exact accumulator (``acc * scale + bias`` first)."""
    assert epi.scale is not None
    y = acc.to(torch.float32) * epi.scale
    if epi.bias is not None:
        y = y + epi.bias
    out, sums, sumsq, out_float = finish_epilogue(y, epi)
    return pack_result(epi, out, sums, sumsq, acc, out_float)


# ------------------------------------------------------------------------------------------ public API

def conv2d_int8_ref(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair = 1, padding: IntPair = 0,
                    dilation: IntPair = 1, groups: int = 1, pad_mode: str = "zeros", x_zero_point: int = 0,
                    scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                    activation: str = "none", negative_slope: float = 0.2, residual: Optional[torch.Tensor] = None,
                    residual_scale: Optional[float] = None, residual_zero_point: int = 0,
                    residual_before_act: bool = False, out_scale: Optional[float] = None, out_zero_point: int = 0,
                    out_range: Optional[tuple[int, int]] = None,
                    out_dtype: torch.dtype = torch.float32, return_stats: bool = False, return_acc: bool = False,
                    return_float: bool = False) -> Union[torch.Tensor, ConvResult]:
    """Reference of :func:`gcompiler.kernels.conv2d_int8` (same arguments, same contract)."""
    where = "conv2d_int8_ref"
    geo = conv_geometry(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        pad_mode=pad_mode, x_zero_point=x_zero_point, where=where)
    epi = epilogue_spec(out_shape=(geo.N, geo.OH, geo.OW, geo.C_out), device=x.device, scale=scale, bias=bias,
                        activation=activation, negative_slope=negative_slope, residual=residual,
                        residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                        residual_before_act=residual_before_act, out_scale=out_scale,
                        out_zero_point=out_zero_point, out_range=out_range, out_dtype=out_dtype,
                        return_stats=return_stats, return_acc=return_acc, return_float=return_float, where=where)
    return conv_epilogue(conv2d_acc(x, w, geo, x_zero_point), epi)


def depthwise_conv2d_int8_ref(x: torch.Tensor, w: torch.Tensor, **kwargs) -> Union[torch.Tensor, ConvResult]:
    """Reference of :func:`gcompiler.kernels.depthwise_conv2d_int8`: a conv with ``groups = C``."""
    if "groups" in kwargs:
        raise KernelError("depthwise_conv2d_int8_ref: groups is implied (= channels); do not pass it")
    _need_4d(w, "w", "depthwise_conv2d_int8_ref")
    if w.shape[3] != 1:
        raise KernelError(f"depthwise_conv2d_int8_ref: w must be [C, KH, KW, 1], got {tuple(w.shape)}")
    return conv2d_int8_ref(x, w, groups=w.shape[0], **kwargs)


def conv_transpose2d_int8_ref(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair = 2, padding: IntPair = 0,
                              output_padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                              x_zero_point: int = 0, scale: Optional[torch.Tensor] = None,
                              bias: Optional[torch.Tensor] = None, activation: str = "none",
                              negative_slope: float = 0.2, residual: Optional[torch.Tensor] = None,
                              residual_scale: Optional[float] = None, residual_zero_point: int = 0,
                              residual_before_act: bool = False, out_scale: Optional[float] = None,
                              out_zero_point: int = 0, out_range: Optional[tuple[int, int]] = None,
                              out_dtype: torch.dtype = torch.float32,
                              return_stats: bool = False, return_acc: bool = False,
                              return_float: bool = False) -> Union[torch.Tensor, ConvResult]:
    """Reference of :func:`gcompiler.kernels.conv_transpose2d_int8` (weight ``[C_out, KH, KW, C_in/g]``)."""
    where = "conv_transpose2d_int8_ref"
    geo = conv_transpose_geometry(x, w, stride=stride, padding=padding, output_padding=output_padding,
                                  dilation=dilation, groups=groups, x_zero_point=x_zero_point, where=where)
    epi = epilogue_spec(out_shape=(geo.N, geo.OH, geo.OW, geo.C_out), device=x.device, scale=scale, bias=bias,
                        activation=activation, negative_slope=negative_slope, residual=residual,
                        residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                        residual_before_act=residual_before_act, out_scale=out_scale,
                        out_zero_point=out_zero_point, out_range=out_range, out_dtype=out_dtype,
                        return_stats=return_stats, return_acc=return_acc, return_float=return_float, where=where)
    return conv_epilogue(conv_transpose2d_acc(x, w, geo, x_zero_point), epi)


def norm_inputs(y: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, gamma: Optional[torch.Tensor],
                beta: Optional[torch.Tensor], eps: float, where: str) -> float:
    """Validate the InstanceNorm kernel's inputs; returns ``eps`` as a float."""
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.dtype != torch.float32:
        desc = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise KernelError(f"{where}: y must be a float32 NHWC tensor [N, H, W, C], got {desc}")
    N, _, _, C = y.shape
    for name, t in (("sums", sums), ("sumsq", sumsq)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (N, C):
            desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise KernelError(f"{where}: {name} must be float32 [N, C] = [{N}, {C}] (from return_stats), got {desc}")
        if t.device != y.device:
            raise KernelError(f"{where}: {name} is on {t.device} but y is on {y.device}")
    if (gamma is None) != (beta is None):
        raise KernelError(f"{where}: pass both gamma and beta (affine InstanceNorm) or neither")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.float32
                              or tuple(t.shape) != (C,) or t.device != y.device):
            raise KernelError(f"{where}: {name} must be a float32 [{C}] tensor on {y.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0:
        raise KernelError(f"{where}: eps must be a positive number, got {eps!r}")
    return float(eps)


def norm_epilogue_spec(y: torch.Tensor, *, activation: str, negative_slope: float,
                       residual: Optional[torch.Tensor], residual_scale: Optional[float], residual_zero_point: int,
                       residual_before_act: bool, out_scale: Optional[float], out_zero_point: int,
                       out_dtype: torch.dtype, return_float: bool, where: str,
                       out_range: Optional[tuple[int, int]] = None) -> Epilogue:
    return epilogue_spec(out_shape=tuple(y.shape), device=y.device, scale=None, bias=None, activation=activation,
                         negative_slope=negative_slope, residual=residual, residual_scale=residual_scale,
                         residual_zero_point=residual_zero_point, residual_before_act=residual_before_act,
                         out_scale=out_scale, out_zero_point=out_zero_point, out_range=out_range,
                         out_dtype=out_dtype, return_stats=False, return_acc=False, return_float=return_float,
                         where=where, needs_scale=False)


def normalize_ref(y: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, gamma: Optional[torch.Tensor],
                  beta: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """``(y - mean) / sqrt(var + eps) [* gamma + beta]`` with ``mean = sums / HW`` and the biased
    ``var = max(sumsq / HW - mean^2, 0)``, in float32, in the kernel's operation order."""
    N, H, W, C = y.shape
    hw = _f32(float(H * W), y.device)
    mean = sums / hw
    var = torch.clamp_min(sumsq / hw - mean * mean, 0.0)
    # correctly rounded float32 sqrt (torch's vectorized CPU sqrt is not; float64 then rounding is, since
    # 53 >= 2 * 24 + 2) and IEEE division, as the kernel's sqrt_rn / div_rn
    root = torch.sqrt((var + _f32(eps, y.device)).to(torch.float64)).to(torch.float32)
    inv = torch.ones_like(var) / root
    z = (y - mean[:, None, None, :]) * inv[:, None, None, :]
    if gamma is not None:
        z = z * gamma + beta
    return z


def instance_norm_act_quant_ref(y: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, *, eps: float = 1e-5,
                                gamma: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None,
                                activation: str = "none", negative_slope: float = 0.2,
                                residual: Optional[torch.Tensor] = None, residual_scale: Optional[float] = None,
                                residual_zero_point: int = 0, residual_before_act: bool = False,
                                out_scale: Optional[float] = None, out_zero_point: int = 0,
                    out_range: Optional[tuple[int, int]] = None,
                                out_dtype: torch.dtype = torch.int8,
                                return_float: bool = False) -> Union[torch.Tensor, ConvResult]:
    """Reference of :func:`gcompiler.kernels.instance_norm_act_quant`."""
    where = "instance_norm_act_quant_ref"
    eps = norm_inputs(y, sums, sumsq, gamma, beta, eps, where)
    epi = norm_epilogue_spec(y, activation=activation, negative_slope=negative_slope, residual=residual,
                             residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                             residual_before_act=residual_before_act, out_scale=out_scale,
                             out_zero_point=out_zero_point, out_range=out_range, out_dtype=out_dtype,
                             return_float=return_float, where=where)
    out, _, _, out_float = finish_epilogue(normalize_ref(y, sums, sumsq, gamma, beta, eps), epi)
    return pack_result(epi, out, None, None, None, out_float)
