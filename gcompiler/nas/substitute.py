"""``substitute-ops``: replace the blocks of a traced generator with searchable AGD cells.

What it finds (in graph order), each becoming one ``call_module`` node of a :class:`gcompiler.MixedOp`:

* **residual blocks** ``x + f(x)`` (an ``add`` of two tensors of equal shape, at constant resolution) whose
  branch ``f`` reads nothing but ``x`` and constants and is read by nothing but the add; the branch must
  contain a convolution. ``nesting`` picks the level: 1 = blocks that contain no other block (ResNet blocks,
  SRResNet blocks, ESRGAN's residual dense blocks), 2 = blocks of such blocks (ESRGAN's RRDBs), ...;
* **conv-norm-act layers** at constant resolution (``Conv2d`` stride 1, groups 1, ``C_in == C_out``, an
  optional norm, then an activation) that do not read the network input: with ``blocks="layers"``, or
  with ``blocks="auto"`` when the graph has no residual block.

With ``stem_header`` the remaining ``conv -> [norm] -> [activation]`` layers (``Conv2d`` or
``ConvTranspose2d``, groups 1) whose outputs feed only cells or convolutions (through channel-agnostic
ops: ReLU, pads, upsampling ...) become width-only cells (:class:`gcompiler.nas.WidthOp`), named
``stem{i}`` / ``mid{i}`` / ``header{i}`` by position; the op cells are ``cell{i}``.

Widths: ``widths="agd"`` gives each cell the AGD choices {4/12, 6/12, 8/12, 10/12, 1} x its output width,
rounded to a multiple of ``divisor``; ``"full"`` only the full width; or ``|``-separated ratios. A cell
whose output also feeds anything that is neither a cell nor a convolution (a residual add, a pixel
shuffle ...) keeps its full width only (``gm.meta["nas"]["cells"][i]["pinned"]`` says why), so that
``derive-architecture`` can narrow every consumer.

Candidates: ``|``-separated names among ``conv1x1``, ``conv3x3``, ``residual``, ``dwsblock`` (AGD) and
``original`` (the replaced block itself, with its weights). Normalization follows the teacher
(``norm="auto"``: InstanceNorm without affine when the block has an InstanceNorm, else none, AGD's SR
setting); padding likewise (``"auto"``: reflect when the block pads by reflection).

Contract: **changes-semantics** (the architecture changes; no numeric bound, the verifier checks lint and
shapes), except when the *first* candidate is ``original``: then the contract is **exact**, because a fresh
cell's argmax choice (ties go to the first operator and the widest width) is the original block at full width
with the original weights, and in eval mode a cell runs only its argmax choice, so the graph computes exactly
what it computed before (checked by the verifier and tested). A single candidate and
``widths=full`` is a plain operator substitution (``candidates=dwsblock,widths=full,stem_header=false``
then ``derive-architecture`` turns every residual block into a freshly initialised inverted residual).
``gm.meta["nas"]`` records every cell (name, kind, replaced modules, widths, candidates, pin reason) and
the options.
"""
from __future__ import annotations

import fnmatch
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import PassError
from ..fx.trace import propagate_shapes
from ..fx.utils import input_specs, node_shape
from ..passes.registry import Contract, register_pass
from .derive import is_passthrough
from .mixed import MixedOp, WidthOp
from .ops import AGD_RATIOS, OPERATORS, agd_widths

_ADDS = (operator.add, torch.add)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.InstanceNorm2d, nn.BatchNorm2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.ELU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardtanh)


@dataclass
class _Unit:
    kind: str  # "block" | "layer" | "width"
    nodes: list[fx.Node]  # every node replaced, in graph order; nodes[-1] is the output
    x: fx.Node  # the input
    modules: list[str] = field(default_factory=list)
    name: str = ""
    widths: tuple[int, ...] = ()
    pinned: str | None = None


def _mod(gm: fx.GraphModule, n: Any) -> nn.Module | None:
    if isinstance(n, fx.Node) and n.op == "call_module":
        return gm.get_submodule(str(n.target))
    return None


