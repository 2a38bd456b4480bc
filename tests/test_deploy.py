"""gcompiler.deploy: every candidate it can pick matches the model, failing back ends are skipped with their
reason, bad arguments give clear errors, and the exact rewrites (fusion, SIMD padding) keep the function."""
from __future__ import annotations

import copy

import time

import pytest
import torch
from torch import nn

import gcompiler
from gcompiler.deploy import TOLERANCE, candidates, deploy
from gcompiler.deploy.measure import rel_error
from gcompiler.deploy.rewrite import fuse_for_inference, pad_channels
from gcompiler.errors import ConfigError, VerificationError
from gcompiler.models import create

pytest.importorskip("onnxruntime")

SIZE = 32


def _x(seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _small() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet_9blocks", ngf=8, n_blocks=2).eval()


def _slim_odd() -> torch.fx.GraphModule:
    """A GS-style slim net with odd widths (7 / 13 / 29 kept): what the padded candidates exist for."""
    x = _x()
    gm = gcompiler.compile(_small(), "insert-masks", x)
    with torch.no_grad():
        for v in gcompiler.masks(gm).values():
            v[v.numel() - v.numel() // 8 - 1:] = 0
            v.add_(torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) * (v != 0))
    gm, _ = gcompiler.run_pipeline(gm, "eliminate-dead-channels")
    return gm


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 13, 3, padding=1)
        self.bn = nn.BatchNorm2d(13)
        self.c2 = nn.Conv2d(13, 5, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.c3 = nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1)

    def forward(self, x):
        return torch.tanh(self.c3(self.act(self.c2(torch.relu(self.bn(self.c1(x)))))))


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = _BNNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net.eval()


FLOAT_CPU = [c for c in candidates("cpu", "fp32") if c != "inductor"]  # inductor: see the guard tests


@pytest.mark.parametrize("make", [_small, _slim_odd, _bn_net], ids=["resnet", "slim-odd", "bn-convT"])
@pytest.mark.parametrize("backend", FLOAT_CPU)
def test_each_float_candidate_matches_the_model(make, backend):
    model = make()
    try:
        d = deploy(model, _x(), backends=[backend], rounds=1)
    except VerificationError as exc:  # the only candidate did not apply: only for rewrites with nothing to do
        assert backend in ("padded", "padded-channels-last", "onnxruntime-padded", "onnxruntime-opt"), exc
        assert "no group to pad" in str(exc) or "no conv to split" in str(exc), exc
        return
    assert d.backend == backend
    x = _x(seed=5)  # a fresh input, not the one deploy checked
    with torch.no_grad():
        ref = model(x)
        y = d(x)
    assert y.shape == ref.shape
    assert rel_error(ref, y) <= TOLERANCE["fp32"]


def test_choice_is_the_argmin_of_the_recorded_timings_and_report_is_complete():
    # A property of the choice logic on whatever the machine measured; no assumption about which is faster.
    model = _small()
    d = deploy(model, _x(), exclude=["inductor"], rounds=2)
    r = d.report
    assert r["stat"] == "min"
    assert r["choice"] == d.backend == min(r["min_ms"], key=r["min_ms"].get)
    assert all(r["min_ms"][k] == min(v) and r["timings_ms"][k] >= r["min_ms"][k] for k, v in r["runs_ms"].items())
    d2 = deploy(model, _x(), backends=["eager", "onnxruntime"], rounds=3, stat="median")
    assert d2.backend == min(d2.report["timings_ms"], key=d2.report["timings_ms"].get)
    d3 = deploy(model, _x(), backends=["eager", "onnxruntime"], rounds=3, stat="cpu")
    assert d3.backend == min(d3.report["cpu_ms"], key=d3.report["cpu_ms"].get)
    assert all(v > 0 for v in d3.report["cpu_ms"].values())
    assert r["threads"] == torch.get_num_threads()
    assert set(r["timings_ms"]) | set(r["skipped"]) == set(candidates("cpu", "fp32"))
    assert all(len(v) == r["rounds"] == 2 for v in r["runs_ms"].values())
    assert r["final_error"] <= TOLERANCE["fp32"]
    assert "inductor" in r["skipped"] and d.backend in str(r)
    assert "eager" in r["timings_ms"]  # deploy always measures against eager


