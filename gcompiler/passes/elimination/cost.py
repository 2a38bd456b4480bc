"""The one cost model (public as ``gcompiler.estimate``, module ``gcompiler.cost``): what the network ``eliminate-dead-channels`` would build costs, without building it.

``estimate(gm, masks=..., widths=...)`` returns an :class:`Estimate` (``.macs``, ``.params``,
``.size_bytes(bits)``, per-node ``.rows``) of the network that elimination would produce from a mask
setting or a per-group width choice, by the profiler's conventions (:mod:`gcompiler.profiler`), exactly:
carriers, ``round_to``, equal removal in grouped convs, folded biases, collapsed residual branches and
folded masks are decided by the same code as the pass (:func:`gcompiler.passes.elimination.plan.decide`).

Speed: the proofs of each group (which units would be fixed, their maps at each consumer) are computed once
per graph version for two settings of its mask: every unit dead, and every unit at its current value
(1 where the current value is 0). Each unit's facts depend on its own mask entry only (every proof rule is
channel-wise), so a call only selects, per unit, one of the two and runs the decisions and the arithmetic.
The structure is cached in ``gm.meta["cost_model"]`` keyed by the graph's code and the versions of its
non-mask parameters and buffers (editing weights in place, e.g. zeroing a filter, invalidates it).

Mask settings: ``masks[g][u] == 0`` kills unit ``u`` of group ``g``; a non-zero entry keeps the unit at
its current mask value (1 where that is 0). Only zero / non-zero matters. ``widths[g] = k`` keeps the first
``k`` units of group ``g`` (the mask setting that zeroes the others; elimination rounds ``k`` up to
``round_to``). Groups not named keep their current masks. Group names are those of
``gcompiler.channel_groups(gm)`` / ``gcompiler.masks(gm)``; mask module names are accepted too.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ...errors import PassError
from ...fx.utils import node_shape
from ...profiler import NodeCost, profile

__all__ = ["Estimate", "estimate"]

_CONV = nn.modules.conv._ConvNd
_CONVT = nn.modules.conv._ConvTransposeNd


@dataclasses.dataclass
class Estimate:
    """MACs and parameters of the network elimination would build; per-node rows like a Profile's."""

    macs: int
    params: int
    _rows: Any  # a list of (node, op, MACs, params) or a function making it
    removed: dict[str, int]  # group -> removed units

    def size_bytes(self, bits: int | None = 32) -> float:
        """Model size in bytes at ``bits`` per parameter (``None``: 32, the float graph being priced)."""
        return self.params * (32 if bits is None else bits) / 8

    def size_mib(self, bits: int | None = 32) -> float:
        return self.size_bytes(bits) / 2**20

    @property
    def rows(self) -> list[NodeCost]:
        """One row per node the built network keeps (node, op, MACs, params)."""
        if callable(self._rows):
            self._rows = self._rows()
        return [NodeCost(n, op, None, m, p) for n, op, m, p in self._rows]

    def __repr__(self) -> str:
        return f"Estimate(macs={self.macs:,}, params={self.params:,})"


class _Cache:
    """Holder of the per-graph structure in ``gm.meta``; copies of the graph start without it."""

    def __init__(self) -> None:
        self.key: Any = None
        self.static: _Static | None = None
        self.modules: list = []
        self.tensors: list[torch.Tensor] = []

    def __deepcopy__(self, memo: dict) -> "_Cache":
        return _Cache()

    def __copy__(self) -> "_Cache":
        return _Cache()


class _Mixed:
    """A group's analysis under a mask setting: each unit from the all-dead or the live analysis."""

    def __init__(self, dead_a, live_a, dead: np.ndarray) -> None:
        self.group = live_a.group
        self.skipped = live_a.skipped
        self._a = (live_a, dead_a)
        self._dead = dead
        self.cand = np.where(dead, dead_a.cand, live_a.cand)
        self.needs = np.where(dead, dead_a.needs, live_a.needs)

    def view(self, u: int):
        return self._a[int(self._dead[u])].views[u]

    def proof(self, u: int) -> str:
        return self._a[int(self._dead[u])].proofs.get(u, "fixed")


