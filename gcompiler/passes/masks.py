"""Channel masks: the learnable per-channel scales that channel pruning trains and then removes.

:class:`ChannelMask` is a trace leaf that multiplies channel ``c`` of its input (dim 1) by the scale of the
*unit* that channel belongs to. Several instances may share one ``nn.Parameter``: a coupled channel group
with several producers (the residual trunk of a ResNet generator) gets one mask module after each
producer, all holding the same vector, so that zeroing entry ``u`` kills unit ``u`` in every producer at
once. A unit is usually one channel; it is a block of ``r**2`` channels before a ``pixel_shuffle(r)``.

The ``insert-masks`` pass places the masks (one per prunable channel group) and records them in
``gm.meta["masks"]``; :func:`masks` returns every group's mask tensor by group name.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import PassError
from ..fx.trace import register_leaf
from ..fx.utils import unique_name
from ..serialize import register_module_type
from .registry import Contract, parse_list, register_pass


@register_module_type
@register_leaf
class ChannelMask(nn.Module):
    """``y[:, c] = x[:, c] * scale[index[c]]`` with a learnable ``scale`` initialised to ones.

    Args:
        channels: number of input channels (dim 1).
        scale: an existing parameter of shape ``[units]`` to share with other masks; a fresh
            ``nn.Parameter(torch.ones(units))`` when omitted.
        units: length of the scale vector (default ``channels``).
        index: for every channel, the unit whose scale multiplies it, or ``-1`` for a channel the mask
            leaves alone (default: channel ``c`` uses unit ``c``; needs ``units == channels``).

    The module computes nothing else, so at initialisation it is an exact identity; it counts 0 MACs.
    The channel analysis treats it as a per-channel pass-through op.
    """

    gcompiler_channel_rule = "passthrough"

    def __init__(self, channels: int, scale: nn.Parameter | None = None, *, units: int | None = None,
                 index: Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ChannelMask: channels must be a positive int, got {channels!r}")
        if units is None:
            units = scale.numel() if scale is not None else channels
        if scale is None:
            scale = nn.Parameter(torch.ones(units))
        elif not isinstance(scale, nn.Parameter):
            raise TypeError(f"ChannelMask: scale must be an nn.Parameter (to be shared), got {type(scale).__name__}")
        if scale.dim() != 1 or scale.numel() != units:
            raise ValueError(f"ChannelMask: scale has shape {tuple(scale.shape)}, expected ({units},)")
        if index is None:
            if units != channels:
                raise ValueError(f"ChannelMask: {units} units for {channels} channels needs an explicit index")
            idx = torch.arange(channels)
        else:
            idx = torch.as_tensor(index, dtype=torch.long).flatten()
            if idx.numel() != channels or bool((idx < -1).any()) or bool((idx >= units).any()):
                raise ValueError(f"ChannelMask: index must hold {channels} entries in [-1, {units})")
        self.channels = channels
        self.units = units
        self.scale = scale
        self.register_buffer("index", idx)

    def channel_scale(self) -> torch.Tensor:
        """The per-unit scale vector (the shared parameter itself; edits apply to every sharer)."""
        return self.scale

    def per_channel(self) -> torch.Tensor:
        """The scale expanded to one entry per channel (1 for channels the mask leaves alone)."""
        padded = torch.cat([self.scale, self.scale.new_ones(1)])
        return padded[self.index]  # index -1 picks the appended 1

    def constructor_args(self) -> dict:
        """Arguments that rebuild this module (scale and index come from the state dict)."""
        return {"channels": self.channels, "units": self.units, "index": [-1] * self.channels}

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"ChannelMask({self.channels}) got an input of shape {tuple(x.shape)}; channels are dim 1")
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return x * self.per_channel().to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"{self.channels}" + (f", units={self.units}" if self.units != self.channels else "")


@register_module_type
@register_leaf
class ChannelBias(nn.Module):
    """``y[:, c] = x[:, c] + bias[c]``: a per-channel constant, e.g. what remains of a pruned-away branch.

    ``eliminate-dead-channels`` uses it when a residual branch collapses to a per-channel constant that is
    not zero (a branch ending in an affine norm). The channel analysis treats it as a pass-through op.
    """

    gcompiler_channel_rule = "passthrough"

    def __init__(self, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ChannelBias: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(channels))

    def constructor_args(self) -> dict:
        return {"channels": self.channels}

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return x + self.bias.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"{self.channels}"


# ------------------------------------------------------------------------------------------ insert-masks

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


def _is_channel_norm(mod: nn.Module | None) -> bool:
    if isinstance(mod, nn.GroupNorm):
        return mod.num_groups == mod.num_channels
    return isinstance(mod, _NORMS)


def _has_affine_weight(mod: nn.Module) -> bool:
    return _is_channel_norm(mod) and isinstance(getattr(mod, "weight", None), nn.Parameter)


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    if node is None or node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _name_matches(name: str, patterns: str) -> bool:
    if patterns.strip() in ("", "all", "*"):
        return True
    return any(fnmatch.fnmatchcase(name, p) for p in parse_list(patterns, "insert-masks{groups}"))


@register_pass("insert-masks", contract=Contract.exact())
def insert_masks(gm: fx.GraphModule, *, groups: str = "all", round_to: int = 1) -> fx.GraphModule:
    """Give every prunable channel group one learnable mask (exact: the output is unchanged).

    Options:
        groups: ``"all"`` or glob patterns over group names separated by ``|`` or ``;``
            (``"model_1*|model_4"``, as ``prune-by-ratio`` accepts them);
            only prunable groups (see :func:`gcompiler.analysis.channel_groups`) get a mask.
        round_to: kept widths should be multiples of this (recorded for ``eliminate-dead-channels`` and
            ``prune-by-ratio``, which honour it).

    Where a group has a single producer whose only user is an affine normalization covering exactly the
    group's channels, that norm's weight ``gamma`` is the mask (GAN Slimming). Otherwise a
    :class:`ChannelMask` goes after each producer (after its normalization when the producer feeds only
    a norm), all of a group's masks sharing one vector, so a residual trunk gets a single mask.
    Groups that already have a mask are left alone. ``gm.meta["masks"]`` records, per group name, the
    kind (``"norm"`` or ``"channel_mask"``), the module paths and the number of units, plus ``round_to``.
    """
    from ..analysis import channel_groups

    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PassError(f"insert-masks{{round_to}} must be a positive int, got {round_to!r}")
    record = gm.meta.setdefault("masks", {"round_to": round_to, "groups": {}})
    record["round_to"] = round_to
    nodes = {n.name: n for n in gm.graph.nodes}
    selected = [g for g in channel_groups(gm) if g.prunable and g.channels > 0 and _name_matches(g.name, groups)]
    if not selected and groups not in ("all", "*", ""):
        raise PassError(f"insert-masks{{groups={groups}}} matches no prunable group; prunable groups: "
                        f"{', '.join(g.name for g in channel_groups(gm) if g.prunable) or '(none)'}")
    for g in selected:
        if g.name in record["groups"]:
            continue
        if any(_is_existing_mask(gm, nodes.get(t)) for t in g.members):
            continue  # masked by an earlier run under another name
        entry = _gamma_mask(gm, g, nodes) or _channel_masks(gm, g, nodes)
        record["groups"][g.name] = entry
    gm.graph.lint()
    gm.recompile()
    return gm


def _is_existing_mask(gm: fx.GraphModule, node: fx.Node | None) -> bool:
    return isinstance(_module(gm, node), ChannelMask)


def _gamma_mask(gm: fx.GraphModule, g, nodes: dict[str, fx.Node]) -> dict | None:
    if len(g.producers) != 1:
        return None
    p = nodes[g.producers[0]]
    norm = _sole_user(p)
    mod = _module(gm, norm)
    if norm is None or mod is None or not _has_affine_weight(mod) or norm.name not in g.index:
        return None
    width = p.meta["tensor_meta"].shape[1]
    rows = g.index[norm.name]
    if g.channels != width or any(row != (u,) for u, row in enumerate(rows)):
        return None  # the norm's gamma must be exactly one entry per unit of this group
    return {"kind": "norm", "modules": [str(norm.target)], "param": "weight", "units": g.channels}


def _channel_masks(gm: fx.GraphModule, g, nodes: dict[str, fx.Node]) -> dict:
    tm = nodes[g.producers[0]].meta.get("tensor_meta")
    dtype = tm.dtype if tm is not None and tm.dtype.is_floating_point else torch.float32
    scale = nn.Parameter(torch.ones(g.channels, dtype=dtype))
    paths = []
    for i, pname in enumerate(g.producers):
        p = nodes[pname]
        at = p
        nxt = _sole_user(p)
        if nxt is not None and _is_channel_norm(_module(gm, nxt)) and nxt.name in g.index:
            at = nxt
        width = at.meta["tensor_meta"].shape[1]
        index = [-1] * width
        for u, row in enumerate(g.index[at.name]):
            for c in row:
                index[c] = u
        base = f"mask_{g.name}" + (f"_{i}" if len(g.producers) > 1 else "")
        name = unique_name(gm, "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in base))
        gm.add_submodule(name, ChannelMask(width, scale, units=g.channels, index=index))
        with gm.graph.inserting_after(at):
            m = gm.graph.call_module(name, (at,))
        at.replace_all_uses_with(m, delete_user_cb=lambda user, m=m: user is not m)
        m.meta["tensor_meta"] = at.meta.get("tensor_meta")
        paths.append(name)
    return {"kind": "channel_mask", "modules": paths, "param": "scale", "units": g.channels}


def masks(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every masked group's mask tensor by group name (the parameters themselves: edit them in place).

    A ``"norm"`` mask is that norm's ``weight`` (one entry per channel); a ``"channel_mask"`` is the
    shared per-unit ``scale`` of the group's :class:`ChannelMask` modules. Empty when ``insert-masks``
    has not run (or after ``eliminate-dead-channels``, which folds the masks away).
    """
    record = gm.meta.get("masks") or {}
    out: dict[str, torch.Tensor] = {}
    for name, entry in record.get("groups", {}).items():
        try:
            mod = gm.get_submodule(entry["modules"][0])
        except AttributeError:
            raise PassError(f"masks(): group '{name}' records module '{entry['modules'][0]}', which the graph no "
                            "longer has; re-run insert-masks") from None
        out[name] = getattr(mod, entry["param"])
    return out
