"""Tests of the channel-coupling analysis (gcompiler.analysis.channel_groups).

Three kinds of evidence:

* hand-built nets whose groups are worked out by hand (residual trunk, concat offsets, pixel-shuffle
  blocks, grouped / depthwise convs, broadcasts, unknown ops);
* properties over random generator-like nets (tests/strategies.py): the groups partition every channel;
  a perturbation of a group's channels reaches exactly the tensors and channels the group says it does;
  and physically removing any subset of a prunable group's units, using nothing but the group's index
  maps, gives a net that runs and equals the original with those channels zeroed at the consumers;
* spot checks on zoo models (resnet_9blocks, unet, rrdbnet, srresnet, mobile_resnet).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.fx.passes.shape_prop import ShapeProp

from gcompiler.analysis import ChannelGroup, channel_groups, describe_groups, groups_by_node, register_channel_rule
from gcompiler.errors import TraceError
from gcompiler.fx import trace

from strategies import generator_nets, trace_net


def by_name(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {g.name: g for g in groups}


def group_of(groups: list[ChannelGroup], node: str) -> ChannelGroup:
    """The single group owning all of ``node``'s output channels."""
    owners = [g for g in groups if node in g.index]
    assert len(owners) == 1, f"{node} is split over {[g.name for g in owners]}"
    return owners[0]


def symbolic(module: nn.Module, *xs: torch.Tensor) -> torch.fx.GraphModule:
    gm = torch.fx.symbolic_trace(module)
    ShapeProp(gm).propagate(*xs)
    return gm


# --------------------------------------------------------------------------------------------------
# Reference operations used by the properties: a perturbation probe and a physical channel remover
# --------------------------------------------------------------------------------------------------

def _record(gm: torch.fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            out[n.name] = r
            return r

    with torch.no_grad():
        Rec(gm).run(x)
    return out


def perturb_and_compare(gm: torch.fx.GraphModule, group: ChannelGroup, units: list[int], producer: str,
                        x: torch.Tensor) -> None:
    """Add noise to ``units`` at ``producer`` and cut the group's consumers off (they read the unperturbed
    values). Then only the group's tensors may change, and only in the channels of ``units``."""
    ref = _record(gm, x)
    chans = group.channels_of(producer, units)
    rec: dict[str, torch.Tensor] = {}

    class Probe(torch.fx.Interpreter):
        def run_node(self, n):
            if n.name in group.consumer_slices:
                args = torch.fx.node.map_arg(n.args, lambda a: ref[a.name])
                kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: ref[a.name])
                r = getattr(self, n.op)(n.target, args, kwargs)
            else:
                r = super().run_node(n)
            if n.name == producer:
                r = r.clone()
                r[:, chans] += 1.0 + torch.rand_like(r[:, chans])
            rec[n.name] = r
            return r

    with torch.no_grad():
        Probe(gm).run(x)
    assert (rec[producer] - ref[producer]).abs()[:, chans].min() > 0
    for name, r in rec.items():
        if not isinstance(r, torch.Tensor) or r.dim() < 2:
            continue
        diff = (r - ref[name]).abs()
        if name in group.index:
            keep = [c for c in range(r.shape[1]) if c not in set(group.channels_of(name, units))]
            worst = diff[:, keep].max().item() if keep else 0.0
            assert worst == 0.0, f"perturbing {group.name} units {units} changed other channels of '{name}'"
        else:
            assert diff.max().item() == 0.0, \
                f"perturbing {group.name} units {units} at '{producer}' changed '{name}', outside the group"


def _slice_conv_like(m: nn.Module, in_keep: list[int], out_keep: list[int]) -> None:
    """Shrink a conv / transposed conv / linear to the kept input and output channels (any groups)."""
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    is_linear = isinstance(m, nn.Linear)
    c_in = m.in_features if is_linear else m.in_channels
    c_out = m.out_features if is_linear else m.out_channels
    g = 1 if is_linear else m.groups
    pin, pout = c_in // g, c_out // g
    pieces, ins, outs = [], [], []
    for gi in range(g):
        ik = [c for c in in_keep if gi * pin <= c < (gi + 1) * pin]
        ok = [c for c in out_keep if gi * pout <= c < (gi + 1) * pout]
        if not ik and not ok:
            continue  # a depthwise group removed entirely
        w = m.weight.data
        if transposed:  # [in, out/g, k...]
            pieces.append(w[ik][:, [c - gi * pout for c in ok]])
        else:  # [out, in/g, k...]
            pieces.append(w[ok][:, [c - gi * pin for c in ik]])
        ins.append(len(ik))
        outs.append(len(ok))
    assert len(set(ins)) == 1 and len(set(outs)) == 1, f"unequal removal per group in {m}: {ins} / {outs}"
    m.weight = nn.Parameter(torch.cat(pieces, 0))
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.data[out_keep])
    if is_linear:
        m.in_features, m.out_features = len(in_keep), len(out_keep)
    else:
        m.in_channels, m.out_channels, m.groups = len(in_keep), len(out_keep), len(pieces)


