"""substitute-ops / derive-architecture / fix-architecture: cells found on the zoo, contracts, cost table, save/load."""
from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from torch import nn

import gcompiler
from gcompiler.errors import PassError
from gcompiler.models import create
from gcompiler.nas import MixedOp, WidthOp, agd_widths, cells, make_divisible
from gcompiler.nas.cost import CostTable
from gcompiler.nas.derive import architecture, build_student
from gcompiler.passes.manager import run_pipeline
from strategies import examples, generator_nets


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet_9blocks":
        return create(name, ngf=16).eval(), torch.randn(1, 3, 32, 32)
    if name == "mobile_resnet_9blocks":
        return create(name, ngf=16).eval(), torch.randn(1, 3, 32, 32)
    if name == "srresnet":
        return create(name, nf=16, nb=3, scale=2).eval(), torch.rand(1, 3, 12, 12)
    return create("rrdbnet", nf=16, nb=2, gc=8, scale=2).eval(), torch.rand(1, 3, 12, 12)


def _supernet(name: str, pipeline: str = "substitute-ops") -> tuple[torch.fx.GraphModule, torch.Tensor, nn.Module]:
    model, x = _zoo(name)
    gm = gcompiler.trace(model, x)
    gm, _ = run_pipeline(gm, pipeline, verify="shapes")
    return gm, x, model


