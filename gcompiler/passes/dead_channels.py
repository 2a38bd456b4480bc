"""``eliminate-dead-channels``: physically remove channels that are *proven* dead, exactly.

A channel is removed only with a proof (:mod:`gcompiler.passes.elimination.proof`): its mask or norm
``gamma`` is exactly 0, its producer's weights are exactly 0, or it is constant by construction
(propagated symbolically from those, e.g. an InstanceNorm of a constant is its ``beta``). Random probes
are never used. A dead channel is *not* assumed zero downstream: after ``gamma*x_hat + beta`` it is the
constant ``beta``, after an activation ``act(beta)``, and zero padding or a transposed conv turns a
constant into a spatial pattern. Each consumer therefore absorbs it exactly (planning:
:mod:`gcompiler.passes.elimination.plan`): nothing to do for a zero, folded into the bias for a constant
the consumer keeps constant, merged onto one kept carrier channel with a proportional map otherwise,
kept (and reported) when none is. Kept widths honour ``round_to``; grouped convs lose equally per conv
group; a residual branch losing its whole width collapses to the identity or a per-channel bias when its
value at the addition is proven constant. The surgery is :mod:`gcompiler.passes.elimination.apply`.

Assumptions, stated: BatchNorm is folded with its running statistics (eval semantics), as inference runs
it; activations are finite (``x * 0 == 0``); merged maps are checked at the traced input size.

Everything decided is reported in ``gm.meta["dead_channels"]`` (JSON-friendly): per group the removed,
folded, merged and kept units and why, and ``"removed"``: every removed unit with its proof
(``{"group": ..., "unit": ..., "proof": "mask 'mask_x'.scale[3] == 0"}``). :func:`plan_elimination`
computes the decisions without touching the graph; :func:`gcompiler.estimate` prices them.
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx

from torch.fx.passes.shape_prop import TensorMetadata

from ..fx.trace import propagate_shapes
from ..fx.utils import input_specs
from .elimination.apply import apply_plan
from .elimination.plan import Collapse, GroupDecision, Plan, plan_elimination
from .registry import Contract, register_pass

__all__ = ["Collapse", "GroupDecision", "Plan", "apply_plan", "eliminate_dead_channels", "plan_elimination"]

log = logging.getLogger(__name__)


@register_pass("eliminate-dead-channels", contract=Contract.exact())
def eliminate_dead_channels(gm: fx.GraphModule, *, round_to: int = 0) -> fx.GraphModule:
    """Remove the channels proven dead (mask / gamma exactly 0, producer weights exactly 0, or constant by
    construction from those), exactly.

    Options:
        round_to: kept widths are multiples of this (or the full width); 0 uses the value recorded by
            ``insert-masks`` (else 1).

    Contract (exact): the result computes the masked network's output within 1e-5 x max|y| (float
    re-association only). Dead channels are never assumed zero: their real fixed values are folded
    into the next layer's bias, merged onto a kept carrier channel, or the channel is kept, and
    ``gm.meta["dead_channels"]`` says which, per group, with the proof of every removed unit. Masks are
    folded into weights and disappear.
    """
    plan = plan_elimination(gm, round_to=round_to or None)
    gm, kept_masks = apply_plan(gm, plan)
    report = plan.report()
    report["masks_kept"] = kept_masks
    gm.meta["dead_channels"] = report
    _update_mask_record(gm)
    if plan.removed_units() or plan.collapses:
        if not _shrink_shapes(gm, plan.out_remove):
            specs = input_specs(gm)
            if specs:
                propagate_shapes(gm, *[torch.zeros(s, dtype=d) for s, d in specs], fake=True)
    log.info("eliminate-dead-channels: removed %d units in %d groups; %d branches collapsed; %s",
             plan.removed_units(), sum(bool(d.removed) for d in plan.decisions.values()), len(plan.collapses),
             "; ".join(f"{n}: -{len(d.removed)}/{d.units}" + (f" (kept {len(d.kept)})" if d.kept else "")
                       for n, d in plan.decisions.items() if d.candidates))
    return gm


def _shrink_shapes(gm: fx.GraphModule, out_remove: dict[str, set[int]]) -> bool:
    """Record the new widths in ``tensor_meta`` (only dim 1 of removed-from tensors changes); False when a
    node's metadata is not a plain contiguous tensor record (then shapes are propagated again)."""
    updates = []
    for n in gm.graph.nodes:
        rm = out_remove.get(n.name)
        if not rm:
            continue
        tm = n.meta.get("tensor_meta")
        if not isinstance(tm, TensorMetadata) or len(tm.shape) < 2 or not tm.is_quantized is False:
            return False
        shape = list(tm.shape)
        shape[1] -= len(rm)
        stride, acc = [], 1
        for d in reversed(shape):
            stride.append(acc)
            acc *= max(d, 1)
        if tuple(tm.stride) != torch.empty(tuple(tm.shape), device="meta").stride():
            return False
        updates.append((n, tm._replace(shape=torch.Size(shape), stride=tuple(reversed(stride)))))
    for n, tm in updates:
        n.meta["tensor_meta"] = tm
    return True


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
