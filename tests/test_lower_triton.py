"""``lower-to-triton``: zoo generators' integer graphs lowered to the gcompiler custom ops.

Every generator of the zoo is lowered and compared with its integer graph (the reference executor) using the
ops' PyTorch reference backend (fast; checks the graph rewrite and the fusions); three representative ones
(residual + InstanceNorm, depthwise, transposed convs) also run their Triton kernels under the interpreter
(``TRITON_INTERPRET=1``, set at the top of this module, before any kernel is created).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

from gcompiler import models
from gcompiler.deploy.measure import rel_error
from gcompiler.errors import PassError
from gcompiler.kernels.lower import lower_to_triton
from gcompiler.passes.manager import compile as gcompile
from gcompiler.passes.manager import run_pipeline
from gcompiler.quant.int_ops import IntConv2d, IntConvTranspose2d, QuantizeActivation

GENERATORS = {
    "resnet_9blocks": ({"ngf": 8, "n_blocks": 2}, 16),
    "resnet_6blocks": ({"ngf": 8, "dropout": True, "norm": "batch"}, 16),
    "unet_128": ({"ngf": 4}, None),
    "mobile_resnet_9blocks": ({"ngf": 8}, 16),
    "sub_mobile_resnet_9blocks": ({"config": "4_4_8_4_8_8_4_4"}, 16),
    "rrdbnet": ({"nf": 8, "nb": 1, "gc": 4}, 8),
    "srresnet": ({"nf": 8, "nb": 1}, 8),
    "dcgan_g": ({"ngf": 8}, None),
    "sngan_g": ({"ngf": 16}, None),
    "stargan_g": ({"conv_dim": 8, "repeat_num": 1}, 16),
    "cartoongan_g": ({"ngf": 8}, 16),
}


def _int_graph(name: str, kw: dict, size, batch: int = 2, quant: str = ""):
    torch.manual_seed(0)
    m = models.create(name, **kw).eval()
    inputs = models.spec(name).example_inputs(batch=batch, size=size, **kw)
    gm = gcompile(m, f"fold-norms,insert-fake-quant{{{quant}}},convert-to-int" if quant
                  else "fold-norms,insert-fake-quant,convert-to-int", *inputs)
    return gm, inputs


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return rel_error(ref, out)


@pytest.mark.parametrize("small_layers", ["fp16", "int8"])
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_lowered_zoo_generator_matches_integer_graph(name, small_layers):
    kw, size = GENERATORS[name]
    gm, inputs = _int_graph(name, kw, size)
    with torch.no_grad():
        ref = gm(*inputs)
    low = lower_to_triton(copy.deepcopy(gm), small_layers=small_layers, backend="reference")
    records = low.meta["lower_to_triton"]
    n_convs = sum(isinstance(m, (IntConv2d, IntConvTranspose2d)) for m in gm.modules())
    assert len(records) == n_convs
    assert all(r["path"] in ("int8", "fp16") for r in records)
    if small_layers == "int8":  # only weight-only (float input) layers stay 16-bit
        assert all(r["path"] == "int8" or "weight-only" in r["reason"] for r in records), records
    left = [type(m).__name__ for m in low.modules() if isinstance(m, (IntConv2d, IntConvTranspose2d))]
    assert not left, f"unlowered integer convs: {left}"
    with torch.no_grad():
        out = low(*inputs)
    assert out.shape == ref.shape
    # the int8 path is exact up to the epilogue's float32 order; fp32 here for the 16-bit layers (CPU)
    # (measured: 0 with small_layers=int8, at most 7.6e-7 x max|y| with fp16 layers)
    assert _rel_err(out, ref) < 2e-6, _rel_err(out, ref)


@pytest.mark.parametrize("name,kw,size", [
    ("resnet_9blocks", {"ngf": 4, "n_blocks": 1}, 8),          # InstanceNorm + ReLU + residual fusions
    ("sub_mobile_resnet_9blocks", {"config": "4_4_8_4_8_8_4_4", "n_blocks": 1}, 8),  # depthwise kernel
    ("dcgan_g", {"ngf": 4}, None),                              # transposed convs from a 1x1 input
])
def test_lowered_generators_run_the_triton_kernels_under_the_interpreter(name, kw, size):
    pytest.importorskip("triton", reason="triton is not installed")
    from gcompiler.kernels import _triton
    if not _triton.INTERPRET:
        pytest.skip("kernels were created without TRITON_INTERPRET=1")
    gm, inputs = _int_graph(name, kw, size, batch=1)
    with torch.no_grad():
        ref = gm(*inputs)
    low = lower_to_triton(copy.deepcopy(gm), small_layers="int8", backend="triton")
    with torch.no_grad():
        out = low(*inputs)
    # exact accumulators; the fused InstanceNorm's one-pass statistics and the exp-based tanh may move a
    # value by a rounding step (measured: at most 8.9e-6 x max|y|, dcgan_g; 7e-8 on the others)
    assert _rel_err(out, ref) < 5e-5, _rel_err(out, ref)


def test_resnet_fusions_and_cost_model():
    # GS's unsigned [0, 4] ranges: every quantizer is uint8, so the requantization of a residual sum fuses
    gm, inputs = _int_graph("resnet_9blocks", {"ngf": 8, "n_blocks": 2}, 16, quant="act_range=unsigned,act_clip=4")
    low = lower_to_triton(copy.deepcopy(gm), backend="reference")
    by_node = {r["node"]: r for r in low.meta["lower_to_triton"]}
    assert by_node["model_1"]["path"] == "fp16" and "weight-only" in by_node["model_1"]["reason"]
    head = [r for r in low.meta["lower_to_triton"] if r["reason"].endswith("C_out/groups=3")]
    assert head and head[0]["path"] == "fp16"  # RGB output layer: 16-bit
    first = by_node["model_10_conv_block_1"]
    assert first["path"] == "int8"
    assert first["fused"] == ["model_10_conv_block_2", "model_10_conv_block_3", "model_10_conv_block_5_input_quant"]
    # second conv of a residual block: InstanceNorm, the residual add and the next block's quantizer fused
    second = by_node["model_10_conv_block_5"]
    assert second["fused"][0] == "model_10_conv_block_6" and second["fused"][1].startswith("add")
    assert second["fused"][-1].endswith("input_quant")
    # every InstanceNorm after an int8 conv is gone; the quantizers left are those behind 16-bit layers (the
    # RGB stem, and the narrow last upsampling layer at ngf=8)
    assert not any(isinstance(m, nn.InstanceNorm2d) for n, m in low.named_modules() if "conv_block" in n)
    quants = sorted(n for n, m in low.named_modules() if isinstance(m, QuantizeActivation))
    assert quants == ["model_19_input_quant", "model_4_input_quant"], quants
    assert by_node["model_15"]["path"] == "fp16"
    # the ops hand NHWC (channels-last) activations to each other
    outs = []

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n.op == "call_function" and n.target in (torch.ops.gcompiler.qconv2d.default,
                                                        torch.ops.gcompiler.qconv_transpose2d.default,
                                                        torch.ops.gcompiler.instance_norm_act_quant.default):
                outs.append(r[0])
            return r

    with torch.no_grad():
        Recorder(low).run(*inputs)
    assert len(outs) == 2 * sum(r["path"] == "int8" for r in low.meta["lower_to_triton"])
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)
    assert {o.dtype for o in outs} == {torch.float32, torch.uint8}


def test_cost_model_thresholds_and_keep():
    gm, inputs = _int_graph("mobile_resnet_9blocks", {"ngf": 8}, 16)
    low = lower_to_triton(copy.deepcopy(gm), backend="reference")
    recs = low.meta["lower_to_triton"]
    assert any(r["path"] == "fp16" and r["reason"].startswith("depthwise") for r in recs)
    keep = lower_to_triton(copy.deepcopy(gm), backend="reference", small_layers="keep")
    kept = [r for r in keep.meta["lower_to_triton"] if r["path"] == "keep"]
    assert kept and sum(isinstance(m, (IntConv2d, IntConvTranspose2d)) for m in keep.modules()) == len(kept)
    big = lower_to_triton(copy.deepcopy(gm), backend="reference", min_reduction=10**6)
    assert all(r["path"] != "int8" for r in big.meta["lower_to_triton"])
    with torch.no_grad():
        ref = gm(*inputs)
        for g in (keep, big):
            assert _rel_err(g(*inputs), ref) < 2e-6  # measured 4.5e-7


def test_wide_weights_stay_integer_modules():
    torch.manual_seed(0)
    m = models.create("dcgan_g", ngf=8).eval()
    inputs = models.spec("dcgan_g").example_inputs(batch=2, ngf=8)
    float_gm = gcompile(m, "fold-norms", *inputs)
    with torch.no_grad():
        y = float_gm(*inputs)
    # both integer graphs are compiled from the same float graph, which compile() leaves untouched
    gm8 = gcompile(float_gm, "insert-fake-quant,convert-to-int")
    gm12 = gcompile(float_gm, "insert-fake-quant{weight_bits=12},convert-to-int")
    assert not any("Int" in type(mod).__name__ for mod in float_gm.modules())
    with torch.no_grad():
        assert torch.equal(float_gm(*inputs), y)
        e8, e12 = _rel_err(gm8(*inputs), y), _rel_err(gm12(*inputs), y)
    assert e12 < e8  # 12-bit weights are closer to the float model than 8-bit ones (measured below)
    low = lower_to_triton(copy.deepcopy(gm12), backend="reference")
    recs = low.meta["lower_to_triton"]
    wide = [r for r in recs if "12-bit" in r["reason"]]
    assert wide and all(r["path"] == "keep" for r in wide)
    assert all(r["path"] != "int8" for r in recs)  # nothing with 12-bit weights reaches the int8 kernels
    with torch.no_grad():
        assert _rel_err(low(*inputs), gm12(*inputs)) < 2e-6  # measured 0


def test_pipeline_text_options_and_errors():
    gm, inputs = _int_graph("srresnet", {"nf": 8, "nb": 1}, 8)
    with torch.no_grad():
        ref = gm(*inputs)
    low, log = run_pipeline(copy.deepcopy(gm), "lower-to-triton{backend=reference,small_layers=int8}",
                            verify="numeric")
    assert all(r["path"] == "int8" or "weight-only" in r["reason"] for r in low.meta["lower_to_triton"])
    with torch.no_grad():
        assert _rel_err(low(*inputs), ref) < 2e-6
    for bad in (dict(backend="cuda"), dict(small_layers="int4"), dict(min_reduction=-1)):
        with pytest.raises(PassError):
            lower_to_triton(copy.deepcopy(gm), **bad)


def test_fake_tensor_shapes_of_lowered_graph():
    from gcompiler.fx.trace import propagate_shapes
    gm, inputs = _int_graph("dcgan_g", {"ngf": 8}, None)
    low = lower_to_triton(copy.deepcopy(gm), backend="reference", small_layers="int8")
    fake = propagate_shapes(low, *inputs, fake=True)
    with torch.no_grad():
        real = low(*inputs)
    assert tuple(fake.shape) == tuple(real.shape) and fake.dtype == real.dtype
