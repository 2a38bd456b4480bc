"""prune-fine-grained: one-shot magnitude pruning zeroes exactly the smallest weights, skips what it is told
to, and (honestly) leaves dense MACs unchanged."""
import pytest
import torch
import torch.nn as nn

import gcompiler
from gcompiler.errors import PassError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_layer_scope_zeroes_the_smallest_weights_of_each_layer():
    model, x = _net(), torch.randn(1, 3, 10, 10)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    dense = gcompiler.profile(model, x)
    gm = gcompiler.compile(model, "prune-fine-grained{sparsity=0.75,skip=4}", x)
    for name, w0 in before.items():
        w = gm.get_submodule(name).weight.detach()
        if name == "4":
            assert torch.equal(w, w0)  # skipped
            continue
        k = round(0.75 * w0.numel())
        threshold = w0.abs().flatten().sort().values[k - 1]
        assert int((w == 0).sum()) == k
        assert torch.equal(w[w0.abs() > threshold], w0[w0.abs() > threshold])  # the large ones are untouched
    assert gcompiler.profile(gm).macs == dense.macs  # unstructured zeros are still multiplied


def test_global_scope_uses_one_threshold():
    model, x = _net(), torch.randn(1, 3, 10, 10)
    all_w = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if hasattr(m, "weight")])
    gm = gcompiler.compile(model, "prune-fine-grained{sparsity=0.5,scope=global}", x)
    threshold = all_w.sort().values[round(0.5 * all_w.numel()) - 1]
    for m in gm.modules():
        if hasattr(m, "weight"):
            w = m.weight.detach()
            assert bool((w[w != 0].abs() > threshold).all())
    assert gm.meta["fine_grained"]["zero_fraction"] == pytest.approx(0.5, abs=1e-3)


def test_bad_options_are_errors():
    model, x = _net(), torch.randn(1, 3, 10, 10)
    with pytest.raises(PassError, match="sparsity"):
        gcompiler.compile(model, "prune-fine-grained{sparsity=1.5}", x)
    with pytest.raises(PassError, match="no module named 'nope'"):
        gcompiler.compile(model, "prune-fine-grained{skip=nope}", x)
