"""``make-supernet``: a channel-sliceable once-for-all supernet of a traced network (GAN Compression).

The pass keeps the graph and every weight, and swaps each module that owns per-channel state (conv,
transposed conv, linear, BatchNorm / InstanceNorm, GroupNorm with one channel per group, per-channel
PReLU) for a *super* version of the same class (``SuperConv2d`` is an ``nn.Conv2d``: same attributes,
same parameters, same state-dict keys) that computes with a slice of its weights. The slices follow
one width per prunable channel group (:func:`gcompiler.analysis.channel_groups`): a group of ``n``
units at width ``k`` keeps its first ``k`` units in every tensor it touches, so coupled producers (a
residual trunk) shrink together, a concat consumer reads each input group at its own offset, a
pixel-shuffle producer keeps whole blocks of ``r**2`` channels and a depthwise conv keeps its groups.

Widths change at run time, without retracing: :func:`apply_widths` (``gcompiler.set_config``) sets the
slices of every super module from a ``{group name: units}`` dict. :func:`extract_widths`
(``gcompiler.extract``) returns a plain GraphModule whose modules hold copies of the slices.

Contract: exact. At full widths (the state after the pass) every super module runs the very same
functional call on the very same tensors as the module it replaces, so the output is bit-identical.
At any widths, the supernet and the extracted sub-network run the same calls on equal tensors, so
their outputs are equal too (``tests/test_supernet.py`` checks both).

Groups the supernet cannot slice stay at full width and are listed with the reason in
``gm.meta["supernet"]["fixed"]``: a group touched by a grouped (not depthwise) conv or transposed conv
with groups > 1, by a module with parameters of another type (e.g. a ``ChannelMask``), or by a
functional conv whose weight is a graph constant.

``gm.meta["supernet"]``: ``{"groups": {name: full units}, "fixed": {name: reason}, "config": {name:
units}, "plan": SupernetPlan, "channel_order": {node: [old channel at each position]}}`` (the last is
empty unless ``order="l1"`` moved channels: a feature of the supernet at node ``t``, channel ``j``, is
the input graph's channel ``channel_order[t][j]``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError, PassError
from ..fx.utils import node_shape, replace_module
from .registry import Contract, register_pass
from .super_modules import _MIXINS, Slice, SuperModule, _count, _plain_copy, _to_super

__all__ = ["make_supernet", "apply_widths", "extract_widths", "SupernetPlan", "SuperModule", "subnet_cost",
           "is_supernet"]

def is_supernet(gm: fx.GraphModule) -> bool:
    return isinstance(getattr(gm, "meta", None), dict) and isinstance(gm.meta.get("supernet"), dict)


# ------------------------------------------------------------------------------------------------
# the plan: which channels of which tensor belong to which group's units

@dataclasses.dataclass
class SupernetPlan:
    """What :func:`apply_widths` needs, computed once by the pass.

    ``tensors[node]`` = ``(channels, [(group, rows)])``: the node's output width and, per sliceable
    group touching it, that group's per-unit channel lists. ``modules[node]`` = ``(target, input node,
    kind)`` for every super module call. ``groups`` / ``fixed`` as in the module docstring.
    """

    tensors: dict[str, tuple[int, list[tuple[str, tuple[tuple[int, ...], ...]]]]]
    modules: dict[str, tuple[str, str | None, str]]
    groups: dict[str, int]
    fixed: dict[str, str]
    macs_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    def kept(self, widths: Mapping[str, int]) -> dict[str, Slice]:
        """Per tensor node: ``None`` (all channels), ``k`` (the first k) or a LongTensor of kept channels."""
        out: dict[str, Slice] = {}
        for node, (channels, parts) in self.tensors.items():
            removed: set[int] = set()
            for g, rows in parts:
                k = widths.get(g, len(rows))
                for r in rows[k:]:
                    removed.update(r)
            if not removed:
                out[node] = None
                continue
            keep = [c for c in range(channels) if c not in removed]
            if keep == list(range(len(keep))):
                out[node] = len(keep)
            else:
                out[node] = torch.tensor(keep, dtype=torch.long)
        return out




def _sliceable(mod: nn.Module) -> tuple[bool, str]:
    """Whether the supernet can slice ``mod``; else the reason."""
    base = type(mod)
    if base not in _MIXINS:
        return False, f"module of type {base.__name__} with per-channel state"
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if 1 < mod.groups and mod.groups != mod.in_channels:
            return False, f"grouped conv (groups={mod.groups})"
        if isinstance(mod.padding, str) and mod.padding != "valid" and mod.padding_mode != "zeros":
            return False, f"conv with padding={mod.padding!r} and padding_mode={mod.padding_mode!r}"
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and mod.groups != 1:
        return False, f"transposed conv with groups={mod.groups}"
    if isinstance(mod, nn.GroupNorm) and mod.num_groups != mod.num_channels:
        return False, f"GroupNorm with {mod.num_channels // max(mod.num_groups, 1)} channels per group"
    return True, ""


def _module_kind(mod: nn.Module) -> str:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "depthwise" if mod.groups > 1 else "conv"
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose"
    if isinstance(mod, nn.Linear):
        return "linear"
    return "norm"


def _has_state(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters(recurse=False)) or any(b is not None for b in mod.buffers(recurse=False))


def _build_plan(gm: fx.GraphModule) -> tuple[SupernetPlan, list[fx.Node]]:
    from ..analysis import channel_groups

    groups = channel_groups(gm)
    prunable = {g.name: g for g in groups if g.prunable and g.channels > 0}
    by_tensor: dict[str, list[str]] = {}
    by_consumer: dict[str, list[str]] = {}
    for g in prunable.values():
        for t in g.index:
            by_tensor.setdefault(t, []).append(g.name)
        for c in g.consumer_slices:
            by_consumer.setdefault(c, []).append(g.name)
    fixed: dict[str, str] = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    to_wrap: list[fx.Node] = []

    def touched(n: fx.Node) -> set[str]:
        gs = set(by_tensor.get(n.name, ())) | set(by_consumer.get(n.name, ()))
        for a in n.args:
            if isinstance(a, fx.Node):
                gs |= set(by_tensor.get(a.name, ()))
        return gs

    for g in prunable.values():
        for name in list(g.producers) + list(g.consumers) + list(g.members):
            n = nodes.get(name)
            if n is None:
                continue
            if n.op == "call_module":
                mod = gm.get_submodule(str(n.target))
                ok, why = _sliceable(mod)
                if not ok and (_has_state(mod) or isinstance(mod, nn.modules.instancenorm._InstanceNorm)):
                    for gname in touched(n) | {g.name}:
                        fixed.setdefault(gname, f"{why} at node '{name}'")
            elif g.kinds.get(name) in ("conv", "conv_transpose", "linear", "depthwise") or name in g.producers \
                    or name in g.consumers:
                fixed.setdefault(g.name, f"functional {g.kinds.get(name, 'op')} '{name}' (weights are graph constants)")
    live = {k: v for k, v in prunable.items() if k not in fixed}
    tensors: dict[str, tuple[int, list[tuple[str, tuple[tuple[int, ...], ...]]]]] = {}
    for g in live.values():
        for t, rows in g.index.items():
            shape = node_shape(nodes[t])
            if shape is None or len(shape) < 2:
                continue
            entry = tensors.setdefault(t, (int(shape[1]), []))
            entry[1].append((g.name, rows))
    modules: dict[str, tuple[str, str | None, str]] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(str(n.target))
        if type(mod) not in _MIXINS or not _sliceable(mod)[0]:
            continue
        inp = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        inp_name = inp.name if inp is not None else None
        if n.name not in tensors and (inp_name is None or inp_name not in tensors):
            continue
        if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
            continue
        modules[n.name] = (str(n.target), inp_name, _module_kind(mod))
        to_wrap.append(n)
    # a module called from several nodes must see the same slices at every call
    targets: dict[str, list[str]] = {}
    for name, (target, _, _) in modules.items():
        targets.setdefault(target, []).append(name)
    plan = SupernetPlan(tensors, modules, {k: g.channels for k, g in live.items()}, fixed)
    for target, names in targets.items():
        if len(names) > 1:
            for nm in names:
                for gname, _ in tensors.get(nm, (0, []))[1]:
                    plan.fixed.setdefault(gname, f"module '{target}' is called at several nodes ({names})")
    for gname in list(plan.groups):
        if gname in plan.fixed:
            del plan.groups[gname]
    if any(k in plan.fixed for k in live):
        for t in list(plan.tensors):
            ch, parts = plan.tensors[t]
            parts = [(g, r) for g, r in parts if g not in plan.fixed]
            if parts:
                plan.tensors[t] = (ch, parts)
            else:
                del plan.tensors[t]
    return plan, to_wrap


def _contract(options: dict) -> Contract:
    """Bit-exact without reordering; a channel permutation only re-associates the convs' sums."""
    return Contract.exact(0.0) if options.get("order", "keep") == "keep" else Contract.exact()