def _randomize_arch(gm: torch.fx.GraphModule, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in cells(gm).values():
            for p in c.arch_parameters():
                p.copy_(torch.randn(p.shape, generator=g))


def test_agd_widths_follow_make_divisible():
    assert agd_widths(256) == (88, 128, 168, 216, 256)  # the AGD paper's CycleGAN widths
    assert agd_widths(128) == (40, 64, 88, 104, 128)
    assert agd_widths(64) == (24, 32, 40, 56, 64)
    assert agd_widths(32) == (16, 24, 32)
    assert make_divisible(10.67) == 16 and make_divisible(85.3) == 88
    assert gcompiler.MixedOp is MixedOp


@pytest.mark.parametrize("name, ops, widths", [
    ("resnet_9blocks", 9, ["stem0", "stem1", "stem2", "header0", "header1"]),
    ("mobile_resnet_9blocks", 9, ["stem0", "stem1", "stem2", "header0", "header1"]),
    ("srresnet", 3, []),
    ("rrdbnet", 6, ["header0", "header1"]),  # x2: upconv1 and HRconv
])
def test_cells_found_on_the_zoo(name, ops, widths):
    gm, x, model = _supernet(name)
    recs = gm.meta["nas"]["cells"]
    assert sum(r["kind"] == "op" for r in recs) == ops
    assert [r["name"] for r in recs if r["kind"] == "width"] == widths
    op_cells = [c for c in cells(gm).values() if isinstance(c, MixedOp)]
    assert all(c.candidates == ("conv1x1", "conv3x3", "residual", "dwsblock") for c in op_cells)
    if name in ("resnet_9blocks", "mobile_resnet_9blocks"):
        assert all(c.norm == "instance" and c.padding == "reflect" for c in op_cells)  # follows the teacher
        assert op_cells[0].widths == agd_widths(64) and all(r.get("pinned") is None for r in recs)
        assert [r["replaced"][0] for r in recs if r["kind"] == "op"][0].startswith("model.10")
    if name == "srresnet":
        assert all(c.norm == "none" and c.padding == "zeros" for c in op_cells)  # SR: no normalization (AGD)
    if name == "rrdbnet":  # the 3rd dense block of each RRDB feeds the RRDB's scaled residual: full width only
        pinned = [r["name"] for r in recs if r.get("pinned")]
        assert pinned == ["cell2", "cell5"] and all(gm.get_submodule(p).widths == (16,) for p in pinned)
    with torch.no_grad():
        assert gm(x).shape == model(x).shape


def test_rrdb_nesting_and_select():
    gm, _, _ = _supernet("rrdbnet", "substitute-ops{nesting=2,stem_header=false}")
    assert [r["replaced"][0].split(".")[:2] for r in gm.meta["nas"]["cells"]] == [["RRDB_trunk", "0"],
                                                                                  ["RRDB_trunk", "1"]]
    gm, _, _ = _supernet("resnet_9blocks", "substitute-ops{select=cell0|cell8,stem_header=false}")
    assert [r["name"] for r in gm.meta["nas"]["cells"]] == ["cell0", "cell8"]


@pytest.mark.parametrize("name", ["resnet_9blocks", "mobile_resnet_9blocks", "srresnet", "rrdbnet"])
def test_original_candidate_is_exact(name):
    model, x = _zoo(name)
    gm = gcompiler.trace(model, x)
    info = gcompiler.passes.registry.get_pass("substitute-ops")
    assert info.contract_for({"candidates": "original"}).kind == "exact"
    assert info.contract_for({}).kind == "changes-semantics"
    gm, _ = run_pipeline(gm, "substitute-ops{candidates=original|dwsblock}", verify="numeric")
    assert len(cells(gm)) > 0
    with torch.no_grad():
        ref, out = model(x), gm(x)
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()


@pytest.mark.parametrize("name", ["resnet_9blocks", "mobile_resnet_9blocks", "srresnet", "rrdbnet"])
def test_derive_is_exact_and_costs_what_the_table_says(name):
    gm, x, _ = _supernet(name, "substitute-ops{candidates=conv1x1|conv3x3|residual|dwsblock|original}")
    _randomize_arch(gm, seed=3)
    # random weights everywhere, so that the comparison is not dominated by zeros
    table = CostTable(gm)
    expected = table.exact()
    lo, hi = table.bounds()
    assert lo <= expected <= hi
    gm.eval()
    with torch.no_grad():
        before = gm(x)
    arch = architecture(gm)
    derived, _ = run_pipeline(gm, "derive-architecture", verify="numeric")
    assert not any(isinstance(m, (MixedOp, WidthOp)) for m in derived.modules())
    with torch.no_grad():
        after = derived(x)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    assert gcompiler.profile(derived).macs == expected
    assert derived.meta["architecture"]["cells"] == arch["cells"]


def test_mixed_op_with_one_hot_weights_is_its_operator():
    torch.manual_seed(0)
    cell = MixedOp(8, 8, ["conv1x1", "conv3x3", "residual", "dwsblock"], [8], norm="instance").train()
    x = torch.randn(2, 8, 6, 6)
    for k, name in enumerate(cell.candidates):
        cell.fix_op(name)
        for mode in ("gumbel", "max", "argmax"):
            cell.mode = mode
            assert torch.equal(cell(x), cell.ops[k](x, 8)), (name, mode)
    w = MixedOp(8, 16, ["residual", "conv3x3"], [8, 16], norm="none")
    w.fix_op("conv3x3")
    w.fix_width(8)
    y = w.train()(x)
    assert torch.equal(y[:, :8], w.ops[1](x, 8)) and (y[:, 8:] == 0).all()  # zero-padded to the nominal width
    w.fix_op("residual")
    w.mode = "max"  # the mixture at the widest width (logits still one-hot)
    assert torch.equal(w(x), w.ops[0](x, 16))


def test_expected_macs_is_differentiable_and_matches_one_hot():
    gm, x, _ = _supernet("resnet_9blocks")
    table = CostTable(gm)
    e = table.expected()
    e.backward()
    cell = gm.get_submodule("cell0")
    assert cell.op_logits.grad is not None and cell.width_logits.grad.abs().sum() > 0
    rnd = random.Random(0)
    for _ in range(3):
        for c in cells(gm).values():
            if isinstance(c, MixedOp):
                c.fix_op(rnd.choice(c.candidates))
            c.fix_width(rnd.choice(c.widths))
        assert float(table.expected().detach()) == pytest.approx(table.exact(), rel=1e-9)  # one-hot logits: no mass elsewhere


def test_plain_substitution_every_block_to_dwsblock():
    gm, x, model = _supernet("resnet_9blocks", "substitute-ops{candidates=dwsblock,widths=full,stem_header=false}")
    assert [c.widths for c in cells(gm).values()] == [(64,)] * 9
    derived, log = run_pipeline(gm, "derive-architecture", verify="numeric")
    depthwise = [m for m in derived.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 9 and all(m.groups == 256 for m in depthwise)  # expansion 4 of 64 channels
    assert gcompiler.profile(derived).macs < gcompiler.profile(model, x).macs


def test_derived_student_saves_loads_and_rebuilds_from_json(tmp_path):
    gm, x, model = _supernet("resnet_9blocks")
    _randomize_arch(gm, seed=5)
    arch = architecture(gm)
    derived, _ = run_pipeline(gm, "derive-architecture")
    gcompiler.save(derived, tmp_path / "m")
    loaded = gcompiler.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), derived(x))
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    rebuilt = build_student(model, x, tmp_path / "arch.json")
    p1, p2 = gcompiler.profile(rebuilt), gcompiler.profile(derived)
    assert (p1.macs, p1.params) == (p2.macs, p2.params)
    fixed, _, _ = _supernet("resnet_9blocks", f"substitute-ops,fix-architecture{{arch={tmp_path / 'arch.json'}}}")
    assert architecture(fixed)["cells"][3]["width"] == arch["cells"][3]["width"]


