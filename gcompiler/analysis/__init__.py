"""Graph analyses over traced networks (channel coupling for pruning)."""
from .channels import (
    ChannelGroup,
    ConsumerSlice,
    EqualRemoval,
    describe_groups,
    groups_by_node,
    register_channel_rule,
)

import torch.fx

from .channels import channel_groups as _channel_groups_uncached
from .cache import cached_analysis


def channel_groups(gm: torch.fx.GraphModule) -> list[ChannelGroup]:
    """:func:`gcompiler.analysis.channels.channel_groups`, computed once per graph version (``gm.meta`` cache;
    see :mod:`gcompiler.analysis.cache`). Returns a new list each call; the groups themselves are shared."""
    return list(cached_analysis(gm, "channel-groups", _channel_groups_uncached))


__all__ = [
    "ChannelGroup",
    "ConsumerSlice",
    "EqualRemoval",
    "channel_groups",
    "describe_groups",
    "groups_by_node",
    "register_channel_rule",
]
