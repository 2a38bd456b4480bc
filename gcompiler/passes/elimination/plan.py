"""Planning ``eliminate-dead-channels``: which provably dead units go, under the constraints.

:func:`decide` applies the constraints (``round_to``, equal removal per conv group of grouped convs, a
consumer never loses every input unless its residual branch collapses to a per-channel constant,
:mod:`.collapse`) to the analyses of :mod:`.units`; it is shared by the pass (:func:`plan_elimination`)
and the cost model (:mod:`.cost`), which feeds it the analyses of a mask setting. :func:`build_plan`
turns the decisions into edits (out channels, folds, merges, collapses) and a report with proofs.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import torch
import torch.fx as fx

from ...errors import PassError
from .collapse import assemble_input, collapse_from, try_collapse_with
from .units import (AnalysisLike, Collapse, Context, Decisions, GroupAnalysis, GroupDecision, Plan, UnitView,
                    analyse_group, fold_uniform, ratio, removable, unsupported)

__all__ = ["AnalysisLike", "Collapse", "Context", "Decisions", "GroupAnalysis", "GroupDecision", "Plan", "UnitView",
           "analyse_group", "assemble_input", "build_plan", "collapse_from", "decide", "default_round_to",
           "fold_uniform", "plan_elimination", "prunable_groups", "ratio", "removable", "try_collapse_with",
           "unsupported"]


# ------------------------------------------------------------------------------------------- choosing

def _choose(g, removed: list[int], round_to: int, min_keep: int, kept: dict[int, str] | None) -> list[int]:
    """Apply min_keep, equal removal per conv group and round_to to a sorted list of removable units."""
    units = g.channels

    def drop_last(lst: list[int], n: int, why: str) -> list[int]:
        if n <= 0:
            return lst
        if kept is not None:
            for u in lst[-n:]:
                kept.setdefault(u, why)
        return lst[:-n]

    for _ in range(units + 2):
        before = len(removed)
        if units - len(removed) < min_keep and removed:
            removed = drop_last(removed, min_keep - (units - len(removed)), "a consumer would lose every input")
        for er in g.equal_removal:
            rows = g.index[er.tensor]
            width = sum(len(r) for r in rows)
            per = max(1, width // er.groups)
            by_slice: dict[int, list[int]] = defaultdict(list)
            for u in removed:
                by_slice[rows[u][0] // per].append(u)
            target = min(len(by_slice.get(s, ())) for s in range(er.groups))
            drop: set[int] = set()
            for us in by_slice.values():
                if len(us) > target:
                    extra = us[target:]
                    drop.update(extra)
                    if kept is not None:
                        for u in extra:
                            kept.setdefault(u, f"equal removal per conv group of '{er.node}'")
            if drop:
                removed = [u for u in removed if u not in drop]
        left = units - len(removed)
        if round_to > 1 and left % round_to and removed:
            need = min(round_to - left % round_to, len(removed))
            removed = drop_last(removed, need, f"round_to={round_to}")
        if len(removed) == before:
            break
    else:  # pragma: no cover - removal only shrinks, so the loop converges
        removed = []
    return removed


def decide(ctx: Context, analyses: dict[str, AnalysisLike], round_to: int, *, explain: bool = True,
           collapse: Callable[[fx.Node, dict[str, list[int]]], Collapse | None] | None = None) -> Decisions:
    """Choose the removed units of every group under the constraints (module docstring)."""
    kept: dict[str, dict[int, str]] = {n: {} for n in analyses}
    base: dict[str, list[int]] = {}
    carriers: dict[str, int | None] = {}
    for name, ga in analyses.items():
        base[name], carriers[name] = removable(ctx, ga, kept[name] if explain else None)
    try_collapse = collapse or (lambda node, rem: try_collapse_with(ctx, node, analyses, rem))
    consumers, feeders, readers = ctx.structure(analyses)
    min_keep: dict[str, int] = defaultdict(int)
    removed: dict[str, list[int]] = {}
    collapses: dict[str, Collapse] = {}
    for _ in range(len(analyses) + 2):
        removed = {name: _choose(ga.group, list(base[name]), round_to, min_keep[name],
                                 kept[name] if explain else None) for name, ga in analyses.items()}
        collapses = {}
        failed: list[str] = []
        for cname, x, width in consumers:
            gone = 0
            for name, block in readers[x]:  # units of a group have equal sizes (else it is pinned)
                r = removed[name]
                if r:
                    gone += block * len(r)
            if gone < width:
                continue
            col = try_collapse(ctx.nodes[cname], removed)
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
            for name in feeders[cname]:  # keep units in the first group feeding this consumer
                if removed[name]:
                    if min_keep[name] < round_to:
                        min_keep[name] = round_to
                        bumped = True
                    break
        if not bumped:
            break
    return Decisions(removed, collapses, kept, carriers)


# -------------------------------------------------------------------------------------------- planning

def default_round_to(gm: fx.GraphModule, round_to: int | None) -> int:
    if round_to is None or round_to == 0:
        round_to = int((gm.meta.get("masks") or {}).get("round_to", 1) or 1)
    if round_to < 1:
        raise PassError(f"eliminate-dead-channels{{round_to}} must be >= 1, got {round_to}")
    return round_to


def prunable_groups(gm: fx.GraphModule) -> list:
    from ...analysis import channel_groups

    return [g for g in channel_groups(gm) if g.prunable and g.channels > 0]


def plan_elimination(gm: fx.GraphModule, *, round_to: int | None = None, seed: int = 0) -> Plan:
    """Decide which channels ``eliminate-dead-channels`` would remove, without changing ``gm``.

    ``round_to`` defaults to the value ``insert-masks`` recorded (else 1).
    """
    round_to = default_round_to(gm, round_to)
    ctx = Context(gm, seed)
    analyses = {g.name: analyse_group(ctx, g) for g in prunable_groups(gm)}
    return build_plan(ctx, analyses, decide(ctx, analyses, round_to), round_to)


def build_plan(ctx: Context, analyses: dict[str, AnalysisLike], dec: Decisions, round_to: int) -> Plan:
    """Turn decisions into the edits of every node and the report."""
    gone = {n for col in dec.collapses.values() for n in col.chain}
    out_remove: dict[str, set[int]] = defaultdict(set)
    folds: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    merges: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    decisions = {}
    for name, ga in analyses.items():
        g = ga.group
        d = GroupDecision(name, g.channels, skipped=ga.skipped)
        d.candidates = np.nonzero(ga.cand)[0].tolist()
        d.removed = dec.removed[name]
        d.carrier = dec.carriers[name]
        d.kept = {u: why for u, why in dec.kept[name].items() if u not in set(d.removed)}
        for u in set(d.candidates) - set(d.removed):
            d.kept.setdefault(u, "kept")
        for u in d.removed:
            views = ga.view(u)
            d.proofs[u] = _proof_of(ga, u)
            for t, rows in g.index.items():
                out_remove[t].update(rows[u])
            for cname, v in views.items():
                if cname in gone:
                    continue
                if v.kind == "fold":
                    d.folded += 1
                    folds[cname].extend((c, m.mean()) for c, m in zip(v.channels, v.maps))
                elif v.kind == "merge":
                    d.merged += 1
                    cv = ga.view(d.carrier)[cname]
                    merges[cname].extend((cc, c, ratio(m, cm)) for c, cc, m, cm in
                                         zip(v.channels, cv.channels, v.maps, cv.maps))
        decisions[name] = d
    return Plan(decisions, dict(out_remove), dict(folds), dict(merges), dec.collapses, round_to)


def _proof_of(ga: AnalysisLike, u: int) -> str:
    proof = getattr(ga, "proof", None)
    if callable(proof):
        return proof(u)
    return ga.proofs.get(u, "fixed")  # type: ignore[attr-defined]
