"""Triton kernels: int8 implicit-GEMM convolution, depthwise convolution, transposed convolution and the
fused InstanceNorm-apply, each with the same fused epilogue.

Importing this module needs Triton but no GPU. Whether the kernels run compiled (CUDA tensors) or under the
Triton interpreter (CPU tensors) is decided *when this module is imported*, by ``TRITON_INTERPRET=1`` in the
environment (``triton.jit`` reads it at decoration time). :mod:`gcompiler.kernels.conv` imports this module
lazily, on the first kernel call, so setting the variable before that first call is enough.

Kernel structure (all kernels):

* one program computes a ``BLOCK_M x BLOCK_N`` tile of output pixels x output channels of *one* sample
  (tiles never straddle samples, so the InstanceNorm statistics are a column reduction plus one atomic add
  per channel and tile);
* the conv reduction runs over K = (kh, kw, ci) with ``tl.dot`` on int8 operands and an int32 accumulator.
  Two K loops: ``tap`` (one flat loop over taps x channel blocks; per tap the row addresses are recomputed
  and the channel block is a contiguous vector load; best when C_in/groups >= BLOCK_K) and ``flat`` (K is
  tiled directly and each element's (kh, kw, ci) is decoded; no padding waste for small channel counts);
* unsigned (uint8) inputs are mapped to int8 in the loader by flipping the top bit (``u - 128``), because
  the tensor-core MMA multiplies signed int8; the zero point is then corrected exactly in int32 with
  ``acc -= (zp - 128) * sum_k W[c, k]`` (precomputed per channel, per phase for transposed convs). For
  signed activations use int8 with zero point 0 (no flip needed);
* zero-padded positions load the raw zero point (the quantized real 0), so the global correction stays
  exact; reflect / replicate padding reflects / clamps the row indices instead (no pad copy); padding may
  be asymmetric (only the top/left offsets enter the kernel, the output size carries the rest);
* the epilogue casts to float32 once: ``y = acc * scale + bias`` (no FMA contraction: the kernels are
  launched with ``enable_fp_fusion=False`` so the float results equal PyTorch's bit for bit), residual and
  activation, statistics, then ``q = rint(clamp(y / out_scale, qmin - zp, qmax - zp)) + zp`` with IEEE
  division and round-half-even (exactly ``torch.round``).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

from ..errors import KernelError
from ._common import PAD_MODES, ConvGeometry, ConvResult, Epilogue, pack_result

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the platform
    triton = None
    tl = None
    HAVE_TRITON = False


def _interpret_flag() -> bool:
    if not HAVE_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: True when the kernels below were created for the Triton interpreter (CPU tensors)
INTERPRET = _interpret_flag()

if not HAVE_TRITON:  # pragma: no cover
    raise ImportError("gcompiler.kernels._triton needs the triton package")


# ------------------------------------------------------------------------------------------ jit helpers

@triton.jit
def _rint(v):
    # Round half to even for |v| < 2**22 (callers clamp to the int8/uint8 range first): adding 1.5 * 2**23
    # moves v into [2**23, 2**24) where the float32 spacing is 1, so the FPU's round-to-nearest-even picks
    # the integer; the subtraction is exact. Works identically compiled and interpreted.
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _tanh(y):
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0, -t, t)


@triton.jit
def _pad_index(i, size, PAD_MODE: tl.constexpr):
    # PAD_MODE 1 (reflect): single reflection about the edges (valid for padding < size, checked on the
    # host); 2 (replicate): clamp to the edge. Zero padding (0) masks the load instead.
    if PAD_MODE == 1:
        i = tl.where(i < 0, -i, i)
        i = tl.where(i >= size, 2 * size - 2 - i, i)
    else:
        i = tl.minimum(tl.maximum(i, 0), size - 1)
    return i


@triton.jit
def _epilogue(y, rows_ok, out_rows, cols, cols_ok, n,
              res_ptr, out_ptr, outf_ptr, sums_ptr, sumsq_ptr,
              C_out, res_scale, res_zp, out_scale, out_zp, slope,
              ACT: tl.constexpr, HAS_RES: tl.constexpr, RES_IS_INT: tl.constexpr, RES_BEFORE_ACT: tl.constexpr,
              QUANT: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, STATS: tl.constexpr,
              STORE_FLOAT: tl.constexpr):
    """y: float32 [BLOCK_M, BLOCK_N] pre-activation; out_rows: int64 [BLOCK_M] = output pixel index * C_out."""
    offs = out_rows[:, None] + cols[None, :]
    mask = rows_ok[:, None] & cols_ok[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + offs, mask=mask, other=0)
        if RES_IS_INT:
            r = (r.to(tl.float32) - res_zp) * res_scale
        if RES_BEFORE_ACT:
            y = y + r
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = tl.where(y >= 0, y, y * slope)
    elif ACT == 3:
        y = _tanh(y)
    if HAS_RES:
        if not RES_BEFORE_ACT:
            y = y + r
    if STATS:
        ym = tl.where(mask, y, 0.0)
        sbase = n * C_out + cols
        tl.atomic_add(sums_ptr + sbase, tl.sum(ym, axis=0), mask=cols_ok)
        tl.atomic_add(sumsq_ptr + sbase, tl.sum(ym * ym, axis=0), mask=cols_ok)
    if QUANT:
        if STORE_FLOAT:
            tl.store(outf_ptr + offs, y, mask=mask)
        v = tl.math.div_rn(y, out_scale)
        v = tl.minimum(tl.maximum(v, QMIN - out_zp + 0.0), QMAX - out_zp + 0.0)
        q = _rint(v) + out_zp
        tl.store(out_ptr + offs, q.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def _conv_epilogue(acc, rows_ok, out_rows, cols, cols_ok, co, n, wsum_ptr, wsum_off, zp_corr,
                   scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
                   C_out, res_scale, res_zp, out_scale, out_zp, slope,
                   HAS_ZP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                   RES_IS_INT: tl.constexpr, RES_BEFORE_ACT: tl.constexpr, QUANT: tl.constexpr,
                   QMIN: tl.constexpr, QMAX: tl.constexpr, STATS: tl.constexpr, STORE_ACC: tl.constexpr,
                   STORE_FLOAT: tl.constexpr):
    if HAS_ZP:
        wsum = tl.load(wsum_ptr + wsum_off + co, mask=cols_ok, other=0)
        acc = acc - zp_corr * wsum[None, :]
    if STORE_ACC:
        tl.store(acc_ptr + out_rows[:, None] + cols[None, :], acc, mask=rows_ok[:, None] & cols_ok[None, :])
    scale = tl.load(scale_ptr + co, mask=cols_ok, other=0.0)
    y = acc.to(tl.float32) * scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=cols_ok, other=0.0)
        y = y + bias[None, :]
    _epilogue(y, rows_ok, out_rows, cols, cols_ok, n, res_ptr, out_ptr, outf_ptr, sums_ptr, sumsq_ptr,
              C_out, res_scale, res_zp, out_scale, out_zp, slope,
              ACT, HAS_RES, RES_IS_INT, RES_BEFORE_ACT, QUANT, QMIN, QMAX, STATS, STORE_FLOAT)


# ------------------------------------------------------------------------------------------- conv kernel

@triton.jit
def _conv2d_kernel(
        x_ptr, w_ptr, wsum_ptr, scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
        N_BATCH, H, W, C_in, OH, OW, C_out, CIN_G, COUT_G, K_TOTAL,
        x_zp, zp_corr, res_scale, res_zp, out_scale, out_zp, slope,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, PAD_MODE: tl.constexpr, X_UNSIGNED: tl.constexpr,
        HAS_ZP: tl.constexpr, PAD_ZP: tl.constexpr, FLAT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
        ACT: tl.constexpr, HAS_RES: tl.constexpr, RES_IS_INT: tl.constexpr, RES_BEFORE_ACT: tl.constexpr,
        QUANT: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, STATS: tl.constexpr, STORE_ACC: tl.constexpr,
        STORE_FLOAT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    OHW = OH * OW
    tiles_m = tl.cdiv(OHW, BLOCK_M)
    n = pid_m // tiles_m
    mt = pid_m - n * tiles_m

    rm = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rm < OHW
    oh = rm // OW
    ow = rm - oh * OW
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW

    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_ok = cn < COUT_G
    co = g * COUT_G + cn

    x_base = x_ptr + n.to(tl.int64) * (H * W * C_in) + g * CIN_G
    w_cols = w_ptr + co.to(tl.int64) * K_TOTAL
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)

    if FLAT_K:
        for k0 in range(0, K_TOTAL, BLOCK_K):
            k = k0 + rk
            k_ok = k < K_TOTAL
            tap = k // CIN_G
            ci = k - tap * CIN_G
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0[:, None] + kh[None, :] * DH
            iw = iw0[:, None] + kw[None, :] * DW
            a_mask = rows_ok[:, None] & k_ok[None, :]
            if PAD_MODE != 0:
                ih = _pad_index(ih, H, PAD_MODE)
                iw = _pad_index(iw, W, PAD_MODE)
            else:
                a_mask = a_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if PAD_ZP:
                a = tl.load(x_base + (ih * W + iw) * C_in + ci[None, :], mask=a_mask, other=x_zp)
            else:
                a = tl.load(x_base + (ih * W + iw) * C_in + ci[None, :], mask=a_mask, other=0)
            if X_UNSIGNED:
                a = (a ^ 0x80).to(tl.int8, bitcast=True)
            b = tl.load(w_cols[None, :] + k[:, None], mask=k_ok[:, None] & cols_ok[None, :], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        n_cb = tl.cdiv(CIN_G, BLOCK_K)
        for t in range(0, KH * KW * n_cb):
            tap = t // n_cb
            cb = t - tap * n_cb
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0 + kh * DH
            iw = iw0 + kw * DW
            r_ok = rows_ok
            if PAD_MODE != 0:
                ih = _pad_index(ih, H, PAD_MODE)
                iw = _pad_index(iw, W, PAD_MODE)
            else:
                r_ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ci = cb * BLOCK_K + rk
            ci_ok = ci < CIN_G
            a_ptrs = x_base + ((ih * W + iw) * C_in)[:, None] + ci[None, :]
            if PAD_ZP:
                a = tl.load(a_ptrs, mask=r_ok[:, None] & ci_ok[None, :], other=x_zp)
            else:
                a = tl.load(a_ptrs, mask=r_ok[:, None] & ci_ok[None, :], other=0)
            if X_UNSIGNED:
                a = (a ^ 0x80).to(tl.int8, bitcast=True)
            b = tl.load(w_cols[None, :] + (tap * CIN_G + ci)[:, None], mask=ci_ok[:, None] & cols_ok[None, :],
                        other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    out_rows = (n.to(tl.int64) * OHW + rm) * C_out
    _conv_epilogue(acc, rows_ok, out_rows, co, cols_ok, co, n, wsum_ptr, 0, zp_corr,
                   scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
                   C_out, res_scale, res_zp, out_scale, out_zp, slope,
                   HAS_ZP, HAS_BIAS, ACT, HAS_RES, RES_IS_INT, RES_BEFORE_ACT, QUANT, QMIN, QMAX, STATS,
                   STORE_ACC, STORE_FLOAT)


# ------------------------------------------------------------------------------------- transposed conv

@triton.jit
def _conv_transpose2d_kernel(
        x_ptr, w_ptr, wsum_ptr, taps_ptr, ntaps_ptr, scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr,
        sums_ptr, sumsq_ptr,
        N_BATCH, H, W, C_in, OH, OW, C_out, CIN_G, COUT_G, K_TOTAL, OHP, OWP,
        x_zp, zp_corr, res_scale, res_zp, out_scale, out_zp, slope,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, X_UNSIGNED: tl.constexpr,
        HAS_ZP: tl.constexpr, PAD_ZP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
        HAS_RES: tl.constexpr, RES_IS_INT: tl.constexpr, RES_BEFORE_ACT: tl.constexpr, QUANT: tl.constexpr,
        QMIN: tl.constexpr, QMAX: tl.constexpr, STATS: tl.constexpr, STORE_ACC: tl.constexpr, STORE_FLOAT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Sub-pixel (phase) decomposition: output pixels with oh % SH == rh and ow % SW == rw form a stride-1
    # gather conv over the taps listed in taps_ptr[phase] (host-computed: only taps that hit that phase),
    # so no multiply is spent on the zeros a dilated-input formulation would insert.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = pid_z // (SH * SW)
    ph = pid_z - g * (SH * SW)
    rh = ph // SW
    rw = ph - rh * SW
    MP = OHP * OWP
    tiles_m = tl.cdiv(MP, BLOCK_M)
    n = pid_m // tiles_m
    mt = pid_m - n * tiles_m

    rm = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    j = rm // OWP
    i = rm - j * OWP
    oh = rh + SH * j
    ow = rw + SW * i
    rows_ok = (rm < MP) & (oh < OH) & (ow < OW)

    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_ok = cn < COUT_G
    co = g * COUT_G + cn

    x_base = x_ptr + n.to(tl.int64) * (H * W * C_in) + g * CIN_G
    w_cols = w_ptr + co.to(tl.int64) * K_TOTAL
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)

    ntap = tl.load(ntaps_ptr + ph)
    n_cb = tl.cdiv(CIN_G, BLOCK_K)
    tab = taps_ptr + ph * (KH * KW * 3)
    for t in range(0, ntap * n_cb):
        ti = t // n_cb
        cb = t - ti * n_cb
        tap = tl.load(tab + ti * 3)
        ih = j + tl.load(tab + ti * 3 + 1)
        iw = i + tl.load(tab + ti * 3 + 2)
        r_ok = rows_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ci = cb * BLOCK_K + rk
        ci_ok = ci < CIN_G
        a_ptrs = x_base + ((ih * W + iw) * C_in)[:, None] + ci[None, :]
        if PAD_ZP:
            a = tl.load(a_ptrs, mask=r_ok[:, None] & ci_ok[None, :], other=x_zp)
        else:
            a = tl.load(a_ptrs, mask=r_ok[:, None] & ci_ok[None, :], other=0)
        if X_UNSIGNED:
            a = (a ^ 0x80).to(tl.int8, bitcast=True)
        b = tl.load(w_cols[None, :] + (tap * CIN_G + ci)[:, None], mask=ci_ok[:, None] & cols_ok[None, :],
                    other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    out_rows = ((n.to(tl.int64) * OH + oh) * OW + ow) * C_out
    _conv_epilogue(acc, rows_ok, out_rows, co, cols_ok, co, n, wsum_ptr, ph * C_out, zp_corr,
                   scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
                   C_out, res_scale, res_zp, out_scale, out_zp, slope,
                   HAS_ZP, HAS_BIAS, ACT, HAS_RES, RES_IS_INT, RES_BEFORE_ACT, QUANT, QMIN, QMAX, STATS,
                   STORE_ACC, STORE_FLOAT)


# ------------------------------------------------------------------------------------------- depthwise

@triton.jit
def _dwconv2d_kernel(
        x_ptr, w_ptr, scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
        N_BATCH, H, W, C, OH, OW,
        x_zp, res_scale, res_zp, out_scale, out_zp, slope,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, PAD_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
        ACT: tl.constexpr, HAS_RES: tl.constexpr, RES_IS_INT: tl.constexpr, RES_BEFORE_ACT: tl.constexpr,
        QUANT: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, STATS: tl.constexpr,
        STORE_ACC: tl.constexpr, STORE_FLOAT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Depthwise: no reduction over channels, so no MMA; int32 multiply-adds over the KH*KW taps, loads
    # contiguous along C (NHWC). The zero point is subtracted in the loader (exact, no correction needed).
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    OHW = OH * OW
    tiles_m = tl.cdiv(OHW, BLOCK_M)
    n = pid_m // tiles_m
    mt = pid_m - n * tiles_m
    rm = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rm < OHW
    oh = rm // OW
    ow = rm - oh * OW
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    x_base = x_ptr + n.to(tl.int64) * (H * W * C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for tap in tl.static_range(KH * KW):
        kh = tap // KW
        kw = tap % KW
        ih = ih0 + kh * DH
        iw = iw0 + kw * DW
        r_ok = rows_ok
        if PAD_MODE != 0:
            ih = _pad_index(ih, H, PAD_MODE)
            iw = _pad_index(iw, W, PAD_MODE)
        else:
            r_ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_base + ((ih * W + iw) * C)[:, None] + c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                     other=x_zp)
        wv = tl.load(w_ptr + c * (KH * KW) + tap, mask=c_ok, other=0)
        acc += (xv.to(tl.int32) - x_zp) * wv.to(tl.int32)[None, :]
    out_rows = (n.to(tl.int64) * OHW + rm) * C
    _conv_epilogue(acc, rows_ok, out_rows, c, c_ok, c, n, scale_ptr, 0, 0,
                   scale_ptr, bias_ptr, res_ptr, out_ptr, outf_ptr, acc_ptr, sums_ptr, sumsq_ptr,
                   C, res_scale, res_zp, out_scale, out_zp, slope,
                   False, HAS_BIAS, ACT, HAS_RES, RES_IS_INT, RES_BEFORE_ACT, QUANT, QMIN, QMAX, STATS,
                   STORE_ACC, STORE_FLOAT)


# --------------------------------------------------------------------------------- InstanceNorm-apply

@triton.jit
def _instance_norm_kernel(
        y_ptr, sums_ptr, sumsq_ptr, gamma_ptr, beta_ptr, res_ptr, out_ptr, outf_ptr,
        N_BATCH, HW, C, eps, res_scale, res_zp, out_scale, out_zp, slope,
        AFFINE: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, RES_IS_INT: tl.constexpr,
        RES_BEFORE_ACT: tl.constexpr, QUANT: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
        STORE_FLOAT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    tiles_m = tl.cdiv(HW, BLOCK_M)
    n = pid_m // tiles_m
    mt = pid_m - n * tiles_m
    rm = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rm < HW
    c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    hw = HW + 0.0
    s = tl.load(sums_ptr + n * C + c, mask=c_ok, other=0.0)
    ss = tl.load(sumsq_ptr + n * C + c, mask=c_ok, other=1.0)
    mean = tl.math.div_rn(s, hw)
    var = tl.maximum(tl.math.div_rn(ss, hw) - mean * mean, 0.0)
    inv = tl.math.div_rn(tl.full([BLOCK_N], 1.0, tl.float32), tl.math.sqrt_rn(var + eps))
    out_rows = (n.to(tl.int64) * HW + rm) * C
    y = tl.load(y_ptr + out_rows[:, None] + c[None, :], mask=rows_ok[:, None] & c_ok[None, :], other=0.0)
    z = (y - mean[None, :]) * inv[None, :]
    if AFFINE:
        gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0)
        beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
        z = z * gamma[None, :] + beta[None, :]
    _epilogue(z, rows_ok, out_rows, c, c_ok, n, res_ptr, out_ptr, outf_ptr, sums_ptr, sumsq_ptr,
              C, res_scale, res_zp, out_scale, out_zp, slope,
              ACT, HAS_RES, RES_IS_INT, RES_BEFORE_ACT, QUANT, QMIN, QMAX, False, STORE_FLOAT)


# ----------------------------------------------------------------------------------------- autotuning

def _mma_configs() -> list:
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Int8 MMAs want K tiles of >= 32 bytes; 128-wide
    # tiles feed Hopper's wgmma (m64nNk32). Tiles of 256 x 128 and wider spill registers on sm_90 (checked
    # with `python -m gcompiler.kernels.aot --sweep`), so the largest tile here is 128 x 128 (or 64 x 256);
    # the small tiles keep slim layers and batch 1 occupied.
    shapes = [
        (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (64, 256, 64, 8, 3),
        (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4), (64, 64, 128, 4, 3),
        (128, 32, 64, 4, 4), (64, 32, 64, 4, 4), (64, 64, 32, 4, 4),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def _prune_mma_configs(configs, named_args, **kwargs):
    # Drop configs whose N tile is far wider than the channels of one group or whose M tile exceeds a
    # sample's pixels (they only add masked work); keep at least the smallest config.
    cout_g = named_args["COUT_G"]
    m_sample = named_args["OH"] * named_args["OW"]
    keep = [c for c in configs
            if c.kwargs["BLOCK_N"] <= max(32, triton.next_power_of_2(cout_g))
            and c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(m_sample))]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def _elementwise_configs() -> list:
    # 8-16 elements per thread: the depthwise kernel keeps KH*KW unrolled loads in flight per element
    shapes = [(64, 64, 8), (128, 32, 8), (32, 128, 8), (64, 32, 4), (32, 64, 4), (128, 64, 8)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=2) for m, n, w in shapes]


_KEY = ["N_BATCH", "OH", "OW", "COUT_G", "CIN_G", "K_TOTAL", "FLAT_K", "KH", "KW"]
_RESET = ["sums_ptr", "sumsq_ptr"]  # autotuning reruns the kernel: the atomically summed stats must restart

_conv2d_tuned = triton.autotune(_mma_configs(), key=_KEY, reset_to_zero=_RESET,
                                prune_configs_by={"early_config_prune": _prune_mma_configs})(_conv2d_kernel)
_conv_transpose2d_tuned = triton.autotune(
    _mma_configs(), key=["N_BATCH", "OH", "OW", "COUT_G", "CIN_G", "K_TOTAL", "KH", "KW", "SH", "SW"],
    reset_to_zero=_RESET, prune_configs_by={"early_config_prune": _prune_mma_configs})(_conv_transpose2d_kernel)
_dwconv2d_tuned = triton.autotune(_elementwise_configs(), key=["N_BATCH", "OH", "OW", "C", "KH", "KW"],
                                  reset_to_zero=_RESET)(_dwconv2d_kernel)
_instance_norm_tuned = triton.autotune(_elementwise_configs(), key=["N_BATCH", "HW", "C"])(_instance_norm_kernel)

# Fixed tiles for the interpreter, where every program instance and every op runs as numpy code with a
# large per-op overhead: few mid-sized tiles keep the CPU tests fast. Tests shrink them (16 is the smallest
# tile tl.dot accepts) to exercise multi-tile indexing.
INTERP_MMA_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}
INTERP_EW_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 32}

#: options passed to every compiled launch (see the module docstring)
_LAUNCH_OPTS = {"enable_fp_fusion": False}


# --------------------------------------------------------------------------------------------- launchers

class _Buffers:
    """Output tensors of one launch and the dummies that stand in for unused pointers."""

    def __init__(self, shape: tuple, device: torch.device, epi: Epilogue, with_acc: bool):
        self.out = torch.empty(shape, dtype=epi.out_dtype, device=device)
        self.outf = torch.empty(shape, dtype=torch.float32, device=device) if (
            epi.quantized and epi.return_float) else None
        self.acc = torch.empty(shape, dtype=torch.int32, device=device) if (with_acc and epi.return_acc) else None
        N, C = shape[0], shape[3]
        self.sums = torch.zeros((N, C), dtype=torch.float32, device=device) if epi.return_stats else None
        self.sumsq = torch.zeros((N, C), dtype=torch.float32, device=device) if epi.return_stats else None
        self.dummy_f = torch.zeros(1, dtype=torch.float32, device=device)
        self.dummy_i = torch.zeros(1, dtype=torch.int32, device=device)

    def f(self, t: Optional[torch.Tensor]) -> torch.Tensor:
        return self.dummy_f if t is None else t

    def i(self, t: Optional[torch.Tensor]) -> torch.Tensor:
        return self.dummy_i if t is None else t


def _epilogue_flags(epi: Epilogue, buf: _Buffers) -> dict:
    return dict(ACT=epi.act_code, HAS_RES=epi.residual is not None, RES_IS_INT=epi.residual_is_int,
                RES_BEFORE_ACT=epi.residual_before_act, QUANT=epi.quantized, QMIN=epi.qmin, QMAX=epi.qmax,
                STORE_FLOAT=buf.outf is not None)


def _check_device(x: torch.Tensor, where: str) -> None:
    if INTERPRET:
        return
    if not x.is_cuda:
        raise KernelError(f"{where}: the Triton kernels were compiled for the GPU but the tensors are on {x.device}; "
                          f"move them to CUDA, use backend='reference', or set TRITON_INTERPRET=1 before the "
                          f"first kernel call to run them under the Triton interpreter")


def _zero_point_terms(x: torch.Tensor, x_zero_point: int) -> tuple[bool, int]:
    unsigned = x.dtype == torch.uint8
    return unsigned, x_zero_point - (128 if unsigned else 0)


def _pad_needs_zp(geo: ConvGeometry, x_zero_point: int) -> bool:
    # Zero padding must read the zero point (the quantized real 0). When that is 0 (or padding reflects)
    # the masked loads fill 0, which the zero-filling async copies do for free; a non-zero fill value costs
    # a select per loaded element.
    return x_zero_point != 0 and geo.pad_mode == "zeros" and max(geo.pad4) > 0


def choose_k_loop(cin_g: int, k_loop: str) -> bool:
    """True for the ``flat`` K loop. ``auto``: flat when a channel block would be mostly padding."""
    if k_loop == "flat":
        return True
    if k_loop == "tap":
        return False
    if k_loop != "auto":
        raise KernelError(f"k_loop must be 'auto', 'tap' or 'flat', got {k_loop!r}")
    return cin_g < 32 or cin_g % 16 != 0


def conv2d(x: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, x_zero_point: int, epi: Epilogue,
           k_loop: str = "auto", weight_sums: Optional[torch.Tensor] = None) -> Union[torch.Tensor, ConvResult]:
    """Launch :func:`_conv2d_kernel` (arguments already validated by :mod:`._common`)."""
    _check_device(x, "conv2d_int8")
    x = x.contiguous()
    w = w.contiguous()
    flat = choose_k_loop(geo.cin_g, k_loop)
    unsigned, zp_corr = _zero_point_terms(x, x_zero_point)
    buf = _Buffers((geo.N, geo.OH, geo.OW, geo.C_out), x.device, epi, with_acc=True)
    wsum = None
    if zp_corr != 0:
        wsum = weight_sums if weight_sums is not None else w.to(torch.int32).sum(dim=(1, 2, 3), dtype=torch.int32)
    res = epi.residual
    args = (x, w, buf.i(wsum), epi.scale, buf.f(epi.bias), res if res is not None else buf.dummy_f, buf.out,
            buf.f(buf.outf), buf.i(buf.acc), buf.f(buf.sums), buf.f(buf.sumsq),
            geo.N, geo.H, geo.W, geo.C_in, geo.OH, geo.OW, geo.C_out, geo.cin_g, geo.cout_g, geo.K,
            x_zero_point, zp_corr, epi.residual_scale, epi.residual_zero_point, epi.out_scale,
            epi.out_zero_point, epi.negative_slope)
    flags = dict(KH=geo.KH, KW=geo.KW, SH=geo.stride[0], SW=geo.stride[1], PH=geo.padding[0], PW=geo.padding[1],
                 DH=geo.dilation[0], DW=geo.dilation[1], PAD_MODE=PAD_MODES[geo.pad_mode], X_UNSIGNED=unsigned,
                 HAS_ZP=zp_corr != 0, PAD_ZP=_pad_needs_zp(geo, x_zero_point), FLAT_K=flat,
                 HAS_BIAS=epi.bias is not None, STATS=epi.return_stats,
                 STORE_ACC=buf.acc is not None, **_epilogue_flags(epi, buf))
    ohw = geo.OH * geo.OW
    if INTERPRET:
        meta = dict(INTERP_MMA_BLOCKS)
        grid = (geo.N * triton.cdiv(ohw, meta["BLOCK_M"]), triton.cdiv(geo.cout_g, meta["BLOCK_N"]), geo.groups)
        _conv2d_kernel[grid](*args, **flags, **meta)
    else:
        def grid(meta):
            return (geo.N * triton.cdiv(ohw, meta["BLOCK_M"]), triton.cdiv(geo.cout_g, meta["BLOCK_N"]),
                    geo.groups)
        _conv2d_tuned[grid](*args, **flags, **_LAUNCH_OPTS)
    return pack_result(epi, buf.out, buf.sums, buf.sumsq, buf.acc, buf.outf)


def transpose_taps(geo: ConvGeometry) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
    """Per output phase ``(rh, rw)`` (index ``rh * SW + rw``) the taps that reach it:
    ``(kh * KW + kw, off_h, off_w)`` with ``ih = oh // SH + off_h`` (exact), and the tap counts."""
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    table, counts = [], []
    for rh in range(sh):
        khs = [(kh, (rh + ph - kh * dh) // sh) for kh in range(geo.KH) if (rh + ph - kh * dh) % sh == 0]
        for rw in range(sw):
            kws = [(kw, (rw + pw - kw * dw) // sw) for kw in range(geo.KW) if (rw + pw - kw * dw) % sw == 0]
            taps = [(kh * geo.KW + kw, oh_, ow_) for kh, oh_ in khs for kw, ow_ in kws]
            table.append(taps)
            counts.append(len(taps))
    return table, counts


_TABLES: dict = {}


def _transpose_tables(KH: int, KW: int, stride: tuple, padding: tuple, dilation: tuple, device: torch.device):
    """Cached device tensors of :func:`transpose_taps`: the ``[phases, KH*KW, 3]`` tap table, the tap counts and
    a ``[phases, KH*KW]`` 0/1 mask of the taps per phase (created once per geometry, outside any graph
    capture, so that later calls do no host-to-device copies)."""
    key = (KH, KW, tuple(stride), tuple(padding), tuple(dilation), str(device))
    if key not in _TABLES:
        geo = ConvGeometry(1, 1, 1, 1, 1, KH, KW, tuple(stride), tuple(padding), tuple(dilation), 1, "zeros", 1, 1,
                           True)
        table, counts = transpose_taps(geo)
        ntk = KH * KW
        flat, mask = [], []
        for taps in table:
            row = [v for tap in taps for v in tap]
            flat.extend(row + [0] * (3 * ntk - len(row)))
            hit = {tap[0] for tap in taps}
            mask.append([1 if t in hit else 0 for t in range(ntk)])
        _TABLES[key] = (torch.tensor(flat, dtype=torch.int32, device=device),
                        torch.tensor(counts, dtype=torch.int32, device=device),
                        torch.tensor(mask, dtype=torch.int32, device=device))
    return _TABLES[key]


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, x_zero_point: int,
                     epi: Epilogue) -> Union[torch.Tensor, ConvResult]:
    """Launch :func:`_conv_transpose2d_kernel` (weight ``[C_out, KH, KW, C_in/g]``)."""
    _check_device(x, "conv_transpose2d_int8")
    x = x.contiguous()
    w = w.contiguous()
    unsigned, zp_corr = _zero_point_terms(x, x_zero_point)
    sh, sw = geo.stride
    taps_t, ntaps_t, phase_mask = _transpose_tables(geo.KH, geo.KW, geo.stride, geo.padding, geo.dilation,
                                                    x.device)
    buf = _Buffers((geo.N, geo.OH, geo.OW, geo.C_out), x.device, epi, with_acc=True)
    wsum = None
    if zp_corr != 0:
        # per phase: sum of W over the taps that reach it (int32 exact; device ops only, graph-capturable)
        w32 = w.to(torch.int32).reshape(geo.C_out, geo.KH * geo.KW, geo.cin_g).sum(dim=2, dtype=torch.int32)
        wsum = (w32[None, :, :] * phase_mask[:, None, :]).sum(dim=2, dtype=torch.int32).contiguous()
    res = epi.residual
    ohp, owp = triton.cdiv(geo.OH, sh), triton.cdiv(geo.OW, sw)
    args = (x, w, buf.i(wsum), taps_t, ntaps_t, epi.scale, buf.f(epi.bias),
            res if res is not None else buf.dummy_f, buf.out, buf.f(buf.outf), buf.i(buf.acc), buf.f(buf.sums),
            buf.f(buf.sumsq),
            geo.N, geo.H, geo.W, geo.C_in, geo.OH, geo.OW, geo.C_out, geo.cin_g, geo.cout_g, geo.K, ohp, owp,
            x_zero_point, zp_corr, epi.residual_scale, epi.residual_zero_point, epi.out_scale,
            epi.out_zero_point, epi.negative_slope)
    flags = dict(KH=geo.KH, KW=geo.KW, SH=sh, SW=sw, X_UNSIGNED=unsigned, HAS_ZP=zp_corr != 0,
                 PAD_ZP=x_zero_point != 0,
                 HAS_BIAS=epi.bias is not None, STATS=epi.return_stats, STORE_ACC=buf.acc is not None,
                 **_epilogue_flags(epi, buf))
    mp = ohp * owp
    if INTERPRET:
        meta = dict(INTERP_MMA_BLOCKS)
        grid = (geo.N * triton.cdiv(mp, meta["BLOCK_M"]), triton.cdiv(geo.cout_g, meta["BLOCK_N"]),
                geo.groups * sh * sw)
        _conv_transpose2d_kernel[grid](*args, **flags, **meta)
    else:
        def grid(meta):
            return (geo.N * triton.cdiv(mp, meta["BLOCK_M"]), triton.cdiv(geo.cout_g, meta["BLOCK_N"]),
                    geo.groups * sh * sw)
        _conv_transpose2d_tuned[grid](*args, **flags, **_LAUNCH_OPTS)
    return pack_result(epi, buf.out, buf.sums, buf.sumsq, buf.acc, buf.outf)


def dwconv2d(x: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, x_zero_point: int,
             epi: Epilogue) -> Union[torch.Tensor, ConvResult]:
    """Launch :func:`_dwconv2d_kernel` (``groups == C_in == C_out``, weight ``[C, KH, KW, 1]``)."""
    _check_device(x, "depthwise_conv2d_int8")
    x = x.contiguous()
    w = w.contiguous()
    buf = _Buffers((geo.N, geo.OH, geo.OW, geo.C_out), x.device, epi, with_acc=True)
    res = epi.residual
    args = (x, w, epi.scale, buf.f(epi.bias), res if res is not None else buf.dummy_f, buf.out, buf.f(buf.outf),
            buf.i(buf.acc), buf.f(buf.sums), buf.f(buf.sumsq),
            geo.N, geo.H, geo.W, geo.C_in, geo.OH, geo.OW,
            x_zero_point, epi.residual_scale, epi.residual_zero_point, epi.out_scale, epi.out_zero_point,
            epi.negative_slope)
    flags = dict(KH=geo.KH, KW=geo.KW, SH=geo.stride[0], SW=geo.stride[1], PH=geo.padding[0], PW=geo.padding[1],
                 DH=geo.dilation[0], DW=geo.dilation[1], PAD_MODE=PAD_MODES[geo.pad_mode],
                 HAS_BIAS=epi.bias is not None, STATS=epi.return_stats, STORE_ACC=buf.acc is not None,
                 **_epilogue_flags(epi, buf))
    ohw = geo.OH * geo.OW
    if INTERPRET:
        meta = dict(INTERP_EW_BLOCKS)
        grid = (geo.N * triton.cdiv(ohw, meta["BLOCK_M"]), triton.cdiv(geo.C_out, meta["BLOCK_N"]))
        _dwconv2d_kernel[grid](*args, **flags, **meta)
    else:
        def grid(meta):
            return (geo.N * triton.cdiv(ohw, meta["BLOCK_M"]), triton.cdiv(geo.C_out, meta["BLOCK_N"]))
        _dwconv2d_tuned[grid](*args, **flags, **_LAUNCH_OPTS)
    return pack_result(epi, buf.out, buf.sums, buf.sumsq, buf.acc, buf.outf)


def instance_norm(y: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, gamma: Optional[torch.Tensor],
                  beta: Optional[torch.Tensor], eps: float, epi: Epilogue) -> Union[torch.Tensor, ConvResult]:
    """Launch :func:`_instance_norm_kernel`."""
    _check_device(y, "instance_norm_act_quant")
    y = y.contiguous()
    N, H, W, C = y.shape
    buf = _Buffers((N, H, W, C), y.device, epi, with_acc=False)
    res = epi.residual
    args = (y, sums.contiguous(), sumsq.contiguous(), buf.f(gamma), buf.f(beta),
            res if res is not None else buf.dummy_f, buf.out, buf.f(buf.outf),
            N, H * W, C, eps, epi.residual_scale, epi.residual_zero_point, epi.out_scale, epi.out_zero_point,
            epi.negative_slope)
    flags = dict(AFFINE=gamma is not None, **_epilogue_flags(epi, buf))
    if INTERPRET:
        meta = dict(INTERP_EW_BLOCKS)
        grid = (N * triton.cdiv(H * W, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"]))
        _instance_norm_kernel[grid](*args, **flags, **meta)
    else:
        def grid(meta):
            return (N * triton.cdiv(H * W, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"]))
        _instance_norm_tuned[grid](*args, **flags, **_LAUNCH_OPTS)
    return pack_result(epi, buf.out, None, None, None, buf.outf)
