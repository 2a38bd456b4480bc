"""The tracing front end: leaves, in-place normalization, shape metadata and its errors."""
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gcompiler
from gcompiler.errors import TraceError


class InplaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        z = self.act(y)          # y and z now name one tensor
        z.mul_(2.0)              # mutates y as well
        w = self.conv2(y)        # eager reads the mutated y
        w = F.relu(w, inplace=True)
        return w + z


def test_inplace_ops_become_out_of_place_and_stay_bit_identical():
    torch.manual_seed(0)
    m, x = InplaceNet(), torch.randn(2, 3, 8, 8)
    gm = gcompiler.trace(m, x)
    for node in gm.graph.nodes:
        if node.op == "call_method":
            assert not str(node.target).endswith("_"), node.format_node()
        if node.op == "call_function":
            assert node.target not in (operator.iadd, operator.imul, torch.relu_)
            assert not node.kwargs.get("inplace", False)
        if node.op == "call_module":
            assert not getattr(gm.get_submodule(node.target), "inplace", False)
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
    # the user's module is untouched
    assert m.act.inplace is True


def test_shapes_recorded_on_every_node():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.InstanceNorm2d(8), nn.ReLU())
    gm = gcompiler.trace(m, torch.randn(1, 3, 16, 16))
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["_0"] == (1, 8, 8, 8)
    assert gm.meta["input_shapes"] == [(1, 3, 16, 16)]



class DataDependent(nn.Module):
    def forward(self, x):
        if x.mean() > 0:
            return x
        return -x


def test_untraceable_names_module_and_line_and_fix():
    m = nn.Sequential(nn.Conv2d(3, 3, 1), DataDependent())
    with pytest.raises(TraceError) as ei:
        gcompiler.trace(m, torch.randn(1, 3, 4, 4))
    msg = str(ei.value)
    assert "module '1' (DataDependent)" in msg
    assert "test_trace.py" in msg and "x.mean() > 0" in msg
    assert "data-dependent" in msg and "leaf_modules" in msg and "kwargs=" in msg


def test_leaf_modules_make_untraceable_submodule_opaque():
    m = nn.Sequential(nn.Conv2d(3, 3, 1), DataDependent())
    x = torch.randn(1, 3, 4, 4)
    gm = gcompiler.trace(m, x, leaf_modules=[DataDependent])
    assert any(n.op == "call_module" and n.target == "1" for n in gm.graph.nodes)
    assert torch.equal(gm(x), m(x))


def test_registered_leaf_class():
    @gcompiler.register_leaf
    class MyLeaf(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    m = nn.Sequential(nn.Conv2d(3, 3, 1), MyLeaf())
    gm = gcompiler.trace(m, torch.randn(1, 3, 4, 4))
    assert [n.op for n in gm.graph.nodes].count("call_module") == 2


def test_wrong_input_rank_names_node_and_module():
    m = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(TraceError) as ei:
        gcompiler.trace(m, torch.randn(3, 16))
    msg = str(ei.value)
    assert "node '_0'" in msg and "Conv2d(3, 8" in msg and "[3, 16]" in msg


def test_wrong_channel_count_is_clear():
    m = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(TraceError, match="module '0'"):
        gcompiler.trace(m, torch.randn(1, 4, 16, 16))


class AliasedAugmented(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        keep = y
        y += x  # eager mutates `keep` too; torch.fx records y = y + x
        return keep * 2


def test_aliased_augmented_assignment_traced_in_place():
    # y += x mutates the tensor `keep` also names: the graph records the in-place op, normalizes it away and
    # redirects `keep` to the new value, so it computes what eager does.
    torch.manual_seed(0)
    m, x = AliasedAugmented(), torch.randn(1, 3, 4, 4)
    gm = gcompiler.trace(m, x)
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))


def test_non_module_and_missing_inputs_rejected():
    with pytest.raises(TraceError, match="nn.Module"):
        gcompiler.trace(lambda x: x, torch.randn(1))
    with pytest.raises(TraceError, match="example inputs"):
        gcompiler.trace(nn.ReLU())


