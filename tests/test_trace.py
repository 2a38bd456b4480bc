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
    assert "leaf_modules" in msg and "concrete_args" in msg


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


def test_aliased_augmented_assignment_detected():
    with pytest.raises(TraceError, match="augmented assignment"):
        gcompiler.trace(AliasedAugmented(), torch.randn(1, 3, 4, 4))


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