def test_bad_options_and_nothing_to_substitute():
    gm, _, _ = _supernet("srresnet", "substitute-ops{widths=full}")
    with pytest.raises(PassError, match="already has searchable cells"):
        run_pipeline(gm, "substitute-ops")
    model, x = _zoo("srresnet")
    with pytest.raises(PassError, match="unknown or repeated operator"):
        run_pipeline(gcompiler.trace(model, x), "substitute-ops{candidates=conv5x5}")
    with pytest.raises(PassError, match="blocks="):
        run_pipeline(gcompiler.trace(model, x), "substitute-ops{blocks=everything}")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
    with pytest.raises(PassError, match="no substitutable block"):
        run_pipeline(gcompiler.trace(plain, x), "substitute-ops")
    with pytest.raises(PassError, match="no searchable cells"):
        run_pipeline(gcompiler.trace(plain, x), "derive-architecture")


def test_layers_on_a_plain_conv_stack():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 3, 3, padding=1), nn.Tanh()).eval()
    x = torch.randn(1, 3, 10, 10)
    gm = gcompiler.trace(net, x)
    gm, _ = run_pipeline(gm, "substitute-ops{candidates=original|conv3x3}", verify="numeric")
    assert [(r["name"], r["kind"]) for r in gm.meta["nas"]["cells"]] == [("stem0", "width"), ("cell0", "op")]
    _randomize_arch(gm, 1)
    gm.eval()
    with torch.no_grad():
        before = gm(x)
    derived, _ = run_pipeline(gm, "derive-architecture", verify="numeric")
    with torch.no_grad():
        assert torch.allclose(derived(x), before, atol=1e-5)


@pytest.mark.slow
@settings(max_examples=examples(10), deadline=None, suppress_health_check=list(HealthCheck))
@given(generator_nets(allow_unknown=True))
def test_contracts_on_generated_graphs(sample):
    net, x = sample
    gm = gcompiler.trace(net, x)
    try:
        exact, _ = run_pipeline(gm, "substitute-ops{candidates=original|residual}", verify="numeric")
    except PassError as exc:
        assume("no substitutable block" not in str(exc))
        raise
    with torch.no_grad():
        ref = net(x)
        assert (exact(x) - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1e-12)
    gm = gcompiler.trace(net, x)
    gm, _ = run_pipeline(gm, "substitute-ops{candidates=conv1x1|residual|dwsblock|original}", verify="shapes")
    _randomize_arch(gm, 7)
    expected = CostTable(gm).exact()
    gm.eval()
    with torch.no_grad():
        before = gm(x)
    derived, _ = run_pipeline(gm, "derive-architecture", verify="numeric")
    with torch.no_grad():
        assert (derived(x) - before).abs().max() <= 1e-5 * before.abs().max().clamp_min(1e-12)
    assert gcompiler.profile(derived).macs == expected
