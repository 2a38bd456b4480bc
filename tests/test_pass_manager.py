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


# ------------------------------------------------------------------ one rule for copies, end-of-pipeline check
def test_compile_never_mutates_a_graph_module_and_a_second_compile_works():
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(_net(), x)
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    shapes, meta_keys = list(gm.meta["input_shapes"]), set(gm.meta)
    out1 = gcompiler.compile(gm, "test-drop-relu", torch.randn(2, 3, 16, 16))
    assert out1 is not gm and gm.code == code and set(gm.meta) == meta_keys
    assert gm.meta["input_shapes"] == shapes and "pass_log" not in gm.meta
    assert all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())
    out2 = gcompiler.compile(gm, "test-drop-relu")  # not a no-op on an already rewritten object
    assert out2.meta["pass_log"].records[0].nodes == (5, 4)
    assert out1.meta["input_shapes"] == [(2, 3, 16, 16)] and out2.meta["input_shapes"] == shapes


def test_compile_never_mutates_a_module():
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    gm = gcompiler.compile(net, "test-scale-weights{factor=1.0}", torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        next(p for p in gm.parameters()).mul_(3)  # the result owns its weights
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_run_pipeline_is_in_place_even_when_a_pass_returns_a_new_module():
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.trace(_net(), x)

    def rebuild(g):  # returns a new object instead of editing g
        import copy
        return copy.deepcopy(g)

    out, log = run_pipeline(gm, [rebuild, "test-drop-relu"])
    assert out is gm and gm.meta["pass_log"] is log
    assert [n.op for n in gm.graph.nodes].count("call_module") == 2


def test_end_of_pipeline_check_names_the_pass_across_segments():
    x = torch.randn(1, 3, 8, 8)
    pipe = "test-scale-weights{factor=1.0},test-drop-relu,test-scale-weights{factor=1.001,only_first=true}"
    with pytest.raises(VerificationError, match=r"after pass 'test-scale-weights'.*1e-05.*end-of-pipeline"):
        gcompiler.compile(_net(), pipe, x, verify="lint")
    gm = gcompiler.compile(_net(), pipe.replace("1.001", "1.0"), x, verify="lint")
    checks = gm.meta["pass_log"].checks
    assert len(checks) == 2 and all("<= 1e-05" in c for c in checks)  # one per segment around the drop


def test_end_check_inputs_are_small_where_the_graph_takes_them():
    from gcompiler.passes.manager import check_inputs

    gm = gcompiler.trace(_net(), torch.randn(3, 3, 100, 80))
    xs, small = check_inputs(gm)
    assert small and tuple(xs[0].shape) == (1, 3, 64, 64)
    fixed = gcompiler.trace(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 98 * 98, 4)),
                            torch.randn(1, 3, 100, 100))
    xs, small = check_inputs(fixed)
    assert not small and tuple(xs[0].shape) == (1, 3, 100, 100)


def test_contract_can_depend_on_options():
    @register_pass("test-noise", contract=lambda o: Contract.approximate(o["amount"] * 100))
    def _noise(gm, *, amount: float = 0.01):
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d):
                w = gm.get_submodule(n.target).weight
                w.data.add_(amount * w.detach().abs().max() * torch.randn_like(w).sign())
        return gm

    x = torch.randn(1, 3, 8, 8)
    info = gcompiler.passes.get_pass("test-noise")
    assert info.contract_for({"amount": 0.5}).tol == 50 and "depends on the options" in info.contract_text()
    gm = gcompiler.compile(_net(), "test-noise{amount=0.001}", x)
    assert "tol 0.1 " in gm.meta["pass_log"].records[0].contract
    with pytest.raises(PassError, match="contract function returned"):
        register_pass("test-bad-contract", contract=lambda o: 1.0)(lambda gm: gm)
        gcompiler.compile(_net(), "test-bad-contract", x)


def test_one_list_syntax():
    from gcompiler.passes.registry import parse_list

    assert parse_list("a;b ; c") == parse_list("a|b|c") == parse_list("[a;b;c]") == parse_list("'a;b;c'") \
        == ["a", "b", "c"]
    assert parse_list("") == [] and parse_list(("x", "y")) == ["x", "y"]
    with pytest.raises(PassError, match="separate items with ';'"):
        parse_list("a,b", "p{opt}")

    @register_pass("test-list-option", contract=Contract.exact())
    def _lst(gm, *, names: tuple[str, ...] = (), sizes: tuple[int, ...] = ()):
        gm.meta["seen"] = (names, sizes)
        return gm

    gm = gcompiler.compile(_net(), "test-list-option{names=conv1|conv9,sizes=8;16}", torch.randn(1, 3, 8, 8))
    assert gm.meta["seen"] == (("conv1", "conv9"), (8, 16))


def test_analysis_cache_is_dropped_unless_preserved():
    from gcompiler.analysis import channel_groups

    @register_pass("test-keeps-groups", contract=Contract.exact(), preserves=("channel-groups",))
    def _keep(gm):
        return gm

    with pytest.raises(PassError, match="unknown analyses"):
        register_pass("test-bad-preserves", contract=Contract.exact(), preserves=("shapes",))(lambda gm: gm)
    gm = gcompiler.trace(_net(), torch.randn(1, 3, 8, 8))
    groups = channel_groups(gm)
    assert channel_groups(gm)[0] is groups[0]  # cached
    v = gm.meta.get("graph_version", 0)
    run_pipeline(gm, "test-keeps-groups")
    assert gm.meta["graph_version"] == v + 1 and channel_groups(gm)[0] is groups[0]
    run_pipeline(gm, "test-scale-weights")
    assert "channel-groups" not in gm.meta["analysis_cache"]
    assert channel_groups(gm)[0] is not groups[0]
    # an edit outside the manager changes the fingerprint: never a stale answer
    before = channel_groups(gm)
    relu = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
    relu.replace_all_uses_with(relu.args[0])
    gm.graph.erase_node(relu)
    gm.recompile()
    assert channel_groups(gm)[0] is not before[0]


def test_log_shows_unknown_macs_with_the_reason_never_zero():
    from gcompiler.errors import GCompilerError

    class Opaque(nn.Module):
        def count_macs(self, ins, out):
            raise GCompilerError("Opaque: cannot count")

        def forward(self, x):
            return x

    def add_opaque(gm):
        gm.add_submodule("opaque", Opaque())
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            new = gm.graph.call_module("opaque", (out.args[0],))
        out.args = (new,)
        gm.recompile()
        return gm

    gcompiler.register_leaf(Opaque)
    gm = gcompiler.compile(_net(), [add_opaque], torch.randn(1, 3, 8, 8))
    rec = gm.meta["pass_log"].records[0]
    assert rec.macs[0] > 0 and rec.macs[1] is None and "Opaque: cannot count" in rec.notes
    assert "?" in str(gm.meta["pass_log"]) and "cannot count" in str(gm.meta["pass_log"])