def _inputs(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.all_input_nodes]


def _is_add(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target == "add")


def _residual_branch(gm: fx.GraphModule, add: fx.Node, x: fx.Node, f: fx.Node) -> list[fx.Node] | None:
    """Nodes of the branch ``f(x)`` (single entry ``x``, single exit ``f`` read only by ``add``), or None."""
    if f is x or list(f.users) != [add]:
        return None
    branch: set[fx.Node] = set()
    stack = [f]
    while stack:
        n = stack.pop()
        if n in branch:
            continue
        if n.op in ("placeholder", "output"):
            return None
        branch.add(n)
        if len(branch) > 2000:
            return None
        for i in _inputs(n):
            if i is x:
                continue
            if i.op == "placeholder":
                return None
            stack.append(i)
    for n in branch:
        if n is not f and any(u not in branch for u in n.users):
            return None
    if not any(isinstance(_mod(gm, n), _CONVS) for n in branch):
        return None
    return [n for n in gm.graph.nodes if n in branch]


def _find_blocks(gm: fx.GraphModule, nesting: int) -> list[_Unit]:
    found: list[_Unit] = []
    for add in gm.graph.nodes:
        if not _is_add(add) or len(add.args) < 2:
            continue
        a, b = add.args[0], add.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        sa, sb, so = node_shape(a), node_shape(b), node_shape(add)
        if sa is None or sa != sb or sa != so or len(sa) != 4:
            continue
        for x, f in ((a, b), (b, a)):
            branch = _residual_branch(gm, add, x, f)
            if branch is not None:
                found.append(_Unit("block", branch + [add], x))
                break
    # nesting depth: 1 + the deepest block inside
    node_sets = [set(u.nodes) for u in found]
    depth = [0] * len(found)
    order = sorted(range(len(found)), key=lambda i: len(node_sets[i]))
    for i in order:
        inner = [j for j in range(len(found)) if j != i and found[j].nodes[-1] in node_sets[i]]
        depth[i] = 1 + max((depth[j] for j in inner), default=0)
    picked: list[_Unit] = []
    used: set[fx.Node] = set()
    for i, u in enumerate(found):
        if depth[i] == nesting and not (node_sets[i] & used):
            picked.append(u)
            used |= node_sets[i]
    return picked


def _chain(gm: fx.GraphModule, conv: fx.Node, *, need_act: bool) -> list[fx.Node] | None:
    """``conv -> [norm] -> [act]`` with single users along the chain (the nodes), or None."""
    nodes = [conv]
    cur = conv
    for kinds in (_NORMS, _ACTS):
        users = list(cur.users)
        if len(users) != 1:
            break
        nxt = users[0]
        m = _mod(gm, nxt)
        if isinstance(m, kinds) and nxt.args and nxt.args[0] is cur:
            if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                break
            nodes.append(nxt)
            cur = nxt
    if need_act and not isinstance(_mod(gm, nodes[-1]), _ACTS):
        return None
    return nodes


def _norm_ok(m: nn.Module | None) -> bool:
    if m is None:
        return True
    if isinstance(m, nn.InstanceNorm2d):
        return not m.track_running_stats
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats


def _find_layers(gm: fx.GraphModule, taken: set[fx.Node]) -> list[_Unit]:
    out = []
    for n in gm.graph.nodes:
        m = _mod(gm, n)
        if n in taken or not isinstance(m, nn.Conv2d) or m.groups != 1 or m.in_channels != m.out_channels:
            continue
        x = n.args[0] if n.args else None
        if not isinstance(x, fx.Node) or x.op == "placeholder" or m.stride != (1, 1):
            continue
        if node_shape(x) is None or node_shape(n) is None or node_shape(x)[2:] != node_shape(n)[2:]:
            continue
        chain = _chain(gm, n, need_act=True)
        if chain is None or any(c in taken for c in chain):
            continue
        if len(chain) == 3 and not _norm_ok(_mod(gm, chain[1])):
            continue
        out.append(_Unit("layer", chain, x))
        taken |= set(chain)
    return out


