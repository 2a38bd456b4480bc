"""``prune-by-ratio``: choose which channels to prune, by |γ| or filter L1 norm, and zero their masks.

The pass decides; ``eliminate-dead-channels`` removes. It works on the masks of ``insert-masks`` (a graph
without masks is refused: put ``insert-masks`` before it in the pipeline) and respects channel groups (a unit is removed from every tensor of its
group at once) and ``round_to`` (each group keeps a multiple of ``round_to`` units, at least one block).

Two modes:

* ``ratio`` (default 0.5): every selected group loses ``ratio`` of its units (rounded down to the block);
* ``target_macs`` > 0: :func:`gcompiler.passes.budget.prune_to_budget` — one global ranking (each unit's
  score divided by its group's mean score, so groups of different scales compare fairly) removes the
  weakest blocks until :func:`gcompiler.estimate` (the exact price of the eliminated network) fits the
  budget. A budget below what keeping one block per group allows is an error.

Contract: changes semantics (zeroed masks change the output on purpose).
"""
from __future__ import annotations

import fnmatch
from typing import Literal

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import PassError
from ..fx.utils import not_plain_reason
from .registry import Contract, parse_list, register_pass


def _unit_scores(gm: fx.GraphModule, group, mask: torch.Tensor, criterion: str) -> torch.Tensor:
    if criterion == "gamma":
        return mask.detach().abs().float().clone()
    nodes = {n.name: n for n in gm.graph.nodes}
    scores = torch.zeros(group.channels)
    for p in group.producers:
        node = nodes[p]
        if node.op != "call_module":
            raise PassError(f"prune-by-ratio{{criterion=l1}}: producer '{p}' of group '{group.name}' is not a "
                            "module call; use criterion=gamma")
        mod = gm.get_submodule(str(node.target))
        why = not_plain_reason(mod)
        if why:
            raise PassError(f"prune-by-ratio{{criterion=l1}}: producer '{p}' of group '{group.name}' is not torch's "
                            f"own layer ({why}): its weights' L1 norm is not its filter's; use criterion=gamma")
        w = mod.weight.detach()
        if isinstance(mod, nn.ConvTranspose2d):
            if mod.groups != 1:
                raise PassError(f"prune-by-ratio{{criterion=l1}}: grouped transposed conv '{p}'; use criterion=gamma")
            per_out = w.abs().sum(dim=(0, 2, 3))
        else:
            per_out = w.abs().flatten(1).sum(1)
        for u in range(group.channels):
            scores[u] += per_out[list(group.index[p][u])].sum()
    return scores


def _block_keep(n: int, ratio: float, round_to: int) -> int:
    keep = n - int(n * ratio)
    if round_to > 1:
        keep = max(round_to, -(-keep // round_to) * round_to)
    return min(n, max(1, keep))


@register_pass("prune-by-ratio", contract=Contract.changes_semantics(), preserves=("channel-groups",))
def prune_by_ratio(gm: fx.GraphModule, *, ratio: float = 0.5, target_macs: float = 0.0,
                   criterion: Literal["gamma", "l1"] = "gamma", round_to: int = 1,
                   groups: str = "all") -> fx.GraphModule:
    """Zero the masks of the lowest-scoring channel units to hit ``ratio`` per group or ``target_macs``."""
    from ..analysis import channel_groups
    from .budget import prune_to_budget
    from .masks import masks

    if not 0 <= ratio < 1:
        raise PassError(f"prune-by-ratio{{ratio}} must be in [0, 1), got {ratio}")
    if round_to < 1:
        raise PassError(f"prune-by-ratio{{round_to}} must be >= 1, got {round_to}")
    if not masks(gm):
        raise PassError(f"prune-by-ratio: the graph has no masks; run them first in the pipeline: "
                        f"\"insert-masks{{groups={groups},round_to={round_to}}},prune-by-ratio{{...}}\"")
    mk = masks(gm)
    by_name = {g.name: g for g in channel_groups(gm)}
    pats = parse_list(groups, "prune-by-ratio{groups}") if groups not in ("all", "*", "") else ["*"]
    chosen = {n: m for n, m in mk.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    if not chosen:
        raise PassError(f"prune-by-ratio{{groups={groups}}} matches no masked group; masked groups: "
                        f"{', '.join(mk) or '(none)'}")
    scores = {}
    for name, mask in chosen.items():
        g = by_name.get(name)
        if g is None or g.channels != mask.numel():
            raise PassError(f"prune-by-ratio: mask '{name}' ({mask.numel()} units) does not match a channel group "
                            "of the current graph; re-run insert-masks")
        s = _unit_scores(gm, g, mask, criterion)
        s[mask.detach() == 0] = -1.0  # already dead: removed first, never revived
        scores[name] = s
    if target_macs <= 0:
        for name, mask in chosen.items():
            n = mask.numel()
            keep = _block_keep(n, ratio, round_to)
            order = torch.argsort(scores[name], descending=True, stable=True)
            with torch.no_grad():
                mask[order[keep:]] = 0
    else:
        info = prune_to_budget(gm, scores, int(target_macs), round_to=round_to)
    gm.meta["prune_by_ratio"] = {"criterion": criterion, "ratio": ratio, "target_macs": target_macs,
                                 "round_to": round_to,
                                 **({"estimated_macs": info["macs"]} if target_macs > 0 else {}),
                                 "alive": {n: int((m != 0).sum()) for n, m in chosen.items()}}
    return gm