def _slice_norm(m: nn.Module, keep: list[int]) -> None:
    if getattr(m, "weight", None) is not None:
        m.weight = nn.Parameter(m.weight.data[keep])
        m.bias = nn.Parameter(m.bias.data[keep])
    if getattr(m, "running_mean", None) is not None:
        m.running_mean = m.running_mean[keep]
        m.running_var = m.running_var[keep]
    m.num_features = len(keep)


def remove_units(gm: torch.fx.GraphModule, group: ChannelGroup, units: list[int]) -> torch.fx.GraphModule:
    """A copy of ``gm`` with the channels of ``units`` physically removed, using only ``group``'s maps."""
    gm = copy.deepcopy(gm)
    nodes = {n.name: n for n in gm.graph.nodes}

    def keep(name: str) -> list[int] | None:
        if name not in group.index:
            return None
        size = nodes[name].meta["tensor_meta"].shape[1]
        drop = set(group.channels_of(name, units))
        return [c for c in range(size) if c not in drop]

    for name in dict.fromkeys(list(group.index) + group.consumers):
        node = nodes[name]
        if node.op != "call_module":
            assert group.kinds[name] not in ("conv_functional", "depthwise_functional", "linear_functional")
            continue
        m = gm.get_submodule(str(node.target))
        src = node.args[0]
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            in_size = src.meta["tensor_meta"].shape[1]
            out_size = node.meta["tensor_meta"].shape[1]
            in_keep = keep(src.name) if src.name in group.index else list(range(in_size))
            out_keep = keep(name) if name in group.index else list(range(out_size))
            _slice_conv_like(m, in_keep, out_keep)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            _slice_norm(m, keep(name))
    gm.recompile()
    return gm


def zero_at_consumers(gm: torch.fx.GraphModule, group: ChannelGroup, units: list[int]) -> torch.fx.GraphModule:
    """A copy of ``gm`` whose group consumers see zeros in the channels of ``units``."""
    gm = copy.deepcopy(gm)
    for name, cs in group.consumer_slices.items():
        node = next(n for n in gm.graph.nodes if n.name == name)
        assert node.op == "call_module", f"consumer {name} is not a module; cannot hook it"
        chans = group.channels_of(cs.input, units)

        def hook(mod, args, chans=chans):
            x = args[0].clone()
            x[:, chans] = 0
            return (x,) + tuple(args[1:])

        gm.get_submodule(str(node.target)).register_forward_pre_hook(hook)
    return gm


def draw_units(data: st.DataObject, group: ChannelGroup) -> list[int]:
    """A non-empty proper subset of the group's units that removes equally from every conv group."""
    if group.equal_removal:
        er = group.equal_removal[0]
        per = group.index[er.tensor]
        size = max(c for row in per for c in row) + 1
        slice_len = size // er.groups
        by_slice: dict[int, list[int]] = {}
        for u, row in enumerate(per):
            by_slice.setdefault(row[0] // slice_len, []).append(u)
        n_per = min(len(v) for v in by_slice.values())
        k = data.draw(st.integers(1, n_per - 1)) if n_per > 1 else 0
        assume(k > 0)
        units = []
        for members in by_slice.values():
            units += data.draw(st.lists(st.sampled_from(members), min_size=k, max_size=k, unique=True))
        # every other constraint of the group must be satisfied too
        for other in group.equal_removal[1:]:
            counts: dict[int, int] = {}
            olen = (max(c for row in group.index[other.tensor] for c in row) + 1) // other.groups
            for u in units:
                s = group.index[other.tensor][u][0] // olen
                counts[s] = counts.get(s, 0) + 1
            assume(len(set(counts.values())) <= 1 and len(counts) in (0, other.groups))
        return sorted(units)
    assume(group.channels > 1)
    return sorted(data.draw(st.lists(st.integers(0, group.channels - 1), min_size=1,
                                     max_size=group.channels - 1, unique=True)))


# --------------------------------------------------------------------------------------------------
# Hand-built nets
# --------------------------------------------------------------------------------------------------

class TinyResnet(nn.Module):
    def __init__(self, ngf: int = 4, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.InstanceNorm2d(2 * ngf), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(2 * ngf, 2 * ngf, 3), nn.InstanceNorm2d(2 * ngf),
                          nn.ReLU(), nn.Dropout(0.5), nn.ReflectionPad2d(1), nn.Conv2d(2 * ngf, 2 * ngf, 3),
                          nn.InstanceNorm2d(2 * ngf))
            for _ in range(blocks))
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1),
                                nn.InstanceNorm2d(ngf, affine=True), nn.ReLU())
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())

    def forward(self, x):
        h = self.down(self.stem(x))
        for b in self.blocks:
            h = h + b(h)
        return self.head(self.up(h))


