"""Functional API of the fused int8 convolution kernels (NHWC, implicit GEMM).

Every function validates its arguments (raising :class:`gcompiler.errors.KernelError`), then runs either the
Triton kernel or the PyTorch reference (:mod:`gcompiler.kernels.reference`) according to ``backend``:

* ``"auto"`` (default): Triton for CUDA tensors; for CPU tensors Triton under the interpreter when
  ``TRITON_INTERPRET=1`` was set before the first kernel call, else the reference (the CPU fallback);
* ``"triton"``: the Triton kernel or a KernelError saying why it cannot run;
* ``"reference"``: always the reference.

Contract shared by the convolutions (BRIEF section 6):

* ``x``: NHWC ``[N, H, W, C_in]``, int8 (signed activations, usually ``x_zero_point = 0``) or uint8
  (unsigned activations with ``x_zero_point``); the real input is ``(x - x_zero_point) * s_x``.
* ``w``: int8 ``[C_out, KH, KW, C_in/groups]`` (K ordered (kh, kw, ci), ci fastest); convert PyTorch
  weights with :func:`weight_oihw_to_ohwi` / :func:`conv_transpose_weight_to_ohwi`.
* accumulator (int32, exact): ``acc[n, oh, ow, c] = sum_k W[c, k] * (x[k] - x_zero_point)``. Zero padding
  means the real value 0. The kernels compute it with int8 x int8 MMAs: uint8 inputs are mapped to int8 in
  the loader (``x - 128``) and corrected per channel with ``- (x_zero_point - 128) * sum_k W[c, k]``
  (int32, exact); signed inputs with a non-zero point get ``- x_zero_point * sum_k W[c, k]``.
* epilogue (float32, in this order): ``y = acc * scale[c] + bias[c]``; if ``residual_before_act``:
  ``y += r``; ``y = act(y)``; else ``y += r`` (default: activation first, then the residual, the order of
  a ResNet block whose add is not followed by an activation); ``r`` is ``residual`` (float32, or int8/uint8
  dequantized as ``(r - residual_zero_point) * residual_scale``). With ``return_stats`` the per-sample
  per-channel sum and sum of squares of this ``y`` are returned (for a following InstanceNorm). With an
  integer ``out_dtype``: ``q = clamp(round_half_even(y / out_scale) + out_zero_point, qmin, qmax)``.
  ``scale`` is ``s_x * s_w[c]`` (float32 ``[C_out]``); ``out_scale`` a positive float (per tensor).
* requantization clamps to ``out_range`` (default: the full range of ``out_dtype``).
* result: the NHWC output, or a :class:`ConvResult` when ``return_stats``, ``return_acc`` (the int32
  accumulator, for exactness tests) or ``return_float`` (the float ``y`` before requantization) is set.

Precision: the accumulator equals the reference exactly; float outputs agree to float32 rounding (bit-equal
for everything but ``tanh``, which the kernels evaluate through ``exp``: within ~1e-6 absolute), quantized
outputs within one step (equal except where ``y / out_scale`` lies within rounding error of a .5 tie).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..errors import KernelError
from . import reference as _ref
from ._common import ConvResult, IntPair, conv_geometry, conv_transpose_geometry, epilogue_spec

__all__ = ["conv2d_int8", "depthwise_conv2d_int8", "conv_transpose2d_int8", "instance_norm_act_quant",
           "ConvResult", "triton_status"]

_BACKENDS = ("auto", "triton", "reference")


def _triton_module():
    """Import the Triton kernels lazily (so ``TRITON_INTERPRET`` may be set up to the first call)."""
    try:
        from . import _triton
    except ImportError as exc:
        return None, f"triton cannot be imported ({exc})"
    return _triton, ""


def triton_status(device: Union[str, torch.device] = "cuda") -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of ``device``, and if not, why."""
    mod, why = _triton_module()
    if mod is None:
        return False, why
    dev = torch.device(device)
    if mod.INTERPRET:
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    if dev.type != "cuda":
        return False, (f"tensors are on {dev} and the Triton interpreter is off (set TRITON_INTERPRET=1 before "
                       f"the first kernel call to run the kernels on CPU)")
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, "compiled for CUDA"