def _find_width_layers(gm: fx.GraphModule, taken: set[fx.Node]) -> list[_Unit]:
    out = []
    for n in gm.graph.nodes:
        m = _mod(gm, n)
        if n in taken or not isinstance(m, _CONVS) or m.groups != 1:
            continue
        x = n.args[0] if n.args else None
        if not isinstance(x, fx.Node) or len(n.args) != 1 or n.kwargs:
            continue
        chain = _chain(gm, n, need_act=False)
        if chain is None or any(c in taken for c in chain):
            continue
        if len(chain) > 1 and isinstance(_mod(gm, chain[1]), _NORMS) and not _norm_ok(_mod(gm, chain[1])):
            chain = [n]
        out.append(_Unit("width", chain, x))
    return out


def _narrow_blocker(gm: fx.GraphModule, out: fx.Node, unit_of: dict[fx.Node, _Unit]) -> str | None:
    """Why the output ``out`` of a unit cannot be narrowed (None when every consumer can follow)."""
    stack = [(out, u) for u in out.users]
    seen: set[tuple[fx.Node, fx.Node]] = set()
    while stack:
        v, u = stack.pop()
        if (v, u) in seen:
            continue
        seen.add((v, u))
        owner = unit_of.get(u)
        if owner is not None and owner.x is v:
            continue  # read by a unit that becomes a cell
        m = _mod(gm, u)
        if isinstance(m, _CONVS) and m.groups == 1 and len(u.all_input_nodes) == 1 and owner is None:
            continue  # a plain conv: derive-architecture slices its input channels
        if owner is None and is_passthrough(gm, u):
            stack.extend((u, w) for w in u.users)
            continue
        if u.op == "output":
            return "it is a network output"
        what = type(m).__name__ if m is not None else getattr(u.target, "__name__", str(u.target))
        return f"it feeds node '{u.name}' ({what}), which is neither a cell nor a convolution"
    return None


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.replace(";", "|").split("|") if p.strip()]


def _widths_for(base: int, spec: str, divisor: int) -> tuple[int, ...]:
    if spec == "agd":
        return agd_widths(base, AGD_RATIOS, divisor)
    if spec == "full":
        return (base,)
    try:
        ratios = tuple(float(r) for r in _split(spec))
    except ValueError:
        raise PassError(f"substitute-ops{{widths={spec}}}: expected 'agd', 'full' or ratios such as "
                        "'0.5|0.75|1'") from None
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise PassError(f"substitute-ops{{widths={spec}}}: ratios must lie in (0, 1]")
    return agd_widths(base, ratios, divisor)


def _block_style(gm: fx.GraphModule, unit: _Unit, norm: str, padding: str) -> tuple[str, str]:
    mods = [_mod(gm, n) for n in unit.nodes]
    if norm == "auto":
        norm = "instance" if any(isinstance(m, nn.InstanceNorm2d) for m in mods) else "none"
    if padding == "auto":
        padding = "reflect" if any(isinstance(m, nn.ReflectionPad2d) for m in mods) or any(
            isinstance(m, nn.Conv2d) and m.padding_mode == "reflect" for m in mods) else "zeros"
    return norm, padding


def _extract(gm: fx.GraphModule, unit: _Unit) -> fx.GraphModule:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {unit.x: g.placeholder("x")}
    members = set(unit.nodes)
    for n in gm.graph.nodes:
        if n in members:
            for i in n.all_input_nodes:
                if i not in env and i.op == "get_attr":
                    env[i] = g.node_copy(i)
            env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[unit.nodes[-1]])
    sub = fx.GraphModule(gm, g)
    import copy

    return copy.deepcopy(sub)


def _contract(options: dict) -> Contract:
    """Exact when the first candidate is ``original`` (the initial argmax choice reproduces each block)."""
    cands = _split(str(options.get("candidates", "")))
    return Contract.exact() if cands and cands[0] == "original" else Contract.changes_semantics()


