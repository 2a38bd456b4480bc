"""What is proven about each channel group, unit by unit, and the data types of an elimination plan.

:func:`analyse_group` turns the proofs of :mod:`.proof` into per-unit *views*: a unit is a candidate when
its channels are proven fixed at the input of every consumer of its group, and at each consumer it is

* ``zero``: nothing to do;
* ``fold``: spatially constant and the consumer maps a constant input to a constant output (no zero
  padding; a transposed conv with stride 1 and enough padding): ``b' = b + sum_k W[:, c, k] * const``;
* ``merge``: any other fixed map (a constant under zero padding, a padded pattern, a transposed conv's
  checkerboard): its contribution moves onto one kept *carrier* unit whose map is proportional
  (``W[:, carrier] += (v_c / v_carrier) * W[:, c]``), or the unit is kept when none is
  (:func:`removable`).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Protocol

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ...errors import PassError
from ...fx.utils import node_shape, not_plain_reason
from ..masks import ChannelBias, ChannelMask, _is_channel_norm
from .proof import _CONV, _CONVT, Facts, Prover

_PROP_TOL = 1e-6  # relative residual tolerated when calling two fixed maps proportional


# ------------------------------------------------------------------------------------------ data types

@dataclasses.dataclass
class UnitView:
    """A candidate unit at one consumer: its channels there and their fixed maps."""

    channels: list[int]
    maps: list[torch.Tensor]  # float64, one per channel (a single value when the map is constant)
    kind: str                 # "zero" | "fold" | "merge"


@dataclasses.dataclass
class GroupAnalysis:
    """Proven facts about one channel group: candidates, their views at each consumer and their proofs."""

    group: Any
    skipped: str
    cand: np.ndarray                               # bool per unit: proven fixed at every consumer
    needs: np.ndarray                              # bool per unit: a candidate needing a carrier
    views: dict[int, dict[str, UnitView]]          # candidate unit -> consumer -> view
    proofs: dict[int, str]                         # candidate unit -> proof
    refused: bool = False                          # the surgery cannot handle the group (see unsupported)

    def view(self, u: int) -> dict[str, UnitView]:
        return self.views[u]


class AnalysisLike(Protocol):
    group: Any
    skipped: str
    cand: np.ndarray
    needs: np.ndarray

    def view(self, u: int) -> dict[str, UnitView]: ...


@dataclasses.dataclass
class GroupDecision:
    """What the planner decided for one channel group (units are indices into the group's units)."""

    name: str
    units: int
    candidates: list[int] = dataclasses.field(default_factory=list)
    removed: list[int] = dataclasses.field(default_factory=list)
    carrier: int | None = None
    kept: dict[int, str] = dataclasses.field(default_factory=dict)  # candidate unit -> why it stays
    proofs: dict[int, str] = dataclasses.field(default_factory=dict)  # removed unit -> proof
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
class Decisions:
    """Output of :func:`decide`: removed units per group, collapsed branches, and why units stay."""

    removed: dict[str, list[int]]
    collapses: dict[str, Collapse]
    kept: dict[str, dict[int, str]]
    carriers: dict[str, int | None]


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

    def removed_list(self) -> list[dict[str, Any]]:
        """Every removed unit with its proof: ``{"group", "unit", "proof"}``."""
        return [{"group": n, "unit": u, "proof": d.proofs.get(u, "")}
                for n, d in self.decisions.items() for u in d.removed]

    def report(self) -> dict[str, Any]:
        return {"round_to": self.round_to,
                "removed_units": self.removed_units(),
                "groups": {n: d.to_dict() for n, d in self.decisions.items()},
                "removed": self.removed_list(),
                "collapsed_branches": [{"consumer": c.consumer, "add": c.add,
                                        "becomes": "identity" if c.bias is None else "channel bias"}
                                       for c in self.collapses.values()]}


# ------------------------------------------------------------------------------------------ context

class Context:
    """The graph being planned: nodes by name, order, call sites, concrete non-tensor values."""

    def __init__(self, gm: fx.GraphModule, seed: int = 0) -> None:
        self.gm = gm
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        self.seed = seed
        self._concrete: dict[str, Any] | None = None
        self._structure: tuple | None = None
        self.call_sites: dict[str, int] = defaultdict(int)
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.call_sites[str(n.target)] += 1

    def structure(self, analyses: dict[str, Any]) -> tuple[list, dict[str, list[str]], dict[str, list]]:
        """Consumers (name, input, width) in graph order, the groups feeding each consumer, and the
        (group, channels per unit) reading each consumer input; computed once per set of groups."""
        key = tuple(analyses)
        if self._structure is None or self._structure[0] != key:
            names = sorted({c for ga in analyses.values() for c in ga.group.consumers}, key=lambda c: self.order[c])
            feeders: dict[str, list[str]] = defaultdict(list)
            for name, ga in analyses.items():
                for c in ga.group.consumers:
                    feeders[c].append(name)
            consumers, readers = [], {}
            for cname in names:
                x = self.nodes[cname].args[0]
                consumers.append((cname, x.name, node_shape(x)[1]))
                if x.name not in readers:
                    readers[x.name] = [(n, len(ga.group.index[x.name][0])) for n, ga in analyses.items()
                                       if x.name in ga.group.index]
            self._structure = (key, (consumers, dict(feeders), readers))
        return self._structure[1]

    def module(self, name: str) -> nn.Module | None:
        n = self.nodes.get(name)
        if n is None or n.op != "call_module":
            return None
        return self.gm.get_submodule(str(n.target))

    def concrete(self, node: fx.Node) -> Any:
        """Value of a non-tensor node (a shape, a size) from one real run on random inputs (computed once,
        only for graphs whose group ops take such values)."""
        if self._concrete is None:
            from ...fx.utils import random_inputs

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


# ---------------------------------------------------------------------------------------- support check

def unsupported(ctx: Context, g) -> str:
    """Why the surgery cannot handle group ``g`` ("" when it can)."""
    for name in list(g.producers) + list(g.consumers):
        kind = g.kinds.get(name, "")
        if kind.endswith("_functional"):
            return f"'{name}' is a functional {kind[:-11]} (only module convs/linears are resized)"
        mod = ctx.module(name)
        if not isinstance(mod, (_CONV, nn.Linear)):
            return f"'{name}' is not a conv / linear module"
        why = not_plain_reason(mod)
        if why:
            return f"'{name}' ({type(mod).__name__}) is not torch's own conv / linear: {why}"
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
        if not isinstance(mod, (ChannelMask, ChannelBias)) and not_plain_reason(mod):
            return f"member '{name}' ({type(mod).__name__}) is not torch's own layer: {not_plain_reason(mod)}"
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


def fold_uniform(mod: nn.Module) -> bool:
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

def _skipped(g, why: str, refused: bool = False) -> GroupAnalysis:
    z = np.zeros(g.channels, dtype=bool)
    return GroupAnalysis(g, why, z, z.copy(), {}, {}, refused)


def analyse_group(ctx: Context, g, overrides: dict[str, torch.Tensor] | None = None) -> GroupAnalysis:
    """Prove which units of group ``g`` are fixed at every consumer and how each consumer sees them."""
    reason = unsupported(ctx, g)
    if reason:
        return _skipped(g, reason, refused=True)
    if not g.consumers:
        return _skipped(g, "no consumer reads the group")
    prover = Prover(ctx.gm, ctx.nodes, ctx.concrete, overrides)
    members, producers = set(g.members), set(g.producers)
    try:
        for t in g.index:
            prover.facts_of(ctx.nodes[t], members, producers)
    except Exception as exc:  # noqa: BLE001 - an op the prover cannot run proves nothing
        return _skipped(g, f"cannot evaluate the group's ops ({type(exc).__name__}: {exc})")
    units = g.channels
    cand = np.ones(units, dtype=bool)
    facts: list[tuple[str, Any, Facts]] = []
    for cname in g.consumers:
        cs = g.consumer_slices[cname]
        f = prover.facts.get(cs.input)
        if not isinstance(f, Facts):
            return _skipped(g, f"'{cs.input}' is not a (N, C, ...) tensor")
        rows = g.index[cs.input]
        fl = f.fixed.tolist()
        cand &= np.array([all(fl[c] for c in row) for row in rows], dtype=bool)
        facts.append((cname, rows, f))
    views: dict[int, dict[str, UnitView]] = {}
    proofs: dict[int, str] = {}
    needs = np.zeros(units, dtype=bool)
    if not cand.any():
        return GroupAnalysis(g, "", cand, needs, views, proofs)
    cand_units = np.nonzero(cand)[0].tolist()
    for cname, rows, f in facts:
        uniform = fold_uniform(ctx.module(cname))
        chans_needed = sorted({c for u in cand_units for c in rows[u]})
        sub = f.value[0, chans_needed].double().reshape(len(chans_needed), -1)  # only the candidates' maps
        pos = {c: i for i, c in enumerate(chans_needed)}
        if sub.shape[1]:
            is_zero = (sub == 0).all(dim=1).tolist()
            spread = sub.amax(dim=1) - sub.amin(dim=1)
            is_const = (spread <= 1e-6 * sub.abs().amax(dim=1) + 1e-30).tolist()
        else:
            is_zero = [True] * len(chans_needed)
            is_const = [True] * len(chans_needed)
        for u in cand_units:
            chans = list(rows[u])
            ii = [pos[c] for c in chans]
            if all(is_zero[i] for i in ii):
                kind = "zero"
            elif all(is_const[i] for i in ii) and uniform:
                kind = "fold"
            else:
                kind = "merge"
                needs[u] = True
            if kind == "merge" and not all(is_const[i] for i in ii):
                maps = [sub[i].clone() for i in ii]
            else:  # a constant map is stored as its value (memory: units x consumers x H x W)
                maps = [sub[i].mean().reshape(1) for i in ii]
            views.setdefault(u, {})[cname] = UnitView(chans, maps, kind)
            if u not in proofs:
                proofs[u] = f.proof[chans[0]] or "fixed"
    return GroupAnalysis(g, "", cand, needs, views, proofs)


def _choose_carrier(ga: AnalysisLike, candidates: list[int], needs: list[int]) -> int | None:
    need_at = {c for u in needs for c, v in ga.view(u).items() if v.kind == "merge"}
    best, best_score = None, 0.0
    for u in candidates:
        vu = ga.view(u)
        score = min(min(float(m.abs().max()) for m in vu[c].maps) for c in need_at)
        if score > best_score:
            best, best_score = u, score
    return best


def _merge_blocker(ctx: Context, ga: AnalysisLike, u: int, carrier: int | None) -> str:
    if carrier is None:
        return "fixed non-constant map and no carrier channel with a non-zero map"
    cviews = ga.view(carrier)
    for cname, v in ga.view(u).items():
        if v.kind != "merge":
            continue
        cv = cviews[cname]
        if len(cv.channels) != len(v.channels):
            return f"unit block sizes differ at consumer '{cname}'"
        mod = ctx.module(cname)
        for ch, cch, m, cm in zip(v.channels, cv.channels, v.maps, cv.maps):
            if _consumer_conv_group(mod, ch) != _consumer_conv_group(mod, cch):
                return f"carrier is in another conv group of grouped consumer '{cname}'"
            if ratio(m, cm) is None:
                return f"fixed map at zero-padded / transposed consumer '{cname}' is not proportional to the carrier's"
    return ""


def ratio(m: torch.Tensor, carrier: torch.Tensor) -> float | None:
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


def removable(ctx: Context, ga: AnalysisLike, kept: dict[int, str] | None) -> tuple[list[int], int | None]:
    """Candidates that can go (sorted) and the carrier (a candidate that stays), before the constraints."""
    cands = np.nonzero(ga.cand)[0].tolist()
    if not ga.needs.any():
        return cands, None
    needs = np.nonzero(ga.needs)[0].tolist()
    carrier = _choose_carrier(ga, cands, needs)
    out = set(cands)
    if carrier is not None:
        out.discard(carrier)
        if kept is not None:
            kept[carrier] = "carrier of merged fixed maps"
    for u in needs:
        if u == carrier:
            continue
        why = _merge_blocker(ctx, ga, u, carrier)
        if why:
            out.discard(u)
            if kept is not None:
                kept[u] = why
    return sorted(out), carrier