@register_pass("make-supernet", contract=_contract)
def make_supernet(gm: fx.GraphModule, *, order: Literal["keep", "l1"] = "keep") -> fx.GraphModule:
    """Make ``gm`` a channel-sliceable supernet: one run-time width per prunable channel group (first-k slicing).

    Mutates ``gm`` in place (its modules become super modules sharing the same parameters) and records
    ``gm.meta["supernet"]``. Exact at full width; see the module docstring. ``order="l1"`` first permutes
    the units of every sliceable group by decreasing L1 norm of their producers' filters (GAN Compression's
    weight transfer keeps the top-k filters by L1 norm), so that the first ``k`` units are the strongest; a
    permutation of channels computes the same function.
    """
    if is_supernet(gm):
        raise PassError("make-supernet: the graph is already a supernet (gm.meta['supernet'] is set)")
    if "input_shapes" not in gm.meta:
        raise PassError("make-supernet needs a traced graph with shapes: use gcompiler.trace(model, *inputs) first")
    plan, to_wrap = _build_plan(gm)
    for n in to_wrap:
        if n.name not in plan.modules:
            continue
        target = str(n.target)
        mod = gm.get_submodule(target)
        if not isinstance(mod, SuperModule):
            replace_module(gm, target, _to_super(mod))
    # drop plan entries of modules whose every touched group got fixed
    keep = {}
    for name, (target, inp, kind) in plan.modules.items():
        if name in plan.tensors or (inp is not None and inp in plan.tensors):
            keep[name] = (target, inp, kind)
    plan.modules = keep
    moved: dict[str, list[int]] = {}
    if order == "l1":
        moved = permute_units(gm, plan, l1_unit_order(gm, plan))
    from ..profiler import profile

    try:
        plan.macs_rows = {r.node: r.macs for r in profile(gm).rows if r.macs}
    except Exception:  # noqa: BLE001 - the price table is an optimisation, subnet_cost falls back
        plan.macs_rows = {}
    gm.meta["supernet"] = {"groups": dict(plan.groups), "fixed": dict(plan.fixed),
                           "config": dict(plan.groups), "plan": plan, "channel_order": moved}
    gm.graph.lint()
    gm.recompile()
    return gm


