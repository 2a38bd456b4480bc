"""``torch.library`` custom ops in the ``gcompiler`` namespace: the int8 kernels as graph-level operators.

The ops take and return tensors in PyTorch's logical NCHW shape. Their data is NHWC in memory
(``channels_last``): an op views its input as NHWC (``x.permute(0, 2, 3, 1).contiguous()``, a no-op for a
channels-last tensor, one copy otherwise) and returns the kernel's NHWC output as an NCHW-shaped channels-last
view. The PyTorch ops a lowered graph keeps between them (InstanceNorm that could not be fused, adds, tanh,
quantization) preserve channels-last, so activations stay NHWC end to end and only the graph input is
converted once.

Every op has a fixed number of outputs; outputs an op was not asked for are empty tensors (``numel() == 0``).
Each op has a fake (meta) implementation, so lowered graphs can be traced by ``torch.compile`` / export.

* ``gcompiler::qconv2d`` / ``gcompiler::qconv_transpose2d`` -> ``(out, sums, sumsq, out_float)``: the int8
  convolutions of :mod:`gcompiler.kernels.conv` with their fused epilogue;
* ``gcompiler::instance_norm_act_quant`` -> ``(out, out_float)``;
* ``gcompiler::conv2d_dequant`` -> ``out``: the 16-bit path for layers where int8 does not pay (RGB,
  small-channel and depthwise layers): ``conv((x - zp) * s_x, W_deq) + bias`` in fp16 on CUDA (cuDNN,
  channels-last, fp32 result) and in fp32 elsewhere; also the weight-only (float input) first layer.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import conv2d_int8, conv_transpose2d_int8, depthwise_conv2d_int8, instance_norm_act_quant

__all__ = ["qconv2d", "qconv_transpose2d", "instance_norm_act_quant_op", "conv2d_dequant"]


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _nchw(y: Tensor) -> Tensor:
    return y.permute(0, 3, 1, 2)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


def _nchw_empty(like: Tensor, n: int, c: int, h: int, w: int, dtype: torch.dtype) -> Tensor:
    return like.new_empty((n, h, w, c), dtype=dtype).permute(0, 3, 1, 2)


def _unpack(res, want_stats: bool, want_float: bool, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if isinstance(res, Tensor):
        return _nchw(res), _empty(like), _empty(like), _empty(like)
    sums = res.sums if want_stats else _empty(like)
    sumsq = res.sumsq if want_stats else _empty(like)
    out_float = _nchw(res.out_float) if want_float else _empty(like)
    return _nchw(res.out), sums, sumsq, out_float


def _epilogue_kwargs(scale: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], activation: str,
                     negative_slope: float, residual_before_act: bool, out_dtype: torch.dtype, out_scale: float,
                     out_zero_point: int, out_qmin: int, out_qmax: int, return_stats: bool,
                     return_float: bool) -> dict:
    quant = out_dtype != torch.float32
    return dict(scale=scale, bias=bias, residual=None if residual is None else _nhwc(residual),
                activation=activation, negative_slope=negative_slope, residual_before_act=residual_before_act,
                out_dtype=out_dtype, out_scale=out_scale if quant else None, out_zero_point=out_zero_point,
                out_range=(out_qmin, out_qmax) if quant else None, return_stats=return_stats,
                return_float=return_float and quant)


@torch.library.custom_op("gcompiler::qconv2d", mutates_args=())
def qconv2d(x: Tensor, w: Tensor, weight_sums: Tensor, scale: Tensor, bias: Optional[Tensor],
            residual: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int], groups: int,
            pad_mode: str, x_zero_point: int, activation: str, negative_slope: float, residual_before_act: bool,
            out_dtype: torch.dtype, out_scale: float, out_zero_point: int, out_qmin: int, out_qmax: int,
            return_stats: bool, return_float: bool, depthwise: bool,
            backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Int8 conv on an NCHW-shaped integer ``x``; ``w`` is ``[C_out, KH, KW, C_in/groups]`` int8,
    ``padding`` is ``(left, right, top, bottom)``. ``depthwise`` selects the dedicated depthwise kernel."""
    kw = _epilogue_kwargs(scale, bias, residual, activation, negative_slope, residual_before_act, out_dtype,
                          out_scale, out_zero_point, out_qmin, out_qmax, return_stats, return_float)
    xh = _nhwc(x)
    geo = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), pad_mode=pad_mode,
               x_zero_point=x_zero_point)
    if depthwise:
        res = depthwise_conv2d_int8(xh, w, **geo, **kw, backend=backend)
    else:
        res = conv2d_int8(xh, w, **geo, groups=groups, **kw,
                          weight_sums=weight_sums if weight_sums.numel() else None, backend=backend)
    return _unpack(res, return_stats, kw["return_float"], x)


