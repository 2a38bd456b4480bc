"""The result of the channel analysis: :class:`ChannelGroup` and its views, and two ways to look at a list
of groups (:func:`groups_by_node`, :func:`describe_groups`). See :mod:`gcompiler.analysis.channels`."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable, Sequence

__all__ = ["ChannelGroup", "ConsumerSlice", "EqualRemoval", "groups_by_node", "describe_groups"]


# --------------------------------------------------------------------------------------------------
# Result data structure
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConsumerSlice:
    """How one consumer (a conv / transposed conv / linear reading the group as *input* channels) sees it.

    ``input`` is the tensor node the consumer reads; it is one of the group's tensors, so
    ``group.index[input][u]`` lists the consumer's input channels that belong to unit ``u``.
    ``offset`` is the first such channel when the group occupies one contiguous slice of the consumer's
    input in unit order (the usual case; a concat consumer reads each group at its own offset), else None.
    ``block`` is the number of the consumer's input channels per unit, ``groups`` the consumer's conv
    ``groups`` (1 for ordinary convs and linear layers), ``in_channels`` the consumer's total input width.
    """

    node: str
    input: str
    kind: str
    offset: int | None
    block: int
    groups: int
    in_channels: int


@dataclasses.dataclass(frozen=True)
class EqualRemoval:
    """A grouped conv constraint: ``tensor``'s channels form ``groups`` contiguous equal slices and every
    slice must lose the same number of channels (on the conv's ``side``: its input or its output)."""

    node: str
    tensor: str
    groups: int
    side: str  # "input" | "output"


@dataclasses.dataclass
class ChannelGroup:
    """A set of channels that a pruning pass must remove together.

    The group consists of ``channels`` independent *units*.  Removing unit ``u`` removes, from every
    tensor ``t`` in :attr:`tensors` (producers and members), the output channels ``index[t][u]``, and from
    every consumer the input channels ``index[consumer_slices[c].input][u]``.  A unit is one channel at an
    ordinary producer, and a block of ``r**2`` channels at a producer feeding ``pixel_shuffle(r)``.

    Attributes:
        name: stable name, derived from the first producer (``"conv1"``; ``"conv1[0:8]"`` when the
            producer's channels are split between groups); the first tensor's name when there is no producer.
        producers: nodes whose output channels the group owns and that create them (conv, transposed conv,
            linear, functional conv), in graph order.
        consumers: nodes that read the group's channels as input channels (see ``consumer_slices``).
        members: pass-through nodes whose output channels belong to the group: norms, activations,
            padding, dropout, interpolation, pooling, depthwise convs, elementwise ops, cat, pixel_shuffle,
            and (for pinned groups) graph inputs, constants and the outputs of unknown ops.
        channels: number of units.
        prunable: False when the group is pinned.
        reason: why it is pinned, naming the op(s) ("" when prunable).
        index: for every tensor node of the group, ``index[node][u]`` = that node's channels of unit ``u``.
        consumer_slices: per consumer, how it reads the group.
        equal_removal: grouped-conv constraints on this group's tensors.
        kinds: the role of every node mentioned (``"conv"``, ``"norm"``, ``"concat"``, ...).
    """

    name: str
    producers: list[str]
    consumers: list[str]
    members: list[str]
    channels: int
    prunable: bool
    reason: str
    index: dict[str, tuple[tuple[int, ...], ...]]
    consumer_slices: dict[str, ConsumerSlice]
    equal_removal: list[EqualRemoval]
    kinds: dict[str, str]

    @property
    def tensors(self) -> list[str]:
        """Every node whose output channels belong (partly) to this group, in graph order."""
        return list(self.index)

    def block(self, node: str | None = None) -> int:
        """Channels per unit in ``node``'s output (default: the first producer, else the first tensor)."""
        if node is None:
            node = self.producers[0] if self.producers else next(iter(self.index))
        if node in self.consumer_slices and node not in self.index:
            node = self.consumer_slices[node].input
        return len(self.index[node][0]) if self.channels else 0

    def channels_of(self, node: str, units: Iterable[int] | None = None) -> list[int]:
        """Sorted channel indices of ``node``'s output that belong to ``units`` (default: all units).

        For a consumer node, the channels of its *input* are returned.
        """
        if node not in self.index and node in self.consumer_slices:
            node = self.consumer_slices[node].input
        rows = self.index[node]
        picked = range(len(rows)) if units is None else units
        return sorted(c for u in picked for c in rows[u])

    def slice(self, node: str) -> tuple[int, int] | None:
        """``(start, stop)`` when the group's channels in ``node`` (or a consumer's input) are one contiguous
        range laid out in unit order, else None."""
        if node not in self.index and node in self.consumer_slices:
            node = self.consumer_slices[node].input
        flat = [c for row in self.index[node] for c in row]
        if not flat:
            return None
        start = flat[0]
        return (start, start + len(flat)) if flat == list(range(start, start + len(flat))) else None

    def locate(self, unit: int) -> list[tuple[str, int]]:
        """Every ``(node, channel)`` that unit ``unit`` covers, over all the group's tensors."""
        if not 0 <= unit < self.channels:
            raise IndexError(f"group '{self.name}' has {self.channels} channels; unit {unit} is out of range")
        return [(node, c) for node, rows in self.index.items() for c in rows[unit]]

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"pinned: {self.reason}"
        return (f"ChannelGroup({self.name!r}, channels={self.channels}, producers={self.producers}, "
                f"consumers={self.consumers}, members={len(self.members)}, {state})")


def groups_by_node(groups: Sequence[ChannelGroup]) -> dict[str, list[ChannelGroup]]:
    """Map every node name to the groups whose channels it produces, carries or consumes."""
    out: dict[str, list[ChannelGroup]] = defaultdict(list)
    for g in groups:
        for n in list(g.index) + [c for c in g.consumers if c not in g.index]:
            out[n].append(g)
    return dict(out)


def describe_groups(groups: Sequence[ChannelGroup], *, max_width: int = 60) -> str:
    """A readable table: one row per group with width, block, producers, consumers and pin reason."""

    def cut(text: str) -> str:
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    headers = ("group", "ch", "blk", "prunable", "producers", "consumers", "members", "reason")
    rows = []
    for g in groups:
        cons = []
        for c in g.consumers:
            cs = g.consumer_slices[c]
            whole = cs.offset == 0 and cs.block * g.channels == cs.in_channels
            sl = g.slice(c)
            cons.append(c if whole else f"{c}[{sl[0]}:{sl[1]}]" if sl else f"{c}[scattered]")
        rows.append((g.name, str(g.channels), str(g.block()), "yes" if g.prunable else "no",
                     cut(", ".join(g.producers) or "-"), cut(", ".join(cons) or "-"), str(len(g.members)),
                     g.reason if len(g.reason) <= 2 * max_width else g.reason[: 2 * max_width - 3] + "..."))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    n_prunable = sum(g.prunable for g in groups)
    lines.append(f"{len(groups)} groups, {n_prunable} prunable, "
                 f"{sum(g.channels for g in groups if g.prunable)} prunable channels")
    return "\n".join(lines)
