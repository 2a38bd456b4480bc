"""Argument validation and the shared specification of the int8 convolution kernels.

Both the Triton kernels (:mod:`gcompiler.kernels._triton`) and the PyTorch reference
(:mod:`gcompiler.kernels.reference`) consume the frozen specs built here, so that the two can only differ
in how they compute, never in how they read their arguments.

Conventions every kernel follows (see :mod:`gcompiler.kernels.conv` for the full contract):

* activations are NHWC (``[N, H, W, C]``, contiguous), weights ``[C_out, KH, KW, C_in/groups]`` int8;
* the accumulator is ``acc[n, oh, ow, c] = sum_k W[c, k] * (x[k] - x_zero_point)`` in int32, where a
  zero-padded position holds the real value 0 (i.e. the quantized value ``x_zero_point``);
* the float epilogue is ``y = acc * scale[c] + bias[c]`` then activation and residual (order selectable),
  then optional requantization ``q = clamp(round_half_even(y / out_scale) + out_zero_point, qmin, qmax)``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence, Union

import torch

from ..errors import KernelError

IntPair = Union[int, Sequence[int]]

#: padding modes of forward convolutions (index arithmetic in the loaders, never a padded copy)
PAD_MODES = {"zeros": 0, "reflect": 1, "replicate": 2}

#: activation name -> code used by the kernels (a ``tl.constexpr``)
ACTIVATIONS = {"none": 0, "relu": 1, "leaky_relu": 2, "tanh": 3}

#: integer output dtypes and their ranges
QRANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255)}

#: the largest reduction length K for which ``K * 255 * 128`` (the worst |acc| with an unsigned input and
#: a zero point) still fits in int32
MAX_K = (2**31 - 1) // (255 * 128)


class ConvResult(NamedTuple):
    """What a kernel returns when any of ``return_stats``/``return_acc``/``return_float`` is set.

    ``out``: the epilogue output (NHWC, ``out_dtype``); ``sums``/``sumsq``: float32 ``[N, C_out]``
    per-sample per-channel sum and sum of squares of the float epilogue output (pre-requantization),
    or None; ``acc``: the int32 accumulator NHWC (zero-point corrected), or None; ``out_float``: the float32
    epilogue output before requantization (only with an integer ``out_dtype``), or None.
    """

    out: torch.Tensor
    sums: Optional[torch.Tensor]
    sumsq: Optional[torch.Tensor]
    acc: Optional[torch.Tensor]
    out_float: Optional[torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Shapes and hyper-parameters of one (transposed) convolution, validated."""

    N: int
    H: int
    W: int
    C_in: int
    C_out: int
    KH: int
    KW: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_mode: str
    OH: int
    OW: int
    transposed: bool = False
    output_padding: tuple[int, int] = (0, 0)
    #: forward convs: (left, right, top, bottom) as in F.pad; ``padding`` is then (top, left), the offsets
    pad4: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def cin_g(self) -> int:
        return self.C_in // self.groups

    @property
    def cout_g(self) -> int:
        return self.C_out // self.groups

    @property
    def K(self) -> int:
        return self.KH * self.KW * self.cin_g

    @property
    def macs(self) -> int:
        """Multiply-accumulates: output elements x (C_in/groups) x KH x KW (transposed: counted at output
        resolution, as in BRIEF section 5, although the kernel skips the taps that stride leaves empty)."""
        return self.N * self.OH * self.OW * self.C_out * self.K


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """The fused epilogue of a kernel, validated. Scalars are kept as Python floats/ints; kernels round
    floats to float32 exactly as the reference does (``float32(value)``)."""

    scale: Optional[torch.Tensor]  # float32 [C]; None for the InstanceNorm kernel
    bias: Optional[torch.Tensor]  # float32 [C] or None
    activation: str
    negative_slope: float
    residual: Optional[torch.Tensor]  # NHWC, same shape as the output
    residual_scale: float
    residual_zero_point: int
    residual_before_act: bool
    out_dtype: torch.dtype
    out_scale: float
    out_zero_point: int
    out_qmin: int
    out_qmax: int
    return_stats: bool
    return_acc: bool
    return_float: bool

    @property
    def act_code(self) -> int:
        return ACTIVATIONS[self.activation]

    @property
    def quantized(self) -> bool:
        return self.out_dtype in QRANGES

    @property
    def residual_is_int(self) -> bool:
        return self.residual is not None and self.residual.dtype in QRANGES

    @property
    def qmin(self) -> int:
        return self.out_qmin

    @property
    def qmax(self) -> int:
        return self.out_qmax

    @property
    def extras(self) -> bool:
        return self.return_stats or self.return_acc or self.return_float