def test_fake_propagation_computes_nothing_big():
    # 3 x 3 conv 512 -> 512 at 2048^2 would take minutes for real; fake propagation takes milliseconds.
    m = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1))
    gm = gcompiler.trace(m, torch.randn(1, 512, 4, 4))
    out = gcompiler.propagate_shapes(gm, torch.empty(1, 512, 2048, 2048, device="meta"), fake=True)
    assert tuple(out.shape) == (1, 512, 2048, 2048)
    assert gm.meta["input_shapes"] == [(1, 512, 2048, 2048)]


class SizeUser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        return self.conv(x).view(n, c, h * w).mean(-1)


def test_nodes_returning_sizes_and_ints_get_no_tensor_meta():
    gm = gcompiler.trace(SizeUser(), torch.randn(2, 3, 4, 4))
    metas = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
    assert any(v is None for k, v in metas.items() if k.startswith("getattr") or k.startswith("getitem"))
    assert tuple(metas["mean"].shape) == (2, 3)
    assert gcompiler.profile(gm).macs == 2 * 3 * 16 * 3


# ----------------------------------------------------------------------------- real code, as written

class FlagsNet(nn.Module):
    """forward arguments beyond the input: flags, lists, None, keyword-only, **kwargs."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x, layers=[], encode_only=False, style=None, *, align_corners=True, **extra):
        feat = self.enc(x)
        if encode_only:
            return feat
        feats = [feat for i in layers]
        if style is not None:
            feat = feat * style
        up = F.interpolate(feat, scale_factor=2, mode="bilinear", align_corners=align_corners)
        out = self.dec(F.avg_pool2d(up, 2))
        return out if not feats else (out, *feats)


def test_forward_flags_are_specialized_never_graph_inputs():
    torch.manual_seed(0)
    m, x = FlagsNet(), torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(m, x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
    assert gm.meta["specialized"]["encode_only"] is False and gm.meta["specialized"]["align_corners"] is True
    enc = gcompiler.trace(m, x, kwargs={"encode_only": True})
    with torch.no_grad():
        assert torch.equal(enc(x), m(x, encode_only=True))
    two = gcompiler.trace(m, x, kwargs={"layers": [0, 1], "style": 2.0})
    with torch.no_grad():
        a, b = two(x), m(x, layers=[0, 1], style=2.0)
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert gcompiler.trace(m, x, kwargs={"other": 1}).meta["specialized"]["other"] == 1  # **extra takes it


class NeedsArg(nn.Module):
    def forward(self, x, scale):
        return x * scale


def test_argument_without_default_asks_for_kwargs():
    with pytest.raises(TraceError, match="kwargs="):
        gcompiler.trace(NeedsArg(), torch.randn(1, 3, 4, 4))
    with pytest.raises(TraceError, match="does not take"):
        gcompiler.trace(NeedsArg(), torch.randn(1, 3, 4, 4), kwargs={"scale": 3, "nope": 1})
    gm = gcompiler.trace(NeedsArg(), torch.randn(1, 3, 4, 4), kwargs={"scale": 3})
    assert torch.equal(gm(torch.ones(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 3.0))


class ShapeQuestions(nn.Module):
    """Python-level reads of tensor attributes: answered from the example, guarded at run time."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.res = (8, 8)
        self.window = 4

    def forward(self, x):
        if x.is_cuda:
            x = x * 2
        if x.dtype == torch.float16:
            x = x.float()
        _, _, h, w = x.size()
        assert h % self.window == 0, "size must be a multiple of the window"
        if x.size()[2:] != self.res:
            x = F.interpolate(x, size=self.res)
        n = x.shape[0]
        y = self.conv(x)
        return torch.stack([y[i] for i in range(n)]) + torch.zeros(n, 4, 1, 1, device=x.device)


def test_tensor_attributes_answered_from_example_and_guarded():
    torch.manual_seed(0)
    m, x = ShapeQuestions(), torch.randn(2, 3, 8, 8)
    gm = gcompiler.trace(m, x)
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
    descs = " | ".join(g["description"] for g in gm.meta["guards"])
    assert "is_cuda" in descs and "dtype" in descs and "% 4" in descs
    assert gcompiler.fx.guards(gm) and len(gcompiler.fx.guards(gm)) == len(gm.meta["guards"])
    # another resolution or batch size breaks a recorded answer: a clear error, also after deepcopy / recompile
    import copy
    for g in (gm, copy.deepcopy(gm)):
        g.recompile()
        with pytest.raises(gcompiler.errors.GuardError, match="traced with"):
            g(torch.randn(2, 3, 12, 12))
        with pytest.raises(gcompiler.errors.GuardError, match=r"x.shape\[0\]"):
            g(torch.randn(3, 3, 8, 8))
    gm.graph.eliminate_dead_code()
    assert len(gcompiler.fx.guards(gm)) == len(gm.meta["guards"])