# ------------------------------------------------------------------------------------------------
# unit order

def l1_unit_order(gm: fx.GraphModule, plan: SupernetPlan) -> dict[str, list[int]]:
    """Per group: its units sorted by decreasing L1 norm of the producers' filters (ties: original order).

    A unit's norm sums ``|W|`` over every producer conv / transposed conv / linear output channel it covers
    (a coupled trunk sums all its producers); groups without such a producer keep their order.
    """
    scores: dict[str, torch.Tensor] = {}
    for name, (target, _inp, kind) in plan.modules.items():
        if kind not in ("conv", "conv_transpose", "linear") or name not in plan.tensors:
            continue
        w = gm.get_submodule(target).weight.detach()
        per_ch = (w.transpose(0, 1) if kind == "conv_transpose" else w).abs().flatten(1).sum(1).float().cpu()
        for g, rows in plan.tensors[name][1]:
            acc = scores.setdefault(g, torch.zeros(len(rows)))
            for u, r in enumerate(rows):
                acc[u] += float(per_ch[list(r)].sum())
    out = {}
    for g, n in plan.groups.items():
        if g in scores:
            sc = scores[g].tolist()
            out[g] = sorted(range(n), key=lambda u: (-sc[u], u))
    return out


def permute_units(gm: fx.GraphModule, plan: SupernetPlan, perms: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Reorder the units of groups in place: new unit ``i`` of group ``g`` is old unit ``perms[g][i]``.

    Every super module's weights, biases and norm statistics are permuted along the channels that the
    groups own (output and input sides), and the plan's unit rows are left as they are: after the call,
    unit ``i`` is stored where old unit ``i`` was, so first-k slicing keeps the strongest units.
    Returns, for every tensor whose channels moved, ``order[t][j]`` = the old channel now at channel ``j``.
    """
    order: dict[str, torch.Tensor] = {}
    for t, (channels, parts) in plan.tensors.items():
        idx = list(range(channels))
        changed = False
        for g, rows in parts:
            p = perms.get(g)
            if p is None or list(p) == list(range(len(rows))):
                continue
            if sorted(p) != list(range(len(rows))):
                raise PassError(f"permutation of group {g!r} is not a permutation of its {len(rows)} units")
            changed = True
            for new_u, old_u in enumerate(p):
                for dst, src in zip(rows[new_u], rows[old_u]):
                    idx[dst] = src
        if changed:
            order[t] = torch.tensor(idx, dtype=torch.long)
    done: set[str] = set()
    with torch.no_grad():
        for name, (target, inp, kind) in plan.modules.items():
            if target in done:
                continue
            done.add(target)
            mod = gm.get_submodule(target)
            o = order.get(name)
            i = order.get(inp) if inp is not None else None
            if kind == "norm":
                i = None
            for pname, p in list(mod.named_parameters(recurse=False)) + [
                    (b, getattr(mod, b)) for b in ("running_mean", "running_var") if getattr(mod, b, None) is not None]:
                new = p.data
                if pname == "weight" and kind == "conv_transpose":
                    new = new.index_select(0, i) if i is not None else new
                    new = new.index_select(1, o) if o is not None else new
                elif pname == "weight" and kind in ("conv", "linear"):
                    new = new.index_select(0, o) if o is not None else new
                    new = new.index_select(1, i) if i is not None else new
                elif o is not None and new.dim() >= 1 and new.shape[0] == len(o):
                    new = new.index_select(0, o)
                p.data.copy_(new.clone())
    return {t: o.tolist() for t, o in order.items()}


# ------------------------------------------------------------------------------------------------
# widths at run time, extraction, cost

def _meta(gm: fx.GraphModule) -> dict[str, Any]:
    if not is_supernet(gm):
        raise ConfigError("this GraphModule is not a supernet: run the 'make-supernet' pass first "
                          "(gcompiler.compile(model, 'make-supernet', x))")
    return gm.meta["supernet"]


def check_widths(gm: fx.GraphModule, widths: Mapping[str, int]) -> dict[str, int]:
    """Complete ``widths`` with full widths for the groups not named; :class:`ConfigError` for bad entries."""
    meta = _meta(gm)
    groups: dict[str, int] = meta["groups"]
    out = dict(groups)
    for name, k in widths.items():
        if name not in groups:
            if name in meta["fixed"]:
                raise ConfigError(f"supernet group {name!r} has a fixed width: {meta['fixed'][name]}")
            raise ConfigError(f"supernet has no group {name!r}; its groups: {', '.join(groups) or '(none)'}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= groups[name]:
            raise ConfigError(f"supernet group {name!r}: width {k!r} is not an integer in [1, {groups[name]}]")
        out[name] = int(k)
    return out


def apply_widths(gm: fx.GraphModule, widths: Mapping[str, int]) -> dict[str, int]:
    """Select the sub-network of ``widths`` (``{group: units}``, others full) in place; returns the full config."""
    meta = _meta(gm)
    full = check_widths(gm, widths)
    plan: SupernetPlan = meta["plan"]
    kept = plan.kept(full)
    for name, (target, inp, kind) in plan.modules.items():
        mod = gm.get_submodule(target)
        out_sl = kept.get(name)
        in_sl = kept.get(inp) if inp is not None else None
        if kind == "norm":
            in_sl = out_sl
        mod.set_slices(out_sl, in_sl)
    meta["config"] = full
    return full


def extract_widths(gm: fx.GraphModule, widths: Mapping[str, int] | None = None) -> fx.GraphModule:
    """A plain slim GraphModule of the sub-network at ``widths`` (default: the active config).

    The supernet is left as it was (its active config is restored). The result has fresh copies of the
    sliced weights, no super modules and no ``meta["supernet"]``; ``meta["subnet_widths"]`` records the
    widths. Its shapes are propagated at the supernet's recorded input shapes.
    """
    import copy

    from ..fx.trace import propagate_shapes
    from ..fx.utils import random_inputs

    meta = _meta(gm)
    before = dict(meta["config"])
    full = apply_widths(gm, before if widths is None else widths)
    try:
        plan: SupernetPlan = meta["plan"]
        replacements = {target: _plain_copy(gm.get_submodule(target)) for target, _, _ in plan.modules.values()}
        saved_meta = gm.meta
        gm.meta = {}
        try:
            new = copy.deepcopy(gm)
        finally:
            gm.meta = saved_meta
        for target, mod in replacements.items():
            replace_module(new, target, mod)
        new.meta = {k: copy.deepcopy(v) for k, v in saved_meta.items() if k not in ("supernet", "pass_log")}
        new.meta["subnet_widths"] = dict(full)
        new.recompile()
        if "input_shapes" in saved_meta:
            propagate_shapes(new, *random_inputs(gm))
    finally:
        apply_widths(gm, before)
    return new


def subnet_cost(gm: fx.GraphModule, widths: Mapping[str, int] | None = None) -> dict[str, int]:
    """``{"macs", "params"}`` of the sub-network at ``widths`` (default: active), from the plan, exactly.

    MACs: every super module's full-width count scaled to its active output and input widths (the
    spatial sizes do not depend on the widths); the other nodes keep their count. Params: the sliced
    parameter counts of the super modules plus every other parameter.
    """
    meta = _meta(gm)
    plan: SupernetPlan = meta["plan"]
    full = check_widths(gm, meta["config"] if widths is None else widths)
    kept = plan.kept(full)
    macs = 0
    super_nodes = set(plan.modules)
    for node, m in plan.macs_rows.items():
        if node not in super_nodes:
            macs += m
    params = 0
    seen: set[str] = set()
    for name, (target, inp, kind) in plan.modules.items():
        mod = gm.get_submodule(target)
        o = kept.get(name)
        i = kept.get(inp) if inp is not None else None
        if kind == "norm":
            i = o
        full_macs = plan.macs_rows.get(name, 0)
        if kind in ("conv", "conv_transpose", "linear"):
            fo = mod.out_channels if kind != "linear" else mod.out_features
            fi = mod.in_channels if kind != "linear" else mod.in_features
            if full_macs:
                macs += full_macs // (fo * fi) * _count(o, fo) * _count(i, fi)
        elif kind == "depthwise":
            if full_macs:
                macs += full_macs // mod.out_channels * _count(o, mod.out_channels)
        if target in seen:
            continue
        seen.add(target)
        for pname, p in mod.named_parameters(recurse=False):
            n = p.numel()
            if pname == "weight" and kind in ("conv", "linear"):
                n = n // (p.shape[0] * p.shape[1]) * _count(o, p.shape[0]) * _count(i, p.shape[1])
            elif pname == "weight" and kind == "conv_transpose":
                n = n // (p.shape[0] * p.shape[1]) * _count(i, p.shape[0]) * _count(o, p.shape[1])
            elif pname == "weight" and kind == "depthwise":
                n = n // p.shape[0] * _count(o, p.shape[0])
            elif p.dim() == 1:  # bias and norm / PReLU vectors follow the output channels
                n = _count(o, p.shape[0])
            params += n
    super_ids = {id(p) for t in seen for p in gm.get_submodule(t).parameters(recurse=False)}
    params += sum(p.numel() for p in {id(p): p for p in gm.parameters()}.values() if id(p) not in super_ids)
    return {"macs": int(macs), "params": int(params)}
