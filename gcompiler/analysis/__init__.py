"""Graph analyses over traced networks (channel coupling for pruning)."""
from .channels import (
    ChannelGroup,
    ConsumerSlice,
    EqualRemoval,
    channel_groups,
    describe_groups,
    groups_by_node,
    register_channel_rule,
)

__all__ = [
    "ChannelGroup",
    "ConsumerSlice",
    "EqualRemoval",
    "channel_groups",
    "describe_groups",
    "groups_by_node",
    "register_channel_rule",
]