def test_padded_candidate_pads_odd_widths_exactly():
    gm = _slim_odd()
    x = _x()
    padded, notes = pad_channels(gm, 8, x)
    changed = {k: v for k, v in notes.items() if "->" in v}
    assert changed, notes
    for v in changed.values():
        after = int(v.split("->")[1])
        assert after % 8 == 0
    widths = [m.out_channels for m in padded.modules() if isinstance(m, nn.Conv2d)]
    assert sum(w % 8 == 0 for w in widths) > sum(m.out_channels % 8 == 0 for m in gm.modules()
                                                  if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        ref, y = gm(_x(seed=3)), padded(_x(seed=3))
    assert rel_error(ref, y) <= 1e-5


def test_padding_and_fusion_are_exact_with_batchnorm_and_transposed_conv():
    net = _bn_net()
    x = _x()
    gm = gcompiler.trace(net, x)
    padded, notes = pad_channels(gm, 8, x)
    assert "13 -> 16" in notes.values() and "5 -> 8" in notes.values(), notes
    fused, fnotes = fuse_for_inference(padded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # folded into the conv
    with torch.no_grad():
        ref = net(_x(seed=2))
        for g in (padded, fused):
            assert rel_error(ref, g(_x(seed=2))) <= 1e-5


def test_padding_refuses_groups_it_cannot_keep_exact():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 3, 1)
            self.c = nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1) + 1.0)

    x = _x()
    gm = gcompiler.trace(Cat().eval(), x)
    padded, notes = pad_channels(gm, 8, x)
    assert notes and all("->" not in v for v in notes.values()), notes
    with torch.no_grad():
        assert torch.equal(padded(x), gm(x))


class _Rolled(nn.Module):  # torch.roll on channels: the ONNX exporter has no mapping for it
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.roll(self.conv(x), 1, 1)


def test_failing_backend_is_skipped_with_its_reason():
    torch.manual_seed(0)
    model = _Rolled().eval()
    d = deploy(model, _x(), backends=["eager", "onnxruntime"], rounds=1)
    assert d.backend == "eager"
    assert "onnxruntime" in d.report["skipped"]
    assert "roll" in d.report["skipped"]["onnxruntime"]
    assert "ExportError" in d.report["skipped"]["onnxruntime"]


def test_inductor_guard_skips_a_slow_or_failing_compile(monkeypatch):
    def slow_compile(fn, **kw):
        def run(*a):
            time.sleep(1.5)
            return fn(*a)
        return run

    model = _small()
    monkeypatch.setattr(torch, "compile", slow_compile)
    d = deploy(model, _x(), backends=["eager", "inductor"], rounds=1, inductor_timeout_s=0.2)
    assert d.backend == "eager"
    assert "did not finish within" in d.report["skipped"]["inductor"]

    def broken_compile(fn, **kw):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    d = deploy(model, _x(), backends=["eager", "inductor"], rounds=1)
    assert "torch.compile failed: RuntimeError: no C++ compiler found" == d.report["skipped"]["inductor"]
    time.sleep(1.5)  # let the abandoned slow "compile" thread end before the next test


def test_int8_matches_the_integer_graph_within_the_quantized_contract():
    x = _x()
    fq = gcompiler.compile(_small(), "fold-norms,insert-fake-quant", x)
    gi, _ = gcompiler.run_pipeline(gcompiler.compile(fq, [], x), "convert-to-int")
    d = deploy(fq, x, precision="int8", rounds=1)
    assert d.backend in candidates("cpu", "int8")
    x2 = _x(seed=7)
    with torch.no_grad():
        ref, y = gi(x2), d(x2)
    assert rel_error(ref, y) <= TOLERANCE["int8"]
    assert d.report["reference"].startswith("integer graph")
    for name in ("onnxruntime-int8", "onnxruntime-int8-clipped", "onnxruntime-qdq"):
        assert name in d.report["errors"]
    assert d.report["errors"]["onnxruntime-qdq"] < 1e-2  # exact semantics: float rounding only
    assert "inductor-int8" in d.report["skipped"]


def test_int8_tolerance_violation_is_refused_not_returned():
    x = _x()
    model = _small()
    with pytest.raises(VerificationError, match="tolerance"):
        deploy(model, x, precision="int8", backends=["onnxruntime-int8"], rounds=1, tolerance=1e-9)
    d = deploy(model, x, precision="int8", rounds=1, tolerance=1e-9)  # only the exact oracle is left
    assert d.backend == "int-reference"
    assert "above the tolerance" in d.report["skipped"]["onnxruntime-int8"]