class AttrUpdate(nn.Module):
    """EDSR MeanShift style: a stored tensor moved to the input's dtype/device inside forward."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)  # a plain attribute, not a buffer
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        self.std = self.std.to(x)
        return self.conv((x - self.mean) / self.std) * self.std + self.mean


def test_attribute_assigned_in_forward_is_a_pure_expression():
    torch.manual_seed(0)
    m, x = AttrUpdate(), torch.randn(1, 3, 6, 6)
    gm = gcompiler.trace(m, x)
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
    from torch.fx import Proxy
    for mod in gm.modules():
        assert not any(isinstance(v, Proxy) for v in mod.__dict__.values())
    assert isinstance(gm.mean, torch.Tensor) and isinstance(gm.std, torch.Tensor)
    import copy
    copy.deepcopy(gm)


class Leaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.feats = []

    def forward(self, x):
        y = self.conv(x)
        self.feats.append(y)
        return y


def test_proxy_escaping_into_a_list_is_reported():
    with pytest.raises(TraceError, match=r"Proxy.*feats"):
        gcompiler.trace(Leaky(), torch.randn(1, 3, 4, 4))


def window_partition(x, ws):
    b, c, h, w = x.shape
    assert h % ws == 0 and w % ws == 0
    return x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws, ws)


def numpy_helper(x):
    import numpy as np
    return x * float(np.sqrt(x.shape[1]))


def data_helper(x):
    if x.abs().max() > 100:
        raise ValueError("input out of range")
    return x * 2


class Helpers(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


def test_helper_with_shape_asserts_traces_and_data_dependent_helper_names_remedy():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    m = Helpers(lambda t: window_partition(t, 4))
    gm = gcompiler.trace(m, x)
    assert torch.equal(gm(x), m(x))
    m2 = Helpers(lambda t: data_helper(t))
    with pytest.raises(TraceError) as ei:
        gcompiler.trace(m2, x)
    msg = str(ei.value)
    assert "register_leaf_function(data_helper)" in msg and "x.abs().max() > 100" in msg
    gm2 = gcompiler.trace(m2, x, leaf_functions=[data_helper])
    assert any(n.op == "call_function" and n.target is data_helper for n in gm2.graph.nodes)
    assert torch.equal(gm2(x), m2(x))


@gcompiler.register_leaf_function
def odd_helper(x):
    return x * 2 if x.sum() > 0 else x


class Uses(nn.Module):
    def forward(self, x):
        return odd_helper(x) + 1


def test_register_leaf_function_decorator():
    x = torch.randn(1, 3, 4, 4)
    gm = gcompiler.trace(Uses(), x)
    assert any(n.target is odd_helper for n in gm.graph.nodes)
    assert torch.equal(gm(x), Uses()(x))


class AssertNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        torch._assert(x.shape[1] == 3, "three channels")
        torch._assert(x.abs().max() < 1e6, "finite input")
        return self.conv(x)


def test_torch_assert_nodes_become_guards_or_are_dropped():
    gm = gcompiler.trace(AssertNet(), torch.randn(1, 3, 4, 4))
    assert not any(n.target is torch._assert for n in gm.graph.nodes)
    assert any("three channels" in g["description"] for g in gm.meta["guards"])
    assert gm.meta["dropped_asserts"] and "finite input" in gm.meta["dropped_asserts"][0]


class ParamConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.alpha = nn.Parameter(torch.rand(3))

    def forward(self, x):
        a = dict(self.named_parameters())["alpha"]  # a real tensor built from a parameter while tracing
        return self.conv(x) * a.unsqueeze(1).unsqueeze(2)


class ListParams(nn.Module):
    """A parameter reached through a plain list attribute: FX bakes it as a constant with a grad_fn."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.alpha = nn.Parameter(torch.rand(3))
        self.__dict__["extra"] = [self.alpha]  # not a registered attribute

    def forward(self, x):
        return self.conv(x) * self.extra[0].unsqueeze(1).unsqueeze(2)