def pair(value: IntPair, name: str, where: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; a 2-sequence of ints -> a tuple; anything else -> KernelError."""
    if isinstance(value, bool):
        raise KernelError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise KernelError(f"{where}: {name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise KernelError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    return items  # type: ignore[return-value]


def _check_activation_input(x: torch.Tensor, x_zero_point: int, where: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise KernelError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise KernelError(f"{where}: x must be a 4-D NHWC tensor [N, H, W, C], got shape {tuple(x.shape)}")
    if x.dtype not in QRANGES:
        raise KernelError(
            f"{where}: x must be int8 (signed activations) or uint8 (unsigned activations with "
            f"x_zero_point), got {x.dtype}; quantize the input first")
    if isinstance(x_zero_point, bool) or not isinstance(x_zero_point, int):
        raise KernelError(f"{where}: x_zero_point must be an int, got {x_zero_point!r}")
    lo, hi = QRANGES[x.dtype]
    if not lo <= x_zero_point <= hi:
        raise KernelError(f"{where}: x_zero_point {x_zero_point} is outside the {x.dtype} range [{lo}, {hi}]")


def _check_weight(w: torch.Tensor, where: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise KernelError(f"{where}: w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 4:
        raise KernelError(
            f"{where}: w must be a 4-D int8 tensor [C_out, KH, KW, C_in/groups], got shape {tuple(w.shape)}")
    if w.dtype != torch.int8:
        raise KernelError(f"{where}: w must be int8, got {w.dtype}; quantize the weight first")


def padding4(padding: Union[int, Sequence[int]], where: str) -> tuple[int, int, int, int]:
    """``p`` -> all sides; ``(ph, pw)`` -> symmetric; ``(left, right, top, bottom)`` (F.pad order) as is."""
    if isinstance(padding, bool):
        raise KernelError(f"{where}: padding must be an int, (ph, pw) or (left, right, top, bottom); got {padding!r}")
    if isinstance(padding, int):
        return (padding,) * 4  # type: ignore[return-value]
    try:
        items = tuple(padding)
    except TypeError:
        items = ()
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items) or len(items) not in (2, 4):
        raise KernelError(f"{where}: padding must be an int, (ph, pw) or (left, right, top, bottom); got {padding!r}")
    if len(items) == 2:
        return (items[1], items[1], items[0], items[0])
    return items  # type: ignore[return-value]


def conv_geometry(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair, padding: Union[int, Sequence[int]],
                  dilation: IntPair, groups: int, pad_mode: str, x_zero_point: int, where: str) -> ConvGeometry:
    """Validate a forward convolution's operands and return its geometry."""
    _check_activation_input(x, x_zero_point, where)
    _check_weight(w, where)
    s, d = pair(stride, "stride", where), pair(dilation, "dilation", where)
    p4 = padding4(padding, where)
    if min(s) < 1 or min(d) < 1 or min(p4) < 0:
        raise KernelError(f"{where}: need stride >= 1, dilation >= 1, padding >= 0; got stride={s}, "
                          f"dilation={d}, padding={padding}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise KernelError(f"{where}: groups must be a positive int, got {groups!r}")
    if pad_mode not in PAD_MODES:
        raise KernelError(f"{where}: pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    check_same_device(where, x, w=w)
    N, H, W, C_in = x.shape
    C_out, KH, KW, cin_g = w.shape
    if C_in % groups or C_out % groups:
        raise KernelError(f"{where}: channels must be divisible by groups: C_in={C_in}, C_out={C_out}, "
                          f"groups={groups}")
    if cin_g * groups != C_in:
        raise KernelError(
            f"{where}: x has {C_in} channels in dim 3 but w [C_out, KH, KW, C_in/groups] = {tuple(w.shape)} "
            f"with groups={groups} expects {cin_g * groups}; x must be NHWC (convert with nchw_to_nhwc) and "
            f"w OHWI (convert with weight_oihw_to_ohwi)")
    left, right, top, bottom = p4
    if pad_mode == "reflect" and (max(top, bottom) >= H or max(left, right) >= W):
        raise KernelError(f"{where}: reflect padding {p4} (left, right, top, bottom) must be smaller than the "
                          f"input size {(H, W)}")
    OH = (H + top + bottom - d[0] * (KH - 1) - 1) // s[0] + 1
    OW = (W + left + right - d[1] * (KW - 1) - 1) // s[1] + 1
    if OH < 1 or OW < 1 or N < 1:
        raise KernelError(f"{where}: empty output: input {N}x{H}x{W}, kernel {KH}x{KW}, stride {s}, padding {p4}, "
                          f"dilation {d} give {N}x{OH}x{OW}")
    geo = ConvGeometry(N, H, W, C_in, C_out, KH, KW, s, (top, left), d, groups, pad_mode, OH, OW, pad4=p4)
    _check_sizes(geo, where)
    return geo


def conv_transpose_geometry(x: torch.Tensor, w: torch.Tensor, *, stride: IntPair, padding: IntPair,
                            output_padding: IntPair, dilation: IntPair, groups: int, x_zero_point: int,
                            where: str) -> ConvGeometry:
    """Validate a transposed convolution (weight already re-laid-out to ``[C_out, KH, KW, C_in/groups]``)."""
    _check_activation_input(x, x_zero_point, where)
    _check_weight(w, where)
    s, p, d = pair(stride, "stride", where), pair(padding, "padding", where), pair(dilation, "dilation", where)
    op = pair(output_padding, "output_padding", where)
    if min(s) < 1 or min(d) < 1 or min(p) < 0 or min(op) < 0:
        raise KernelError(f"{where}: need stride >= 1, dilation >= 1, padding >= 0, output_padding >= 0; got "
                          f"stride={s}, dilation={d}, padding={p}, output_padding={op}")
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise KernelError(f"{where}: output_padding {op} must be smaller than stride {s} or dilation {d}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise KernelError(f"{where}: groups must be a positive int, got {groups!r}")
    check_same_device(where, x, w=w)
    N, H, W, C_in = x.shape
    C_out, KH, KW, cin_g = w.shape
    if C_in % groups or C_out % groups:
        raise KernelError(f"{where}: channels must be divisible by groups: C_in={C_in}, C_out={C_out}, "
                          f"groups={groups}")
    if cin_g * groups != C_in:
        raise KernelError(
            f"{where}: x has {C_in} channels in dim 3 but w = {tuple(w.shape)} with groups={groups} expects "
            f"{cin_g * groups}; x must be NHWC and w re-laid-out from torch's [C_in, C_out/groups, KH, KW] with "
            f"conv_transpose_weight_to_ohwi(w, groups)")
    OH = (H - 1) * s[0] - 2 * p[0] + d[0] * (KH - 1) + op[0] + 1
    OW = (W - 1) * s[1] - 2 * p[1] + d[1] * (KW - 1) + op[1] + 1
    if OH < 1 or OW < 1 or N < 1:
        raise KernelError(f"{where}: empty output {N}x{OH}x{OW}")
    geo = ConvGeometry(N, H, W, C_in, C_out, KH, KW, s, p, d, groups, "zeros", OH, OW, True, op)
    _check_sizes(geo, where)
    return geo


def _check_sizes(geo: ConvGeometry, where: str) -> None:
    if geo.K > MAX_K:
        raise KernelError(f"{where}: reduction length KH*KW*C_in/groups = {geo.K} exceeds {MAX_K}, where the "
                          f"int32 accumulator could overflow")
    # the kernels index one sample with int32 offsets
    for what, numel in (("input", geo.H * geo.W * geo.C_in), ("output", geo.OH * geo.OW * geo.C_out)):
        if numel >= 2**31:
            raise KernelError(f"{where}: one sample's {what} has {numel} elements, more than int32 offsets allow")


def _float_vector(t: Optional[torch.Tensor], name: str, C: int, where: str, required: bool) -> Optional[torch.Tensor]:
    if t is None:
        if required:
            raise KernelError(f"{where}: {name} is required (float32 [C_out], = s_x * s_w[c])")
        return None
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != 1 or t.numel() != C:
        desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise KernelError(f"{where}: {name} must be a float32 tensor of shape [{C}], got {desc}")
    return t.contiguous()


def _positive_float(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0 or \
            float(value) == float("inf"):
        raise KernelError(f"{where}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def epilogue_spec(*, out_shape: tuple[int, int, int, int], device: torch.device, scale: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], activation: str, negative_slope: float,
                  residual: Optional[torch.Tensor], residual_scale: Optional[float], residual_zero_point: int,
                  residual_before_act: bool, out_scale: Optional[float], out_zero_point: int,
                  out_dtype: torch.dtype, return_stats: bool, return_acc: bool, return_float: bool,
                  where: str, needs_scale: bool = True,
                  out_range: Optional[tuple[int, int]] = None) -> Epilogue:
    """Validate the epilogue arguments of a kernel whose output is ``out_shape`` (NHWC)."""
    C = out_shape[3]
    scale = _float_vector(scale, "scale", C, where, required=needs_scale)
    bias = _float_vector(bias, "bias", C, where, required=False)
    if activation not in ACTIVATIONS:
        raise KernelError(f"{where}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise KernelError(f"{where}: negative_slope must be a number, got {negative_slope!r}")
    if out_dtype not in (torch.int8, torch.uint8, torch.float32):
        raise KernelError(f"{where}: out_dtype must be torch.int8, torch.uint8 or torch.float32, got {out_dtype}")
    o_scale = 1.0
    o_zp = 0
    qlo = qhi = 0
    if out_range is not None and out_dtype not in QRANGES:
        raise KernelError(f"{where}: out_range needs an integer out_dtype, got {out_dtype}")
    if out_dtype in QRANGES:
        if out_scale is None:
            raise KernelError(f"{where}: out_dtype={out_dtype} requantizes the output and needs out_scale")
        o_scale = _positive_float(out_scale, "out_scale", where)
        if isinstance(out_zero_point, bool) or not isinstance(out_zero_point, int):
            raise KernelError(f"{where}: out_zero_point must be an int, got {out_zero_point!r}")
        lo, hi = QRANGES[out_dtype]
        qlo, qhi = lo, hi
        if out_range is not None:
            ok = (isinstance(out_range, (tuple, list)) and len(out_range) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in out_range))
            if not ok or not lo <= out_range[0] < out_range[1] <= hi:
                raise KernelError(f"{where}: out_range must be (qmin, qmax) with {lo} <= qmin < qmax <= {hi} for "
                                  f"{out_dtype} (e.g. (0, 15) for 4-bit unsigned activations), got {out_range!r}")
            qlo, qhi = int(out_range[0]), int(out_range[1])
        if not qlo <= out_zero_point <= qhi:
            raise KernelError(f"{where}: out_zero_point {out_zero_point} is outside the output range "
                              f"[{qlo}, {qhi}]")
        o_zp = out_zero_point
    elif return_float:
        raise KernelError(f"{where}: return_float only makes sense with an integer out_dtype (the output is "
                          f"already float32)")
    r_scale, r_zp = 1.0, 0
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != tuple(out_shape):
            shape = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
            raise KernelError(f"{where}: residual must be an NHWC tensor of the output shape {tuple(out_shape)}, "
                              f"got {shape}")
        if residual.dtype in QRANGES:
            if residual_scale is None:
                raise KernelError(f"{where}: an {residual.dtype} residual needs residual_scale")
            r_scale = _positive_float(residual_scale, "residual_scale", where)
            lo, hi = QRANGES[residual.dtype]
            if isinstance(residual_zero_point, bool) or not isinstance(residual_zero_point, int) or \
                    not lo <= residual_zero_point <= hi:
                raise KernelError(f"{where}: residual_zero_point must be an int in [{lo}, {hi}], got "
                                  f"{residual_zero_point!r}")
            r_zp = residual_zero_point
        elif residual.dtype != torch.float32:
            raise KernelError(f"{where}: residual must be float32, int8 or uint8, got {residual.dtype}")
        if residual.device != device:
            raise KernelError(f"{where}: residual is on {residual.device} but x is on {device}")
        residual = residual.contiguous()
    for name, t in (("scale", scale), ("bias", bias)):
        if t is not None and t.device != device:
            raise KernelError(f"{where}: {name} is on {t.device} but x is on {device}")
    return Epilogue(scale, bias, activation, float(negative_slope), residual, r_scale, r_zp,
                    bool(residual_before_act), out_dtype, o_scale, o_zp, qlo, qhi, bool(return_stats),
                    bool(return_acc), bool(return_float))


def check_same_device(where: str, x: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise KernelError(f"{where}: {name} is on {t.device} but x is on {x.device}")


def pack_result(epi: Epilogue, out: torch.Tensor, sums: Optional[torch.Tensor], sumsq: Optional[torch.Tensor],
                acc: Optional[torch.Tensor], out_float: Optional[torch.Tensor]) -> Union[torch.Tensor, ConvResult]:
    if not epi.extras:
        return out
    return ConvResult(out, sums if epi.return_stats else None, sumsq if epi.return_stats else None,
                      acc if epi.return_acc else None, out_float if epi.return_float else None)