@register_pass("substitute-ops", contract=_contract)
def substitute_ops(gm: fx.GraphModule, *, candidates: str = "conv1x1|conv3x3|residual|dwsblock",
                   blocks: str = "auto", widths: str = "agd", stem_header: bool = True, nesting: int = 1,
                   select: str = "all", norm: str = "auto", padding: str = "auto",
                   divisor: int = 8) -> fx.GraphModule:
    """Replace residual blocks / conv-norm-act layers with AGD ``MixedOp`` cells (stem / header: width-only).

    Options:
        candidates: operators, ``|``-separated: conv1x1, conv3x3, residual, dwsblock, original.
        blocks: ``auto`` (residual blocks, else layers), ``residual``, ``layers`` or ``residual|layers``.
        widths: ``agd`` ({4,6,8,10,12}/12 of the base width, multiples of ``divisor``), ``full`` or ratios.
        stem_header: give the remaining conv-norm-act layers width-only choices.
        nesting: which residual level becomes a cell (1 = innermost blocks).
        select: glob patterns (``|``-separated) over cell names (``cell0``, ``cell1``, ...) or the replaced
            modules' paths (``model.1*``); ``all`` takes every block found.
        norm: ``auto`` | ``instance`` | ``none``; padding: ``auto`` | ``zeros`` | ``reflect``.
        divisor: widths are multiples of this.
    """
    cands = tuple(_split(candidates))
    bad = [c for c in cands if c not in OPERATORS + ("original",)]
    if not cands or bad or len(set(cands)) != len(cands):
        raise PassError(f"substitute-ops{{candidates={candidates}}}: unknown or repeated operator(s) {bad}; "
                        f"choose among {', '.join(OPERATORS + ('original',))} separated by '|'")
    kinds = set(_split(blocks))
    if not kinds or not kinds <= {"auto", "residual", "layers"} or ("auto" in kinds and len(kinds) > 1):
        raise PassError(f"substitute-ops{{blocks={blocks}}}: use auto, residual, layers or residual|layers")
    if norm not in ("auto", "instance", "none"):
        raise PassError(f"substitute-ops{{norm={norm}}}: use auto, instance or none")
    if padding not in ("auto", "zeros", "reflect"):
        raise PassError(f"substitute-ops{{padding={padding}}}: use auto, zeros or reflect")
    if nesting < 1 or divisor < 1:
        raise PassError("substitute-ops: nesting and divisor must be >= 1")
    if "input_shapes" not in gm.meta:
        raise PassError("substitute-ops needs a traced graph with recorded input shapes (gcompiler.trace)")
    if any(isinstance(m, (MixedOp, WidthOp)) for m in gm.modules()):
        raise PassError("substitute-ops: the graph already has searchable cells (substitute-ops ran before)")

    units: list[_Unit] = []
    if kinds & {"auto", "residual"}:
        units = _find_blocks(gm, nesting)
    taken = {n for u in units for n in u.nodes}
    if "layers" in kinds or ("auto" in kinds and not units):
        units += _find_layers(gm, taken)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    units.sort(key=lambda u: order[u.nodes[-1]])
    for i, u in enumerate(units):
        u.name = f"cell{i}"
        u.modules = [str(n.target) for n in u.nodes if n.op == "call_module"]
    if select.strip() not in ("", "all", "*"):
        pats = _split(select)
        units = [u for u in units if any(fnmatch.fnmatchcase(u.name, p) or
                                         any(fnmatch.fnmatchcase(m, p) for m in u.modules) for p in pats)]
        if not units:
            raise PassError(f"substitute-ops{{select={select}}} matches no block")
    if not units:
        raise PassError("substitute-ops found no substitutable block (residual x + f(x) with equal shapes, or "
                        "conv-norm-act layers at constant resolution); try blocks=layers or another nesting")
    taken = {n for u in units for n in u.nodes}
    wunits = _find_width_layers(gm, taken) if stem_header else []
    for u in wunits:
        u.modules = [str(n.target) for n in u.nodes if n.op == "call_module"]

    all_units = units + wunits
    unit_of = {n: u for u in all_units for n in u.nodes}
    kept_w: list[_Unit] = []
    for u in all_units:
        out = u.nodes[-1]
        base = int(node_shape(out)[1])
        why = _narrow_blocker(gm, out, unit_of)
        if u.kind == "width":
            if why is not None:
                continue  # a stem/header layer that cannot narrow stays as it is
            u.widths = _widths_for(base, widths, divisor)
            if len(u.widths) > 1:
                kept_w.append(u)
            continue
        u.widths = _widths_for(base, widths, divisor) if why is None else (base,)
        u.pinned = None if why is None or len(_widths_for(base, widths, divisor)) == 1 else why
    first, last = order[units[0].nodes[-1]], order[units[-1].nodes[-1]]
    counters = {"stem": 0, "mid": 0, "header": 0}
    for u in kept_w:
        pos = order[u.nodes[0]]
        kind = "stem" if pos < first else "header" if pos > last else "mid"
        u.name = f"{kind}{counters[kind]}"
        counters[kind] += 1

    originals: dict[str, tuple[fx.GraphModule, int]] = {}
    if "original" in cands:  # extracted before any replacement rewires the graph
        from ..profiler import profile

        for u in units:
            x_shape = tuple(node_shape(u.x))
            block = _extract(gm, u)
            originals[u.name] = (block, profile(block, torch.zeros(x_shape)).macs // max(1, x_shape[0]))
    records = []
    new_of: dict[fx.Node, fx.Node] = {}
    for u in sorted(units + kept_w, key=lambda u: order[u.nodes[-1]]):
        out = u.nodes[-1]
        shape = node_shape(out)
        hw = int(math.prod(shape[2:]))
        if u.kind == "width":
            conv = _mod(gm, u.nodes[0])
            norm_m = _mod(gm, u.nodes[1]) if len(u.nodes) > 1 and isinstance(_mod(gm, u.nodes[1]), _NORMS) else None
            act_m = _mod(gm, u.nodes[-1]) if isinstance(_mod(gm, u.nodes[-1]), _ACTS) else None
            cell: nn.Module = WidthOp(conv, norm_m, act_m, u.widths, hw=hw)
            rec = {"name": u.name, "kind": "width", "replaced": u.modules, "c_in": cell.c_in, "c_out": cell.c_out,
                   "widths": list(u.widths)}
        else:
            c_in = int(node_shape(u.x)[1])
            n_style, p_style = _block_style(gm, u, norm, padding)
            block, block_macs = originals.get(u.name, (None, 0))
            cell = MixedOp(c_in, int(shape[1]), cands, u.widths, norm=n_style, padding=p_style, block=block,
                           block_macs=block_macs, hw=hw)
            rec = {"name": u.name, "kind": "op", "block": u.kind, "replaced": u.modules, "c_in": c_in,
                   "c_out": int(shape[1]), "candidates": list(cands), "widths": list(u.widths), "norm": n_style,
                   "padding": p_style, "pinned": u.pinned}
        cell.train(gm.training)  # a fresh cell follows the graph's mode (eval: its argmax choice only)
        gm.add_submodule(u.name, cell)
        with gm.graph.inserting_before(out):
            new = gm.graph.call_module(u.name, (new_of.get(u.x, u.x),))
        out.replace_all_uses_with(new)
        new_of[out] = new
        new.meta["tensor_meta"] = out.meta.get("tensor_meta")
        for n in reversed(u.nodes):
            if n.users:
                raise PassError(f"substitute-ops: node '{n.name}' of {u.name} is still read by "
                                f"{[x.name for x in n.users]}")
            gm.graph.erase_node(n)
        records.append(rec)
    for n in list(gm.graph.nodes):  # constants only the replaced blocks read
        if n.op == "get_attr" and not n.users:
            gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    specs = input_specs(gm)
    propagate_shapes(gm, *[torch.zeros(s, dtype=d) for s, d in specs], fake=True)
    gm.meta["nas"] = {"cells": records, "options": {
        "candidates": "|".join(cands), "blocks": blocks, "widths": widths, "stem_header": stem_header,
        "nesting": nesting, "select": select, "norm": norm, "padding": padding, "divisor": divisor}}
    return gm
