"""Portable results: save() writes safetensors + architecture JSON atomically and load() rebuilds a
runnable graph without the original model's code, with identical outputs."""
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from strategies import generator_nets

import gcompiler
from gcompiler.errors import CheckpointError


@given(net=generator_nets(allow_unknown=False))
def test_round_trip_generated_graphs_bit_identical(net, tmp_path_factory):
    module, x = net
    gm = gcompiler.trace(module, x)
    d = gcompiler.save(gm, tmp_path_factory.mktemp("m") / "model")
    back = gcompiler.load(d)
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))


@pytest.mark.parametrize("pipeline", ["insert-masks,eliminate-dead-channels", "insert-fake-quant",
                                      "insert-fake-quant,convert-to-int"])
def test_round_trip_of_compiled_zoo_model(tmp_path, pipeline):
    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2).eval()
    x = torch.randn(1, 3, 32, 32)
    gm = gcompiler.compile(model, "insert-masks", x) if "masks" in pipeline else gcompiler.trace(model, x)
    if "masks" in pipeline:
        for mk in gcompiler.masks(gm).values():
            with torch.no_grad():
                mk[::2] = 0
        gm = gcompiler.compile(gm, "eliminate-dead-channels")
    else:
        gm = gcompiler.compile(gm, pipeline)
    d = gcompiler.save(gm, tmp_path / "out")
    assert json.loads((d / "architecture.json").read_text())["format"]
    back = gcompiler.load(d)
    gm.eval()
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))
    assert gcompiler.profile(back).macs == gcompiler.profile(gm).macs


def test_load_needs_no_model_code(tmp_path):
    class Private(torch.nn.Module):  # defined only here: the loading process never sees this class
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
            self.b = torch.nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return torch.tanh(self.b(torch.relu(self.a(x))) + x)

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    m = Private().eval()
    d = gcompiler.save(gcompiler.trace(m, x), tmp_path / "p")
    torch.save(x, tmp_path / "x.pt")
    code = ("import torch, gcompiler; m = gcompiler.load(r'%s'); x = torch.load(r'%s', weights_only=True); "
            "torch.save(m(x), r'%s')" % (d, tmp_path / "x.pt", tmp_path / "y.pt"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), m(x))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="architecture.json is missing"):
        gcompiler.load(tmp_path)
    (tmp_path / "keep.txt").write_text("user data")
    gm = gcompiler.trace(torch.nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2))
    with pytest.raises(CheckpointError, match="refusing to replace"):
        gcompiler.save(gm, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"


class _Attention(torch.nn.Module):
    """A transformer-SR-style block: conv stem, LayerNorm, single-head attention over pixels, MLP, conv head."""

    def __init__(self, c: int = 24):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.norm = torch.nn.LayerNorm(c)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(c, c) for _ in range(4))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(c, 2 * c), torch.nn.GELU(), torch.nn.Linear(2 * c, c))
        self.head = torch.nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        f = self.stem(x)
        b, c, h, w = f.shape
        t = self.norm(f.flatten(2).transpose(1, 2))
        a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / c ** 0.5, dim=-1) @ self.v(t)
        t = t + self.o(a)
        t = t + self.mlp(t)
        return self.head(t.transpose(1, 2).reshape(b, c, h, w))


@pytest.mark.parametrize("make", [
    lambda: (_Attention(), torch.randn(2, 3, 12, 12)),
    lambda: (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(300, 257), torch.nn.ReLU(),
                                 torch.nn.Linear(257, 33)), torch.randn(5, 3, 10, 10)),
])
def test_linear_and_attention_models_round_trip_bit_exactly(tmp_path, make):
    torch.manual_seed(0)
    module, x = make()
    gm = gcompiler.trace(module.eval(), x)
    back = gcompiler.load(gcompiler.save(gm, tmp_path / "m"))
    for (name, a), (name_b, b) in zip(gm.state_dict().items(), back.state_dict().items()):
        assert name == name_b and a.dtype == b.dtype and torch.equal(a, b)
        # own, 64-byte aligned storage (not a view into the file mapping): BLAS takes the same kernels
        assert b.data_ptr() % 64 == 0 and b.is_contiguous()
    (tmp_path / "m" / "model.safetensors").unlink()  # nothing reads the file after load
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))
        assert torch.equal(back(x[:1]), gm(x[:1]))


def test_guards_survive_save_and_load(tmp_path):
    from gcompiler.errors import GuardError

    class Guarded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            if x.shape[2] % 4 == 0:  # answered from the example input, re-checked at run time
                return self.c(x)
            return self.c(x) * 2

    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(Guarded().eval(), x)
    assert gm.meta["guards"]
    back = gcompiler.load(gcompiler.save(gm, tmp_path / "g"))
    assert back.meta["guards"] == gm.meta["guards"]
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))
    with pytest.raises(GuardError, match="x.shape"):
        back(torch.randn(1, 3, 9, 9))
