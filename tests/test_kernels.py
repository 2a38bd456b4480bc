"""Int8 Triton kernels against their PyTorch references, on CPU under the Triton interpreter.

The interpreter must be selected before the kernels are created, i.e. before the first kernel call imports
``gcompiler.kernels._triton``: this module sets ``TRITON_INTERPRET=1`` at its top. The oracle is
:mod:`gcompiler.kernels.reference` (exact float64 accumulation), itself checked against a naive loop
convolution and hand-computed cases. Accumulators must be equal; float epilogue outputs equal up to one
ulp (tanh: 2e-6 absolute); requantized outputs within one quantization step.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton creates the kernels (see module docstring)

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gcompiler.errors import KernelError
from gcompiler.kernels import (ConvResult, conv2d_int8, conv2d_int8_ref, conv_transpose2d_int8,
                               conv_transpose2d_int8_ref, conv_transpose_weight_from_ohwi,
                               conv_transpose_weight_to_ohwi, depthwise_conv2d_int8, depthwise_conv2d_int8_ref,
                               instance_norm_act_quant, instance_norm_act_quant_ref, nchw_to_nhwc, nhwc_to_nchw,
                               weight_ohwi_to_oihw, weight_oihw_to_ohwi)

pytest.importorskip("triton", reason="triton is not installed: the kernels cannot be tested")
from gcompiler.kernels import _triton as K  # noqa: E402

if not K.INTERPRET:
    pytest.skip("the Triton kernels were created without TRITON_INTERPRET=1 (set it before the first kernel "
                "call) and there is no way to run them on CPU", allow_module_level=True)

QR = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


# ------------------------------------------------------------------------------------------------ helpers

def _rand_int(gen: torch.Generator, shape, dtype) -> torch.Tensor:
    lo, hi = QR[dtype]
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int32).to(dtype)


def _ulp(t: torch.Tensor) -> torch.Tensor:
    return (torch.nextafter(t.abs(), torch.full_like(t, float("inf"))) - t.abs())


def assert_same_output(got, ref, activation: str = "none") -> None:
    """float: within one ulp (tanh: 2e-6 absolute); integer: within one quantization step."""
    assert got.dtype == ref.dtype and got.shape == ref.shape, (got.dtype, got.shape, ref.dtype, ref.shape)
    if got.dtype == torch.float32:
        tol = _ulp(ref) + (2e-6 if activation == "tanh" else 0.0)
        err = (got - ref).abs()
        assert bool((err <= tol).all()), f"max float error {err.max().item()} (ulp-level expected)"
    else:
        err = (got.to(torch.int32) - ref.to(torch.int32)).abs()
        assert int(err.max()) <= 1, f"quantized outputs differ by {int(err.max())} steps"


def assert_stats_close(got: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> None:
    # float32 atomic accumulation in any order vs float64: relative to the sum of magnitudes
    assert bool(((got - ref).abs() <= 1e-5 * scale + 1e-6).all()), (got - ref).abs().max()


def compare_results(got: ConvResult, ref: ConvResult, activation: str) -> None:
    assert torch.equal(got.acc, ref.acc), "int32 accumulators differ"
    assert_same_output(got.out, ref.out, activation)
    if ref.out_float is not None:
        assert_same_output(got.out_float, ref.out_float, activation)
    if ref.sums is not None:
        y = ref.out_float if ref.out_float is not None else ref.out
        y64 = y.to(torch.float64)
        assert_stats_close(got.sums.double(), ref.sums.double(), y64.abs().sum((1, 2)))
        assert_stats_close(got.sumsq.double(), ref.sumsq.double(), (y64 * y64).sum((1, 2)))


@st.composite
def epilogues(draw, out_shape, K_red: int, gen_seed: int):
    """Random epilogue keyword arguments for an output of ``out_shape`` and reduction length ``K_red``."""
    gen = torch.Generator().manual_seed(gen_seed)
    C = out_shape[3]
    kw = {}
    # scale so that y is O(1): |acc| ~ sqrt(K) * 128 * 74
    base = 1.0 / (max(K_red, 1) ** 0.5 * 128 * 74)
    kw["scale"] = (torch.rand(C, generator=gen) * 1.5 + 0.5) * base
    if draw(st.booleans()):
        kw["bias"] = torch.randn(C, generator=gen) * 0.5
    kw["activation"] = draw(st.sampled_from(["none", "relu", "leaky_relu", "tanh"]))
    kw["negative_slope"] = draw(st.sampled_from([0.2, 0.01]))
    res_kind = draw(st.sampled_from(["none", "float", "int8", "uint8"]))
    if res_kind == "float":
        kw["residual"] = torch.randn(out_shape, generator=gen)
    elif res_kind != "none":
        dt = torch.int8 if res_kind == "int8" else torch.uint8
        kw["residual"] = _rand_int(gen, out_shape, dt)
        kw["residual_scale"] = draw(st.sampled_from([0.01, 0.0173]))
        kw["residual_zero_point"] = draw(st.integers(*QR[dt]))
    if res_kind != "none":
        kw["residual_before_act"] = draw(st.booleans())
    out_dtype = draw(st.sampled_from([torch.float32, torch.int8, torch.uint8]))
    kw["out_dtype"] = out_dtype
    if out_dtype != torch.float32:
        kw["out_scale"] = draw(st.sampled_from([0.01, 0.02, 1 / 64, 0.037]))
        lo, hi = QR[out_dtype]
        if draw(st.booleans()):  # a narrower activation range, e.g. 4 bits
            lo, hi = (0, 15) if out_dtype == torch.uint8 else (-7, 7)
            kw["out_range"] = (lo, hi)
            kw["out_scale"] *= 8
        kw["out_zero_point"] = draw(st.integers(lo, hi)) if draw(st.booleans()) else max(lo, 0)
        kw["return_float"] = True
    kw["return_stats"] = draw(st.booleans())
    kw["return_acc"] = True
    return kw


@st.composite
def conv_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    N = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 3))
    cin_g = draw(st.integers(1, 6))
    cout_g = draw(st.integers(1, 6))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if draw(st.booleans()):
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        left = right = padding[1]
        top = bottom = padding[0]
    else:  # asymmetric (left, right, top, bottom), as IntConv2d stores absorbed pads
        padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
        left, right, top, bottom = padding
    pad_mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
    lo_h = max(1, dilation[0] * (KH - 1) + 1 - top - bottom, max(top, bottom) + 1 if pad_mode == "reflect" else 1)
    lo_w = max(1, dilation[1] * (KW - 1) + 1 - left - right, max(left, right) + 1 if pad_mode == "reflect" else 1)
    H = draw(st.integers(lo_h, max(lo_h, 7)))
    W = draw(st.integers(lo_w, max(lo_w, 7)))
    x_dtype = draw(st.sampled_from([torch.int8, torch.uint8]))
    zp = draw(st.integers(*QR[x_dtype])) if draw(st.booleans()) else 0
    x = _rand_int(gen, (N, H, W, cin_g * groups), x_dtype)
    w = _rand_int(gen, (cout_g * groups, KH, KW, cin_g), torch.int8)
    OH = (H + top + bottom - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + left + right - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, pad_mode=pad_mode, x_zero_point=zp)
    epi = draw(epilogues((N, OH, OW, cout_g * groups), KH * KW * cin_g, seed + 1))
    k_loop = draw(st.sampled_from(["tap", "flat"]))
    return x, w, geo, epi, k_loop


# ----------------------------------------------------------------------------------- property tests

@settings(deadline=None)
@given(conv_cases())
def test_conv2d_matches_reference(case):
    x, w, geo, epi, k_loop = case
    ref = conv2d_int8_ref(x, w, **geo, **epi)
    got = conv2d_int8(x, w, **geo, **epi, backend="triton", k_loop=k_loop)
    compare_results(got, ref, epi["activation"])


@st.composite
def conv_transpose_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    N = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    cin_g, cout_g = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
    OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
    if OH < 1 or OW < 1:
        padding = (0, 0)
        OH = (H - 1) * stride[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
        OW = (W - 1) * stride[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
    x_dtype = draw(st.sampled_from([torch.int8, torch.uint8]))
    zp = draw(st.integers(*QR[x_dtype])) if draw(st.booleans()) else 0
    x = _rand_int(gen, (N, H, W, cin_g * groups), x_dtype)
    w_torch = _rand_int(gen, (cin_g * groups, cout_g, KH, KW), torch.int8)
    geo = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups,
               x_zero_point=zp)
    epi = draw(epilogues((N, OH, OW, cout_g * groups), KH * KW * cin_g, seed + 1))
    return x, w_torch, geo, epi


@settings(deadline=None)
@given(conv_transpose_cases())
def test_conv_transpose2d_matches_reference_and_torch(case):
    x, w_torch, geo, epi = case
    w = conv_transpose_weight_to_ohwi(w_torch, geo["groups"])
    ref = conv_transpose2d_int8_ref(x, w, **geo, **epi)
    got = conv_transpose2d_int8(x, w, **geo, **epi, backend="triton")
    compare_results(got, ref, epi["activation"])
    # the accumulator is torch's transposed conv of the centered input with torch's weight layout
    xc = nhwc_to_nchw(x).double() - geo["x_zero_point"]
    expect = F.conv_transpose2d(xc, w_torch.double(), None, geo["stride"], geo["padding"], geo["output_padding"],
                                geo["groups"], geo["dilation"])
    assert torch.equal(nhwc_to_nchw(got.acc).double(), expect)


@st.composite
def depthwise_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    N = draw(st.integers(1, 2))
    C = draw(st.integers(1, 40))  # > one 32-channel interpreter tile sometimes
    k = draw(st.sampled_from([1, 3, 5]))
    stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    pad_mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
    lo = max(1, dilation * (k - 1) + 1 - 2 * pad, pad + 1)
    H, W = draw(st.integers(lo, max(lo, 7))), draw(st.integers(lo, max(lo, 7)))
    x_dtype = draw(st.sampled_from([torch.int8, torch.uint8]))
    zp = draw(st.integers(*QR[x_dtype])) if draw(st.booleans()) else 0
    x = _rand_int(gen, (N, H, W, C), x_dtype)
    w = _rand_int(gen, (C, k, k, 1), torch.int8)
    OH = (H + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    OW = (W + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    geo = dict(stride=stride, padding=pad, dilation=dilation, pad_mode=pad_mode, x_zero_point=zp)
    epi = draw(epilogues((N, OH, OW, C), k * k, seed + 1))
    return x, w, geo, epi


@settings(deadline=None)
@given(depthwise_cases())
def test_depthwise_matches_reference(case):
    x, w, geo, epi = case
    ref = depthwise_conv2d_int8_ref(x, w, **geo, **epi)
    got = depthwise_conv2d_int8(x, w, **geo, **epi, backend="triton")
    compare_results(got, ref, epi["activation"])


@st.composite
def norm_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    N, H, W, C = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 40))
    y = torch.randn((N, H, W, C), generator=gen) * 2 + torch.randn(C, generator=gen)
    y64 = y.double()
    sums, sumsq = y64.sum((1, 2)).float(), (y64 * y64).sum((1, 2)).float()
    kw = draw(epilogues((N, H, W, C), 1, seed + 1))
    for key in ("scale", "bias", "return_stats", "return_acc"):
        kw.pop(key, None)
    if draw(st.booleans()):
        kw["gamma"] = torch.rand(C, generator=gen) + 0.5
        kw["beta"] = torch.randn(C, generator=gen)
    kw["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    return y, sums, sumsq, kw


@settings(deadline=None)
@given(norm_cases())
def test_instance_norm_act_quant_matches_reference(case):
    y, sums, sumsq, kw = case
    ref = instance_norm_act_quant_ref(y, sums, sumsq, **kw)
    got = instance_norm_act_quant(y, sums, sumsq, **kw, backend="triton")
    if isinstance(ref, ConvResult):
        assert_same_output(got.out, ref.out, kw["activation"])
        assert_same_output(got.out_float, ref.out_float, kw["activation"])
    else:
        assert_same_output(got, ref, kw["activation"])


# --------------------------------------------------------------------------- hand-computed & oracles

def test_reference_matches_naive_loop_convolution():
    gen = torch.Generator().manual_seed(3)
    for (N, H, W, cin_g, cout_g, g, k, s, pad4, d, mode, dt, zp) in [
            (2, 5, 6, 3, 2, 2, 3, 2, (1, 1, 1, 1), 1, "zeros", torch.uint8, 17),
            (1, 6, 5, 2, 3, 1, 3, 1, (2, 1, 0, 2), 2, "reflect", torch.int8, -5),
            (1, 4, 5, 2, 2, 1, 3, 1, (3, 0, 1, 2), 1, "replicate", torch.uint8, 0),
            (1, 4, 4, 4, 1, 4, 2, 1, (0, 1, 1, 0), 1, "zeros", torch.int8, 0)]:
        x = _rand_int(gen, (N, H, W, cin_g * g), dt)
        w = _rand_int(gen, (cout_g * g, k, k, cin_g), torch.int8)
        acc = conv2d_int8_ref(x, w, stride=s, padding=pad4, dilation=d, groups=g, pad_mode=mode, x_zero_point=zp,
                              scale=torch.ones(cout_g * g), return_acc=True).acc
        xn, wn = x.numpy().astype(np.int64) - zp, w.numpy().astype(np.int64)
        left, _, top, _ = pad4
        OH, OW = acc.shape[1:3]
        expect = np.zeros((N, OH, OW, cout_g * g), dtype=np.int64)
        for n in range(N):
            for oh in range(OH):
                for ow in range(OW):
                    for co in range(cout_g * g):
                        grp = co // cout_g
                        total = 0
                        for kh in range(k):
                            for kw in range(k):
                                ih, iw = oh * s - top + kh * d, ow * s - left + kw * d
                                if mode == "reflect":
                                    ih = -ih if ih < 0 else (2 * H - 2 - ih if ih >= H else ih)
                                    iw = -iw if iw < 0 else (2 * W - 2 - iw if iw >= W else iw)
                                elif mode == "replicate":
                                    ih, iw = min(max(ih, 0), H - 1), min(max(iw, 0), W - 1)
                                elif not (0 <= ih < H and 0 <= iw < W):
                                    continue
                                total += int(wn[co, kh, kw] @ xn[n, ih, iw, grp * cin_g:(grp + 1) * cin_g])
                        expect[n, oh, ow, co] = total
        assert np.array_equal(acc.numpy(), expect)
        got = conv2d_int8(x, w, stride=s, padding=pad4, dilation=d, groups=g, pad_mode=mode, x_zero_point=zp,
                          scale=torch.ones(cout_g * g), return_acc=True, backend="triton").acc
        assert np.array_equal(got.numpy(), expect)


def test_reflect_padding_and_round_half_even_by_hand():
    x = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    w = torch.ones(1, 3, 3, 1, dtype=torch.int8)
    for backend in ("triton", "reference"):
        r = conv2d_int8(x, w, padding=1, pad_mode="reflect", scale=torch.ones(1), return_acc=True, backend=backend)
        # corner window rows/cols reflect to (1, 0, 1): 5+4+5 + 2+1+2 + 5+4+5 = 33; centre: 45
        assert r.acc[0, 0, 0, 0].item() == 33 and r.acc[0, 1, 1, 0].item() == 45
        z = conv2d_int8(x, w, padding=1, x_zero_point=1, scale=torch.ones(1), return_acc=True, backend=backend)
        # zero padding is the real 0: corner = (1-1)+(2-1)+(4-1)+(5-1) = 8
        assert z.acc[0, 0, 0, 0].item() == 8
    # y = acc * 0.5 with acc = 1, 3, 5, -1, -3 -> 0.5, 1.5, 2.5, -0.5, -1.5 -> half to even: 0, 2, 2, -0, -2
    x = torch.tensor([1, 3, 5, -1, -3], dtype=torch.int8).reshape(1, 1, 5, 1)
    w = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    for backend in ("triton", "reference"):
        q = conv2d_int8(x, w, scale=torch.full((1,), 0.5), out_scale=1.0, out_dtype=torch.int8, backend=backend)
        assert q.flatten().tolist() == [0, 2, 2, 0, -2]
        q = conv2d_int8(x, w, scale=torch.full((1,), 0.5), out_scale=1.0, out_zero_point=10, out_dtype=torch.uint8,
                        activation="relu", backend=backend)
        assert q.flatten().tolist() == [10, 12, 12, 10, 10]


def test_conv_transpose_weight_layout_is_not_flipped():
    # a single input pixel scatters the (unflipped) kernel, as torch's ConvTranspose2d does
    w_torch = torch.arange(-4, 5, dtype=torch.int8).reshape(1, 1, 3, 3)
    x = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    w = conv_transpose_weight_to_ohwi(w_torch)
    for backend in ("triton", "reference"):
        acc = conv_transpose2d_int8(x, w, stride=2, scale=torch.ones(1), return_acc=True, backend=backend).acc
        assert acc[0, :, :, 0].tolist() == w_torch[0, 0].int().tolist()


def test_layout_helpers_round_trip():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 2, generator=gen)
    assert torch.equal(weight_ohwi_to_oihw(weight_oihw_to_ohwi(w)), w)
    assert torch.equal(nhwc_to_nchw(nchw_to_nhwc(w)), w)
    assert torch.equal(conv_transpose_weight_from_ohwi(conv_transpose_weight_to_ohwi(w, 2), 2), w)
    assert weight_oihw_to_ohwi(w)[5, 2, 1, 3] == w[5, 3, 2, 1]
    # transposed layout: out[g*Cog + co, kh, kw, ci] = w[g*Cig + ci, co, kh, kw] with g = 2, Cig = 3, Cog = 4
    assert conv_transpose_weight_to_ohwi(w, 2)[1 * 4 + 2, 1, 0, 2] == w[1 * 3 + 2, 2, 1, 0]


def test_multi_tile_indexing(monkeypatch):
    """Small interpreter tiles: several M tiles per sample (stats from several atomics), several N tiles,
    several K blocks, for both K loops and the transposed and depthwise kernels."""
    monkeypatch.setitem(K.INTERP_MMA_BLOCKS, "BLOCK_M", 16)
    monkeypatch.setitem(K.INTERP_MMA_BLOCKS, "BLOCK_N", 16)
    monkeypatch.setitem(K.INTERP_MMA_BLOCKS, "BLOCK_K", 16)
    monkeypatch.setitem(K.INTERP_EW_BLOCKS, "BLOCK_M", 16)
    monkeypatch.setitem(K.INTERP_EW_BLOCKS, "BLOCK_N", 16)
    gen = torch.Generator().manual_seed(1)
    x = _rand_int(gen, (1, 5, 7, 18), torch.uint8)  # 35 pixels: 3 M tiles; 18 channels: 2 K blocks per tap
    w = _rand_int(gen, (17, 3, 3, 18), torch.int8)  # 17 output channels: 2 N tiles
    epi = dict(scale=torch.rand(17, generator=gen) * 1e-4, bias=torch.randn(17, generator=gen), activation="relu",
               return_stats=True, return_acc=True)
    ref = conv2d_int8_ref(x, w, padding=1, pad_mode="reflect", x_zero_point=9, **epi)
    for k_loop in ("tap", "flat"):
        got = conv2d_int8(x, w, padding=1, pad_mode="reflect", x_zero_point=9, **epi, backend="triton",
                          k_loop=k_loop)
        compare_results(got, ref, "relu")
    xt = x[:, :3, :3, :]
    wt = conv_transpose_weight_to_ohwi(_rand_int(gen, (18, 17, 3, 3), torch.int8))
    kw = dict(stride=2, padding=1, output_padding=1, x_zero_point=200, scale=torch.rand(17, generator=gen) * 1e-4,
              return_stats=True, return_acc=True)
    compare_results(conv_transpose2d_int8(xt, wt, **kw, backend="triton"), conv_transpose2d_int8_ref(xt, wt, **kw),
                    "none")
    wd = _rand_int(gen, (18, 3, 3, 1), torch.int8)
    kw = dict(padding=1, x_zero_point=100, scale=torch.rand(18, generator=gen) * 1e-3, return_stats=True,
              return_acc=True, out_scale=0.05, out_dtype=torch.int8, return_float=True)
    compare_results(depthwise_conv2d_int8(x, wd, **kw, backend="triton"), depthwise_conv2d_int8_ref(x, wd, **kw),
                    "none")


def test_resnet_block_path_against_float_instance_norm():
    """conv(+stats) -> instance_norm_act_quant(relu) -> conv(+stats) -> instance_norm_act_quant(+residual),
    the CycleGAN block as int8 kernels, against float64 InstanceNorm on the reference conv outputs."""
    gen = torch.Generator().manual_seed(7)
    C, s_x, s_h = 24, 4 / 255, 4 / 255
    x_float = torch.rand(2, 8, 8, C, generator=gen) * 3
    xq = torch.clamp(torch.round(x_float / s_x), 0, 255).to(torch.uint8)
    w1, w2 = (_rand_int(gen, (C, 3, 3, C), torch.int8) for _ in range(2))
    s_w = torch.rand(C, generator=gen) * 1e-3 + 1e-3
    b = torch.randn(C, generator=gen) * 0.1
    conv_kw = dict(padding=1, pad_mode="reflect", scale=s_x * s_w, bias=b, return_stats=True)
    r1 = conv2d_int8(xq, w1, **conv_kw, backend="triton")
    h = instance_norm_act_quant(r1.out, r1.sums, r1.sumsq, activation="relu", out_scale=s_h,
                                out_dtype=torch.uint8, backend="triton")
    r2 = conv2d_int8(h, w2, **{**conv_kw, "scale": s_h * s_w}, backend="triton")
    out = instance_norm_act_quant(r2.out, r2.sums, r2.sumsq, residual=xq, residual_scale=s_x, out_scale=s_x,
                                  out_dtype=torch.uint8, backend="triton")

    def inorm(y):  # float64 InstanceNorm (biased variance) on NHWC
        return nchw_to_nhwc(F.instance_norm(nhwc_to_nchw(y.double()), eps=1e-5))

    y1 = conv2d_int8_ref(xq, w1, **{**conv_kw, "return_stats": False})
    h_ref = torch.clamp(torch.round(torch.relu(inorm(y1)) / s_h), 0, 255)
    assert (h.double() - h_ref).abs().max() <= 1
    # second stage from the kernel's own h, so that one-step differences in h do not propagate
    y2 = conv2d_int8_ref(h, w2, **{**conv_kw, "scale": s_h * s_w, "return_stats": False})
    out_ref = torch.clamp(torch.round((inorm(y2) + (xq.double() * s_x)) / s_x), 0, 255)
    assert (out.double() - out_ref).abs().max() <= 1
    assert (out.double() != out_ref).double().mean() < 0.01


def test_stats_equal_sums_of_float_output():
    gen = torch.Generator().manual_seed(5)
    x = _rand_int(gen, (3, 5, 4, 8), torch.int8)
    w = _rand_int(gen, (5, 3, 3, 8), torch.int8)
    r = conv2d_int8(x, w, padding=1, scale=torch.full((5,), 1e-4), activation="leaky_relu", return_stats=True,
                    out_dtype=torch.int8, out_scale=0.01, return_float=True, backend="triton")
    y = r.out_float.double()
    assert torch.allclose(r.sums.double(), y.sum((1, 2)), rtol=1e-5, atol=1e-5)
    assert torch.allclose(r.sumsq.double(), (y * y).sum((1, 2)), rtol=1e-5, atol=1e-5)


def test_auto_backend_runs_the_interpreted_kernel_on_cpu():
    gen = torch.Generator().manual_seed(2)
    x = _rand_int(gen, (1, 4, 4, 3), torch.uint8)
    w = _rand_int(gen, (2, 3, 3, 3), torch.int8)
    auto = conv2d_int8(x, w, padding=1, scale=torch.ones(2), return_acc=True)
    ref = conv2d_int8(x, w, padding=1, scale=torch.ones(2), return_acc=True, backend="reference")
    assert torch.equal(auto.acc, ref.acc) and torch.equal(auto.out, ref.out)
    assert K.INTERPRET


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("fn", [conv2d_int8, conv2d_int8_ref])
def test_argument_errors(fn):
    x = torch.zeros(1, 5, 5, 4, dtype=torch.uint8)
    w = torch.zeros(6, 3, 3, 4, dtype=torch.int8)
    s = torch.ones(6)
    bad = [
        (dict(x=x.float()), "int8"),
        (dict(x=x[0]), "4-D NHWC"),
        (dict(x=torch.zeros(1, 4, 5, 5, dtype=torch.uint8)), "NHWC"),
        (dict(w=w.float()), "int8"),
        (dict(w=torch.zeros(6, 3, 3, 2, dtype=torch.int8), groups=3), "divisible by groups"),
        (dict(padding=5, pad_mode="reflect"), "reflect padding"),
        (dict(pad_mode="circular"), "pad_mode"),
        (dict(padding=(1, 1, 1, 5), pad_mode="reflect"), "reflect padding"),
        (dict(out_dtype=torch.uint8, out_scale=0.1, out_range=(0, 300)), "out_range"),
        (dict(out_dtype=torch.uint8, out_scale=0.1, out_range=(0, 15), out_zero_point=20), "out_zero_point"),
        (dict(out_range=(0, 15)), "integer out_dtype"),
        (dict(out_dtype=torch.int8), "out_scale"),
        (dict(out_dtype=torch.float16), "out_dtype"),
        (dict(x_zero_point=300), "x_zero_point"),
        (dict(scale=torch.ones(5)), "scale"),
        (dict(scale=None), "scale"),
        (dict(residual=torch.zeros(1, 5, 5, 6)), "residual"),
        (dict(residual=torch.zeros(1, 3, 3, 6, dtype=torch.int8)), "residual_scale"),
        (dict(activation="gelu"), "activation"),
        (dict(stride=0), "stride"),
        (dict(padding=(1, 2, 3)), "padding"),
        (dict(x=torch.zeros(1, 1, 1, 4, dtype=torch.uint8)), "empty output"),
    ]
    for over, needle in bad:
        args = dict(x=x, w=w, scale=s)
        args.update(over)
        with pytest.raises(KernelError, match=needle):
            fn(args.pop("x"), args.pop("w"), **args)
            pytest.fail(f"no KernelError for {over}")


def test_other_kernel_errors():
    x = torch.zeros(1, 5, 5, 4, dtype=torch.uint8)
    with pytest.raises(KernelError, match=r"\[C, KH, KW, 1\]"):
        depthwise_conv2d_int8(x, torch.zeros(4, 3, 3, 2, dtype=torch.int8), scale=torch.ones(4))
    with pytest.raises(KernelError, match="C_in == C_out"):
        depthwise_conv2d_int8(x, torch.zeros(3, 3, 3, 1, dtype=torch.int8), scale=torch.ones(3))
    with pytest.raises(KernelError, match="output_padding"):
        conv_transpose2d_int8(x, torch.zeros(2, 3, 3, 4, dtype=torch.int8), stride=2, output_padding=2,
                              scale=torch.ones(2))
    with pytest.raises(KernelError, match="conv_transpose_weight_to_ohwi"):
        conv_transpose2d_int8(x, torch.zeros(2, 3, 3, 3, dtype=torch.int8), scale=torch.ones(2))
    y = torch.zeros(1, 3, 3, 4)
    with pytest.raises(KernelError, match="sums"):
        instance_norm_act_quant(y, torch.zeros(4), torch.zeros(1, 4), out_scale=0.1)
    with pytest.raises(KernelError, match="gamma and beta"):
        instance_norm_act_quant(y, torch.zeros(1, 4), torch.zeros(1, 4), gamma=torch.ones(4), out_scale=0.1)
    with pytest.raises(KernelError, match="float32 NHWC"):
        instance_norm_act_quant(y.to(torch.int8), torch.zeros(1, 4), torch.zeros(1, 4), out_scale=0.1)
    with pytest.raises(KernelError, match="backend"):
        conv2d_int8(x, torch.zeros(2, 3, 3, 4, dtype=torch.int8), scale=torch.ones(2), backend="cuda")
    with pytest.raises(KernelError, match="k_loop"):
        conv2d_int8(x, torch.zeros(2, 3, 3, 4, dtype=torch.int8), scale=torch.ones(2), k_loop="nope")


# ------------------------------------------------------------------------------------- GPU compilation

def test_kernels_compile_for_sm90_without_a_gpu():
    """The two main conv variants compile for sm_90 with ptxas, use wgmma and are software-pipelined.

    Runs in a subprocess: this process created the kernels for the interpreter."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "gcompiler.kernels.aot", "--quick"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("conv")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        assert " wgmma " in row and "async=0 " not in row and "spill=0" in row, row