def test_tiny_resnet_groups_by_hand():
    gm = trace(TinyResnet(), torch.randn(1, 3, 16, 16))
    groups = channel_groups(gm)
    g = by_name(groups)
    names = {n.name: str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    conv = {t: n for n, t in names.items()}
    # input, stem, trunk, 2 block-inner widths, up, head output
    assert len(groups) == 7 and sum(x.prunable for x in groups) == 5
    trunk = group_of(groups, conv["down.0"])
    assert set(trunk.producers) == {conv["down.0"], conv["blocks.0.6"], conv["blocks.1.6"]}
    assert set(trunk.consumers) == {conv["blocks.0.1"], conv["blocks.1.1"], conv["up.0"]}
    assert trunk.channels == 8 and trunk.prunable and trunk.name == conv["down.0"]
    kinds = {trunk.kinds[m] for m in trunk.members}
    assert kinds == {"norm", "activation", "pad", "elementwise"}
    for i in range(2):
        inner = g[conv[f"blocks.{i}.1"]]
        assert inner.producers == [conv[f"blocks.{i}.1"]] and inner.consumers == [conv[f"blocks.{i}.6"]]
        assert {inner.kinds[m] for m in inner.members} == {"norm", "activation", "dropout", "pad"}
    up = g[conv["up.0"]]
    assert up.kinds[conv["up.0"]] == "conv_transpose" and up.channels == 4 and up.prunable
    head = group_of(groups, conv["head.1"])
    assert not head.prunable and "graph output" in head.reason
    inp = group_of(groups, "x")
    assert not inp.prunable and "graph input 'x'" in inp.reason and inp.consumers == [conv["stem.1"]]
    # unit u of the trunk is channel u of every trunk tensor
    assert all(rows == tuple((u,) for u in range(8)) for rows in trunk.index.values())
    assert sorted(trunk.locate(3)) == sorted((t, 3) for t in trunk.tensors)
    table = describe_groups(groups)
    assert trunk.name in table and "graph output" in table and "7 groups, 5 prunable" in table


class UNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, 1, 1)
        self.down = nn.Conv2d(4, 6, 4, 2, 1)
        self.bn = nn.BatchNorm2d(6)
        self.up = nn.ConvTranspose2d(6, 5, 4, 2, 1)
        self.dec = nn.Conv2d(9, 2, 3, 1, 1)

    def forward(self, x):
        e = F.leaky_relu(self.enc(x), 0.2)
        u = self.up(F.relu(self.bn(self.down(e))))
        return self.dec(torch.cat([e, u], 1))


def test_unet_concat_slices_stay_independent():
    gm = trace(UNetish(), torch.randn(2, 3, 8, 8))
    groups = channel_groups(gm)
    enc, up = group_of(groups, "enc"), group_of(groups, "up")
    assert enc is not up and enc.prunable and up.prunable
    assert enc.consumers == ["down", "dec"] and up.consumers == ["dec"]
    assert enc.consumer_slices["dec"].offset == 0 and enc.consumer_slices["dec"].in_channels == 9
    assert up.consumer_slices["dec"].offset == 4
    assert enc.slice("dec") == (0, 4) and up.slice("dec") == (4, 9)
    cat = next(n.name for n in gm.graph.nodes if n.target is torch.cat)
    assert enc.index[cat] == tuple((c,) for c in range(4))
    assert up.index[cat] == tuple((4 + c,) for c in range(5))
    assert up.kinds[cat] == "concat" and enc.kinds["dec"] == "conv"
    # the cat output is split between the two groups, each owning one slice
    assert [g.name for g in groups_by_node(groups)[cat]] == ["enc", "up"]


