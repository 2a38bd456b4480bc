"""``eliminate-dead-channels``: physically remove channels that a mask (or zero weights) has killed, exactly.

A channel whose mask or norm gamma is 0 is *not* zero downstream: after ``gamma*x_hat + beta`` it is the
constant ``beta``, after an activation ``act(beta)``, and a zero-padded conv, a transposed conv or a
zero-padding module turns a constant into a spatial pattern. This pass therefore decides what to do with
every such channel from the values it really takes, never by assumption:

1. **Which values are fixed.** For every prunable channel group (:func:`gcompiler.analysis.channel_groups`)
   the group's pass-through members are evaluated in graph order, twice, each time with different random
   data in every tensor that does not belong to the group (a producer's output channel is its bias when its
   weights are all zero, random data otherwise). A channel whose values agree bit for bit in both runs
   does not depend on the data: it is a fixed map (``beta``, ``act(beta)``, a bias, zero ...). A *unit* (a channel, or a block of ``r**2`` channels before a pixel shuffle) is a
   candidate when it is fixed at the input of every consumer of the group.
2. **How each consumer absorbs it.** At each consumer (conv, transposed conv, linear) a candidate is

   * *zero*: nothing to do;
   * *folded*: spatially constant and the consumer turns a constant input into a constant output (no zero
     padding; for a transposed conv stride 1 and enough padding): ``b' = b + sum_k W[:, c, k] * const_c``;
   * *merged*: any other fixed map (a constant under zero padding, a zero-padded pattern, a transposed
     conv's checkerboard). Consumers are linear in their input, so the contributions of all such channels
     are moved onto one kept *carrier* channel of the group whose map is proportional to theirs:
     ``W[:, carrier] += (v_c / v_carrier) * W[:, c]``. The carrier keeps computing its fixed map, so this
     is exact at every input size for which the maps stay proportional (checked at the traced size);
   * *kept*: a candidate whose map is not proportional to the carrier's stays in the network unchanged.

3. **Constraints.** Kept widths honour ``round_to`` (a multiple of it, or the full width), grouped convs
   lose the same number of channels in every conv group, and a consumer never loses all its inputs unless
   it sits on a residual branch that can be collapsed: when the branch's value at the residual addition is a
   per-channel constant the addition becomes the identity (constant 0, e.g. an InstanceNorm of a constant)
   or a :class:`~gcompiler.passes.masks.ChannelBias`; otherwise one unit is kept.
4. **Surgery.** Conv out/in channels, transposed-conv dims, biases, norm affine parameters and running
   stats, depthwise ``groups``, equal per-group removal in grouped convs, PReLU slopes; concat offsets and
   pixel-shuffle blocks follow from the shapes. :class:`ChannelMask` scales are then folded into the
   preceding conv, transposed conv, linear or norm (a norm without affine parameters becomes affine) and
   the masks disappear.

Assumptions, stated: BatchNorm is folded with its running statistics (eval semantics), as inference runs
it. Values are checked at the traced input size.

Everything decided is reported in ``gm.meta["dead_channels"]`` (JSON-friendly) and logged at INFO level on
the ``gcompiler.passes.dead_channels`` logger: per group the removed, folded, merged and kept units and
why. :func:`plan_elimination` computes the decisions without touching the graph (the sparsity report uses
it to price a mask setting).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import operator
from collections import defaultdict
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import PassError
from ..fx.trace import propagate_shapes
from ..fx.utils import input_specs, node_shape, unique_name
from .masks import ChannelBias, ChannelMask, _is_channel_norm
from .registry import Contract, register_pass

log = logging.getLogger(__name__)

_CONV = nn.modules.conv._ConvNd
_CONVT = nn.modules.conv._ConvTransposeNd
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_SPREAD_TOL = 1e-6      # relative spatial spread tolerated in a "constant" map (interpolation rounding)
_PROP_TOL = 1e-6        # relative residual tolerated when calling two fixed maps proportional


# ------------------------------------------------------------------------------------------ data types

@dataclasses.dataclass
class GroupDecision:
    """What the planner decided for one channel group (units are indices into the group's units)."""

    name: str
    units: int
    candidates: list[int] = dataclasses.field(default_factory=list)
    removed: list[int] = dataclasses.field(default_factory=list)
    carrier: int | None = None
    kept: dict[int, str] = dataclasses.field(default_factory=dict)  # candidate unit -> why it stays
    folded: int = 0   # (unit, consumer) pairs folded into a bias
    merged: int = 0   # (unit, consumer) pairs merged onto the carrier
    skipped: str = ""  # why the whole group was left alone

    def to_dict(self) -> dict[str, Any]:
        reasons: dict[str, int] = defaultdict(int)
        for r in self.kept.values():
            reasons[r] += 1
        return {"units": self.units, "candidates": len(self.candidates), "removed": len(self.removed),
                "kept_units": self.units - len(self.removed), "carrier": self.carrier,
                "folded": self.folded, "merged": self.merged, "kept_candidates": dict(reasons),
                **({"skipped": self.skipped} if self.skipped else {})}


@dataclasses.dataclass
class Collapse:
    """A consumer that loses every input: its residual branch becomes ``other (+ bias)``."""

    consumer: str
    add: str
    other: str
    bias: torch.Tensor | None  # None: the branch adds exactly zero
    chain: list[str]


@dataclasses.dataclass
class Plan:
    """Decisions of :func:`plan_elimination`; applied by ``eliminate-dead-channels``."""

    decisions: dict[str, GroupDecision]
    out_remove: dict[str, set[int]]                       # node -> removed output channels
    folds: dict[str, list[tuple[int, torch.Tensor]]]      # consumer -> (input channel, constant)
    merges: dict[str, list[tuple[int, int, float]]]       # consumer -> (carrier ch, removed ch, ratio)
    collapses: dict[str, Collapse]
    round_to: int

    def removed_units(self) -> int:
        return sum(len(d.removed) for d in self.decisions.values())

    def report(self) -> dict[str, Any]:
        return {"round_to": self.round_to,
                "removed_units": self.removed_units(),
                "groups": {n: d.to_dict() for n, d in self.decisions.items()},
                "collapsed_branches": [{"consumer": c.consumer, "add": c.add,
                                        "becomes": "identity" if c.bias is None else "channel bias"}
                                       for c in self.collapses.values()]}


@dataclasses.dataclass
class _UnitView:
    """A candidate unit at one consumer: its channels there and their fixed maps."""

    channels: list[int]
    maps: list[torch.Tensor]  # float64, one per channel, batch and channel dims dropped
    kind: str                 # "zero" | "fold" | "merge"


@dataclasses.dataclass
class _GroupAnalysis:
    group: Any
    decision: GroupDecision
    views: dict[int, dict[str, _UnitView]]  # unit -> consumer -> view
    values: dict[str, torch.Tensor]          # tensor node -> values of run 1 (batch 1)
    fixed: dict[str, torch.Tensor]           # tensor node -> bool per channel: value fixed in both runs
    removable: set[int]


# ------------------------------------------------------------------------------------------ evaluation

class _Context:
    def __init__(self, gm: fx.GraphModule, seed: int = 0) -> None:
        self.gm = gm
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.seed = seed
        self._concrete: dict[str, Any] | None = None
        self.call_sites: dict[str, int] = defaultdict(int)
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.call_sites[str(n.target)] += 1

    def module(self, name: str) -> nn.Module | None:
        n = self.nodes.get(name)
        if n is None or n.op != "call_module":
            return None
        return self.gm.get_submodule(str(n.target))

    def concrete(self, node: fx.Node) -> Any:
        """Value of a non-tensor node (a shape, a size) from one real run on random inputs."""
        if self._concrete is None:
            from ..fx.utils import random_inputs

            values: dict[str, Any] = {}

            class _Rec(fx.Interpreter):
                def run_node(self, n: fx.Node) -> Any:
                    out = super().run_node(n)
                    if not isinstance(out, torch.Tensor):
                        values[n.name] = out
                    return out

            with torch.no_grad():
                _Rec(self.gm).run(*random_inputs(self.gm, seed=self.seed))
            self._concrete = values
        if node.name not in self._concrete:
            raise PassError(f"eliminate-dead-channels: no concrete value for node '{node.name}'")
        return self._concrete[node.name]


def _batch1(shape: Iterable[int]) -> tuple[int, ...]:
    s = tuple(shape)
    return (1,) + s[1:] if len(s) >= 1 else s


class _Evaluator:
    """Evaluates a group's nodes on its own values, with random data everywhere else."""

    def __init__(self, ctx: _Context, members: list[str], run: int, producers: Iterable[str] = ()) -> None:
        self.ctx = ctx
        self.members = set(members)
        self.producers = set(producers)
        self.values: dict[str, Any] = {}
        self.gen = torch.Generator().manual_seed(1000 * ctx.seed + 17 + run)

    def _random(self, tm: Any) -> torch.Tensor:
        shape = _batch1(tm.shape)
        if tm.dtype.is_floating_point:
            return torch.randn(shape, generator=self.gen, dtype=torch.float32).to(tm.dtype) * 3
        return torch.randint(0, 2, shape, generator=self.gen).to(tm.dtype)

    def _producer(self, node: fx.Node) -> torch.Tensor:
        """A producer reads data from outside the group, so an output channel is fixed exactly when its
        weights are all zero (it is then its bias); computing the layer would only confirm that."""
        out = self._random(node.meta["tensor_meta"])
        mod = self.ctx.gm.get_submodule(str(node.target))
        w = mod.weight.detach()
        if isinstance(mod, _CONVT):
            per_in, per_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
            zero = torch.tensor([bool((w[(o // per_out) * per_in:(o // per_out + 1) * per_in, o % per_out] == 0).all())
                                 for o in range(mod.out_channels)], dtype=torch.bool)
        else:
            zero = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
        for c in torch.nonzero(zero).flatten().tolist():
            out[:, c] = mod.bias.detach()[c] if mod.bias is not None else 0
        return out

    def value(self, node: fx.Node) -> Any:
        if node.name in self.values:
            return self.values[node.name]
        if node.name in self.producers and node.op == "call_module":
            v = self._producer(node)
        elif node.op == "get_attr":
            obj: Any = self.ctx.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            v = obj
        elif node.name in self.members or self._tuple_of_members(node):
            v = self.evaluate(node)
        else:
            tm = node.meta.get("tensor_meta")
            if tm is not None and hasattr(tm, "shape"):
                v = self._random(tm)
            else:
                v = self.ctx.concrete(node)
        self.values[node.name] = v
        return v

    def _tuple_of_members(self, node: fx.Node) -> bool:
        tm = node.meta.get("tensor_meta")
        return isinstance(tm, (list, tuple)) and any(a.name in self.members for a in node.all_input_nodes)

    def evaluate(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, self.value)
        kwargs = fx.node.map_arg(node.kwargs, self.value)
        with torch.no_grad():
            if node.op == "call_module":
                mod = self.ctx.gm.get_submodule(str(node.target))
                was = mod.training
                mod.eval()
                try:
                    out = mod(*args, **kwargs)
                finally:
                    mod.train(was)
            elif node.op == "call_function":
                out = node.target(*args, **kwargs)
            elif node.op == "call_method":
                out = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            else:
                raise PassError(f"cannot evaluate node '{node.name}' ({node.op})")
        self.values[node.name] = out
        return out


# ---------------------------------------------------------------------------------------- support check

def _unsupported(ctx: _Context, g) -> str:
    """Why the surgery cannot handle group ``g`` ("" when it can)."""
    for name in list(g.producers) + list(g.consumers):
        kind = g.kinds.get(name, "")
        if kind.endswith("_functional"):
            return f"'{name}' is a functional {kind[:-11]} (only module convs/linears are resized)"
        mod = ctx.module(name)
        if not isinstance(mod, (_CONV, nn.Linear)):
            return f"'{name}' is not a conv / linear module"
        if ctx.call_sites[str(ctx.nodes[name].target)] > 1:
            return f"module '{ctx.nodes[name].target}' is called more than once (shared weights)"
    for name in g.members:
        n = ctx.nodes[name]
        kind = g.kinds.get(name, "")
        if kind.endswith("_functional"):
            return f"'{name}' is a functional {kind[:-11]}"
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "dtype") and not tm.dtype.is_floating_point:
            return f"'{name}' holds {tm.dtype} values"
        if n.op != "call_module":
            continue
        mod = ctx.gm.get_submodule(str(n.target))
        has_state = any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())
        if not has_state:
            continue
        known = isinstance(mod, (ChannelMask, ChannelBias)) or _is_channel_norm(mod) or \
            isinstance(mod, nn.LayerNorm) or isinstance(mod, nn.PReLU) or \
            (isinstance(mod, _CONV) and kind.startswith("depthwise"))
        if not known:
            return f"member '{name}' ({type(mod).__name__}) holds per-channel state this pass cannot slice"
        if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine:
            return f"member '{name}' (LayerNorm) has affine parameters over non-channel dims"
        if ctx.call_sites[str(n.target)] > 1:
            return f"module '{n.target}' is called more than once (shared state)"
    return ""


def _fold_uniform(mod: nn.Module) -> bool:
    """Does a spatially constant input channel give a spatially constant contribution to the output?"""
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, _CONVT):
        ks, st, pad, dil, op = mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.output_padding
        return all(s == 1 and p >= d * (k - 1) + o for k, s, p, d, o in zip(ks, st, pad, dil, op))
    if isinstance(mod, _CONV):
        if mod.padding_mode != "zeros":
            return True
        if isinstance(mod.padding, str):
            return mod.padding == "valid" or all(k == 1 for k in mod.kernel_size)
        return all(p == 0 for p in mod.padding)
    return False


def _consumer_conv_group(mod: nn.Module, channel: int) -> int:
    g = getattr(mod, "groups", 1)
    return channel // (mod.in_channels // g) if g > 1 else 0


# ------------------------------------------------------------------------------------------- analysis

def _analyse(ctx: _Context, g) -> _GroupAnalysis:
    decision = GroupDecision(g.name, g.channels)
    empty = _GroupAnalysis(g, decision, {}, {}, {}, set())
    reason = _unsupported(ctx, g)
    if reason:
        decision.skipped = reason
        return empty
    if not g.consumers:
        decision.skipped = "no consumer reads the group"
        return empty
    tensors = list(g.index)
    runs = []
    for run in (0, 1):
        ev = _Evaluator(ctx, tensors, run, g.producers)
        try:
            for t in tensors:
                ev.value(ctx.nodes[t])
        except Exception as exc:  # an op the evaluator cannot run: nothing is provably fixed
            decision.skipped = f"cannot evaluate the group's ops ({type(exc).__name__}: {exc})"
            return empty
        runs.append(ev.values)
    values, fixed = {}, {}
    for t in tensors:
        a, b = runs[0][t], runs[1][t]
        if not isinstance(a, torch.Tensor) or a.dim() < 2:
            decision.skipped = f"'{t}' is not a (N, C, ...) tensor"
            return empty
        same = (a == b) & torch.isfinite(a)
        fixed[t] = same.reshape(same.shape[0], same.shape[1], -1).all(dim=2).all(dim=0)
        values[t] = a
    views: dict[int, dict[str, _UnitView]] = defaultdict(dict)
    candidates = []
    for u in range(g.channels):
        ok = True
        for cname in g.consumers:
            cs = g.consumer_slices[cname]
            chans = list(g.index[cs.input][u])
            if not all(bool(fixed[cs.input][c]) for c in chans):
                ok = False
                break
            maps = [values[cs.input][0, c].double().reshape(-1) for c in chans]
            if all(bool((m == 0).all()) for m in maps):
                kind = "zero"
            elif all(_is_constant(m) for m in maps) and _fold_uniform(ctx.module(cname)):
                kind = "fold"
            else:
                kind = "merge"
            if kind != "merge":  # a constant map is stored as its value (memory: units x consumers x H x W)
                maps = [m.mean().reshape(1) for m in maps]
            views[u][cname] = _UnitView(chans, maps, kind)
        if ok:
            candidates.append(u)
        else:
            views.pop(u, None)
    decision.candidates = candidates
    removable = set(candidates)
    needs = {u for u in candidates if any(v.kind == "merge" for v in views[u].values())}
    if needs:
        carrier = _choose_carrier(g, views, candidates, needs)
        decision.carrier = carrier
        if carrier is not None:
            removable.discard(carrier)
            decision.kept[carrier] = "carrier of merged fixed maps"
        for u in sorted(needs - {carrier}):
            why = _merge_blocker(ctx, g, views, u, carrier)
            if why:
                removable.discard(u)
                decision.kept[u] = why
    return _GroupAnalysis(g, decision, dict(views), values, fixed, removable)


def _is_constant(m: torch.Tensor) -> bool:
    if m.numel() <= 1:
        return True
    spread = float(m.max() - m.min())
    return spread <= _SPREAD_TOL * float(m.abs().max()) + 1e-30


def _choose_carrier(g, views, candidates: list[int], needs: set[int]) -> int | None:
    need_at = {c for u in needs for c, v in views[u].items() if v.kind == "merge"}
    best, best_score = None, 0.0
    for u in candidates:
        score = min(min(float(m.abs().max()) for m in views[u][c].maps) for c in need_at)
        if score > best_score:
            best, best_score = u, score
    return best


def _merge_blocker(ctx: _Context, g, views, u: int, carrier: int | None) -> str:
    if carrier is None:
        return "fixed non-constant map and no carrier channel with a non-zero map"
    for cname, v in views[u].items():
        if v.kind != "merge":
            continue
        cv = views[carrier][cname]
        if len(cv.channels) != len(v.channels):
            return f"unit block sizes differ at consumer '{cname}'"
        mod = ctx.module(cname)
        for ch, cch, m, cm in zip(v.channels, cv.channels, v.maps, cv.maps):
            if _consumer_conv_group(mod, ch) != _consumer_conv_group(mod, cch):
                return f"carrier is in another conv group of grouped consumer '{cname}'"
            r = _ratio(m, cm)
            if r is None:
                return f"fixed map at zero-padded / transposed consumer '{cname}' is not proportional to the carrier's"
    return ""


def _ratio(m: torch.Tensor, carrier: torch.Tensor) -> float | None:
    if m.numel() != carrier.numel():  # one of them is a constant stored as a single value
        m, carrier = torch.broadcast_tensors(m, carrier)
    denom = float((carrier * carrier).sum())
    if denom == 0.0:
        return None
    r = float((m * carrier).sum()) / denom
    resid = float((m - r * carrier).abs().max())
    if resid > _PROP_TOL * (float(m.abs().max()) + 1e-30):
        return None
    return r


# ------------------------------------------------------------------------------------------- choosing

def _choose(ga: _GroupAnalysis, round_to: int, min_keep: int) -> list[int]:
    g = ga.group
    removed = set(ga.removable)
    units = g.channels

    def unremove(candidates: Iterable[int], n: int, why: str) -> None:
        for u in sorted(candidates, reverse=True)[:n]:
            removed.discard(u)
            ga.decision.kept.setdefault(u, why)

    for _ in range(units + 2):
        before = set(removed)
        if units - len(removed) < min_keep and removed:
            unremove(removed, min_keep - (units - len(removed)), "a consumer would lose every input")
        for er in g.equal_removal:
            rows = g.index[er.tensor]
            width = sum(len(r) for r in rows)
            per = max(1, width // er.groups)
            by_slice: dict[int, list[int]] = defaultdict(list)
            for u in removed:
                by_slice[rows[u][0] // per].append(u)
            counts = {s: len(by_slice.get(s, [])) for s in range(er.groups)}
            target = min(counts.values())
            for s, us in by_slice.items():
                if len(us) > target:
                    unremove(us, len(us) - target, f"equal removal per conv group of '{er.node}'")
        kept = units - len(removed)
        if round_to > 1 and kept % round_to and removed:
            need = round_to - kept % round_to
            if need > len(removed):
                need = len(removed)
            unremove(removed, need, f"round_to={round_to}")
        if removed == before:
            break
    else:  # pragma: no cover - removal only shrinks, so the loop converges
        removed = set()
    return sorted(removed)


# -------------------------------------------------------------------------------------------- planning

def plan_elimination(gm: fx.GraphModule, *, round_to: int | None = None, seed: int = 0) -> Plan:
    """Decide which channels ``eliminate-dead-channels`` would remove, without changing ``gm``.

    ``round_to`` defaults to the value ``insert-masks`` recorded (else 1).
    """
    from ..analysis import channel_groups

    if round_to is None or round_to == 0:
        round_to = int((gm.meta.get("masks") or {}).get("round_to", 1) or 1)
    if round_to < 1:
        raise PassError(f"eliminate-dead-channels{{round_to}} must be >= 1, got {round_to}")
    ctx = _Context(gm, seed)
    groups = [g for g in channel_groups(gm) if g.prunable and g.channels > 0]
    analyses = {g.name: _analyse(ctx, g) for g in groups}
    min_keep: dict[str, int] = defaultdict(int)
    for _ in range(len(groups) + 2):
        removed = {name: _choose(ga, round_to, min_keep[name]) for name, ga in analyses.items()}
        out_remove: dict[str, set[int]] = defaultdict(set)
        for name, ga in analyses.items():
            for u in removed[name]:
                for t, rows in ga.group.index.items():
                    out_remove[t].update(rows[u])
        collapses: dict[str, Collapse] = {}
        failed: list[str] = []
        consumers = {c: ga for ga in analyses.values() for c in ga.group.consumers}
        for cname in sorted(consumers, key=lambda c: ctx.order[c]):
            node = ctx.nodes[cname]
            x = node.args[0]
            width = node_shape(x)[1]
            if len(out_remove.get(x.name, ())) < width:
                continue
            col = _try_collapse(ctx, node, analyses, out_remove)
            if col is None:
                failed.append(cname)
            else:
                collapses[cname] = col
        # A consumer inside another collapsing branch disappears with it; branches must not share an
        # addition, nor take their skip operand from inside another collapsing branch.
        in_chain = {n for col in collapses.values() for n in col.chain[1:]}
        collapses = {c: col for c, col in collapses.items() if c not in in_chain}
        adds: set[str] = set()
        for cname in sorted(collapses, key=lambda c: ctx.order[c]):
            col = collapses[cname]
            chains = {n for c2, o in collapses.items() if c2 != cname for n in o.chain}
            if col.add in adds or col.other in chains:
                failed.append(cname)
                del collapses[cname]
            else:
                adds.add(col.add)
        bumped = False
        for cname in failed:
            for ga in analyses.values():  # keep units in the first group feeding this consumer
                if cname in ga.group.consumers and removed[ga.group.name]:
                    if min_keep[ga.group.name] < round_to:
                        min_keep[ga.group.name] = round_to
                        bumped = True
                    break
        if not bumped:
            break
    gone = {n for col in collapses.values() for n in col.chain}
    folds: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    merges: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    decisions = {}
    for name, ga in analyses.items():
        d = ga.decision
        d.removed = removed[name]
        for u in set(d.candidates) - set(d.removed):
            d.kept.setdefault(u, "kept")
        for u in list(d.kept):
            if u in d.removed:
                del d.kept[u]
        for u in d.removed:
            for cname, v in ga.views[u].items():
                if cname in gone:
                    continue
                if v.kind == "fold":
                    d.folded += 1
                    folds[cname].extend((c, m.mean()) for c, m in zip(v.channels, v.maps))
                elif v.kind == "merge":
                    d.merged += 1
                    cv = ga.views[d.carrier][cname]
                    merges[cname].extend((cc, c, _ratio(m, cm)) for c, cc, m, cm in
                                         zip(v.channels, cv.channels, v.maps, cv.maps))
        decisions[name] = d
    return Plan(decisions, dict(out_remove), dict(folds), dict(merges), collapses, round_to)


def _instance_norm_of_constant(ctx: _Context, node: fx.Node, x: Any) -> torch.Tensor | None:
    """An instance-style norm of a per-channel constant is exactly its shift (0 without affine).

    Evaluating it in floating point instead gives rounding noise divided by sqrt(eps); returns None when
    the rule does not apply."""
    mod = ctx.module(node.name)
    per_instance = isinstance(mod, nn.modules.instancenorm._InstanceNorm) and not (
        mod.track_running_stats and not mod.training) or \
        (isinstance(mod, nn.GroupNorm) and mod.num_groups == mod.num_channels)
    if not per_instance or not isinstance(x, torch.Tensor) or x.dim() < 3:
        return None
    flat = x.double().reshape(x.shape[0], x.shape[1], -1)
    if not all(_is_constant(row) for row in flat.reshape(-1, flat.shape[2])):
        return None
    shift = mod.bias.detach() if getattr(mod, "bias", None) is not None else torch.zeros(x.shape[1])
    return shift.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2))).expand_as(x).clone()


def _try_collapse(ctx: _Context, node: fx.Node, analyses: dict[str, _GroupAnalysis],
                  out_remove: dict[str, set[int]]) -> Collapse | None:
    """If ``node`` (losing all inputs) heads a residual branch whose value at the add is a per-channel
    constant, describe how the add collapses; else None."""
    if len(node.args) != 1 or node.kwargs:
        return None
    x = node.args[0]
    width = node_shape(x)[1]
    value: torch.Tensor | None = None
    covered: set[int] = set()
    for ga in analyses.values():  # the consumer's whole input is fixed: assemble it from its groups
        if x.name not in ga.values:
            continue
        chans = sorted(c for row in ga.group.index[x.name] for c in row)
        if not bool(ga.fixed[x.name][chans].all()):
            return None
        v = ga.values[x.name]
        value = v.clone() if value is None else value
        value[:, chans] = v[:, chans]
        covered.update(chans)
    if value is None or len(covered) != width:
        return None
    ev = _Evaluator(ctx, [], 0)
    ev.values[x.name] = value
    chain = [node.name]
    cur = node
    try:
        val = ev.evaluate(node)
        ev.values[node.name] = val
        while True:
            users = list(cur.users)
            if len(users) != 1:
                return None
            nxt = users[0]
            data = [a for a in nxt.all_input_nodes if a is not cur and a.op != "get_attr"]
            if nxt.op == "call_function" and nxt.target in (operator.add, torch.add) and len(data) == 1 \
                    and len(nxt.args) == 2 and not nxt.kwargs:
                other = data[0]
                if node_shape(other) != node_shape(nxt) or not isinstance(val, torch.Tensor) \
                        or val.shape[1] != node_shape(nxt)[1]:
                    return None
                flat = val[0].double().reshape(val.shape[1], -1)
                if not all(_is_constant(row) for row in flat):
                    return None
                bias = flat.mean(dim=1)
                return Collapse(node.name, nxt.name, other.name, None if bool((bias == 0).all()) else bias, chain)
            if data or nxt.op not in ("call_module", "call_function", "call_method"):
                return None
            val = _instance_norm_of_constant(ctx, nxt, val)
            if val is None:
                val = ev.evaluate(nxt)
            else:
                ev.values[nxt.name] = val
            chain.append(nxt.name)
            cur = nxt
    except Exception:  # an op that cannot run on the fixed values: no collapse, keep a unit instead
        return None


# --------------------------------------------------------------------------------------------- surgery

def _keep(n: int, removed: set[int] | None) -> list[int]:
    return [c for c in range(n) if not removed or c not in removed]


def _param(t: torch.Tensor, like: nn.Parameter | None) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad if like is not None else True)


