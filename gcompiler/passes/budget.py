"""The one budget pruner: zero the lowest-scoring mask units until the cost model says the slim network fits.

``prune_to_budget(gm, scores, budget, round_to=...)`` works on the masks of ``insert-masks``. Units are
ranked globally: a unit's score divided by the mean positive score of its group (groups of different
scales compare fairly), units already at 0 first. A group loses whole blocks, so that its kept width is a
multiple of ``round_to`` (the first block takes the remainder) and it keeps at least ``round_to`` units
(or all, when it has fewer) — exactly what ``eliminate-dead-channels`` keeps, so nothing is added back.
The number of blocks is found by bisection on :func:`gcompiler.estimate`, the exact price of the network
elimination builds: the result fits the budget by construction, with no measure-and-retry loop.

Budgets are a MACs count or text parsed by :func:`gcompiler.spec.parse_target_macs` (``"8x"``: the dense
network's MACs / 8; ``"2e9"``, ``"2g"``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.fx as fx

from ..errors import PassError

__all__ = ["prune_to_budget"]


def _blocks(scores: torch.Tensor, dead: torch.Tensor, round_to: int) -> list[tuple[float, list[int]]]:
    """A group's removable blocks in removal order, each with its score (the largest in the block)."""
    n = scores.numel()
    pos = scores[(scores > 0) & ~dead]
    norm = scores / pos.mean().clamp_min(1e-12) if pos.numel() else scores.clone()
    norm = torch.where(dead, torch.full_like(norm, float("-inf")), norm)
    order = torch.argsort(norm, stable=True).tolist()
    keep_min = min(round_to, n)
    blocks: list[tuple[float, list[int]]] = []
    i, kept = 0, n
    size = (n % round_to) or round_to  # the first block leaves a multiple of round_to
    while kept - size >= keep_min:
        blk = order[i:i + size]
        blocks.append((float(norm[blk].max()), blk))
        i += size
        kept -= size
        size = round_to
    return blocks


def prune_to_budget(gm: fx.GraphModule, scores: Mapping[str, torch.Tensor], budget: int | float | str, *,
                    round_to: int | None = None) -> dict[str, Any]:
    """Zero the masks of the lowest-scoring units of ``scores``' groups until ``estimate(gm).macs <= budget``.

    Args:
        gm: a graph with masks (``insert-masks``); its masks are edited in place.
        scores: ``{group name: per-unit scores}`` (higher = more important), e.g. ``|gamma|``.
        budget: MACs of the slim network: a count, or text for :func:`gcompiler.spec.parse_target_macs`.
        round_to: kept widths' multiple (default: the value ``insert-masks`` recorded, else 1).

    Returns:
        ``{"budget", "macs", "params", "zeroed", "macs_before"}`` (``macs``: the exact cost-model price).

    Groups that elimination leaves alone (:func:`~.elimination.cost.unprunable_groups`) are not ranked.

    Raises:
        PassError: a group is not masked, scores have the wrong length, or the budget is below what keeping
        ``round_to`` units per group allows (the message gives the smallest reachable MACs).
    """
    from .elimination.cost import estimate, unprunable_groups
    from ..spec import parse_target_macs
    from .elimination.plan import default_round_to
    from .masks import masks as get_masks

    rt = default_round_to(gm, round_to)
    mk = get_masks(gm)
    dense = estimate(gm, widths={n: m.numel() for n, m in mk.items()}, round_to=rt)
    target = parse_target_macs(budget, dense.macs + 1) if isinstance(budget, str) else int(budget)
    if target is None or target <= 0:
        raise PassError(f"prune_to_budget: budget {budget!r} must be a positive MACs count")
    chosen: dict[str, tuple[torch.Tensor, list[tuple[float, list[int]]]]] = {}
    blocked = unprunable_groups(gm)
    for name, s in scores.items():
        if name in blocked:  # elimination would keep its units whatever the mask says
            continue
        if name not in mk:
            raise PassError(f"prune_to_budget: '{name}' is not a masked group; masked groups: {', '.join(mk) or '(none)'}")
        m = mk[name]
        s = torch.as_tensor(s).detach().float().reshape(-1)
        if s.numel() != m.numel():
            raise PassError(f"prune_to_budget: scores for '{name}' have {s.numel()} entries, the mask has {m.numel()}")
        chosen[name] = (m, _blocks(s, m.detach().cpu() == 0, rt))
    seq = sorted(((score, j, name, blk) for name, (_, bl) in chosen.items() for j, (score, blk) in enumerate(bl)),
                 key=lambda t: (t[0], t[1]))
    base = {n: (m.detach().cpu() != 0).float() for n, m in mk.items()}

    def setting(k: int) -> dict[str, torch.Tensor]:
        out = {n: v.clone() for n, v in base.items()}
        for _, _, name, blk in seq[:k]:
            out[name][blk] = 0
        return out

    def price(k: int) -> int:
        return estimate(gm, masks=setting(k), round_to=rt).macs

    before = price(0)
    if before <= target:
        k = 0
    else:
        lo, hi = 1, len(seq)
        if price(hi) > target:
            raise PassError(f"prune_to_budget: cannot reach {target:.4g} MACs while keeping {rt} unit(s) per group; "
                            f"the smallest reachable is {price(hi):.4g}")
        while lo < hi:
            mid = (lo + hi) // 2
            if price(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        k = lo
    final = setting(k)
    zeroed = 0
    with torch.no_grad():
        for n, m in mk.items():
            kill = (final[n] == 0) & (m.detach().cpu() != 0)
            zeroed += int(kill.sum())
            m[kill.to(m.device)] = 0
    est = estimate(gm, round_to=rt)
    return {"budget": target, "macs": est.macs, "params": est.params, "zeroed": zeroed, "macs_before": before}