class PixelShuffleSR(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.head = nn.Conv2d(3, 4, 3, 1, 1)
        self.upconv = nn.Conv2d(4, 4 * 9, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(3)
        self.last = nn.Conv2d(4, 3, 3, 1, 1)

    def forward(self, x):
        h = self.upconv(self.head(x))
        h = F.pixel_shuffle(h, 3) if self.functional else self.shuffle(h)
        return self.last(F.leaky_relu(h, 0.1))


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_maps_blocks_of_r_squared(functional):
    gm = trace(PixelShuffleSR(functional), torch.randn(1, 3, 5, 5))
    g = group_of(channel_groups(gm), "upconv")
    shuffle = next(n.name for n in gm.graph.nodes if "shuffle" in n.name)
    assert g.prunable and g.channels == 4 and g.block("upconv") == 9 and g.block(shuffle) == 1
    assert g.index["upconv"] == tuple(tuple(range(9 * u, 9 * u + 9)) for u in range(4))
    assert g.index[shuffle] == tuple((u,) for u in range(4))
    assert g.consumers == ["last"] and g.consumer_slices["last"].block == 1
    assert g.channels_of("upconv", [1, 3]) == list(range(9, 18)) + list(range(27, 36))


class GroupedAndDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 1, 1)
        self.grouped = nn.Conv2d(8, 12, 3, 1, 1, groups=4)
        self.dw = nn.Conv2d(12, 24, 3, 1, 1, groups=12)  # depthwise, channel multiplier 2
        self.bn = nn.BatchNorm2d(24)
        self.pw = nn.Conv2d(24, 3, 1)

    def forward(self, x):
        return self.pw(F.relu(self.bn(self.dw(self.grouped(self.a(x))))))


def test_grouped_conv_equal_removal_and_depthwise_passthrough():
    gm = trace(GroupedAndDepthwise(), torch.randn(1, 3, 8, 8))
    groups = channel_groups(gm)
    a, gr = group_of(groups, "a"), group_of(groups, "grouped")
    assert a.consumer_slices["grouped"].groups == 4
    assert [(e.node, e.tensor, e.groups, e.side) for e in a.equal_removal] == [("grouped", "a", 4, "input")]
    assert [(e.node, e.tensor, e.groups, e.side) for e in gr.equal_removal] == [("grouped", "grouped", 4, "output")]
    # the depthwise conv is a member of the grouped conv's group: each unit = 1 input, 2 output channels
    assert "dw" in gr.members and gr.kinds["dw"] == "depthwise" and "dw" not in gr.producers
    assert gr.index["dw"][5] == (10, 11) and gr.index["bn"][5] == (10, 11)
    assert gr.consumers == ["pw"] and gr.consumer_slices["pw"].block == 2 and gr.prunable


class Broadcasts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, 1, 1)
        self.att = nn.Conv2d(6, 1, 1)
        self.b = nn.Conv2d(6, 6, 1)
        self.c = nn.Conv2d(6, 6, 1)
        self.se1 = nn.Conv2d(6, 2, 1)
        self.se2 = nn.Conv2d(2, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = self.a(x)
        h = h * torch.sigmoid(self.att(h))  # [N,1,H,W] gate: no coupling
        h = self.b(h) * 0.5 + 1.0  # scalars: no coupling
        s = torch.sigmoid(self.se2(F.relu(self.se1(h.mean((2, 3), keepdim=True)))))  # squeeze-excite
        h = self.c(h) - h * s  # couples c, b and se2
        return self.out(h)


def test_broadcast_operands_do_not_couple():
    gm = trace(Broadcasts(), torch.randn(1, 3, 6, 6))
    groups = channel_groups(gm)
    a, att, b = group_of(groups, "a"), group_of(groups, "att"), group_of(groups, "b")
    assert a is not b and a.prunable and a.consumers == ["att", "b"]
    assert not att.prunable and "broadcasts the single channel" in att.reason
    assert set(b.producers) == {"b", "c", "se2"} and b.prunable
    assert set(b.consumers) == {"c", "se1", "out"}
    mean = next(n.name for n in gm.graph.nodes if n.target == "mean")
    assert b.kinds[mean] == "reduce"


class Unknowns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.b = nn.Conv2d(3, 4, 3, 1, 1)
        self.c = nn.Conv2d(3, 4, 3, 1, 1)
        self.gn = nn.GroupNorm(2, 4)
        self.d = nn.Conv2d(3, 4, 3, 1, 1)
        self.fc = nn.Linear(4 * 16, 5)
        self.e = nn.Conv2d(3, 4, 3, 1, 1)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 2)
        self.f = nn.Conv2d(3, 4, 3, 1, 1)
        self.o = nn.ModuleList(nn.Conv2d(k, 2, 1) for k in (4, 1, 4, 4))

    def forward(self, x):
        # every result goes through a conv, so no group is pinned merely for being returned
        a = self.o[0](self.a(x).permute(0, 1, 3, 2))  # keeps dim 1 but is not whitelisted: pinned
        b = self.o[1](self.b(x).mean(1, keepdim=True))  # reduces channels
        c = self.o[2](self.gn(self.c(x)))  # GroupNorm with 2 channels per group
        d = self.fc(torch.flatten(self.d(x), 1))  # linear consuming a flattened conv
        e = self.fc3(torch.relu(self.fc2(self.e(x).mean((2, 3)))))  # [N, C] linear chain: known
        f = self.o[3](torch.roll(self.f(x), 1, 1))  # same shape, permuted channels
        return a, b, c, d, e, f