def _apply_consumer_edits(mod: nn.Module, folds: list[tuple[int, torch.Tensor]],
                          merges: list[tuple[int, int, float]]) -> None:
    """Fold constant inputs into the bias and merged maps onto carriers (original channel indices)."""
    w = mod.weight.data.double()
    if merges:
        w = w.clone()
        for carrier, c, r in merges:
            if isinstance(mod, _CONVT):
                w[carrier] += r * w[c]
            elif isinstance(mod, nn.Linear):
                w[:, carrier] += r * w[:, c]
            else:
                per_in = mod.in_channels // mod.groups
                per_out = mod.out_channels // mod.groups
                g = c // per_in
                rows = slice(g * per_out, (g + 1) * per_out)
                w[rows, carrier - g * per_in] += r * w[rows, c - g * per_in]
        mod.weight.data.copy_(w.to(mod.weight.dtype))
    if folds:
        out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        delta = _fold_delta(mod, w, folds)
        if bool((delta != 0).any()):
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros(out, dtype=mod.weight.dtype, device=mod.weight.device))
            mod.bias.data += delta.to(mod.bias.dtype)


def _fold_delta(mod: nn.Module, w: torch.Tensor, folds: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Bias change of consumer ``mod`` (float64 weight ``w``) from constant input channels."""
    out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    delta = torch.zeros(out, dtype=torch.float64)
    for c, const in folds:
        const = float(const)
        if const == 0.0:
            continue
        if isinstance(mod, nn.Linear):
            delta += w[:, c] * const
            continue
        per_in = mod.in_channels // mod.groups
        per_out = mod.out_channels // mod.groups
        g = c // per_in
        if isinstance(mod, _CONVT):
            delta[g * per_out:(g + 1) * per_out] += w[c].reshape(per_out, -1).sum(dim=1) * const
        else:
            rows = slice(g * per_out, (g + 1) * per_out)
            delta[rows] += w[rows, c - g * per_in].reshape(per_out, -1).sum(dim=1) * const
    return delta


def _resize_conv(mod: nn.Module, keep_in: list[int], keep_out: list[int], depthwise: bool) -> None:
    w = mod.weight.data
    transposed = isinstance(mod, _CONVT)
    G, I, O = mod.groups, mod.in_channels, mod.out_channels
    if depthwise:
        new_g = len(keep_in)
        w = w[keep_in] if transposed else w[keep_out]
    elif G == 1:
        w = w[keep_in][:, keep_out] if transposed else w[keep_out][:, keep_in]
        new_g = 1
    else:
        per_in, per_out = I // G, O // G
        ins = [[c - g * per_in for c in keep_in if c // per_in == g] for g in range(G)]
        outs = [[o - g * per_out for o in keep_out if o // per_out == g] for g in range(G)]
        if len({len(v) for v in ins}) != 1 or len({len(v) for v in outs}) != 1:
            raise PassError(f"internal: unequal per-group removal in grouped conv ({[len(v) for v in ins]}, "
                            f"{[len(v) for v in outs]})")
        blocks = []
        for g in range(G):
            if transposed:
                blocks.append(w[[g * per_in + c for c in ins[g]]][:, outs[g]])
            else:
                blocks.append(w[[g * per_out + o for o in outs[g]]][:, ins[g]])
        w = torch.cat(blocks, 0)
        new_g = G
    mod.weight = _param(w, mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias.data[keep_out], mod.bias)
    mod.in_channels, mod.out_channels, mod.groups = len(keep_in), len(keep_out), new_g


def _resize_linear(mod: nn.Linear, keep_in: list[int], keep_out: list[int]) -> None:
    mod.weight = _param(mod.weight.data[keep_out][:, keep_in], mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias.data[keep_out], mod.bias)
    mod.in_features, mod.out_features = len(keep_in), len(keep_out)


def _resize_member(mod: nn.Module, keep: list[int]) -> nn.Module:
    if isinstance(mod, ChannelMask):
        new = ChannelMask(len(keep), nn.Parameter(mod.per_channel().detach()[keep].clone(),
                                                  requires_grad=mod.scale.requires_grad))
        return new
    if isinstance(mod, ChannelBias):
        mod.bias = _param(mod.bias.data[keep], mod.bias)
        mod.channels = len(keep)
        return mod
    if isinstance(mod, nn.PReLU):
        if mod.num_parameters > 1:
            mod.weight = _param(mod.weight.data[keep], mod.weight)
            mod.num_parameters = len(keep)
        return mod
    if isinstance(mod, nn.GroupNorm):
        mod.num_groups = mod.num_channels = len(keep)
    elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        mod.num_features = len(keep)
    for name in ("weight", "bias"):
        p = getattr(mod, name, None)
        if isinstance(p, nn.Parameter) and p.dim() == 1:
            setattr(mod, name, _param(p.data[keep], p))
    for name in ("running_mean", "running_var"):
        b = getattr(mod, name, None)
        if isinstance(b, torch.Tensor):
            mod._buffers[name] = b[keep].clone()
    return mod


def _collapse(gm: fx.GraphModule, col: Collapse, plan: Plan, replaced: dict[str, str]) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    other_name = col.other
    while other_name in replaced:  # an earlier collapse already replaced the skip operand
        other_name = replaced[other_name]
    add, other = nodes[col.add], nodes[other_name]
    if col.bias is None:
        add.replace_all_uses_with(other)
        replaced[col.add] = other_name
    else:
        name = unique_name(gm, f"bias_{col.add}")
        cb = ChannelBias(col.bias.numel())
        cb.bias.data.copy_(col.bias.float())
        gm.add_submodule(name, cb)
        with gm.graph.inserting_after(add):
            new = gm.graph.call_module(name, (other,))
        add.replace_all_uses_with(new)
        replaced[col.add] = new.name
        new.meta["tensor_meta"] = add.meta.get("tensor_meta")
        if col.add in plan.out_remove:
            plan.out_remove[new.name] = plan.out_remove[col.add]
    gm.graph.eliminate_dead_code()


def _fold_mask(gm: fx.GraphModule, node: fx.Node) -> str:
    """Fold a ChannelMask into what precedes it; returns "" or why it stays."""
    mod: ChannelMask = gm.get_submodule(str(node.target))
    s = mod.per_channel().detach()
    src = node.args[0]
    if bool((s == 1).all()):
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        return ""
    prev = gm.get_submodule(str(src.target)) if src.op == "call_module" else None
    if len(src.users) != 1 or prev is None:
        return f"mask '{node.name}' stays: its input '{src.name}' is not a conv/norm read only by the mask"
    if isinstance(prev, (_CONV, nn.Linear)):
        w = prev.weight.data
        if isinstance(prev, _CONVT):
            per_out = prev.out_channels // prev.groups
            w = w.reshape(prev.groups, -1, per_out, *w.shape[2:]) * \
                s.reshape(prev.groups, 1, per_out, *([1] * (w.dim() - 2))).to(w.dtype)
            prev.weight.data.copy_(w.reshape(prev.weight.shape))
        else:
            prev.weight.data.mul_(s.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        if prev.bias is not None:
            prev.bias.data.mul_(s.to(prev.bias.dtype))
    elif _is_channel_norm(prev):
        if prev.weight is None:
            like = next((b for b in prev.buffers() if b.is_floating_point()), None)
            dtype = like.dtype if like is not None else (src.meta["tensor_meta"].dtype if "tensor_meta" in src.meta
                                                         else s.dtype)
            prev.weight = nn.Parameter(torch.ones(s.shape, dtype=dtype))
            prev.bias = nn.Parameter(torch.zeros(s.shape, dtype=dtype))
            prev.affine = True
        prev.weight.data.mul_(s.to(prev.weight.dtype))
        prev.bias.data.mul_(s.to(prev.bias.dtype))
    else:
        return f"mask '{node.name}' stays: cannot fold into {type(prev).__name__} '{src.name}'"
    node.replace_all_uses_with(src)
    gm.graph.erase_node(node)
    return ""


def _drop_empty_cat_inputs(gm: fx.GraphModule, rm: dict[str, set[int]]) -> None:
    """A group removed entirely still reaches a concat as a 0-channel tensor: drop it from the cat."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (torch.cat, torch.concat) or not node.args:
            continue
        tensors = node.args[0]
        if not isinstance(tensors, (list, tuple)):
            continue
        keep = [t for t in tensors if not (isinstance(t, fx.Node) and node_shape(t) is not None and
                                           len(rm.get(t.name, ())) >= node_shape(t)[1])]
        if len(keep) != len(tensors) and keep:
            node.args = (type(tensors)(keep),) + tuple(node.args[1:])
    gm.graph.eliminate_dead_code()


def apply_plan(gm: fx.GraphModule, plan: Plan) -> tuple[fx.GraphModule, list[str]]:
    """Carry out ``plan`` on ``gm`` in place (see the module docstring); returns it and the masks that stay."""
    rm = plan.out_remove
    # Input channels each module loses, by its original input (before the graph is rewritten below).
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    in_removed_of = {n.name: rm.get(n.args[0].name, set()) for n in gm.graph.nodes
                     if n.op == "call_module" and n.args and isinstance(n.args[0], fx.Node)}
    replaced: dict[str, str] = {}
    for col in sorted(plan.collapses.values(), key=lambda c: order[c.add]):
        _collapse(gm, col, plan, replaced)
    _drop_empty_cat_inputs(gm, rm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        in_removed = in_removed_of.get(node.name, set())
        out_removed = rm.get(node.name, set())
        if isinstance(mod, (_CONV, nn.Linear)):
            if node.name in plan.folds or node.name in plan.merges:
                _apply_consumer_edits(mod, plan.folds.get(node.name, []), plan.merges.get(node.name, []))
            if not in_removed and not out_removed:
                continue
            if isinstance(mod, nn.Linear):
                _resize_linear(mod, _keep(mod.in_features, in_removed), _keep(mod.out_features, out_removed))
            else:
                depthwise = mod.groups == mod.in_channels and mod.groups > 1
                _resize_conv(mod, _keep(mod.in_channels, in_removed), _keep(mod.out_channels, out_removed),
                             depthwise)
        elif out_removed:
            width = node_shape(node)[1]
            new = _resize_member(mod, _keep(width, out_removed))
            if new is not mod:
                parent, _, attr = str(node.target).rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, attr, new)
    kept_masks = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), ChannelMask):
            why = _fold_mask(gm, node)
            if why:
                kept_masks.append(why)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm, kept_masks