@qconv2d.register_fake
def _qconv2d_fake(x, w, weight_sums, scale, bias, residual, stride, padding, dilation, groups, pad_mode,
                  x_zero_point, activation, negative_slope, residual_before_act, out_dtype, out_scale,
                  out_zero_point, out_qmin, out_qmax, return_stats, return_float, depthwise, backend):
    N, _, H, W = x.shape
    C_out, KH, KW, _ = w.shape
    left, right, top, bottom = padding
    OH = (H + top + bottom - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + left + right - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return _fake_outputs(x, N, C_out, OH, OW, out_dtype, return_stats, return_float)


def _fake_outputs(x, N, C, OH, OW, out_dtype, return_stats, return_float):
    out = _nchw_empty(x, N, C, OH, OW, out_dtype)
    stats = x.new_empty((N, C), dtype=torch.float32) if return_stats else _empty(x)
    stats2 = x.new_empty((N, C), dtype=torch.float32) if return_stats else _empty(x)
    flt = _nchw_empty(x, N, C, OH, OW, torch.float32) if (return_float and out_dtype != torch.float32) else _empty(x)
    return out, stats, stats2, flt


@torch.library.custom_op("gcompiler::qconv_transpose2d", mutates_args=())
def qconv_transpose2d(x: Tensor, w: Tensor, scale: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
                      stride: list[int], padding: list[int], output_padding: list[int], dilation: list[int],
                      groups: int, x_zero_point: int, activation: str, negative_slope: float,
                      residual_before_act: bool, out_dtype: torch.dtype, out_scale: float, out_zero_point: int,
                      out_qmin: int, out_qmax: int, return_stats: bool, return_float: bool,
                      backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Int8 transposed conv on an NCHW-shaped integer ``x``; ``w`` is ``[C_out, KH, KW, C_in/groups]``
    (:func:`gcompiler.kernels.conv_transpose_weight_to_ohwi`)."""
    kw = _epilogue_kwargs(scale, bias, residual, activation, negative_slope, residual_before_act, out_dtype,
                          out_scale, out_zero_point, out_qmin, out_qmax, return_stats, return_float)
    res = conv_transpose2d_int8(_nhwc(x), w, stride=tuple(stride), padding=tuple(padding),
                                output_padding=tuple(output_padding), dilation=tuple(dilation), groups=groups,
                                x_zero_point=x_zero_point, **kw, backend=backend)
    return _unpack(res, return_stats, kw["return_float"], x)


@qconv_transpose2d.register_fake
def _qconv_transpose2d_fake(x, w, scale, bias, residual, stride, padding, output_padding, dilation, groups,
                            x_zero_point, activation, negative_slope, residual_before_act, out_dtype, out_scale,
                            out_zero_point, out_qmin, out_qmax, return_stats, return_float, backend):
    N, _, H, W = x.shape
    C_out, KH, KW, _ = w.shape
    OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
    OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
    return _fake_outputs(x, N, C_out, OH, OW, out_dtype, return_stats, return_float)


@torch.library.custom_op("gcompiler::instance_norm_act_quant", mutates_args=())
def instance_norm_act_quant_op(y: Tensor, sums: Tensor, sumsq: Tensor, gamma: Optional[Tensor],
                               beta: Optional[Tensor], residual: Optional[Tensor], eps: float, activation: str,
                               negative_slope: float, residual_before_act: bool, out_dtype: torch.dtype,
                               out_scale: float, out_zero_point: int, out_qmin: int, out_qmax: int,
                               return_float: bool, backend: str) -> tuple[Tensor, Tensor]:
    """InstanceNorm-apply (+ affine) + activation (+ residual) (+ requantization) on an NCHW-shaped float ``y``
    with the statistics of a ``qconv*`` op."""
    quant = out_dtype != torch.float32
    res = instance_norm_act_quant(_nhwc(y), sums, sumsq, eps=eps, gamma=gamma, beta=beta, activation=activation,
                                  negative_slope=negative_slope,
                                  residual=None if residual is None else _nhwc(residual),
                                  residual_before_act=residual_before_act, out_scale=out_scale if quant else None,
                                  out_zero_point=out_zero_point, out_range=(out_qmin, out_qmax) if quant else None,
                                  out_dtype=out_dtype, return_float=return_float and quant, backend=backend)
    if isinstance(res, Tensor):
        return _nchw(res), _empty(y)
    return _nchw(res.out), _nchw(res.out_float)


@instance_norm_act_quant_op.register_fake
def _instance_norm_fake(y, sums, sumsq, gamma, beta, residual, eps, activation, negative_slope,
                        residual_before_act, out_dtype, out_scale, out_zero_point, out_qmin, out_qmax, return_float,
                        backend):
    N, C, H, W = y.shape
    flt = _nchw_empty(y, N, C, H, W, torch.float32) if (return_float and out_dtype != torch.float32) else _empty(y)
    return _nchw_empty(y, N, C, H, W, out_dtype), flt


@torch.library.custom_op("gcompiler::conv2d_dequant", mutates_args=())
def conv2d_dequant(x: Tensor, w: Tensor, bias: Optional[Tensor], x_scale: float, x_zero_point: int,
                   stride: list[int], padding: list[int], pad_mode: str, dilation: list[int], groups: int,
                   transposed: bool, output_padding: list[int], half: bool) -> Tensor:
    """``conv(x_real, w) + bias`` with ``x_real = (x - x_zero_point) * x_scale`` for an integer ``x`` (a float
    ``x`` is used as is) and a float ``w`` in PyTorch's layout (dequantized weights). ``padding``: forward convs
    ``(left, right, top, bottom)`` in ``pad_mode``; transposed convs ``(ph, pw)`` (crop). With ``half`` on
    CUDA the conv runs in fp16 channels-last (cuDNN) and the result is returned in float32."""
    # a Python scalar (not a device tensor): no host-to-device copy, so the op can be CUDA-graph captured
    xr = x.to(torch.float32) if x.is_floating_point() else (x.to(torch.float32) - float(x_zero_point)) * x_scale
    dtype = torch.float16 if (half and x.is_cuda) else torch.float32
    xr = xr.to(dtype).contiguous(memory_format=torch.channels_last)
    wt = w.to(dtype)
    b = None if bias is None else bias.to(dtype)
    if transposed:
        out = F.conv_transpose2d(xr, wt, b, tuple(stride), tuple(padding), tuple(output_padding), groups,
                                 tuple(dilation))
    else:
        if any(padding):
            mode = "constant" if pad_mode == "zeros" else pad_mode
            xr = F.pad(xr, tuple(padding), mode=mode)
        out = F.conv2d(xr, wt, b, tuple(stride), 0, tuple(dilation), groups)
    return out.to(torch.float32).contiguous(memory_format=torch.channels_last)


@conv2d_dequant.register_fake
def _conv2d_dequant_fake(x, w, bias, x_scale, x_zero_point, stride, padding, pad_mode, dilation, groups, transposed,
                         output_padding, half):
    N, _, H, W = x.shape
    KH, KW = w.shape[2], w.shape[3]
    if transposed:
        C = w.shape[1] * groups
        OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
        OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
    else:
        C = w.shape[0]
        left, right, top, bottom = padding
        OH = (H + top + bottom - dilation[0] * (KH - 1) - 1) // stride[0] + 1
        OW = (W + left + right - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return _nchw_empty(x, N, C, OH, OW, torch.float32)
