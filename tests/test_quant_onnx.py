"""ONNX export (float and QDQ integer graphs) and ONNX Runtime round trips."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import gcompiler
from gcompiler.errors import ConfigError
from gcompiler.models import create
from gcompiler.passes.manager import run_pipeline
from gcompiler.quant.calibrate import calibrate

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from gcompiler.quant.onnx_export import (ExportError, export_onnx, layerwise_onnx_check, op_counts,  # noqa: E402
                                         ort_session, run_onnx)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(gm, *xs):
    with torch.no_grad():
        return gm(*xs)


def _int_resnet(options: str = "act_range=unsigned") -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    gm = gcompiler.trace(create("resnet_9blocks", ngf=4, n_blocks=2).eval(), x)
    gm, _ = run_pipeline(gm, f"fold-norms,insert-fake-quant{{{options}}}", verify="none")
    calibrate(gm, [x])
    gi, _ = run_pipeline(gm, "convert-to-int", verify="none")
    return gi, x


def test_float_resnet_exports_with_reflection_padding_instancenorm_transposed_conv_tanh():
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    gm = gcompiler.trace(create("resnet_9blocks", ngf=4, n_blocks=2).eval(), x)
    model = export_onnx(gm, x)
    counts = op_counts(model)
    for op in ("Pad", "InstanceNormalization", "ConvTranspose", "Tanh", "Conv"):
        assert counts.get(op, 0) > 0, op
    assert any(a.s == b"reflect" for n in model.graph.node if n.op_type == "Pad" for a in n.attribute)
    assert model.opset_import[0].version >= 17
    y = run_onnx(ort_session(model, threads=1), x)[0]
    assert torch.allclose(y, _run(gm, x), atol=1e-5)


def test_integer_graph_round_trip_matches_the_reference_within_one_step(tmp_path):
    gi, x = _int_resnet()
    model = export_onnx(gi, x, path=tmp_path / "int.onnx", debug_outputs=True)
    counts = op_counts(tmp_path / "int.onnx")
    assert counts["QuantizeLinear"] == sum(1 for n in gi.graph.nodes if "input_quant" in n.name)
    init = {i.name: i for i in model.graph.initializer}
    assert init["model_10_conv_block_1.weight_q"].data_type == 3  # int8 weights
    assert len(init["model_10_conv_block_1.weight_scale"].dims) == 1  # per-channel scale vector
    outs = run_onnx(ort_session(model, threads=1), x)
    y, codes = outs[0], outs[1:]
    ref_codes = []

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if "input_quant" in n.name:
                ref_codes.append(out)
            return out

    with torch.no_grad():
        y_ref = Rec(gi).run(x)
    assert len(codes) == len(ref_codes) > 0
    diffs = [int((got.long() - ref.long()).abs().max()) for got, ref in zip(codes, ref_codes)]
    assert all(got.dtype == ref.dtype == torch.uint8 for got, ref in zip(codes, ref_codes))
    # ORT's float ops (conv, InstanceNorm) round differently from torch's: where a value sits on a rounding tie
    # the 8-bit codes differ by one step; the first layer where that happens differs by exactly one step ...
    first = next((d for d in diffs if d), 0)
    assert first <= 1
    # ... and teacher-forced, every layer agrees with the reference within one step
    per_layer = layerwise_onnx_check(gi, x)
    assert len(per_layer) == len(ref_codes) and all(dq <= 1 for dq, _ in per_layer.values())
    assert all(err <= 1e-5 for dq, err in per_layer.values() if dq == 0)
    assert float((y - y_ref).abs().max()) <= 0.04  # measured 0.019 (max|y| 0.9)


def test_single_layer_codes_and_accumulation_are_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16) * 3
    gm = gcompiler.trace(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect")), x)
    gi, _ = run_pipeline(gm, "insert-fake-quant{quantize_first_input=true,act_range=signed,act_clip=5,weight_bits=4},"
                             "convert-to-int", verify="none")
    y, codes = run_onnx(ort_session(export_onnx(gi, x, debug_outputs=True), threads=1), x)
    q = gi.get_submodule(next(n.target for n in gi.graph.nodes if "input_quant" in n.name))
    assert torch.equal(codes, q(x))  # Clip + QuantizeLinear to int8 in [-127, 127]
    assert torch.allclose(y, _run(gi, x), atol=1e-5)


@pytest.mark.parametrize("act_range", ["unsigned", "signed"])
def test_requantized_export_uses_int8_kernels(tmp_path, act_range):
    gi, x = _int_resnet(f"act_range={act_range}")
    quantized = [gi.get_submodule(str(n.target)) for n in gi.graph.nodes if n.op == "call_module"
                 and type(gi.get_submodule(str(n.target))).__name__.startswith("IntConv")
                 and gi.get_submodule(str(n.target)).input_quantized]
    assert any(m.transposed for m in quantized)
    model = export_onnx(gi, x, requantize_outputs=True, min_int8_channels=1)
    opt = tmp_path / "opt.onnx"
    y = run_onnx(ort_session(model, threads=1, optimized_model_path=opt), x)[0]
    counts = op_counts(opt)
    # every conv with a quantized input runs as QLinearConv, transposed ones via conv + DepthToSpace
    assert counts.get("QLinearConv", 0) == len(quantized) and "ConvTranspose" not in counts
    # (one more DepthToSpace per float head split into pixel phases, which starts with a SpaceToDepth)
    assert counts.get("DepthToSpace", 0) == sum(m.transposed for m in quantized) + counts.get("SpaceToDepth", 0)
    # one more 8-bit rounding per conv: close to the reference, not equal
    y_ref = _run(gi, x)
    # measured: mean 0.013 / 0.017, max 0.068 / 0.079 (unsigned / signed)
    assert float((y - y_ref).abs().mean()) < 0.02 and float((y - y_ref).abs().max()) < 0.15
    # layers with few output channels stay float by default (int8 kernels lose there)
    model = export_onnx(gi, x, requantize_outputs=True)
    run_onnx(ort_session(model, threads=1, optimized_model_path=opt), x)
    assert op_counts(opt).get("QLinearConv", 0) == sum(m.out_channels >= 16 for m in quantized)


def _export_without_phase_split(gi, x):
    """The same requantized export with the phase split of float heads switched off: what it must match."""
    from gcompiler.quant import onnx_export

    orig = onnx_export._Emitter.phase_split
    try:
        onnx_export._Emitter.phase_split = lambda self, *a, **k: None
        return export_onnx(gi, x, requantize_outputs=True)
    finally:
        onnx_export._Emitter.phase_split = orig


def test_float_rgb_head_of_an_int8_export_runs_as_pixel_phases():
    """The RGB head stays float in a requantized export; it is written as SpaceToDepth -> Conv (12 outputs, 4x4)
    -> DepthToSpace, which computes the same sums as the 7x7 conv with 3 outputs."""
    gi, x = _int_resnet()
    head = [n for n in gi.graph.nodes if n.op == "call_module" and type(gi.get_submodule(str(n.target))).__name__
            == "IntConv2d" and gi.get_submodule(str(n.target)).out_channels == 3]
    assert len(head) == 1 and gi.get_submodule(str(head[0].target)).kernel_size == (7, 7)
    split = export_onnx(gi, x, requantize_outputs=True)
    y = run_onnx(ort_session(split, threads=1), x)[0]
    convs = [n for n in split.graph.node if n.op_type == "Conv"]
    weights = {i.name: i for i in split.graph.initializer}
    counts = op_counts(split)  # the head, and here (ngf 4) also the stem conv with 4 outputs
    assert counts.get("SpaceToDepth", 0) == 2 and counts.get("DepthToSpace", 0) >= 2
    shapes = [tuple(weights[c.input[1]].dims) for c in convs if c.input[1] in weights]
    assert (12, 16, 4, 4) in shapes and (16, 12, 4, 4) in shapes  # 4 phases x (3 or 4 outputs), 4x4 kernels
    assert not any(s[0] <= 4 for s in shapes)  # no conv with 3 or 4 outputs is left
    plain = _export_without_phase_split(gi, x)
    y_plain = run_onnx(ort_session(plain, threads=1), x)[0]
    assert float((y - y_plain).abs().max()) <= 1e-5 * float(y_plain.abs().max())  # re-associated sums only


def test_zero_padded_float_head_of_an_int8_export_runs_as_pixel_phases():
    """SRResNet's head (nf -> 3, 9x9, zero padding 4 as a Conv attribute) gets an explicit Pad, then the phases."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12, 12)
    gm = gcompiler.trace(create("srresnet", nf=8, nb=1, scale=2, bn=True).eval(), x)
    gm, _ = run_pipeline(gm, "fold-norms,insert-fake-quant", verify="none")
    calibrate(gm, [x])
    gi, _ = run_pipeline(gm, "convert-to-int", verify="none")
    split = export_onnx(gi, x, requantize_outputs=True)
    assert op_counts(split).get("SpaceToDepth", 0) == 1
    plain = _export_without_phase_split(gi, x)
    y, y_plain = (run_onnx(ort_session(m, threads=1), x)[0] for m in (split, plain))
    assert float((y - y_plain).abs().max()) <= 1e-5 * float(y_plain.abs().max())
    assert float((y - _run(gi, x)).abs().max()) <= 0.1 * float(_run(gi, x).abs().max())  # the int8 contract


