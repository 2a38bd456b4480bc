"""Carrying out an elimination plan: the graph surgery of ``eliminate-dead-channels``.

Conv out/in channels, transposed-conv dims, biases, norm affine parameters and running stats, depthwise
``groups``, equal per-group removal in grouped convs, PReLU slopes; concat offsets and pixel-shuffle blocks
follow from the shapes. Folded constants go into the consumer's bias (created when a folded constant is
not zero), merged maps onto the carrier's weights; collapsed residual branches become the identity or a
:class:`~gcompiler.passes.masks.ChannelBias`. :class:`ChannelMask` scales are then folded into the
preceding conv, transposed conv, linear or norm (a norm without affine parameters becomes affine) and the
masks disappear.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ...errors import PassError
from ...fx.utils import node_shape, unique_name
from ..masks import ChannelBias, ChannelMask, _is_channel_norm
from .plan import Collapse, Plan
from .proof import _CONV, _CONVT


def _keep(n: int, removed: set[int] | None) -> list[int]:
    return [c for c in range(n) if not removed or c not in removed]


def _param(t: torch.Tensor, like: nn.Parameter | None) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad if like is not None else True)


def _apply_consumer_edits(mod: nn.Module, folds: list[tuple[int, torch.Tensor]],
                          merges: list[tuple[int, int, float]]) -> None:
    """Fold constant inputs into the bias and merged maps onto carriers (original channel indices)."""
    w = mod.weight.data.double()
    if merges:
        w = w.clone()
        for carrier, c, r in merges:
            if isinstance(mod, _CONVT):
                w[carrier] += r * w[c]
            elif isinstance(mod, nn.Linear):
                w[:, carrier] += r * w[:, c]
            else:
                per_in = mod.in_channels // mod.groups
                per_out = mod.out_channels // mod.groups
                g = c // per_in
                rows = slice(g * per_out, (g + 1) * per_out)
                w[rows, carrier - g * per_in] += r * w[rows, c - g * per_in]
        mod.weight.data.copy_(w.to(mod.weight.dtype))
    if folds:
        out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        delta = _fold_delta(mod, w, folds)
        if creates_bias(folds) or mod.bias is not None:
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros(out, dtype=mod.weight.dtype, device=mod.weight.device))
            mod.bias.data += delta.to(mod.bias.dtype)


def creates_bias(folds: list[tuple[int, torch.Tensor]]) -> bool:
    """A consumer without a bias gets one exactly when some folded constant is not zero."""
    return any(float(c) != 0.0 for _, c in folds)


def _fold_delta(mod: nn.Module, w: torch.Tensor, folds: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Bias change of consumer ``mod`` (float64 weight ``w``) from constant input channels."""
    out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    delta = torch.zeros(out, dtype=torch.float64)
    for c, const in folds:
        const = float(const)
        if const == 0.0:
            continue
        if isinstance(mod, nn.Linear):
            delta += w[:, c] * const
            continue
        per_in = mod.in_channels // mod.groups
        per_out = mod.out_channels // mod.groups
        g = c // per_in
        if isinstance(mod, _CONVT):
            delta[g * per_out:(g + 1) * per_out] += w[c].reshape(per_out, -1).sum(dim=1) * const
        else:
            rows = slice(g * per_out, (g + 1) * per_out)
            delta[rows] += w[rows, c - g * per_in].reshape(per_out, -1).sum(dim=1) * const
    return delta


