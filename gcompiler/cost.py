"""The one cost model: ``gcompiler.estimate(gm, masks=..., widths=...)`` prices the network
``eliminate-dead-channels`` would build, exactly and fast (>= 1,000 calls/s on resnet_9blocks).

The implementation lives beside the elimination planner whose decisions it shares
(:mod:`gcompiler.passes.elimination.cost`); see its docstring for the semantics of mask settings and widths.
"""
from __future__ import annotations

from .passes.elimination.cost import Estimate, estimate

__all__ = ["Estimate", "estimate"]
