"""The solver of the channel analysis: channels as union-find elements, spaces per tensor, pins with reasons,
shared-module ties, and the final grouping into :class:`~gcompiler.analysis.groups.ChannelGroup` s.
Op rules (what each op joins) live in :mod:`gcompiler.analysis.op_rules`."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterable

import torch
import torch.fx

from ..errors import TraceError
from .groups import ChannelGroup, ConsumerSlice, EqualRemoval
from .rules import _flatten_nodes, _is_tensor_meta, _target_name


# --------------------------------------------------------------------------------------------------
# Union-find over channel ids
# --------------------------------------------------------------------------------------------------

class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


@dataclasses.dataclass
class _Space:
    node: str
    base: int
    size: int

    def id(self, c: int) -> int:
        return self.base + c


class _Solver:
    """Channel spaces and their unions over one graph; subclasses add ``visit_<op>`` handlers."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.spaces: dict[str, _Space] = {}
        self.tuple_spaces: dict[str, list[_Space | None]] = {}
        self.order: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self.producers: set[str] = set()
        self.pins: dict[str, list[str]] = defaultdict(list)
        self.consumers: list[tuple[str, str, str, int]] = []  # (consumer, input tensor, kind, groups)
        self.equal_removal: list[EqualRemoval] = []
        self.shape_src: dict[str, torch.fx.Node] = {}  # node holding x.shape / x.size() -> x
        self.nodes = {n.name: n for n in gm.graph.nodes}

    # ---------------------------------------------------------------- space helpers
    def meta(self, node: torch.fx.Node) -> Any:
        return node.meta.get("tensor_meta")

    def shape(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        m = self.meta(node)
        return tuple(m.shape) if _is_tensor_meta(m) else None

    def has_channels(self, node: torch.fx.Node) -> bool:
        s = self.shape(node)
        return s is not None and len(s) >= 2

    def space(self, node: torch.fx.Node) -> _Space | None:
        """The channel space of ``node``'s output, created on first use (get_attr tensors lazily)."""
        sp = self.spaces.get(node.name)
        if sp is None and node.op == "get_attr" and self.has_channels(node):
            sp = self.open(node, "constant")
            self.pin(node, f"constant tensor '{node.target}' (get_attr) holds fixed channels")
        return sp

    def open(self, node: torch.fx.Node, kind: str, size: int | None = None) -> _Space:
        if size is None:
            size = self.shape(node)[1]
        sp = _Space(node.name, self.uf.make(size), size)
        self.spaces[node.name] = sp
        self.kinds.setdefault(node.name, kind)
        return sp

    def open_if_tensor(self, node: torch.fx.Node, kind: str) -> _Space | None:
        return self.open(node, kind) if self.has_channels(node) else None

    def pin(self, node: torch.fx.Node | str, reason: str) -> None:
        name = node if isinstance(node, str) else node.name
        if reason not in self.pins[name]:
            self.pins[name].append(reason)

    def union_map(self, a: _Space, b: _Space, pairs: Iterable[tuple[int, int]]) -> None:
        for ca, cb in pairs:
            self.uf.union(a.id(ca), b.id(cb))

    def same(self, out: _Space, src: _Space) -> None:
        self.union_map(out, src, ((c, c) for c in range(out.size)))

    def data_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """Tensor-valued node arguments that carry channels (ndim >= 2)."""
        seen: list[torch.fx.Node] = []
        for a in _flatten_nodes((node.args, node.kwargs)):
            if a not in seen and self.has_channels(a):
                seen.append(a)
        return seen

    def unknown(self, node: torch.fx.Node, why: str | None = None) -> None:
        """Pin everything ``node`` reads and writes: its channel mapping is not known."""
        what = f"{node.op} '{node.name}' ({_target_name(node)})"
        reason = f"{what}: {why}" if why else f"{what} has no known channel mapping"
        for a in self.data_inputs(node):
            sp = self.space(a)
            if sp is not None:
                self.pin(a, reason)
        for a in _flatten_nodes((node.args, node.kwargs)):
            src = self.shape_src.get(a.name)
            if src is not None and self.space(src) is not None:
                self.pin(src, f"{what} uses the shape of '{src.name}' (its channel count)")
        self.kinds[node.name] = "unknown"
        if self.has_channels(node):
            self.open(node, "unknown")
            self.pin(node, reason)
        else:
            m = self.meta(node)
            if isinstance(m, (list, tuple)):
                self.tuple_spaces[node.name] = [None] * len(m)

    def passthrough(self, node: torch.fx.Node, src: torch.fx.Node, kind: str) -> None:
        sp_in = self.space(src) if self.has_channels(src) else None
        if sp_in is None or not self.has_channels(node) or self.shape(node)[1] != sp_in.size:
            self.unknown(node, f"expected a {kind} op keeping the {sp_in.size if sp_in else '?'} channels of "
                               f"'{src.name}' on dim 1, got shape {self.shape(node)}")
            return
        self.same(self.open(node, kind), sp_in)

    def check_ndim(self, node: torch.fx.Node, src: torch.fx.Node, dims: int | None) -> bool:
        """True when ``src`` is a batched (N, C, *spatial) tensor for an op over ``dims`` spatial dims."""
        s = self.shape(src)
        if s is None or len(s) < 2:
            return False
        return dims is None or len(s) == dims + 2

    # ---------------------------------------------------------------- dispatch
    def run(self) -> None:
        graph = self.gm.graph
        if not any(_is_tensor_meta(self.meta(n)) for n in graph.nodes):
            raise TraceError("channel_groups needs shape metadata (node.meta['tensor_meta']) but the graph has "
                             "none; trace with gcompiler.trace(model, example_input) or run "
                             "torch.fx.passes.shape_prop.ShapeProp(gm).propagate(example_input) first")
        for i, node in enumerate(graph.nodes):
            self.order[node.name] = i
            handler = getattr(self, f"visit_{node.op}")
            handler(node)
        self.tie_shared_modules()

    def tie_shared_modules(self) -> None:
        """A module with parameters or buffers called at several places has one set of weights, so its
        call sites must lose the same channels: join their outputs, and their inputs, channel by channel."""
        sites: dict[str, list[torch.fx.Node]] = defaultdict(list)
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                sites[str(node.target)].append(node)
        for target, nodes in sites.items():
            m = self.modules.get(target)
            if len(nodes) < 2 or m is None or \
                    (next(m.parameters(), None) is None and next(m.buffers(), None) is None):
                continue
            for role in ("output", "input"):
                spaces = []
                for n in nodes:
                    src = n if role == "output" else (n.args[0] if n.args else None)
                    sp = self.space(src) if isinstance(src, torch.fx.Node) else None
                    spaces.append((src, sp))
                sizes = {sp.size if sp else None for _, sp in spaces}
                if len(sizes) != 1 or None in sizes:
                    for src, sp in spaces:
                        if sp is not None:
                            self.pin(src, f"module '{target}' is called at {len(nodes)} places with different "
                                          f"channel layouts")
                    continue
                first = spaces[0][1]
                for _, sp in spaces[1:]:
                    self.same(first, sp)

    # ---------------------------------------------------------------- grouping
    def groups(self) -> list[ChannelGroup]:
        uf = self.uf
        # unit (union-find root) -> node -> channels
        units: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for name, sp in self.spaces.items():
            for c in range(sp.size):
                units[uf.find(sp.base + c)][name].append(c)
        by_nodes: dict[frozenset[str], list[dict[str, list[int]]]] = defaultdict(list)
        for unit in units.values():
            by_nodes[frozenset(unit)].append(unit)

        order = self.order
        raw = []
        for node_set, members in by_nodes.items():
            nodes = sorted(node_set, key=lambda n: order.get(n, 1 << 30))
            producers = [n for n in nodes if n in self.producers]
            anchor = producers[0] if producers else nodes[0]
            members.sort(key=lambda u: min(u[anchor]))
            reasons: list[str] = []
            uniform = all(len(u[n]) == len(members[0][n]) for u in members for n in nodes)
            if not uniform:
                reasons.append("units of unequal size: a pixel_shuffle block straddles channels of several "
                               "producers (" + ", ".join(nodes) + ")")
            index = {n: tuple(tuple(sorted(u[n])) for u in members) for n in nodes}
            raw.append((nodes, producers, index, reasons))
        raw.sort(key=lambda r: order.get(r[0][0], 0))

        # Which groups own channels of each tensor (to name split producers and detect cross-group constraints).
        owners: dict[str, list[int]] = defaultdict(list)
        for gi, (nodes, _, _, _) in enumerate(raw):
            for n in nodes:
                owners[n].append(gi)

        extra_reasons: dict[int, list[str]] = defaultdict(list)
        constraints: dict[int, list[EqualRemoval]] = defaultdict(list)
        for er in self.equal_removal:
            gis = owners.get(er.tensor, [])
            if len(gis) > 1:
                for gi in gis:
                    extra_reasons[gi].append(
                        f"grouped conv '{er.node}' (groups={er.groups}) needs equal removal per conv group on "
                        f"'{er.tensor}', whose channels belong to several groups")
                continue
            for gi in gis:
                index = raw[gi][2][er.tensor]
                per = self.spaces[er.tensor].size // er.groups
                if any(len({c // per for c in row}) != 1 for row in index):
                    extra_reasons[gi].append(
                        f"grouped conv '{er.node}' (groups={er.groups}): a channel block straddles its conv "
                        f"groups on '{er.tensor}'")
                constraints[gi].append(er)

        groups: list[ChannelGroup] = []
        used_names: set[str] = set()
        for gi, (nodes, producers, index, reasons) in enumerate(raw):
            anchor = producers[0] if producers else nodes[0]
            name = anchor
            if len(owners[anchor]) > 1:
                flat = sorted(c for row in index[anchor] for c in row)
                contiguous = flat == list(range(flat[0], flat[0] + len(flat)))
                name = f"{anchor}[{flat[0]}:{flat[-1] + 1}]" if contiguous else f"{anchor}#{flat[0]}"
            base, k = name, 2
            while name in used_names:
                name, k = f"{base}~{k}", k + 1
            used_names.add(name)

            all_reasons = list(reasons)
            for n in nodes:
                for r in self.pins.get(n, ()):
                    if r not in all_reasons:
                        all_reasons.append(r)
            for r in extra_reasons.get(gi, ()):
                if r not in all_reasons:
                    all_reasons.append(r)
            if not producers and not all_reasons:
                all_reasons.append(f"no producer creates these channels ({nodes[0]})")

            cons: dict[str, ConsumerSlice] = {}
            for cname, inp, kind, g in self.consumers:
                if inp in index:
                    rows = index[inp]
                    flat = [c for row in rows for c in row]
                    start = flat[0] if flat else 0
                    offset = start if flat == list(range(start, start + len(flat))) else None
                    cons[cname] = ConsumerSlice(cname, inp, kind, offset, len(rows[0]) if rows else 0, g,
                                                self.spaces[inp].size)
            kinds = {n: self.kinds.get(n, "unknown") for n in nodes}
            kinds.update({c: cs.kind for c, cs in cons.items()})
            groups.append(ChannelGroup(
                name=name,
                producers=producers,
                consumers=sorted(cons, key=lambda c: order.get(c, 0)),
                members=[n for n in nodes if n not in self.producers],
                channels=len(next(iter(index.values()))) if index else 0,
                prunable=not all_reasons,
                reason="; ".join(all_reasons),
                index=index,
                consumer_slices=cons,
                equal_removal=constraints.get(gi, []),
                kinds=kinds,
            ))
        return groups