def _resize_conv(mod: nn.Module, keep_in: list[int], keep_out: list[int], depthwise: bool) -> None:
    w = mod.weight.data
    transposed = isinstance(mod, _CONVT)
    G, I, O = mod.groups, mod.in_channels, mod.out_channels
    if depthwise:
        new_g = len(keep_in)
        w = w[keep_in] if transposed else w[keep_out]
    elif G == 1:
        w = w[keep_in][:, keep_out] if transposed else w[keep_out][:, keep_in]
        new_g = 1
    else:
        per_in, per_out = I // G, O // G
        ins = [[c - g * per_in for c in keep_in if c // per_in == g] for g in range(G)]
        outs = [[o - g * per_out for o in keep_out if o // per_out == g] for g in range(G)]
        if len({len(v) for v in ins}) != 1 or len({len(v) for v in outs}) != 1:
            raise PassError(f"internal: unequal per-group removal in grouped conv ({[len(v) for v in ins]}, "
                            f"{[len(v) for v in outs]})")
        blocks = []
        for g in range(G):
            if transposed:
                blocks.append(w[[g * per_in + c for c in ins[g]]][:, outs[g]])
            else:
                blocks.append(w[[g * per_out + o for o in outs[g]]][:, ins[g]])
        w = torch.cat(blocks, 0)
        new_g = G
    mod.weight = _param(w, mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias.data[keep_out], mod.bias)
    mod.in_channels, mod.out_channels, mod.groups = len(keep_in), len(keep_out), new_g


def _resize_linear(mod: nn.Linear, keep_in: list[int], keep_out: list[int]) -> None:
    mod.weight = _param(mod.weight.data[keep_out][:, keep_in], mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias.data[keep_out], mod.bias)
    mod.in_features, mod.out_features = len(keep_in), len(keep_out)


def _resize_member(mod: nn.Module, keep: list[int]) -> nn.Module:
    if isinstance(mod, ChannelMask):
        new = ChannelMask(len(keep), nn.Parameter(mod.per_channel().detach()[keep].clone(),
                                                  requires_grad=mod.scale.requires_grad))
        return new
    if isinstance(mod, ChannelBias):
        mod.bias = _param(mod.bias.data[keep], mod.bias)
        mod.channels = len(keep)
        return mod
    if isinstance(mod, nn.PReLU):
        if mod.num_parameters > 1:
            mod.weight = _param(mod.weight.data[keep], mod.weight)
            mod.num_parameters = len(keep)
        return mod
    if isinstance(mod, nn.GroupNorm):
        mod.num_groups = mod.num_channels = len(keep)
    elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        mod.num_features = len(keep)
    for name in ("weight", "bias"):
        p = getattr(mod, name, None)
        if isinstance(p, nn.Parameter) and p.dim() == 1:
            setattr(mod, name, _param(p.data[keep], p))
    for name in ("running_mean", "running_var"):
        b = getattr(mod, name, None)
        if isinstance(b, torch.Tensor):
            mod._buffers[name] = b[keep].clone()
    return mod


def _collapse(gm: fx.GraphModule, col: Collapse, plan: Plan, replaced: dict[str, str]) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    other_name = col.other
    while other_name in replaced:  # an earlier collapse already replaced the skip operand
        other_name = replaced[other_name]
    add, other = nodes[col.add], nodes[other_name]
    if col.bias is None:
        add.replace_all_uses_with(other)
        replaced[col.add] = other_name
    else:
        name = unique_name(gm, f"bias_{col.add}")
        cb = ChannelBias(col.bias.numel())
        cb.bias.data.copy_(col.bias.float())
        gm.add_submodule(name, cb)
        with gm.graph.inserting_after(add):
            new = gm.graph.call_module(name, (other,))
        add.replace_all_uses_with(new)
        replaced[col.add] = new.name
        new.meta["tensor_meta"] = add.meta.get("tensor_meta")
        if col.add in plan.out_remove:
            plan.out_remove[new.name] = plan.out_remove[col.add]
    gm.graph.eliminate_dead_code()


def _fold_mask(gm: fx.GraphModule, node: fx.Node) -> str:
    """Fold a ChannelMask into what precedes it; returns "" or why it stays."""
    mod: ChannelMask = gm.get_submodule(str(node.target))
    s = mod.per_channel().detach()
    src = node.args[0]
    if bool((s == 1).all()):
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        return ""
    prev = gm.get_submodule(str(src.target)) if src.op == "call_module" else None
    if len(src.users) != 1 or prev is None:
        return f"mask '{node.name}' stays: its input '{src.name}' is not a conv/norm read only by the mask"
    if isinstance(prev, (_CONV, nn.Linear)):
        w = prev.weight.data
        if isinstance(prev, _CONVT):
            per_out = prev.out_channels // prev.groups
            w = w.reshape(prev.groups, -1, per_out, *w.shape[2:]) * \
                s.reshape(prev.groups, 1, per_out, *([1] * (w.dim() - 2))).to(w.dtype)
            prev.weight.data.copy_(w.reshape(prev.weight.shape))
        else:
            prev.weight.data.mul_(s.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        if prev.bias is not None:
            prev.bias.data.mul_(s.to(prev.bias.dtype))
    elif _is_channel_norm(prev):
        if prev.weight is None:
            like = next((b for b in prev.buffers() if b.is_floating_point()), None)
            dtype = like.dtype if like is not None else (src.meta["tensor_meta"].dtype if "tensor_meta" in src.meta
                                                         else s.dtype)
            prev.weight = nn.Parameter(torch.ones(s.shape, dtype=dtype))
            prev.bias = nn.Parameter(torch.zeros(s.shape, dtype=dtype))
            prev.affine = True
        prev.weight.data.mul_(s.to(prev.weight.dtype))
        prev.bias.data.mul_(s.to(prev.bias.dtype))
    else:
        return f"mask '{node.name}' stays: cannot fold into {type(prev).__name__} '{src.name}'"
    node.replace_all_uses_with(src)
    gm.graph.erase_node(node)
    return ""


def _drop_empty_cat_inputs(gm: fx.GraphModule, rm: dict[str, set[int]]) -> None:
    """A group removed entirely still reaches a concat as a 0-channel tensor: drop it from the cat."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (torch.cat, torch.concat) or not node.args:
            continue
        tensors = node.args[0]
        if not isinstance(tensors, (list, tuple)):
            continue
        keep = [t for t in tensors if not (isinstance(t, fx.Node) and node_shape(t) is not None and
                                           len(rm.get(t.name, ())) >= node_shape(t)[1])]
        if len(keep) != len(tensors) and keep:
            node.args = (type(tensors)(keep),) + tuple(node.args[1:])
    gm.graph.eliminate_dead_code()


def apply_plan(gm: fx.GraphModule, plan: Plan) -> tuple[fx.GraphModule, list[str]]:
    """Carry out ``plan`` on ``gm`` in place (see the module docstring); returns it and the masks that stay."""
    rm = plan.out_remove
    # Input channels each module loses, by its original input (before the graph is rewritten below).
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    in_removed_of = {n.name: rm.get(n.args[0].name, set()) for n in gm.graph.nodes
                     if n.op == "call_module" and n.args and isinstance(n.args[0], fx.Node)}
    replaced: dict[str, str] = {}
    for col in sorted(plan.collapses.values(), key=lambda c: order[c.add]):
        _collapse(gm, col, plan, replaced)
    _drop_empty_cat_inputs(gm, rm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        in_removed = in_removed_of.get(node.name, set())
        out_removed = rm.get(node.name, set())
        if isinstance(mod, (_CONV, nn.Linear)):
            if node.name in plan.folds or node.name in plan.merges:
                _apply_consumer_edits(mod, plan.folds.get(node.name, []), plan.merges.get(node.name, []))
            if not in_removed and not out_removed:
                continue
            if isinstance(mod, nn.Linear):
                _resize_linear(mod, _keep(mod.in_features, in_removed), _keep(mod.out_features, out_removed))
            else:
                depthwise = mod.groups == mod.in_channels and mod.groups > 1
                _resize_conv(mod, _keep(mod.in_channels, in_removed), _keep(mod.out_channels, out_removed),
                             depthwise)
        elif out_removed:
            width = node_shape(node)[1]
            new = _resize_member(mod, _keep(width, out_removed))
            if new is not mod:
                parent, _, attr = str(node.target).rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, attr, new)
    kept_masks = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), ChannelMask):
            why = _fold_mask(gm, node)
            if why:
                kept_masks.append(why)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm, kept_masks
