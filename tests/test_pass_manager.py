"""Pass registry, pipeline text, verifier and the per-pass log."""
import pytest
import torch
import torch.nn as nn

import gcompiler
from gcompiler.errors import PassError, VerificationError
from gcompiler.passes import Contract, available, parse_pipeline, register_pass
from gcompiler.passes.manager import run_pipeline


@register_pass("test-scale-weights", contract=Contract.exact(), description="multiply conv weights (test)")
def _scale_weights(gm, *, factor: float = 1.0, only_first: bool = False):
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d):
            gm.get_submodule(n.target).weight.data.mul_(factor)
            if only_first:
                break
    return gm


@register_pass("test-drop-relu", contract=Contract.changes_semantics())
def _drop_relu(gm):
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()
    return gm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))


def test_parse_pipeline_text():
    assert parse_pipeline("a{x=1,y=2}, b ,c{z=3 w=4}") == [("a", {"x": "1", "y": "2"}), ("b", {}),
                                                          ("c", {"z": "3", "w": "4"})]
    with pytest.raises(PassError, match="key=value"):
        parse_pipeline("a{x}")
    with pytest.raises(PassError, match="cannot parse"):
        parse_pipeline("a{x=1")


def test_options_are_typed_and_logged():
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.compile(_net(), "test-scale-weights{factor=1,only_first=true}", x, verify="numeric")
    rec = gm.meta["pass_log"].records[0]
    assert rec.options == {"factor": 1.0, "only_first": True}
    assert rec.error == 0.0 and rec.nodes == (5, 5)  # placeholder, 3 layers, output
    assert "test-scale-weights" in str(gm.meta["pass_log"])


def test_unknown_pass_and_option_list_valid_ones():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(PassError, match="Did you mean 'test-scale-weights'"):
        gcompiler.compile(_net(), "test-scale-weight", x)
    with pytest.raises(PassError, match="valid options: factor: float = 1.0, only_first: bool = False"):
        gcompiler.compile(_net(), "test-scale-weights{fator=2}", x)
    with pytest.raises(PassError, match="cannot read 'abc' as float"):
        gcompiler.compile(_net(), "test-scale-weights{factor=abc}", x)


def test_verifier_catches_a_pass_breaking_its_exact_contract():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(VerificationError, match="test-scale-weights.*beyond its contract"):
        gcompiler.compile(_net(), "test-scale-weights{factor=1.01}", x, verify="numeric")
    # at shape level the end-of-pipeline check still compares numbers, and names the pass
    with pytest.raises(VerificationError, match="after pass 'test-scale-weights'.*end-of-pipeline check"):
        gcompiler.compile(_net(), "test-scale-weights{factor=1.01}", x, verify="shapes")
    # only an explicit opt-out skips it
    gcompiler.compile(_net(), "test-scale-weights{factor=1.01}", x, verify="shapes", check=False)


def test_changes_semantics_pass_is_not_compared_but_shapes_are():
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.compile(_net(), ["test-drop-relu"], x, verify="numeric")
    assert gm.meta["pass_log"].records[0].error is None
    assert gm.meta["pass_log"].records[0].nodes == (5, 4)


def test_plain_callable_and_broken_graph():
    x = torch.randn(1, 3, 8, 8)

    def break_shapes(gm):
        gm.add_submodule("extra", nn.Conv2d(5, 5, 1))  # wrong input channels
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            new = gm.graph.call_module("extra", (out.args[0],))
        out.args = (new,)
        gm.recompile()
        return gm

    with pytest.raises(VerificationError, match="after pass 'break_shapes'.*module 'extra'"):
        gcompiler.compile(_net(), [break_shapes], x)


def test_registry_lists_passes():
    assert "test-scale-weights" in available()
    with pytest.raises(PassError, match="already registered"):
        register_pass("test-scale-weights", contract=Contract.exact())(lambda gm: gm)
