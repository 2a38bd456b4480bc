"""MAC / parameter / size counting against hand-computed values (BRIEF section 5)."""
import pytest
import torch
import torch.nn as nn

import gcompiler
from gcompiler.errors import TraceError


def test_conv_macs_and_params_by_hand():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1,
                                                                                     groups=4, bias=False))
    p = gcompiler.profile(m, torch.randn(2, 3, 16, 16))
    conv1 = 2 * 8 * 16 * 16 * 3 * 3 * 3
    conv2 = 2 * 8 * 8 * 8 * (8 // 4) * 3 * 3
    assert p.macs == conv1 + conv2
    assert p.params == (8 * 3 * 9 + 8) + (8 * 2 * 9)
    assert p.size_bytes(32) == p.params * 4
    assert p.size_bytes(8) == p.params


def test_transposed_conv_counted_at_output_resolution():
    m = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
    p = gcompiler.profile(nn.Sequential(m), torch.randn(1, 16, 10, 10))
    assert p.macs == (1 * 8 * 20 * 20) * 16 * 9


def test_linear_and_table():
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    p = gcompiler.profile(m, torch.randn(3, 3, 2, 2))
    assert p.macs == 3 * 5 * 12
    text = p.table()
    assert "Linear" in text and "3x5" in text and "MACs" in text


def test_profile_of_graph_module_reuses_or_repropagates_shapes():
    m = nn.Sequential(nn.Conv2d(3, 4, 1))
    gm = gcompiler.trace(m, torch.randn(1, 3, 8, 8))
    assert gcompiler.profile(gm).macs == 8 * 8 * 4 * 3
    assert gcompiler.profile(gm, torch.randn(1, 3, 16, 16)).macs == 16 * 16 * 4 * 3


def test_custom_leaf_hooks_and_mixed_precision_size():
    class Custom(nn.Module):
        weight_bits = 4

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return x

        def count_macs(self, in_shapes, out_shape):
            return 7

    gcompiler.register_leaf(Custom)
    m = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), Custom())
    p = gcompiler.profile(m, torch.randn(1, 1, 2, 2))
    assert p.macs == 4 + 7
    assert p.size_bytes(None) == 1 * 4 + 10 * 4 / 8


def test_profile_needs_inputs():
    with pytest.raises(TraceError, match="example inputs"):
        gcompiler.profile(nn.Conv2d(1, 1, 1))


def test_counts_survive_quantization_and_lowering_to_triton_ops():
    m = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2)
    x = torch.randn(1, 3, 32, 32)
    dense = gcompiler.profile(m, x)
    gm = gcompiler.compile(m, "insert-fake-quant", x, verify="shapes")
    fq = gcompiler.profile(gm)
    lowered = gcompiler.compile(gm, "convert-to-int,lower-to-triton", verify="shapes")
    assert any(n.op == "call_function" and "gcompiler" in str(n.target) for n in lowered.graph.nodes)
    low = gcompiler.profile(lowered)
    assert dense.macs == fq.macs == low.macs
    assert dense.params == fq.params == low.params


def test_profile_with_inputs_leaves_the_graph_modules_shapes_alone():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    gm = gcompiler.trace(m, torch.randn(1, 3, 8, 8))
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta}
    meta = dict(gm.meta)
    assert gcompiler.profile(gm, torch.randn(2, 3, 32, 32)).macs == 2 * 32 * 32 * 4 * 27
    assert gm.meta["input_shapes"] == meta["input_shapes"] == [(1, 3, 8, 8)]
    assert {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta} == shapes
    assert gcompiler.profile(gm).macs == 8 * 8 * 4 * 27


class _DataDependentGroups(nn.Module):
    """Depthwise and grouped convs whose ``groups`` comes from the input's shape (as public code writes it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.dw = nn.Parameter(torch.randn(6, 1, 3, 3))
        self.up = nn.Parameter(torch.randn(6, 2, 4, 4))  # transposed: [C_in, C_out/g, k, k]

    def forward(self, x):
        y = self.stem(x)
        y = torch.nn.functional.conv2d(y, self.dw, padding=1, groups=y.shape[1])
        return torch.nn.functional.conv_transpose2d(y, self.up, stride=2, padding=1, groups=y.shape[1] // 2)


def test_data_dependent_conv_groups_are_counted():
    x = torch.randn(2, 3, 8, 8)
    p = gcompiler.profile(_DataDependentGroups(), x)
    # the same layers as modules with constant groups
    ref = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
                        nn.ConvTranspose2d(6, 6, 4, stride=2, padding=1, groups=3, bias=False))
    expected = gcompiler.profile(ref, x).macs
    assert p.macs == expected == 2 * 8 * 8 * 6 * 3 + 2 * 8 * 8 * 6 * 9 + 2 * 16 * 16 * 6 * 2 * 16
    gm = gcompiler.compile(_DataDependentGroups(), "insert-masks", x)  # the pass log shows the real count
    rec = gm.meta["pass_log"].records[0]
    assert rec.macs == (expected, expected) and not rec.notes


def test_functional_conv_without_recorded_shapes_is_a_clear_error():
    from gcompiler.errors import GCompilerError

    gm = gcompiler.trace(_DataDependentGroups(), torch.randn(1, 3, 8, 8))
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and "conv_transpose" in str(n.target))
    del node.meta["tensor_meta"]
    with pytest.raises(GCompilerError, match=f"node '{node.name}'.*output shape is not recorded"):
        gcompiler.profile(gm)