def _use_triton(backend: str, x: torch.Tensor, where: str) -> bool:
    if backend not in _BACKENDS:
        raise KernelError(f"{where}: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    ok, why = triton_status(x.device)
    if backend == "triton" and not ok:
        raise KernelError(f"{where}: backend='triton' cannot run: {why}; use backend='reference' or 'auto'")
    return ok


def conv2d_int8(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair = 1, padding: IntPair = 0,
                dilation: IntPair = 1, groups: int = 1, pad_mode: str = "zeros", x_zero_point: int = 0,
                scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, activation: str = "none",
                negative_slope: float = 0.2, residual: Optional[torch.Tensor] = None,
                residual_scale: Optional[float] = None, residual_zero_point: int = 0,
                residual_before_act: bool = False, out_scale: Optional[float] = None, out_zero_point: int = 0,
                out_range: Optional[tuple[int, int]] = None,
                out_dtype: torch.dtype = torch.float32, return_stats: bool = False, return_acc: bool = False,
                return_float: bool = False, weight_sums: Optional[torch.Tensor] = None, backend: str = "auto",
                k_loop: str = "auto") -> Union[torch.Tensor, ConvResult]:
    """Int8 2-D convolution with a fused epilogue (module docstring: layouts, accumulator, epilogue).

    ``padding``: ``p``, ``(ph, pw)`` or ``(left, right, top, bottom)`` (F.pad order, as in
    :class:`gcompiler.quant.int_ops.IntConv2d`). ``pad_mode``: ``"zeros"`` (the real value 0), ``"reflect"``
    (PyTorch's ReflectionPad2d; padding < H, W) or ``"replicate"``, all by index arithmetic in the loader.
    ``out_range``: ``(qmin, qmax)`` inside the dtype range for narrower activations (e.g. ``(0, 15)``).
    ``weight_sums``: optional precomputed int32 ``[C_out]`` ``w.sum((1, 2, 3))`` for the zero-point correction
    (computed per call otherwise). ``k_loop``: ``"auto"``/``"tap"``/``"flat"`` K-loop strategy of the Triton
    kernel (tests force both). ``scale`` is required.
    """
    where = "conv2d_int8"
    geo = conv_geometry(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups, pad_mode=pad_mode,
                        x_zero_point=x_zero_point, where=where)
    epi = epilogue_spec(out_shape=(geo.N, geo.OH, geo.OW, geo.C_out), device=x.device, scale=scale, bias=bias,
                        activation=activation, negative_slope=negative_slope, residual=residual,
                        residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                        residual_before_act=residual_before_act, out_scale=out_scale, out_zero_point=out_zero_point,
                        out_range=out_range, out_dtype=out_dtype, return_stats=return_stats, return_acc=return_acc,
                        return_float=return_float, where=where)
    if weight_sums is not None:
        if not isinstance(weight_sums, torch.Tensor) or weight_sums.dtype != torch.int32 or \
                tuple(weight_sums.shape) != (geo.C_out,) or weight_sums.device != x.device:
            raise KernelError(f"{where}: weight_sums must be an int32 [{geo.C_out}] tensor on {x.device} "
                              f"(= w.sum((1, 2, 3)))")
    if k_loop not in ("auto", "tap", "flat"):
        raise KernelError(f"{where}: k_loop must be 'auto', 'tap' or 'flat', got {k_loop!r}")
    if _use_triton(backend, x, where):
        from . import _triton
        return _triton.conv2d(x, w, geo, x_zero_point, epi, k_loop=k_loop, weight_sums=weight_sums)
    return _ref.conv_epilogue(_ref.conv2d_acc(x, w, geo, x_zero_point), epi)


def depthwise_conv2d_int8(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair = 1, padding: IntPair = 0,
                          dilation: IntPair = 1, pad_mode: str = "zeros", x_zero_point: int = 0,
                          scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                          activation: str = "none", negative_slope: float = 0.2,
                          residual: Optional[torch.Tensor] = None, residual_scale: Optional[float] = None,
                          residual_zero_point: int = 0, residual_before_act: bool = False,
                          out_scale: Optional[float] = None, out_zero_point: int = 0,
                          out_range: Optional[tuple[int, int]] = None,
                          out_dtype: torch.dtype = torch.float32, return_stats: bool = False,
                          return_acc: bool = False, return_float: bool = False,
                          backend: str = "auto") -> Union[torch.Tensor, ConvResult]:
    """Depthwise int8 convolution (``C_in == C_out == groups``, weight ``[C, KH, KW, 1]``) by a dedicated
    kernel: int32 multiply-adds per tap, loads contiguous along C. Same epilogue and contract as
    :func:`conv2d_int8` (whose ``groups=C`` path computes the same thing through the GEMM kernel)."""
    where = "depthwise_conv2d_int8"
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or w.shape[3] != 1:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise KernelError(f"{where}: w must be [C, KH, KW, 1] (one filter per channel), got {shape}")
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[3] != w.shape[0]:
        raise KernelError(f"{where}: x has {x.shape[3]} channels (dim 3, NHWC) but w has {w.shape[0]} filters; a "
                          f"depthwise conv needs C_in == C_out")
    geo = conv_geometry(x, w, stride=stride, padding=padding, dilation=dilation, groups=w.shape[0],
                        pad_mode=pad_mode, x_zero_point=x_zero_point, where=where)
    epi = epilogue_spec(out_shape=(geo.N, geo.OH, geo.OW, geo.C_out), device=x.device, scale=scale, bias=bias,
                        activation=activation, negative_slope=negative_slope, residual=residual,
                        residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                        residual_before_act=residual_before_act, out_scale=out_scale, out_zero_point=out_zero_point,
                        out_range=out_range, out_dtype=out_dtype, return_stats=return_stats, return_acc=return_acc,
                        return_float=return_float, where=where)
    if _use_triton(backend, x, where):
        from . import _triton
        return _triton.dwconv2d(x, w, geo, x_zero_point, epi)
    return _ref.conv_epilogue(_ref.conv2d_acc(x, w, geo, x_zero_point), epi)


def conv_transpose2d_int8(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair = 2, padding: IntPair = 0,
                          output_padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                          x_zero_point: int = 0, scale: Optional[torch.Tensor] = None,
                          bias: Optional[torch.Tensor] = None, activation: str = "none", negative_slope: float = 0.2,
                          residual: Optional[torch.Tensor] = None, residual_scale: Optional[float] = None,
                          residual_zero_point: int = 0, residual_before_act: bool = False,
                          out_scale: Optional[float] = None, out_zero_point: int = 0,
                          out_range: Optional[tuple[int, int]] = None,
                          out_dtype: torch.dtype = torch.float32, return_stats: bool = False,
                          return_acc: bool = False, return_float: bool = False,
                          backend: str = "auto") -> Union[torch.Tensor, ConvResult]:
    """Int8 transposed convolution (any stride, padding, output_padding, dilation, groups) with the fused
    epilogue of :func:`conv2d_int8`.

    Weight layout: ``[C_out, KH, KW, C_in/groups]``, from PyTorch's ``[C_in, C_out/groups, KH, KW]`` by
    :func:`conv_transpose_weight_to_ohwi` (in/out swapped within each group, taps not flipped). Output size
    ``(H - 1) * stride - 2 * padding + dilation * (K - 1) + output_padding + 1`` as in PyTorch.

    The kernel uses the sub-pixel decomposition: the ``stride_h * stride_w`` output phases are independent
    stride-1 gather convolutions, each over only the taps that reach it (for the CycleGAN 3x3 stride-2
    layers 1, 2, 2 and 4 taps), so no MACs are spent on inserted zeros.
    """
    where = "conv_transpose2d_int8"
    geo = conv_transpose_geometry(x, w, stride=stride, padding=padding, output_padding=output_padding,
                                  dilation=dilation, groups=groups, x_zero_point=x_zero_point, where=where)
    epi = epilogue_spec(out_shape=(geo.N, geo.OH, geo.OW, geo.C_out), device=x.device, scale=scale, bias=bias,
                        activation=activation, negative_slope=negative_slope, residual=residual,
                        residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                        residual_before_act=residual_before_act, out_scale=out_scale, out_zero_point=out_zero_point,
                        out_range=out_range, out_dtype=out_dtype, return_stats=return_stats, return_acc=return_acc,
                        return_float=return_float, where=where)
    if _use_triton(backend, x, where):
        from . import _triton
        return _triton.conv_transpose2d(x, w, geo, x_zero_point, epi)
    return _ref.conv_epilogue(_ref.conv_transpose2d_acc(x, w, geo, x_zero_point), epi)


def instance_norm_act_quant(y: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, *, eps: float = 1e-5,
                            gamma: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None,
                            activation: str = "none", negative_slope: float = 0.2,
                            residual: Optional[torch.Tensor] = None, residual_scale: Optional[float] = None,
                            residual_zero_point: int = 0, residual_before_act: bool = False,
                            out_scale: Optional[float] = None, out_zero_point: int = 0,
                            out_range: Optional[tuple[int, int]] = None,
                            out_dtype: torch.dtype = torch.int8, return_float: bool = False,
                            backend: str = "auto") -> Union[torch.Tensor, ConvResult]:
    """Fused InstanceNorm-apply + activation (+ residual) + quantization on a float32 NHWC ``y``.

    ``sums``/``sumsq`` (float32 ``[N, C]``) are the per-sample per-channel statistics of ``y`` returned by a
    conv with ``return_stats=True``: ``mean = sums / (H*W)``, biased ``var = max(sumsq / (H*W) - mean^2, 0)``
    (one-pass formula in float32: accurate while ``|mean|`` is not orders of magnitude above the standard
    deviation, which holds for conv outputs). Then ``z = (y - mean) / sqrt(var + eps)``, ``z = z * gamma +
    beta`` when affine, and the epilogue of :func:`conv2d_int8` (residual order, activation, requantization
    with round-half-even). ``return_float`` also returns the float ``z`` after activation/residual (e.g. the
    trunk value a later residual add needs) as ``ConvResult.out_float``.

    A CycleGAN residual block thus runs as ``conv(+stats) -> instance_norm_act_quant(relu) -> conv(+stats) ->
    instance_norm_act_quant(residual=x)`` with int8 between the layers.
    """
    where = "instance_norm_act_quant"
    eps = _ref.norm_inputs(y, sums, sumsq, gamma, beta, eps, where)
    epi = _ref.norm_epilogue_spec(y, activation=activation, negative_slope=negative_slope, residual=residual,
                                  residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                                  residual_before_act=residual_before_act, out_scale=out_scale,
                                  out_zero_point=out_zero_point, out_range=out_range, out_dtype=out_dtype,
                                  return_float=return_float, where=where)
    if _use_triton(backend, y, where):
        from . import _triton
        return _triton.instance_norm(y, sums, sumsq, gamma, beta, eps, epi)
    return _ref.instance_norm_act_quant_ref(y, sums, sumsq, eps=eps, gamma=gamma, beta=beta, activation=activation,
                                            negative_slope=negative_slope, residual=residual,
                                            residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                                            residual_before_act=residual_before_act, out_scale=out_scale,
                                            out_zero_point=out_zero_point, out_range=out_range,
                                            out_dtype=out_dtype, return_float=return_float)
