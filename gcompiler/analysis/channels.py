"""Channel-coupling analysis: which channels of a traced network must be pruned together.

``channel_groups(gm)`` walks a shape-propagated :class:`torch.fx.GraphModule` once and unions individual
channels ``(node, c)`` (``c`` indexing dim 1 of the node's output) whenever an op forces them to live or die
together: a pass-through op joins output channel ``c`` with input channel ``c``, an elementwise op joins
its operands, ``cat`` on dim 1 joins each input with an offset slice of the output, ``pixel_shuffle(r)``
joins a block of ``r**2`` input channels with one output channel.  Convolutions, transposed convolutions
and linear layers do *not* join their input and output: they consume one channel space and open another.

Each connected set of channels is one *unit*: the smallest thing that can be removed.  Units that touch
exactly the same tensors form a :class:`ChannelGroup` (a residual trunk of width 256 is one group of 256
units).  A group is pinned (``prunable = False``, with a ``reason`` naming the op) when any tensor it
touches is a graph input or output, a constant, or is read or written by an op whose channel mapping is
not known.  Unknown ops are never guessed to be elementwise.

See ``docs/channel_groups.md`` for the rules and how the pruning passes use the result.
"""
from __future__ import annotations

import torch
import torch.fx

from .groups import ChannelGroup, ConsumerSlice, EqualRemoval, describe_groups, groups_by_node
from .op_rules import _OpRules
from .rules import _CUSTOM_RULES, _RULES, register_channel_rule  # noqa: F401
from .solver import _Space, _UnionFind  # noqa: F401

__all__ = [
    "ChannelGroup",
    "ConsumerSlice",
    "EqualRemoval",
    "channel_groups",
    "describe_groups",
    "groups_by_node",
    "register_channel_rule",
]


class _Analysis(_OpRules):
    """The whole analysis: the solver (:mod:`.solver`) driven by the op rules (:mod:`.op_rules`)."""


def channel_groups(gm: torch.fx.GraphModule) -> list[ChannelGroup]:
    """Partition the channels of ``gm`` into groups that must be pruned together.

    Args:
        gm: a shape-propagated GraphModule (``gcompiler.trace`` output, or ``symbolic_trace`` followed by
            ``ShapeProp(gm).propagate(x)``): every tensor node needs ``node.meta["tensor_meta"]``.

    Returns:
        The groups in graph order of their first tensor.  Every channel (dim 1) of every tensor output
        with at least two dims belongs to exactly one group.  A group is prunable only when every op that
        touches its channels has a known channel mapping and none of its tensors is a graph input, output
        or constant; otherwise ``reason`` names the op(s).

    Raises:
        TraceError: the graph carries no shape metadata.
    """
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"channel_groups expects a torch.fx.GraphModule, got {type(gm).__name__}; "
                        f"trace the model first with gcompiler.trace(model, example_input)")
    analysis = _Analysis(gm)
    analysis.run()
    return analysis.groups()