def test_unknown_ops_pin_with_reason():
    gm = trace(Unknowns(), torch.randn(1, 3, 4, 4))
    groups = channel_groups(gm)
    a, b, c, d = (group_of(groups, n) for n in "abcd")
    assert not a.prunable and "permute" in a.reason
    assert not b.prunable and "mean" in b.reason and "reduces over the channel" in b.reason
    assert not c.prunable and "GroupNorm(2, 4)" in c.reason
    assert not d.prunable and "flatten" in d.reason
    f = group_of(groups, "f")
    assert not f.prunable and "torch.roll" in f.reason
    assert not any("graph output" in g.reason for g in (a, b, c, d, f))
    e, fc2 = group_of(groups, "e"), group_of(groups, "fc2")
    assert e.prunable and e.consumers == ["fc2"] and e.consumer_slices["fc2"].kind == "linear"
    assert fc2.prunable and fc2.producers == ["fc2"] and fc2.consumers == ["fc3"]


def test_cat_on_other_dims_couples_and_gn_per_channel_passes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.gn = nn.GroupNorm(4, 4)
            self.o = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.o(self.gn(torch.cat([self.a(x), self.b(x)], dim=3)))

    groups = channel_groups(trace(M(), torch.randn(1, 3, 4, 4)))
    g = group_of(groups, "a")
    assert g is group_of(groups, "b") and g.producers == ["a", "b"] and g.prunable and g.kinds["gn"] == "norm"


def test_shape_reads():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.o = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            a = self.a(x)
            up = F.interpolate(a, size=x.shape[2:], mode="nearest")  # spatial sizes only: harmless
            b = self.b(x)
            return self.o(up + b[:, :, :, :] * b.shape[1])  # reads b's channel count: pins

    x = torch.randn(1, 3, 4, 4)
    groups = channel_groups(symbolic(M(), x))
    g = group_of(groups, "a")
    assert g is group_of(groups, "b") and not g.prunable and "channel count of 'b'" in g.reason
    assert "interpolate" not in g.reason

    class N(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            a = self.a(x)
            return self.o(F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False)[..., 1:])

    g = group_of(channel_groups(symbolic(N(), x)), "a")
    assert g.prunable and {g.kinds[t] for t in g.members} == {"interpolate", "slice"}


def test_functional_conv_with_parameters():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(5, 3, 3, 3))
            self.b1 = nn.Parameter(torch.randn(5))
            self.w2 = nn.Parameter(torch.randn(2, 5, 1, 1))

        def forward(self, x):
            return F.conv2d(F.relu(F.conv2d(x, self.w1, self.b1, padding=1)), self.w2)

    gm = trace(M(), torch.randn(1, 3, 6, 6))
    groups = channel_groups(gm)
    convs = [n.name for n in gm.graph.nodes if n.target is F.conv2d]
    g = group_of(groups, convs[0])
    assert g.prunable and g.kinds[convs[0]] == "conv_functional" and g.consumers == [convs[1]]
    # parameters read as weights are not channel spaces of their own
    assert not any(n in gr.index for gr in groups for n in ("w1", "b1", "w2"))


