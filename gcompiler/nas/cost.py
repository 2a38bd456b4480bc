"""Expected MACs of a supernet: the lookup table of AGD's FLOPs constraint, exact at one-hot choices.

:class:`CostTable` splits the MACs of a supernet at its recorded input shapes into

* each cell's operator costs, tabulated once for every (operator, input width, output width) — the input
  width is the producing cell's choice when a cell feeds it (through channel-agnostic ops), else fixed;
* the plain convolutions that read a cell's output, whose cost scales with that cell's width;
* everything else (profiled once with :func:`gcompiler.profile`, constant).

:meth:`CostTable.expected` is differentiable in the operator and width logits: the expectation under the
softmax of each cell's logits, cells independent (``hard=True``: at the argmax choices, which equals
``gcompiler.profile`` of the graph ``derive-architecture`` makes — tested).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PassError
from .derive import cell_nodes, source_cell
from .mixed import Cell, MixedOp


class CostTable:
    """Lookup table of a supernet's MACs (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        from ..profiler import profile

        nodes = cell_nodes(gm)
        if not nodes:
            raise PassError("CostTable: the graph has no searchable cells (run substitute-ops first)")
        prof = profile(gm)
        row_macs = {r.node: r.macs for r in prof.rows}
        self.gm = gm
        self.cells: list[tuple[str, Cell, str | None, int, torch.Tensor]] = []
        self.consumers: list[tuple[str, float, int]] = []
        skip: set[str] = set()
        for n in nodes:
            c = gm.get_submodule(str(n.target))
            prod = source_cell(gm, n.args[0])
            c_ins = gm.get_submodule(prod).widths if prod is not None else (c.c_in,)
            shape = n.meta["tensor_meta"].shape
            batch = int(shape[0])
            k_ops = len(c.candidates) if isinstance(c, MixedOp) else 1
            table = torch.tensor([[[float(c.op_macs(k, ci, w)) for w in c.widths] for ci in c_ins]
                                  for k in range(k_ops)], dtype=torch.float64)
            self.cells.append((str(n.target), c, prod, batch, table))
            skip.add(n.name)
        for n in gm.graph.nodes:
            if n.op != "call_module" or n.name in skip:
                continue
            m = gm.get_submodule(str(n.target))
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and len(n.all_input_nodes) == 1:
                prod = source_cell(gm, n.all_input_nodes[0])
                if prod is not None:
                    self.consumers.append((prod, float(row_macs.get(n.name, 0)), int(m.in_channels)))
                    skip.add(n.name)
        self.constant = float(sum(v for k, v in row_macs.items() if k not in skip))

    def _width_dist(self, name: str, c: Cell, hard: bool, choices: dict) -> torch.Tensor:
        if name in choices:
            return F.one_hot(torch.tensor(choices[name][1]), len(c.widths)).to(torch.float64)
        if hard:
            return F.one_hot(torch.tensor(c.width_index()), len(c.widths)).to(torch.float64)
        return c.width_probs().to("cpu", torch.float64)

    def expected(self, *, hard: bool = False, choices: dict[str, tuple[int, int]] | None = None) -> torch.Tensor:
        """Expected MACs (a differentiable float64 scalar on the CPU); ``hard``: at the argmax architecture;
        ``choices``: ``{cell: (operator index, width index)}`` fixed for the cells it names."""
        choices = choices or {}
        q = {name: self._width_dist(name, c, hard, choices) for name, c, *_ in self.cells}
        total = torch.tensor(self.constant, dtype=torch.float64)
        for name, c, prod, batch, table in self.cells:
            qin = q[prod] if prod is not None else torch.ones(1, dtype=torch.float64)
            if isinstance(c, MixedOp):
                if name in choices or hard:
                    k = choices[name][0] if name in choices else c.op_index()
                    p = F.one_hot(torch.tensor(k), len(c.candidates)).to(torch.float64)
                else:
                    p = c.op_probs().to("cpu", torch.float64)
            else:
                p = torch.ones(1, dtype=torch.float64)
            total = total + batch * torch.einsum("k,i,j,kij->", p, qin, q[name], table)
        for prod, macs, in_ch in self.consumers:
            c = self.gm.get_submodule(prod)
            ws = torch.tensor(c.widths, dtype=torch.float64)
            total = total + macs * (q[prod] * ws).sum() / in_ch
        return total

    def exact(self) -> int:
        """MACs of the argmax architecture (what the derived network costs)."""
        return int(round(float(self.expected(hard=True))))

    def bounds(self) -> tuple[int, int]:
        """(smallest, largest) MACs over the architectures (per cell cheapest / dearest op; widths min / max)."""
        lo = hi = self.constant
        for name, c, prod, batch, table in self.cells:
            i_lo, i_hi = 0, table.shape[1] - 1
            lo += batch * float(table[:, i_lo, 0].min())
            hi += batch * float(table[:, i_hi, -1].max())
        for prod, macs, in_ch in self.consumers:
            c = self.gm.get_submodule(prod)
            lo += macs * c.widths[0] / in_ch
            hi += macs * c.widths[-1] / in_ch
        return int(lo), int(hi)
