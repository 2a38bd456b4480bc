"""Collapsing a residual branch whose inner width reaches 0: when the branch's value at the addition is
proven constant per channel, the addition becomes the identity (constant 0) or a per-channel bias."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ...fx.utils import node_shape
from .proof import Prover, _per_instance, is_constant
from .units import AnalysisLike, Collapse, Context


# -------------------------------------------------------------------------------------------- collapse

def _instance_norm_of_constant(mod: nn.Module | None, x: Any) -> torch.Tensor | None:
    """An instance-style norm of a per-channel constant is exactly its shift (0 without affine)."""
    if not _per_instance(mod) or not isinstance(x, torch.Tensor) or x.dim() < 3:
        return None
    flat = x.double().reshape(x.shape[0], x.shape[1], -1)
    if not all(is_constant(row) for row in flat.reshape(-1, flat.shape[2])):
        return None
    shift = mod.bias.detach() if getattr(mod, "bias", None) is not None else torch.zeros(x.shape[1])
    return shift.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2))).expand_as(x).clone()


def assemble_input(ctx: Context, node: fx.Node, analyses: dict[str, AnalysisLike],
                   removed: dict[str, list[int]]) -> torch.Tensor | None:
    """The proven value of ``node``'s whole input when every channel of it is removed (else None)."""
    x = node.args[0]
    tm = x.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return None
    shape = (1,) + tuple(tm.shape[1:])
    value = torch.zeros(shape, dtype=tm.dtype)
    covered: set[int] = set()
    spatial = shape[2:]
    for name, ga in analyses.items():
        if x.name not in ga.group.index:
            continue
        for u in removed.get(name, ()):
            v = ga.view(u).get(node.name)
            if v is None:
                return None
            for c, m in zip(v.channels, v.maps):
                value[0, c] = (m.reshape(spatial) if m.numel() > 1 else m.reshape(())).to(tm.dtype)
                covered.add(c)
    return value if len(covered) == shape[1] else None


def try_collapse_with(ctx: Context, node: fx.Node, analyses: dict[str, AnalysisLike],
                      removed: dict[str, list[int]], overrides: dict[str, torch.Tensor] | None = None
                      ) -> Collapse | None:
    """If ``node`` (losing all inputs) heads a residual branch whose value at the add is a per-channel
    constant, describe how the add collapses; else None."""
    if len(node.args) != 1 or node.kwargs:
        return None
    value = assemble_input(ctx, node, analyses, removed)
    if value is None:
        return None
    return collapse_from(ctx, node, value, overrides)


def collapse_from(ctx: Context, node: fx.Node, value: torch.Tensor,
                  overrides: dict[str, torch.Tensor] | None = None) -> Collapse | None:
    """Follow the single-user chain from ``node`` evaluated on its proven input ``value`` to an addition
    (``overrides``: mask values of a setting, as :class:`~.proof.Prover` takes them)."""
    prover = Prover(ctx.gm, ctx.nodes, ctx.concrete, overrides)
    chain = [node.name]
    cur = node
    try:
        val = _run(prover, node, value)
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
                if not all(is_constant(row) for row in flat):
                    return None
                bias = flat.mean(dim=1)
                return Collapse(node.name, nxt.name, other.name, None if bool((bias == 0).all()) else bias, chain)
            if data or nxt.op not in ("call_module", "call_function", "call_method"):
                return None
            mod = ctx.module(nxt.name)
            new = _instance_norm_of_constant(mod, val)
            val = new if new is not None else _run(prover, nxt, val)
            if val is None:
                return None
            chain.append(nxt.name)
            cur = nxt
    except Exception:  # noqa: BLE001 - an op that cannot run on the fixed values: no collapse
        return None


def _run(prover: Prover, node: fx.Node, x: torch.Tensor) -> torch.Tensor | None:
    """Evaluate a deterministic op on its single data input ``x`` (None for ops not known to be)."""
    rule = prover._rule(node)
    if node.op == "call_module":
        mod = prover.gm.get_submodule(str(node.target))
        plain = type(mod) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                              nn.ConvTranspose3d, nn.Linear)
        if not plain and rule == "unknown":
            return None
        if rule in ("mask", "norm") and len(node.args) == 1 and not node.kwargs:
            out = prover._evaluate(node, mod, (x,), {}, rule)
            return out if isinstance(out, torch.Tensor) else None
    elif rule == "unknown":
        return None

    def sub(n: fx.Node) -> Any:
        if n is node.args[0]:
            return x
        if n.op == "get_attr":
            obj: Any = prover.gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            return obj
        return prover.concrete(n)

    args = fx.node.map_arg(node.args, sub)
    kwargs = fx.node.map_arg(node.kwargs, sub)
    with torch.no_grad():
        if node.op == "call_module":
            mod = prover.gm.get_submodule(str(node.target))
            was = mod.training
            mod.eval()
            try:
                out = mod(*args, **kwargs)
            finally:
                mod.train(was)
        elif node.op == "call_function":
            out = node.target(*args, **kwargs)
        else:
            out = getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return out if isinstance(out, torch.Tensor) else None