def test_custom_rules_for_leaf_modules():
    class Scale(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.s = nn.Parameter(torch.ones(c))

        def forward(self, x):
            return x * self.s.view(1, -1, 1, 1)

    class Opaque(Scale):
        pass

    class Marked(Scale):
        gcompiler_channel_rule = "passthrough"

    class M(nn.Module):
        def __init__(self, leaf):
            super().__init__()
            self.a, self.leaf, self.o = nn.Conv2d(3, 4, 1), leaf, nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.o(self.leaf(self.a(x)))

    x = torch.randn(1, 3, 4, 4)
    g = group_of(channel_groups(trace(M(Opaque(4)), x, leaf_modules=[Opaque])), "a")
    assert not g.prunable and "Opaque" in g.reason
    g = group_of(channel_groups(trace(M(Marked(4)), x, leaf_modules=[Marked])), "a")
    assert g.prunable and "leaf" in g.members
    # without being a leaf, the view(1, -1, 1, 1) parameter is a per-channel constant: pinned, never guessed
    g = group_of(channel_groups(trace(M(Scale(4)), x)), "a")
    assert not g.prunable and "view" in g.reason

    class Registered(Scale):
        pass

    register_channel_rule(Registered, "passthrough")
    g = group_of(channel_groups(trace(M(Registered(4)), x, leaf_modules=[Registered])), "a")
    assert g.prunable
    with pytest.raises(ValueError, match="passthrough"):
        register_channel_rule(Registered, "guess")


def test_shared_modules_tie_their_call_sites():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.shared = nn.Conv2d(4, 5, 3, 1, 1)
            self.relu = nn.ReLU()  # stateless: sharing it ties nothing
            self.o1, self.o2 = nn.Conv2d(5, 2, 1), nn.Conv2d(5, 2, 1)

        def forward(self, x):
            return self.o1(self.relu(self.shared(self.a(x)))) + self.o2(self.relu(self.shared(self.b(x))))

    gm = trace(M(), torch.randn(1, 3, 4, 4))
    groups = channel_groups(gm)
    calls = [n.name for n in gm.graph.nodes if n.target == "shared"]
    relus = [n.name for n in gm.graph.nodes if n.target == "relu"]
    assert group_of(groups, "a") is group_of(groups, "b")  # both feed the same weights
    out = group_of(groups, calls[0])
    assert out is group_of(groups, calls[1]) and out.prunable and set(out.producers) == set(calls)
    assert set(out.consumers) == {"o1", "o2"} and set(relus) <= set(out.members)

    class N(nn.Module):  # a shared ReLU between unrelated convs couples nothing
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.ReLU()
            self.o1, self.o2 = nn.Conv2d(4, 2, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.o1(self.relu(self.a(x))) + self.o2(self.relu(self.b(x)))

    groups = channel_groups(trace(N(), torch.randn(1, 3, 4, 4)))
    assert group_of(groups, "a") is not group_of(groups, "b") and group_of(groups, "a").prunable


def test_bad_input_errors():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(TraceError, match="ShapeProp"):
        channel_groups(gm)
    with pytest.raises(TypeError, match="gcompiler.trace"):
        channel_groups(nn.Conv2d(3, 4, 1))


# --------------------------------------------------------------------------------------------------
# Properties over generated nets
# --------------------------------------------------------------------------------------------------

def _check_partition(gm: torch.fx.GraphModule, groups: list[ChannelGroup]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for g in groups:
        assert g.channels >= 1
        for node, rows in g.index.items():
            assert len(rows) == g.channels and len({len(r) for r in rows}) == 1, f"{g.name}: ragged {node}"
            for r in rows:
                for c in r:
                    assert (node, c) not in seen, f"({node}, {c}) in {seen.get((node, c))} and {g.name}"
                    seen[(node, c)] = g.name
        for name, cs in g.consumer_slices.items():
            assert cs.input in g.index and name in g.consumers
        if g.prunable:
            assert g.producers and not g.reason
        else:
            assert g.reason
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if n.op in ("get_attr", "output") or not hasattr(tm, "shape") or len(tm.shape) < 2:
            continue
        for c in range(tm.shape[1]):
            assert (n.name, c) in seen, f"channel {c} of '{n.name}' belongs to no group"
    placeholders = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    outputs = {a.name for n in gm.graph.nodes if n.op == "output" for a in n.all_input_nodes}
    for g in groups:
        if g.prunable:
            assert not (set(g.index) & (placeholders | outputs))


@given(generator_nets())
def test_groups_partition_every_channel(net_x):
    net, x = net_x
    gm = trace_net(net, x)
    groups = channel_groups(gm)
    _check_partition(gm, groups)
    convs = [n.name for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(gm.get_submodule(str(n.target)), nn.Conv2d)]
    for c in convs:  # every conv output is owned by exactly the groups that index it
        assert sum(c in g.index for g in groups) >= 1
    shuffles = [n for n in gm.graph.nodes if n.target in ("view", "transpose", "reshape")]
    for n in shuffles:
        for g in groups_by_node(groups).get(n.name, []):
            assert not g.prunable


@given(generator_nets(), st.data())
def test_perturbing_a_group_reaches_only_its_channels(net_x, data):
    net, x = net_x
    gm = trace_net(net, x)
    prunable = [g for g in channel_groups(gm) if g.prunable]
    assume(prunable)
    g = data.draw(st.sampled_from(prunable))
    units = sorted(data.draw(st.lists(st.integers(0, g.channels - 1), min_size=1, max_size=3, unique=True)))
    producer = data.draw(st.sampled_from(g.producers))
    perturb_and_compare(gm, g, units, producer, x)


@given(generator_nets(), st.data())
def test_removing_units_keeps_shapes_and_matches_zeroing(net_x, data):
    net, x = net_x
    gm = trace_net(net, x)
    prunable = [g for g in channel_groups(gm) if g.prunable]
    assume(prunable)
    g = data.draw(st.sampled_from(prunable))
    units = draw_units(data, g)
    pruned = remove_units(gm, g, units)
    with torch.no_grad():
        y_ref = zero_at_consumers(gm, g, units)(x)
        y = pruned(x)
        y_orig = gm(x)
    assert y.shape == y_orig.shape == y_ref.shape
    assert torch.allclose(y, y_ref, rtol=1e-4, atol=1e-5 * max(1.0, y_ref.abs().max().item()))
    # the removed channels are really gone from every producer
    for p in g.producers:
        mod = pruned.get_submodule(str(next(n for n in pruned.graph.nodes if n.name == p).target))
        width = mod.out_channels if hasattr(mod, "out_channels") else mod.out_features
        assert width == next(n for n in gm.graph.nodes if n.name == p).meta["tensor_meta"].shape[1] \
            - len(g.channels_of(p, units))


# --------------------------------------------------------------------------------------------------
# Zoo spot checks
# --------------------------------------------------------------------------------------------------

from gcompiler import models  # noqa: E402


def _zoo(name: str, size: int | None = 32, **kw):
    net = models.create(name, **kw)
    spec = models.spec(name)
    xs = spec.example_inputs(size=size) if size is not None else spec.example_inputs()
    gm = trace(net, *xs)
    targets = {n.name: str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    by_target = {t: n for n, t in targets.items()}
    return gm, channel_groups(gm), by_target, xs


def test_resnet_9blocks_has_14_prunable_groups_and_one_trunk():
    gm, groups, t, _ = _zoo("resnet_9blocks", size=32)
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) == 14
    trunk = group_of(groups, t["model.7"])
    assert set(trunk.producers) == {t["model.7"]} | {t[f"model.{i}.conv_block.5"] for i in range(10, 19)}
    assert set(trunk.consumers) == {t[f"model.{i}.conv_block.1"] for i in range(10, 19)} | {t["model.19"]}
    assert trunk.channels == 256
    inner = [group_of(groups, t[f"model.{i}.conv_block.1"]) for i in range(10, 19)]
    assert all(g.prunable and g.channels == 256 and g.consumers == [t[f"model.{10 + k}.conv_block.5"]]
               for k, g in enumerate(inner))
    stem, down1 = group_of(groups, t["model.1"]), group_of(groups, t["model.4"])
    up1, up2 = group_of(groups, t["model.19"]), group_of(groups, t["model.22"])
    assert (stem.channels, down1.channels, up1.channels, up2.channels) == (64, 128, 128, 64)
    assert {g.name for g in prunable} == {g.name for g in [stem, down1, trunk, up1, up2, *inner]}
    last = group_of(groups, t["model.26"])
    assert not last.prunable and "graph output" in last.reason


def test_unet_concats_are_independent_slices():
    gm, groups, t, _ = _zoo("unet_128", size=128, ngf=4)
    cats = [n for n in gm.graph.nodes if n.target is torch.cat]
    assert len(cats) == 6  # 7 levels: every non-outermost block concatenates its input with its output
    for cat in cats:
        skip, up = cat.args[0]
        g_skip, g_up = group_of(groups, skip.name), group_of(groups, up.name)
        assert g_skip is not g_up and g_skip.prunable and g_up.prunable
        c_skip = skip.meta["tensor_meta"].shape[1]
        assert g_skip.index[cat.name] == tuple((c,) for c in range(c_skip))
        assert g_up.index[cat.name][0] == (c_skip,)
        # the upsampling conv reading the cat sees both groups at their offsets
        reader = next(u for u in cat.users if u.op == "call_module"
                      and isinstance(gm.get_submodule(str(u.target)), nn.ReLU))
        conv = next(iter(reader.users))
        assert g_skip.consumer_slices[conv.name].offset == 0
        assert g_up.consumer_slices[conv.name].offset == c_skip


def test_rrdbnet_dense_concats():
    gm, groups, t, _ = _zoo("rrdbnet", size=8, nb=2, nf=8, gc=4)
    trunk = group_of(groups, t["conv_first"])
    assert trunk.prunable
    assert set(trunk.producers) == {t["conv_first"], t["trunk_conv"]} | {
        t[f"RRDB_trunk.{i}.RDB{j}.conv5"] for i in range(2) for j in (1, 2, 3)}
    for i in range(2):
        for j in (1, 2, 3):
            p = f"RRDB_trunk.{i}.RDB{j}"
            assert trunk.consumer_slices[t[f"{p}.conv1"]].offset == 0
            for k in range(1, 5):  # conv_k's output is read at offset 8 + 4(k-1) by conv_{k+1}..conv5
                gk = group_of(groups, t[f"{p}.conv{k}"])
                assert gk.prunable and gk.channels == 4
                readers = {t[f"{p}.conv{m}"] for m in range(k + 1, 6)}
                assert set(gk.consumers) == readers
                assert {gk.consumer_slices[r].offset for r in readers} == {8 + 4 * (k - 1)}


def test_srresnet_pixel_shuffle_blocks():
    gm, groups, t, _ = _zoo("srresnet", size=8, nb=2, nf=8)
    ups = [n for n in t if n.startswith("upsample") and n.endswith("conv")] or \
        [n for n in t if "up" in n and isinstance(gm.get_submodule(n), nn.Conv2d)]
    assert len(ups) == 2
    for u in ups:
        g = group_of(groups, t[u])
        assert g.prunable and g.channels == 8 and g.block(t[u]) == 4
        assert g.index[t[u]][2] == (8, 9, 10, 11)
        shuffle = next(n for n in g.members if g.kinds[n] == "pixel_shuffle")
        assert g.index[shuffle][2] == (2,)


def test_mobile_resnet_depthwise_members():
    gm, groups, t, _ = _zoo("mobile_resnet_9blocks", size=32, ngf=8)
    assert sum(g.prunable for g in groups) == 14
    dw = [n for n in t if isinstance(gm.get_submodule(n), nn.Conv2d) and gm.get_submodule(n).groups > 1]
    assert len(dw) == 18
    for n in dw:
        owners = [g for g in groups if t[n] in g.index]
        assert len(owners) == 1 and owners[0].kinds[t[n]] == "depthwise" and t[n] in owners[0].members
        # a depthwise conv shares its group with its input
        src = next(x for x in gm.graph.nodes if x.name == t[n]).args[0].name
        assert src in owners[0].index


@pytest.mark.parametrize("name,kw", [("resnet_9blocks", dict(ngf=4, n_blocks=2)),
                                     ("mobile_resnet_9blocks", dict(ngf=4, n_blocks=2)),
                                     ("unet_128", dict(ngf=2)),
                                     ("srresnet", dict(nb=2, nf=4)),
                                     ("rrdbnet", dict(nb=1, nf=4, gc=2))])
def test_zoo_every_prunable_group_removes_cleanly(name, kw):
    size = 128 if name.startswith("unet") else 16
    gm, groups, _, xs = _zoo(name, size=size, **kw)
    gm.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in gm.modules():  # random norm parameters and statistics, not the identity defaults
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.normal_(0, 0.3, generator=gen)
                if m.running_mean is not None:
                    m.running_mean.normal_(0, 0.2, generator=gen)
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
    for g in (g for g in groups if g.prunable):
        units = list(range(0, g.channels, 2))
        y_ref = zero_at_consumers(gm, g, units)(*xs)
        y = remove_units(gm, g, units)(*xs)
        scale = max(1.0, y_ref.abs().max().item())
        assert y.shape == y_ref.shape and (y - y_ref).abs().max().item() <= 1e-5 * scale, g.name


def test_torch_layers_that_do_not_compute_their_own_math_are_unknown():
    # weight_norm-style hooks, parametrizations and subclasses with their own forward pin their channels;
    # a subclass changing only __init__ stays a plain conv.
    import torch.nn.utils.parametrize as parametrize

    class InitOnly(nn.Conv2d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            nn.init.ones_(self.bias)

    class Sym(nn.Module):
        def forward(self, w):
            return (w + w.flip(0)) / 2

    hooked = nn.Conv2d(8, 8, 3, padding=1)
    hooked.register_forward_pre_hook(lambda mod, inp: None)
    para = nn.Conv2d(8, 8, 1)
    parametrize.register_parametrization(para, "weight", Sym())
    m = nn.Sequential(InitOnly(3, 8, 3, padding=1), nn.ReLU(), hooked, nn.ReLU(), para, nn.ReLU(), nn.Conv2d(8, 3, 1))
    gm = trace(m, torch.randn(1, 3, 8, 8))
    groups = {g.name: g for g in channel_groups(gm)}
    assert not groups["_0"].prunable and "hooks" in groups["_0"].reason
    assert not groups["_4"].prunable and "parametrization" in groups["_4"].reason


def test_guard_nodes_touch_no_channel():
    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            assert x.shape[2] % 4 == 0 and not x.is_cuda
            h = torch.relu(self.a(x))
            assert h.shape[-1] == x.shape[-1]  # a spatial read of an inner tensor: no channel pinned
            return self.b(h)

    gm = trace(Checked(), torch.randn(1, 3, 8, 8))
    assert len(gm.meta["guards"]) == 3
    groups = {g.name: g for g in channel_groups(gm)}
    assert groups["a"].prunable, groups["a"].reason


def test_spatial_crop_with_computed_bounds_passes_channels_through():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=2), nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            h, w = x.shape[2:]
            y = torch.relu(self.a(x))[:, :, :h, :w]  # crop back to the input size
            z = torch.relu(self.a(x))[..., 1:h + 1, 1:w + 1]
            return self.b(y + z)

    gm = trace(Crop(), torch.randn(1, 3, 8, 8))
    groups = {g.name: g for g in channel_groups(gm)}
    assert groups["a"].prunable, groups["a"].reason
    assert any(k == "slice" for k in groups["a"].kinds.values())