def test_parameters_read_through_named_parameters_stay_tied():
    torch.manual_seed(0)
    m, x = ParamConstant(), torch.randn(1, 3, 5, 5)
    gm = gcompiler.trace(m, x)
    assert any(n.op == "get_attr" and n.target == "alpha" for n in gm.graph.nodes)
    assert "frozen_constants" not in gm.meta
    gm(x).sum().backward()
    assert gm.alpha.grad is not None and gm.alpha.grad.abs().sum() > 0


def test_constants_built_from_parameters_are_detached(tmp_path):
    import copy
    torch.manual_seed(0)
    m, x = ListParams(), torch.randn(1, 3, 5, 5)
    gm = gcompiler.trace(m, x)
    g2 = copy.deepcopy(gm)
    with torch.no_grad():
        assert torch.equal(g2(x), m(x))
    assert gm.meta["frozen_constants"]
    gcompiler.save(gm, tmp_path / "m")
    loaded = gcompiler.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))


class NoisyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        noise = torch.randn(1, 1, 6, 6)
        return self.conv(x) + 0.1 * noise + torch.randn(x.size(0), 1, x.size(2), x.size(3))


def test_random_factories_stay_in_the_graph():
    gm = gcompiler.trace(NoisyNet(), torch.randn(1, 3, 6, 6))
    assert sum(n.target is torch.randn for n in gm.graph.nodes) == 2
    x = torch.randn(1, 3, 6, 6)
    assert not torch.equal(gm(x), gm(x))  # fresh noise on every call, as in eager