class _Static:
    """Everything about one graph version that does not depend on the mask setting."""

    def __init__(self, gm: fx.GraphModule) -> None:
        from .plan import Context, analyse_group, prunable_groups
        from ..masks import ChannelMask

        self.gm = gm
        self.ctx = Context(gm)
        self.groups = {g.name: g for g in prunable_groups(gm)}
        record = (gm.meta.get("masks") or {}).get("groups", {})
        self.record = {n: e for n, e in record.items() if n in self.groups}
        self.module_to_group = {m: n for n, e in self.record.items() for m in e["modules"]}
        self.mask_params: dict[str, torch.Tensor] = {}
        for n, e in self.record.items():
            self.mask_params[n] = getattr(gm.get_submodule(e["modules"][0]), e["param"])
        self._analyse = analyse_group
        self.live = {n: analyse_group(self.ctx, g, self._overrides(n, dead=False)) for n, g in self.groups.items()}
        self._dead: dict[str, Any] = {}
        self.collapse_cache: dict[Any, Any] = {}
        self.reach: dict[str, np.ndarray] = {}
        self.dead_after_cache: dict[Any, set[str]] = {}
        nodes = self.ctx.nodes
        # removed channels of a tensor = sum over its groups of (units removed x channels per unit)
        self.tensor_groups: dict[str, list[tuple[str, int]]] = {}
        for n, g in self.groups.items():
            for t, rows in g.index.items():
                self.tensor_groups.setdefault(t, []).append((n, len(rows[0]) if rows else 0))
        self.group_tensors = {n: [(t, len(rows[0]) if rows else 0) for t, rows in g.index.items()]
                              for n, g in self.groups.items()}
        self.feeders = {c: [n for n, g in self.groups.items() if c in g.consumers]
                        for g in self.groups.values() for c in g.consumers}
        self.static_dead = _fx_dead_code(gm)  # what the pass's dead-code elimination drops anyway
        base = {r.node: r for r in profile(_without(gm, self.static_dead)).rows}
        self.entries: list[tuple] = []
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            r = base.get(node.name)
            macs, params, op = (r.macs, r.params, r.op) if r is not None else (0, 0, node.op)
            x = node.args[0].name if node.args and isinstance(node.args[0], fx.Node) else None
            if node.op != "call_module":
                self.entries.append(("fixed", node.name, op, macs, params))
                continue
            mod = gm.get_submodule(str(node.target))
            shape = node_shape(node)
            if isinstance(mod, ChannelMask):
                src = node.args[0]
                prev = gm.get_submodule(str(src.target)) if src.op == "call_module" else None
                from ..masks import _is_channel_norm
                if len(src.users) == 1 and isinstance(prev, (_CONV, nn.Linear)):
                    fold = "weights"
                elif len(src.users) == 1 and prev is not None and _is_channel_norm(prev):
                    fold = "norm_affine" if prev.weight is None else "norm"
                else:
                    fold = "stays"
                group = self.module_to_group.get(str(node.target))
                self.entries.append(("mask", node.name, op, x, fold, mod, group))
                continue
            touchable = x in self.tensor_groups or node.name in self.tensor_groups
            if isinstance(mod, (_CONV, nn.Linear)) and touchable and shape is not None:
                lin = isinstance(mod, nn.Linear)
                c_in = mod.in_features if lin else mod.in_channels
                c_out = mod.out_features if lin else mod.out_channels
                per = math.prod(shape) // max(shape[1], 1)
                k = 1 if lin else math.prod(mod.kernel_size)
                groups = 1 if lin else mod.groups
                dw = (not lin) and groups == c_in and groups > 1
                self.entries.append(("conv", node.name, op, x, c_in, c_out, per, k, groups, dw,
                                     isinstance(mod, _CONVT), mod.bias is not None, macs, params))
                continue
            if touchable and node.name in self.tensor_groups:
                from ..masks import ChannelBias

                if isinstance(mod, nn.PReLU):
                    kind = "prelu" if mod.num_parameters > 1 else "prelu1"
                elif isinstance(mod, ChannelBias):
                    kind = "bias"
                else:
                    kind = sum(1 for nm in ("weight", "bias") if isinstance(getattr(mod, nm, None), nn.Parameter)
                               and getattr(mod, nm).dim() == 1)
                self.entries.append(("member", node.name, op, x, kind, shape[1], macs, params))
                continue
            self.entries.append(("fixed", node.name, op, macs, params))
        self.widths = {n.name: node_shape(n)[1] for n in gm.graph.nodes
                       if node_shape(n) is not None and len(node_shape(n)) >= 2}
        self.no_bias = {e[1] for e in self.entries if e[0] == "conv" and not e[11]}
        self.entries = [e for e in self.entries if e[1] not in self.static_dead]
        self.var_entries = [e for e in self.entries if e[0] != "fixed"]
        self.fixed_cost = {e[1]: e[2:] for e in self.entries if e[0] == "fixed"}
        self.fixed_macs = sum(e[3] for e in self.entries if e[0] == "fixed")
        self.fixed_params = sum(e[4] for e in self.entries if e[0] == "fixed")
        self.live_off: dict[str, tuple[int, np.ndarray]] = {}
        self.nodes = nodes

    def _overrides(self, name: str, *, dead: bool) -> dict[str, torch.Tensor] | None:
        e = self.record.get(name)
        if e is None:
            return None
        cur = self.mask_params[name].detach()
        value = torch.zeros_like(cur) if dead else torch.where(cur == 0, torch.ones_like(cur), cur)
        return {m: value for m in e["modules"]}

    def setting(self, dead: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Mask overrides of a setting: 0 where killed, the live value elsewhere."""
        out: dict[str, torch.Tensor] = {}
        for name, d in dead.items():
            if not d.any() or name not in self.record:
                continue
            live = self._overrides(name, dead=False)
            for m, v in live.items():
                out[m] = torch.where(torch.from_numpy(d), torch.zeros_like(v), v)
        return out

    def dead_analysis(self, name: str):
        a = self._dead.get(name)
        if a is None:
            a = self._analyse(self.ctx, self.groups[name], self._overrides(name, dead=True))
            self._dead[name] = a
        return a


def _module_list(gm: fx.GraphModule) -> list[tuple[dict, str, Any]]:
    """(container dict, key, object) for every submodule, parameter and buffer of ``gm``."""
    out: list[tuple[dict, str, Any]] = []
    for _, mod in gm.named_modules():
        out.extend((mod._modules, k, v) for k, v in mod._modules.items() if v is not None)
        out.extend((mod._parameters, k, v) for k, v in mod._parameters.items() if v is not None)
        out.extend((mod._buffers, k, v) for k, v in mod._buffers.items() if v is not None)
    return out


def _version_key(gm: fx.GraphModule, entries: list[tuple[dict, str, Any]], tensors: list[torch.Tensor]) -> tuple:
    """Graph code, mask record, and the versions of every non-mask parameter and buffer; None when a
    submodule, parameter or buffer was replaced (the structure is then stale)."""
    for d, k, v in entries:
        if d.get(k) is not v:
            return ("stale",)
    return (id(gm.graph), gm.code, tuple((gm.meta.get("masks") or {}).get("groups", {})),
            tuple([t._version for t in tensors]))


def _static(gm: fx.GraphModule) -> _Static:
    cache = gm.meta.get("cost_model")
    if not isinstance(cache, _Cache):
        cache = _Cache()
        gm.meta["cost_model"] = cache
    if cache.static is not None:
        key = _version_key(gm, cache.modules, cache.tensors)
        if key == cache.key:
            return cache.static
    cache.static = _Static(gm)
    cache.modules = _module_list(gm)
    mask_ids = {id(p) for p in cache.static.mask_params.values()}
    cache.tensors = [v for _, _, v in cache.modules if isinstance(v, torch.Tensor) and id(v) not in mask_ids]
    cache.key = _version_key(gm, cache.modules, cache.tensors)
    return cache.static


def unprunable_groups(gm: fx.GraphModule) -> dict[str, str]:
    """Masked groups whose surgery ``eliminate-dead-channels`` refuses, with the reason (shared weights, a
    layer that is not torch's own such as a fake-quant conv, ...)."""
    st = _static(gm)
    return {n: st.live[n].skipped for n in st.record if st.live[n].refused}


def _dead_units(st: _Static, masks: Mapping[str, Any] | None, widths: Mapping[str, int] | None
                ) -> dict[str, np.ndarray]:
    dead: dict[str, np.ndarray] = {}
    given = set(widths or ()) | {k if k in st.groups else st.module_to_group.get(k) for k in (masks or ())}
    for name, p in st.mask_params.items():
        if name not in given:
            dead[name] = (p.detach() == 0).cpu().numpy()
    for key, m in (masks or {}).items():
        name = key if key in st.groups else st.module_to_group.get(key)
        if name is None or name not in st.record:
            raise PassError(f"estimate: '{key}' is not a masked channel group (nor a mask module); masked "
                            f"groups: {', '.join(st.record) or '(none: run insert-masks)'}")
        arr = (torch.as_tensor(m).detach() == 0).cpu().numpy().reshape(-1)
        if arr.size != st.groups[name].channels:
            raise PassError(f"estimate: mask for group '{name}' has {arr.size} entries, the group has "
                            f"{st.groups[name].channels} units")
        dead[name] = arr
    for name, k in (widths or {}).items():
        if name not in st.record:
            raise PassError(f"estimate: widths names '{name}', which is not a masked channel group; masked "
                            f"groups: {', '.join(st.record) or '(none: run insert-masks)'}")
        n = st.groups[name].channels
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
            raise PassError(f"estimate: widths['{name}'] must be an int in [0, {n}], got {k!r}")
        arr = np.zeros(n, dtype=bool)
        arr[int(k):] = True
        dead[name] = arr
    return dead


def estimate(gm: fx.GraphModule, *, masks: Mapping[str, Any] | None = None,
             widths: Mapping[str, int] | None = None, round_to: int | None = None) -> Estimate:
    """Exact MACs / params of the network ``eliminate-dead-channels`` would build (module docstring).

    Args:
        gm: a traced, shape-propagated graph (usually after ``insert-masks``); it is not modified
            (apart from the cache in ``gm.meta["cost_model"]``).
        masks: ``{group or mask module name: tensor}``; zero entries kill units.
        widths: ``{group name: kept units}``.
        round_to: as the pass's option (default: the value ``insert-masks`` recorded, else 1).
    """
    from .plan import decide, default_round_to, try_collapse_with

    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"estimate expects a GraphModule (gcompiler.trace / compile output), got {type(gm).__name__}")
    rt = default_round_to(gm, round_to)
    st = _static(gm)
    dead = _dead_units(st, masks, widths)
    analyses: dict[str, Any] = {}
    for name, live in st.live.items():
        d = dead.get(name)
        if d is None or not d.any():
            analyses[name] = live
        elif live.refused:
            raise PassError(f"estimate: group '{name}' has {int(d.sum())} dead unit(s) but eliminate-dead-channels "
                            f"leaves the group alone: {live.skipped} (e.g. run strip-fake-quant on a fake-quant "
                            f"graph first)")
        else:
            analyses[name] = _Mixed(st.dead_analysis(name), live, d)

    def collapse(node: fx.Node, removed: dict[str, list[int]]):
        feeders = st.feeders.get(node.name, [])
        key = (node.name, tuple((n, tuple(removed.get(n, ()))) for n in feeders),
               tuple((n, d.tobytes()) for n, d in sorted(dead.items()) if d.any()))
        if key not in st.collapse_cache:
            st.collapse_cache[key] = try_collapse_with(st.ctx, node, analyses, removed, st.setting(dead))
        return st.collapse_cache[key]

    dec = decide(st.ctx, analyses, rt, explain=False, collapse=collapse)
    return _price(st, analyses, dec, dead)


def _price(st: _Static, analyses: dict[str, Any], dec, dead: dict[str, np.ndarray]) -> Estimate:
    removed = dec.removed
    counts = {n: len(r) for n, r in removed.items()}
    rm: dict[str, int] = {}
    for n, c in counts.items():
        if c:
            for t, b in st.group_tensors[n]:
                rm[t] = rm.get(t, 0) + c * b
    gone: set[str] = set()
    for col in dec.collapses.values():
        gone.update(col.chain)
    empty = frozenset(t for t, s in rm.items() if s >= st.widths.get(t, 1 << 62))
    if empty or dec.collapses:
        key = (empty, tuple(sorted((c.add, c.other) for c in dec.collapses.values())))
        dead_nodes = st.dead_after_cache.get(key)
        if dead_nodes is None:
            dead_nodes = _dead_after(st, rm, dec.collapses)
            st.dead_after_cache[key] = dead_nodes
        gone |= dead_nodes
    else:
        dead_nodes = set()
    biased = _fold_biases(st, analyses, removed, gone) if st.no_bias else set()
    var: dict[str, tuple[int, int]] = {}
    macs, params = st.fixed_macs, st.fixed_params
    for name in gone:
        f = st.fixed_cost.get(name)
        if f is not None:
            macs -= f[1]
            params -= f[2]
    widths = st.widths
    off_cache: dict[str, Any] = {}
    for e in st.var_entries:
        name = e[1]
        if name in gone:
            continue
        kind = e[0]
        if kind == "conv":
            _, _, op, x, c_in0, c_out0, per, k, groups, dw, transposed, has_bias, m0, p0 = e
            r_in, r_out = rm.get(x, 0), rm.get(name, 0)
            if not r_in and not r_out and name not in biased:
                m, p = m0, p0
            else:
                c_in, c_out = c_in0 - r_in, c_out0 - r_out
                if c_out == 0:
                    continue
                g = c_in if dw else groups
                m = per * c_out * (c_in // max(g, 1)) * k
                p = (c_in * (c_out // max(g, 1)) if transposed else c_out * (c_in // max(g, 1))) * k
                if has_bias or name in biased:
                    p += c_out
        elif kind == "mask":
            fold = e[4]
            m = 0
            if fold in ("weights", "norm") or not _mask_survives(st, e, removed, dead, off_cache):
                p = 0
            elif fold == "norm_affine":
                p = 2 * (widths[name] - rm.get(name, 0))
            else:
                p = widths[name] - rm.get(name, 0)
        else:  # member
            _, _, op, x, pk, c0, m0, p0 = e
            r = rm.get(name, 0)
            if not r and not rm.get(x, 0):
                m, p = m0, p0
            else:
                c = c0 - r
                m = 0
                if pk == "prelu" or pk == "bias":
                    p = c
                elif pk == "prelu1":
                    p = 1
                else:
                    p = pk * c
        macs += m
        params += p
        var[name] = (m, p)
    extra: list[tuple[str, str, int, int]] = []
    for col in dec.collapses.values():
        if col.bias is not None and col.add not in dead_nodes:
            w = widths[col.add] - rm.get(col.add, 0)
            params += w
            extra.append((f"bias_{col.add}", "ChannelBias", 0, w))

    def rows() -> list[tuple[str, str, int, int]]:
        out = []
        for e in st.entries:
            name = e[1]
            if name in gone:
                continue
            if e[0] == "fixed":
                out.append((name, e[2], e[3], e[4]))
            elif name in var:
                out.append((name, e[2]) + var[name])
        return out + extra

    return Estimate(int(macs), int(params), rows, counts)


def _mask_survives(st: _Static, e: tuple, removed: dict[str, list[int]], dead: dict[str, np.ndarray],
                   off_cache: dict[str, np.ndarray]) -> bool:
    """Does a ChannelMask stay after elimination (some kept unit reaching it has a scale other than 1)?

    The setting's scale is 0 where a unit is killed and the current value elsewhere (1 where that is 0)."""
    mod, group = e[5], e[6]
    key = group if group is not None else e[1]
    off = off_cache.get(key)
    if off is False:
        return False
    if off is None:
        s = mod.channel_scale()
        cached = st.live_off.get(key)
        if cached is None or cached[0] != s._version:
            sd = s.detach()
            cached = (s._version, ((sd != 1) & (sd != 0)).cpu().numpy())
            st.live_off[key] = cached
        off = cached[1]
        d = dead.get(group) if group is not None else None
        if d is not None:
            off = off | d
        if group is not None and removed.get(group):
            off = off.copy()
            off[removed[group]] = False
        if not off.any():
            off_cache[key] = False
            return False
        off_cache[key] = off
    reach = st.reach.get(e[1])
    if reach is None:
        idx = mod.index.cpu().numpy()
        reach = np.zeros(off.size, dtype=bool)
        reach[idx[idx >= 0]] = True
        st.reach[e[1]] = reach
    return bool((off & reach).any())


def _fold_biases(st: _Static, analyses: dict[str, Any], removed: dict[str, list[int]], gone: set[str]) -> set[str]:
    """Consumers without a bias that get one: some removed unit folds a non-zero constant into them."""
    out: set[str] = set()
    for name, units in removed.items():
        if not units:
            continue
        ga = analyses[name]
        for c in ga.group.consumers:
            if c in out or c in gone or c not in st.no_bias:
                continue
            for u in units:
                v = ga.view(u).get(c)
                if v is not None and v.kind == "fold" and any(float(mp.mean()) != 0.0 for mp in v.maps):
                    out.add(c)
                    break
    return out


def _without(gm: fx.GraphModule, dead: set[str]) -> fx.GraphModule:
    """A view of ``gm`` (same modules) without the nodes in ``dead``, so that parameters read only by the
    remaining nodes (a get_attr of a dead module's weight) are counted where the profile will count them."""
    if not dead:
        return gm
    import copy as _copy

    graph = _copy.deepcopy(gm.graph)
    for n in reversed(list(graph.nodes)):
        if n.name in dead:
            graph.erase_node(n)
    view = fx.GraphModule(gm, graph)
    view.meta.update({k: v for k, v in gm.meta.items() if k in ("input_shapes", "input_specs")})
    return view


def _fx_dead_code(gm: fx.GraphModule) -> set[str]:
    """Nodes torch.fx's dead-code elimination removes (unused results of pure ops)."""
    dead: set[str] = set()
    for n in reversed(list(gm.graph.nodes)):
        if n.op in ("placeholder", "output"):
            continue
        if all(u.name in dead for u in n.users) and not n.is_impure():
            dead.add(n.name)
    return dead


def _dead_after(st: _Static, rm: dict[str, int], collapses) -> set[str]:
    """Nodes the built network no longer computes: collapsed branches and everything that only fed a
    group removed entirely (its tensors leave their concats, so whatever produced them is dead code)."""
    skip_add = {col.add: col.other for col in collapses.values()}

    def empty(n: fx.Node) -> bool:
        s = node_shape(n)
        return s is not None and len(s) >= 2 and rm.get(n.name, 0) >= s[1]

    alive: set[str] = set()
    stack = [n for n in st.gm.graph.nodes if n.op == "output"]
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
    return {n.name for n in st.gm.graph.nodes if n.name not in alive and n.op != "placeholder"}