def test_static_shape_backend_refuses_other_shapes():
    model = _small()
    d = deploy(model, _x(), backends=["onnxruntime"], rounds=1)
    with pytest.raises(ConfigError, match="deploy again"):
        d(_x(size=SIZE * 2))


def test_argument_is_not_modified():
    model = _bn_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy(model, _x(), backends=["fused", "padded"], rounds=1)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a GPU")
def test_cuda_without_gpu_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"device='cuda'.*GPU.*is_available"):
        deploy(_small(), _x(), device="cuda", precision="int8")


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "bf16"}, "precision must be one of fp32, int8, fp16"),
    ({"device": "tpu"}, "device must be one of cpu, cuda"),
    ({"precision": "fp16"}, "not available on cpu"),
    ({"backends": ["tensorrt"]}, r"unknown back end\(s\) \['tensorrt'\]"),
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"stat": "mean"}, "stat must be 'min', 'median' or 'cpu'"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        deploy(_small(), _x(), **kwargs)


def test_bad_model_or_inputs_give_clear_errors():
    with pytest.raises(ConfigError, match="needs example inputs"):
        deploy(_small())
    with pytest.raises(ConfigError, match="not a tensor"):
        deploy(_small(), [1, 2, 3])
    with pytest.raises(ConfigError, match="expects a torch.nn.Module"):
        deploy(lambda x: x, _x())


def test_gcompiler_deploy_is_callable_after_importing_the_package():
    import gcompiler.deploy as mod

    d = gcompiler.deploy(_bn_net(), _x(), backends=["eager"], rounds=1)
    assert isinstance(d, mod.Deployed) and d.backend == "eager"


def test_phase_split_of_the_rgb_head_is_exact():
    from gcompiler.deploy.rewrite import split_phases

    x = _x()
    gm = gcompiler.trace(_small(), x)
    split, notes = split_phases(gm, x)
    assert len(notes) == 1 and "8->3 k7 as 2x2 phases (32->12 k4)" in notes[0], notes
    assert not any(isinstance(m, nn.Conv2d) and m.out_channels == 3 for m in split.modules())
    with torch.no_grad():
        ref, y = gm(_x(seed=4)), split(_x(seed=4))
    assert rel_error(ref, y) <= 1e-5


@pytest.mark.parametrize("kernel,padding,mode", [(9, 4, "zeros"), (3, 1, "reflect"), (5, 2, "replicate")])
def test_phase_split_of_a_padded_head_is_exact_in_torch_and_onnx(kernel, padding, mode):
    """An SRResNet-style head (64 -> 3, 9x9, zero padding 4) and padded variants: the conv's padding becomes
    an explicit pad, then the phases; the same in the exported ONNX graph."""
    from gcompiler.deploy.rewrite import split_phases
    from gcompiler.quant.onnx_export import export_onnx, op_counts, ort_session, run_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 3, kernel, padding=padding, padding_mode=mode)).eval()
    x = _x()
    gm = gcompiler.trace(net, x)
    split, notes = split_phases(gm, x)
    assert len(notes) == 1 and f"8->3 k{kernel} as 2x2 phases" in notes[0], notes
    assert not any(isinstance(m, nn.Conv2d) and m.out_channels == 3 for m in split.modules())
    x2 = _x(seed=4)
    with torch.no_grad():
        ref, y = gm(x2), split(x2)
    assert rel_error(ref, y) <= 1e-5
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    model = export_onnx(copy.deepcopy(split), x2)
    assert op_counts(model).get("Pad", 0) == 1
    y_ort = run_onnx(ort_session(model, threads=1), x2)[0]
    assert rel_error(ref, y_ort) <= 1e-5


class _Untraceable(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y if float(y.mean()) > -1e9 else -y


def test_untraceable_model_still_deploys_eagerly_and_graph_backends_say_why():
    torch.manual_seed(0)
    model = _Untraceable().eval()
    d = deploy(model, _x(), exclude=["inductor"], rounds=1)
    assert d.backend in ("eager", "channels-last")
    for name in ("fused", "onnxruntime", "padded"):
        assert d.report["skipped"][name].startswith("needs a traced graph: tracing failed"), d.report["skipped"]
    with pytest.raises(ConfigError, match="could not build the integer graph"):
        deploy(model, _x(), precision="int8", rounds=1)


def test_thread_setting_is_respected_by_onnxruntime():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d = deploy(_small(), _x(), backends=["onnxruntime"], rounds=1)
        assert d.report["threads"] == 1
        assert d.runner.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(old)