@pytest.mark.parametrize("num_parameters", [1, 6])
def test_prelu_exports_exactly_without_the_slow_prelu_kernel(num_parameters):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.PReLU(num_parameters, init=0.2)).eval()
    with torch.no_grad():
        net[1].weight.uniform_(-0.5, 0.5)  # negative and positive slopes
    x = torch.randn(1, 3, 16, 16)
    gm = gcompiler.trace(net, x)
    model = export_onnx(gm, x)
    assert "PRelu" not in op_counts(model)
    y = run_onnx(ort_session(model, threads=1), x)[0]
    ref = _run(gm, x)
    assert float((y - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
    with torch.no_grad():
        assert (net[0](x) < 0).any() and (net[0](x) > 0).any()  # both branches of the PReLU are exercised


def test_export_errors_name_the_node():
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), x)
    with pytest.raises(ExportError, match="node '_1': module GELU"):
        export_onnx(gm, x)
    gi, _ = run_pipeline(gcompiler.trace(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3)), x),
                         "insert-fake-quant{weight_bits=12,act_bits=12},convert-to-int", verify="none")
    with pytest.raises(ExportError, match="8 bits|int8"):
        export_onnx(gi, x)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(gm, x, opset=11)


def test_missing_onnx_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(nn.Sequential(nn.Conv2d(3, 4, 3)), x)
    with pytest.raises(ConfigError, match=r"gcompiler\[onnx\]"):
        export_onnx(gm, x)


def test_fake_quant_graph_exports_as_qdq():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.Tanh())
    gm, _ = run_pipeline(gcompiler.trace(net.eval(), x), "insert-fake-quant{weight_bits=6,act_bits=7}", verify="none")
    model = export_onnx(gm, x)
    counts = op_counts(model)
    assert counts["QuantizeLinear"] == 1 and counts["Clip"] == 1  # 7-bit codes: clipped to [0, 127] first
    y = run_onnx(ort_session(model, threads=1), x)[0]
    assert torch.allclose(y, _run(gm, x), atol=1e-5)
