"""insert-fake-quant: the bits-dependent bound of its contract, act_range=auto, the image-input rule, and the
strip-fake-quant / calibrate-activations passes.

The bound (gcompiler.quant.insert.fake_quant_bound) is checked, not assumed: with covering clips (the
default ``act_clip=None``) the end-of-pipeline check of ``compile`` must pass on generated graphs and on the
zoo at every bit width, and the error measured here must stay under the bound.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import generator_nets

import gcompiler
from gcompiler.errors import PassError
from gcompiler.passes.manager import check_inputs
from gcompiler.quant.insert import fake_quant_bound, image_input_convs, nonnegative_input
from gcompiler.quant.qmodules import QConv2d, QConvTranspose2d
from test_quant_passes import ZOO, _zoo_graph


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _run(gm, xs):
    with torch.no_grad():
        return gm.eval()(*xs)


def _error_at(gm, text):
    q = gcompiler.compile(gm, text)  # raises VerificationError if the end check breaks the contract
    xs, _ = check_inputs(gm)
    return _rel(_run(q, xs), _run(gm, xs)), q


def test_bound_values_and_option_dependence():
    assert fake_quant_bound(8, 8) == pytest.approx(64 / 127)
    assert fake_quant_bound(16, 16) < fake_quant_bound(12, 12) < fake_quant_bound(8, 8) < fake_quant_bound(4, 4)
    assert fake_quant_bound(8, 8, "model_1:w4") == fake_quant_bound(4, 8)  # an override lowers the bound
    assert fake_quant_bound(8, 8, "model_1:float") == fake_quant_bound(8, 8)
    info = gcompiler.passes.get_pass("insert-fake-quant")
    assert info.contract_for({"weight_bits": 12, "act_bits": 12}).tol == fake_quant_bound(12, 12)
    assert not info.contract_for({"act_clip": 4.0}).numeric  # a fixed clip cuts by choice
    assert not info.contract_for({"learn_clip": True}).numeric


@pytest.mark.slow  # ~20 s on the shared 2-core machine
@given(net=generator_nets(allow_unknown=False), bits=st.sampled_from([6, 8, 12, 16]))
def test_bound_holds_on_generated_graphs(net, bits):
    module, x = net
    gm = gcompiler.trace(module, x)
    err, q = _error_at(gm, f"insert-fake-quant{{weight_bits={bits},act_bits={bits}}}")
    # measured: err * 2^bits up to 66 (a 20-layer net at 6 bits); the bound is ~128 in these units
    assert err <= fake_quant_bound(bits, bits)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_bound_holds_on_the_zoo(name):
    gm, _ = _zoo_graph(name)
    for bits in (8, 16):
        err, _ = _error_at(gm, f"insert-fake-quant{{weight_bits={bits},act_bits={bits}}}")
        assert err <= fake_quant_bound(bits, bits)


def test_a_fixed_clip_that_cuts_is_not_checked_against_the_bound_but_the_default_is():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        net[0].weight.mul_(50)  # activations far beyond 0.1
    x = torch.randn(1, 3, 16, 16)
    gm = gcompiler.compile(net, "insert-fake-quant{act_clip=0.1}", x)
    assert gm.meta["pass_log"].records[0].contract == "changes-semantics"
    gm = gcompiler.compile(net, "insert-fake-quant", x)  # covering clips: bounded
    assert "approximate" in gm.meta["pass_log"].records[0].contract


# ------------------------------------------------------------------------------------- act_range=auto
class _Signs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)  # after ReLU + reflection pad: unsigned
        self.c2 = nn.Conv2d(4, 4, 1)  # after LeakyReLU: signed
        self.c3 = nn.Conv2d(8, 4, 1)  # cat of ReLU and maxpool(ReLU): unsigned
        self.c4 = nn.Conv2d(4, 4, 1)  # residual sum with a signed branch: signed
        self.c5 = nn.Conv2d(4, 3, 1)  # clamp(min=0) then upsample: unsigned

    def forward(self, x):
        a = torch.relu(self.c0(x))
        b = self.c1(F.pad(a, (1, 1, 1, 1), mode="reflect"))[..., 1:-1, 1:-1]
        c = self.c2(F.leaky_relu(b, 0.2))
        d = self.c3(torch.cat([a, F.max_pool2d(a, 3, 1, 1)], 1))
        e = self.c4(c + a)
        return self.c5(F.interpolate(torch.clamp(e + d, min=0), scale_factor=1.0))


def test_auto_range_is_unsigned_only_where_the_input_is_nonnegative_by_construction():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 12)
    gm = gcompiler.compile(_Signs().eval(), "insert-fake-quant", x)
    cfg = gm.meta["quant_config"]
    got = {n: c["act_range"] for n, c in cfg.items()}
    assert got == {"c0": None, "c1": "unsigned", "c2": "signed", "c3": "unsigned", "c4": "signed",
                   "c5": "unsigned"}
    # and the analysis is right on data: every input it calls non-negative is >= 0
    seen = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QConv2d):
            gm.get_submodule(n.target).register_forward_pre_hook(
                lambda m, a, name=n.name: seen.__setitem__(name, float(a[0].min())))
    _run(gm, (x,))
    assert all(seen[n] >= 0 for n, r in got.items() if r == "unsigned")
    assert any(seen[n] < 0 for n, r in got.items() if r == "signed")


def test_image_input_rule_sees_through_value_preserving_ops():
    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.Conv2d(3, 4, 3)
            self.c = nn.Conv2d(4, 4, 1)
            self.idn = nn.Identity()

        def forward(self, x):
            img = torch.clamp(x, -1, 1).float()
            y = self.a(F.pad(self.idn(img), (1, 1, 1, 1), mode="reflect"))
            z = self.b(nn.functional.dropout(img.contiguous(), 0.5, False)[..., 1:-1, 1:-1])  # slicing: not
            return self.c(torch.relu(y))

    x = torch.randn(1, 3, 10, 10)
    gm = gcompiler.trace(Stem().eval(), x)
    assert {n.name for n in image_input_convs(gm)} == {"a"}
    q = gcompiler.compile(gm, "insert-fake-quant")
    assert q.get_submodule("a").input_quant is None and q.get_submodule("c").input_quant is not None
    assert gm.get_submodule("a").__class__ is nn.Conv2d  # compile left its argument alone
    assert nonnegative_input(gm, next(n for n in gm.graph.nodes if n.name == "c"))


def test_clamp_to_a_non_image_range_is_not_see_through():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.a(torch.clamp(x, 0.5, 1.0))

    gm = gcompiler.trace(M().eval(), torch.randn(1, 3, 8, 8))
    assert not image_input_convs(gm)


# ------------------------------------------------------------------- strip-fake-quant, calibrate-activations
def test_strip_fake_quant_restores_the_float_graph_exactly():
    gm, xs = _zoo_graph("resnet_9blocks")
    y = _run(gm, xs)
    q = gcompiler.compile(gm, "insert-fake-quant{weight_bits=4,act_bits=4},strip-fake-quant")
    assert not any(isinstance(m, (QConv2d, QConvTranspose2d)) for m in q.modules())
    assert "quant_config" not in q.meta
    assert torch.equal(_run(q, xs), y)
    assert [r.contract for r in q.meta["pass_log"].records][1] == "changes-semantics"


def test_calibrate_activations_from_meta_or_data_and_errors():
    gm, xs = _zoo_graph("srresnet")
    batches = [tuple(torch.randn_like(x) for x in xs) for _ in range(3)]
    q = gcompiler.compile(gm, "insert-fake-quant{act_clip=4}")
    with pytest.raises(PassError, match="calibration_inputs"):
        gcompiler.run_pipeline(copy.deepcopy(q), "calibrate-activations")
    a = copy.deepcopy(q)
    a.meta["calibration_inputs"] = batches
    gcompiler.run_pipeline(a, "calibrate-activations{method=minmax}")
    b = copy.deepcopy(q)
    gcompiler.run_pipeline(b, [("calibrate-activations", {"data": batches, "method": "minmax"})])
    assert a.meta["act_clips"] == b.meta["act_clips"] and len(a.meta["act_clips"]) > 0
    assert any(v != 4.0 for v in a.meta["act_clips"].values())
    # minmax clips cover the calibration data: the 16-bit rounding error only
    q16 = gcompiler.compile(gm, "insert-fake-quant{weight_bits=16,act_bits=16,act_clip=4}")
    q16.meta["calibration_inputs"] = batches
    gcompiler.run_pipeline(q16, "calibrate-activations{method=minmax}")
    assert _rel(_run(q16, batches[0]), _run(gm, batches[0])) <= fake_quant_bound(16, 16)
    with pytest.raises(PassError, match="batches"):
        gcompiler.run_pipeline(a, "calibrate-activations{batches=-1}")