def estimate_after(gm: fx.GraphModule, plan: Plan) -> tuple[int, int]:
    """``(MACs, params)`` of the network ``apply_plan(gm, plan)`` would build, computed without building it.

    Counts by the profiler's conventions (BRIEF section 5): the new widths follow from ``plan.out_remove``;
    collapsed branches vanish (a :class:`ChannelBias` takes their place when their constant is not zero);
    a bias is created where a fold needs one; a mask folded into a norm without affine parameters makes it
    affine. ``profile(eliminate-dead-channels(gm))`` gives the same numbers.
    """
    from ..profiler import _function_macs, _get_attr, _module_params, module_macs

    rm = plan.out_remove
    dead = _dead_after(gm, plan)
    gone = {n for col in plan.collapses.values() for n in col.chain} | dead
    macs, params = 0, 0
    owned: set[int] = set()

    def width(node: fx.Node) -> int:
        return node_shape(node)[1] - len(rm.get(node.name, ()))

    def new_shape(node: fx.Node) -> tuple[int, ...]:
        s = tuple(node_shape(node))
        return (s[0], width(node)) + s[2:]

    for node in gm.graph.nodes:
        if node.name in gone or node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            val = _get_attr(gm, str(node.target))
            if isinstance(val, nn.Parameter) and id(val) not in owned:
                owned.add(id(val))
                params += val.numel()
            continue
        if node.op == "call_function":
            macs += _function_macs(node, gm)
            continue
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        shape = node_shape(node)
        touched = bool(rm.get(node.name)) or (node.args and isinstance(node.args[0], fx.Node)
                                              and bool(rm.get(node.args[0].name)))
        if isinstance(mod, (_CONV, nn.Linear)) and (touched or node.name in plan.folds):
            x = node.args[0]
            c_in, c_out = width(x), width(node)
            if c_out == 0:
                continue
            if isinstance(mod, nn.Linear):
                macs += math.prod(new_shape(node)) * c_in
                params += c_in * c_out
            else:
                depthwise = mod.groups == mod.in_channels and mod.groups > 1
                groups = c_in if depthwise else mod.groups
                k = math.prod(mod.kernel_size)
                macs += math.prod(new_shape(node)) * (c_in // max(groups, 1)) * k
                params += (c_in * (c_out // max(groups, 1)) if isinstance(mod, _CONVT)
                           else c_out * (c_in // max(groups, 1))) * k
            has_bias = mod.bias is not None
            if not has_bias and node.name in plan.folds:
                w = mod.weight.data.double()
                has_bias = bool((_fold_delta(mod, w, plan.folds[node.name]) != 0).any())
            params += c_out if has_bias else 0
            continue
        if isinstance(mod, ChannelMask):
            keep = _keep(node_shape(node)[1], rm.get(node.name))
            s = mod.per_channel().detach()[keep]
            if bool((s == 1).all()):
                continue
            src = node.args[0]
            prev = gm.get_submodule(str(src.target)) if src.op == "call_module" else None
            if len(src.users) == 1 and isinstance(prev, (_CONV, nn.Linear)):
                continue
            if len(src.users) == 1 and prev is not None and _is_channel_norm(prev):
                params += 2 * len(keep) if prev.weight is None else 0
                continue
            params += len(keep)
            continue
        if not touched:
            fresh = [p for p in mod.parameters() if id(p) not in owned]
            owned.update(id(p) for p in fresh)
            macs += module_macs(mod, [node_shape(a) if isinstance(a, fx.Node) else None for a in node.args], shape)
            params += _module_params(mod) if hasattr(mod, "count_params") else sum(p.numel() for p in fresh)
            continue
        c = width(node)
        if isinstance(mod, nn.PReLU):
            params += c if mod.num_parameters > 1 else 1
        elif isinstance(mod, ChannelBias):
            params += c
        else:
            params += sum(c for name in ("weight", "bias")
                          if isinstance(getattr(mod, name, None), nn.Parameter) and getattr(mod, name).dim() == 1)
    nodes = {n.name: n for n in gm.graph.nodes}
    for col in plan.collapses.values():
        if col.bias is not None and col.add not in dead:  # the ChannelBias that replaces the branch
            params += width(nodes[col.add])
    return int(macs), int(params)


def _dead_after(gm: fx.GraphModule, plan: Plan) -> set[str]:
    """Nodes the built network no longer computes: collapsed branches and everything that only fed a
    group removed entirely (its tensors leave their concats, so whatever produced them is dead code)."""
    rm = plan.out_remove
    skip_add = {col.add: col.other for col in plan.collapses.values()}

    def empty(n: fx.Node) -> bool:
        s = node_shape(n)
        return s is not None and len(s) >= 2 and len(rm.get(n.name, ())) >= s[1]

    alive: set[str] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n.name in alive:
            continue
        alive.add(n.name)
        if n.name in skip_add:
            ins = [a for a in n.all_input_nodes if a.name == skip_add[n.name]]
        elif n.op == "call_function" and n.target in (torch.cat, torch.concat) and n.args and \
                isinstance(n.args[0], (list, tuple)):
            kept = [t for t in n.args[0] if isinstance(t, fx.Node) and not empty(t)]
            ins = kept if kept else list(n.all_input_nodes)
            ins += [a for a in n.all_input_nodes if a not in n.args[0]]
        else:
            ins = list(n.all_input_nodes)
        stack.extend(ins)
    return {n.name for n in gm.graph.nodes if n.name not in alive and n.op != "placeholder"}


@register_pass("eliminate-dead-channels", contract=Contract.exact())
def eliminate_dead_channels(gm: fx.GraphModule, *, round_to: int = 0) -> fx.GraphModule:
    """Remove channels whose mask / gamma is 0 or whose producing weights are all zero, exactly.

    Options:
        round_to: kept widths are multiples of this (or the full width); 0 uses the value recorded by
            ``insert-masks`` (else 1).

    Contract (exact): the result computes the masked network's output within 1e-5 x max|y| (float
    re-association only). Dead channels are never assumed zero: their real fixed values are folded
    into the next layer's bias, merged onto a kept carrier channel, or the channel is kept, and
    ``gm.meta["dead_channels"]`` says which, per group. Masks are folded into weights and disappear.
    """
    plan = plan_elimination(gm, round_to=round_to or None)
    gm, kept_masks = apply_plan(gm, plan)
    report = plan.report()
    report["masks_kept"] = kept_masks
    gm.meta["dead_channels"] = report
    _update_mask_record(gm)
    specs = input_specs(gm)
    if specs:
        propagate_shapes(gm, *[torch.zeros(s, dtype=d) for s, d in specs], fake=True)
    log.info("eliminate-dead-channels: removed %d units in %d groups; %d branches collapsed; %s",
             plan.removed_units(), sum(bool(d.removed) for d in plan.decisions.values()), len(plan.collapses),
             "; ".join(f"{n}: -{len(d.removed)}/{d.units}" + (f" (kept {len(d.kept)})" if d.kept else "")
                       for n, d in plan.decisions.items() if d.candidates))
    return gm


def _update_mask_record(gm: fx.GraphModule) -> None:
    record = gm.meta.get("masks")
    if not record:
        return
    groups = {}
    for name, entry in record.get("groups", {}).items():
        if entry.get("kind") != "norm":
            continue
        try:
            mod = gm.get_submodule(entry["modules"][0])
        except AttributeError:
            continue
        groups[name] = {**entry, "units": int(mod.weight.numel())}
    gm.meta["masks"] = {**record, "groups": groups}