class WSConv(nn.Conv2d):
    """Weight-standardized conv: a torch conv subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class InitOnlyConv(nn.Conv2d):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        nn.init.zeros_(self.bias)


def test_conv_subclasses_are_leaves_and_custom_forward_is_unknown():
    from gcompiler.fx import is_plain_conv, not_plain_reason
    m = nn.Sequential(InitOnlyConv(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      WSConv(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    gm = gcompiler.trace(m, torch.randn(1, 3, 8, 8))
    assert [n.op for n in gm.graph.nodes].count("call_module") == 7
    assert is_plain_conv(m[0]) and not is_plain_conv(m[4])
    assert "redefines forward" in not_plain_reason(m[4])
    groups = {g.name: g for g in gcompiler.channel_groups(gm)}
    assert groups["_0"].prunable
    assert not groups["_2"].prunable and "WSConv" in groups["_2"].reason  # its input channels
    assert not groups["_4"].prunable and "WSConv" in groups["_4"].reason  # its output channels
    sn = nn.utils.spectral_norm(nn.Conv2d(3, 3, 1))
    assert not is_plain_conv(sn) and "hooks" in not_plain_reason(sn)


def test_syntax_error_from_generated_code_is_a_trace_error(monkeypatch):
    import torch.fx as fx

    def broken(self, *a, **k):
        raise SyntaxError("invalid syntax (<eval_with_key>, line 3)")

    monkeypatch.setattr(fx.GraphModule, "recompile", broken)
    with pytest.raises(TraceError, match="SyntaxError"):
        gcompiler.trace(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 4, 4))


def test_compile_forwards_kwargs_and_leaves_the_model_untouched():
    torch.manual_seed(0)
    m, x = FlagsNet(), torch.randn(1, 3, 8, 8)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    gm = gcompiler.compile(m, "insert-masks", x, kwargs={"encode_only": True})
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    with torch.no_grad():
        assert torch.equal(gm(x), m(x, encode_only=True))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_trace_computes_nothing_at_the_example_size(monkeypatch):
    # shapes come from fake tensors and the eager check runs on a spatially cropped copy of the input, so
    # tracing at 1024^2 runs no real convolution at 1024^2 (this is what made resnet_9blocks take seconds).
    from torch._subclasses.fake_tensor import FakeTensor
    real_sizes = []
    orig = nn.Conv2d._conv_forward

    def recording(self, x, weight, bias):
        if not isinstance(x, FakeTensor):
            real_sizes.append(tuple(x.shape[2:]))
        return orig(self, x, weight, bias)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", recording)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    gm = gcompiler.trace(m, torch.randn(1, 3, 1024, 1024))
    assert gm.meta["input_shapes"] == [(1, 3, 1024, 1024)]
    assert tuple(gm.graph.find_nodes(op="call_module", target="2")[0].meta["tensor_meta"].shape) == (1, 3, 1024, 1024)
    assert real_sizes and max(real_sizes) <= (32, 32), real_sizes


class StdOnSelf(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.std = torch.ones(1, 3, 1, 1)

    def forward(self, x):
        self.std = self.std.to(x)
        return self.conv(x) / self.std


def test_proxy_left_by_an_earlier_fx_trace_is_reported_with_module_and_line():
    import torch.fx as fx
    m = StdOnSelf()
    fx.symbolic_trace(m)  # plain torch.fx leaves a Proxy in m.std
    with pytest.raises(TraceError) as ei:
        gcompiler.trace(m, torch.randn(1, 3, 4, 4))
    msg = str(ei.value)
    assert "(StdOnSelf).std" in msg and "test_trace.py" in msg and "self.std = self.std.to(x)" in msg
    # gcompiler.trace itself leaves nothing behind
    m2 = StdOnSelf()
    gcompiler.trace(m2, torch.randn(1, 3, 4, 4))
    assert isinstance(m2.std, torch.Tensor)


class ModeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.training:
            y = y * 0.5
        return y


def test_traced_in_training_mode_verifies_in_that_mode_and_keeps_buffers():
    torch.manual_seed(0)
    m, x = ModeBranch().train(), torch.randn(2, 3, 8, 8)
    before = m.bn.running_mean.clone()
    gm = gcompiler.trace(m, x)
    assert torch.equal(gm.bn.running_mean, before) and torch.equal(m.bn.running_mean, before)
    assert gm.training
    evaluated = gcompiler.trace(m.eval(), x)
    assert not any(n.target is operator.mul for n in evaluated.graph.nodes)


class PythonReads(nn.Module):
    """More Python-level reads: iterating chunks, max() of sizes, int(math.ceil()), meshgrid of aranges,
    star-unpacking a shape, float() of a weight's shape, x.dim() asserts, len(x)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        import math
        assert x.dim() == 4
        b, c, *rest = x.shape
        x = torch.cat([p * 2 for p in torch.chunk(x, 2, 1)], 1)
        h, w = x.shape[2:]
        m = max(h, w) + int(math.ceil(h / 3)) + len(x)
        scale = float(self.conv.weight.shape[1]) ** -0.5
        ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        grid = torch.stack([xs / (w - 1) * 2 - 1, ys / (h - 1) * 2 - 1], -1).unsqueeze(0).expand(b, -1, -1, -1)
        y = F.grid_sample(self.conv(x) * scale, grid, align_corners=True)
        return y.view(b, c, rest[0] * rest[1]) * m


def test_more_python_reads_trace_and_guard():
    torch.manual_seed(0)
    m, x = PythonReads(), torch.randn(2, 4, 6, 8)
    gm = gcompiler.trace(m, x)
    assert torch.allclose(gm(x), m(x))
    descs = [g["description"] for g in gm.meta["guards"]]
    assert any("ceil(" in d for d in descs) and any("len(" in d for d in descs)
    with pytest.raises(gcompiler.errors.GuardError, match="max"):
        gm(torch.randn(2, 4, 9, 8))  # max(h, w) picked w when traced


def test_retracing_a_guarded_graph_keeps_its_guards(tmp_path):
    torch.manual_seed(0)
    m, x = ShapeQuestions(), torch.randn(2, 3, 8, 8)
    gm = gcompiler.trace(m, x)
    n = len(gcompiler.fx.guards(gm))
    again = gcompiler.trace(gm, x)
    assert len(gcompiler.fx.guards(again)) == n == len(again.meta["guards"])
    assert [g["description"] for g in gcompiler.fx.guards(again)] == [g["description"] for g in gcompiler.fx.guards(gm)]
    gcompiler.save(gm, tmp_path / "g")
    loaded = gcompiler.trace(gcompiler.load(tmp_path / "g"), x)
    assert len(gcompiler.fx.guards(loaded)) == n
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
