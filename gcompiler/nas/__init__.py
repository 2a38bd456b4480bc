"""Neural architecture search pieces (AGD): slimmable operators, searchable cells, the MACs cost table and
the architecture derivation. The passes ``substitute-ops`` (:mod:`gcompiler.passes.substitute`) and
``derive-architecture`` (:mod:`gcompiler.nas.derive`) build on them; ``gcompiler compress --method agd``
(:mod:`gcompiler.methods.agd`) runs the search."""
from __future__ import annotations

from .mixed import Cell, MixedOp, WidthOp, arch_parameters, cells, set_mode, weight_parameters
from .ops import AGD_RATIOS, OPERATORS, agd_widths, make_divisible

__all__ = ["Cell", "MixedOp", "WidthOp", "cells", "set_mode", "arch_parameters", "weight_parameters",
           "OPERATORS", "AGD_RATIOS", "agd_widths", "make_divisible"]
