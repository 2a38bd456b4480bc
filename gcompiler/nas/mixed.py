"""Searchable cells: :class:`MixedOp` (operator and width) and :class:`WidthOp` (width only, stem / header).

A cell maps a tensor with ``c_in`` nominal channels to one with ``c_out`` nominal channels. The channels
beyond the cell's chosen width ``w`` are exactly zero (the cell zero-pads its output), so a consumer computes
on the nominal tensor what the derived network computes on the narrowed one. The architecture parameters
live in the cell: ``op_logits`` (one per candidate operator, :class:`MixedOp` only) and ``width_logits`` (one
per width choice), initialised to ``1e-3`` as in AGD.

Forward, by ``cell.mode`` (see :func:`set_mode`) in training mode:

* operators: the softmax-weighted sum of every candidate (DARTS relaxation, AGD);
* widths: ``"gumbel"`` — a hard straight-through Gumbel-softmax sample (the output is multiplied by the
  sample's one-hot value, 1 in the forward pass, so gradients reach ``width_logits``); ``"max"``, ``"min"``,
  ``"random"`` — the sandwich rule's widest, narrowest and uniformly random width; ``"argmax"``.

In eval mode (and ``mode="argmax"``) a cell runs only its argmax operator at its argmax width: exactly the
network that ``derive-architecture`` produces. Ties resolve to the *widest* width and the *first* operator,
so freshly substituted cells run their first candidate at full width.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..fx.trace import register_leaf
from .ops import GraphBuilder, SearchOp, build_op

MODES = ("gumbel", "max", "min", "random", "argmax")


def _values(t: torch.Tensor) -> list[float]:
    """A parameter's values as Python floats, also while shapes are propagated under FakeTensorMode."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return [float(v) for v in t.detach().cpu().tolist()]


class Cell(nn.Module):
    """Width choice shared by :class:`MixedOp` and :class:`WidthOp`."""

    gcompiler_cell = True

    def __init__(self, c_in: int, c_out: int, widths: Sequence[int]) -> None:
        super().__init__()
        ws = tuple(int(w) for w in widths)
        if not ws or any(w < 1 or w > c_out for w in ws) or list(ws) != sorted(set(ws)):
            raise ValueError(f"widths must be distinct increasing ints in [1, {c_out}], got {widths!r}")
        self.c_in, self.c_out, self.widths = int(c_in), int(c_out), ws
        self.width_logits = nn.Parameter(torch.full((len(ws),), 1e-3))
        self.mode = "gumbel"
        self.tau = 1.0

    # -- choices ---------------------------------------------------------------------------------
    def width_index(self) -> int:
        """Argmax of ``width_logits``; ties go to the widest."""
        values = _values(self.width_logits)
        best = max(values)
        return max(i for i, v in enumerate(values) if v == best)

    def width(self) -> int:
        return self.widths[self.width_index()]

    def width_probs(self) -> torch.Tensor:
        return F.softmax(self.width_logits, dim=0)

    def _sample_width(self) -> tuple[int, torch.Tensor | None]:
        if not self.training or self.mode == "argmax" or len(self.widths) == 1:
            return self.widths[self.width_index()], None
        if self.mode == "max":
            return self.widths[-1], None
        if self.mode == "min":
            return self.widths[0], None
        if self.mode == "random":
            return self.widths[int(torch.randint(len(self.widths), ()).item())], None
        g = F.gumbel_softmax(F.log_softmax(self.width_logits, dim=0), tau=self.tau, hard=True)
        j = int(g.detach().argmax().item())
        return self.widths[j], g[j]

    def fix_width(self, width: int) -> None:
        """Make ``width`` the argmax choice (a one-hot-like logit vector: 0 there, -1e4 elsewhere)."""
        if width not in self.widths:
            raise ValueError(f"width {width} is not a choice of this cell ({self.widths})")
        with torch.no_grad():
            self.width_logits.fill_(-1e4)
            self.width_logits[self.widths.index(width)] = 0.0

    def _pad(self, y: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        if r is not None:
            y = y * r
        if y.shape[1] < self.c_out:
            y = F.pad(y, (0, 0, 0, 0, 0, self.c_out - y.shape[1]))
        return y

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.width_logits]

    def count_params(self) -> int:  # profiler hook: the supernet's weights (architecture logits excluded)
        arch = {id(p) for p in self.arch_parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in arch)


@register_leaf
class MixedOp(Cell):
    """A searchable cell over candidate operators (``.candidates``) and output widths (``.widths``).

    Args:
        c_in, c_out: nominal input / output channels (the replaced block's).
        candidates: operator names (:data:`gcompiler.nas.ops.OPERATORS`, or ``"original"`` with ``block``).
        widths: output width choices (increasing, the last one usually ``c_out``).
        norm: ``"instance"`` or ``"none"``; padding: ``"zeros"`` or ``"reflect"``.
        block: the replaced block as a GraphModule (for the ``original`` candidate) and ``block_macs`` its MACs.
        hw: output pixels per image at the reference input (for :meth:`count_macs` and the cost table).
    """

    def __init__(self, c_in: int, c_out: int, candidates: Sequence[str], widths: Sequence[int], *,
                 norm: str = "instance", padding: str = "zeros", block: fx.GraphModule | None = None,
                 block_macs: int = 0, hw: int = 0) -> None:
        super().__init__(c_in, c_out, widths)
        cands = tuple(candidates)
        if not cands or len(set(cands)) != len(cands):
            raise ValueError(f"candidates must be distinct operator names, got {candidates!r}")
        self.candidates = cands
        self.norm, self.padding, self.hw = norm, padding, int(hw)
        self.ops = nn.ModuleList([build_op(c, c_in, c_out, norm=norm, padding=padding, block=block,
                                           block_macs=block_macs) for c in cands])
        self.op_logits = nn.Parameter(torch.full((len(cands),), 1e-3))

    def op_index(self) -> int:
        """Argmax of ``op_logits``; ties go to the first candidate."""
        values = _values(self.op_logits)
        return values.index(max(values))

    def op_name(self) -> str:
        return self.candidates[self.op_index()]

    def op_probs(self) -> torch.Tensor:
        return F.softmax(self.op_logits, dim=0)

    def fix_op(self, name: str) -> None:
        """Make operator ``name`` the argmax choice (0 there, -1e4 elsewhere: softmax weight exactly 1 and 0)."""
        if name not in self.candidates:
            raise ValueError(f"operator {name!r} is not a candidate of this cell ({self.candidates})")
        with torch.no_grad():
            self.op_logits.fill_(-1e4)
            self.op_logits[self.candidates.index(name)] = 0.0

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.op_logits, self.width_logits]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, r = self._sample_width()
        if not self.training or self.mode == "argmax" or len(self.ops) == 1:
            return self._pad(self.ops[self.op_index()](x, w), r)
        p = self.op_probs()
        y = sum(p[k] * op(x, w) for k, op in enumerate(self.ops))
        return self._pad(y, r)  # type: ignore[arg-type]

    def op_macs(self, k: int, c_in: int, w: int) -> int:
        """MACs of candidate ``k`` for an input of ``c_in`` channels and output width ``w`` (per image)."""
        op: SearchOp = self.ops[k]
        return int(op.macs(c_in, w, self.hw))

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        """MACs of the argmax operator at the argmax width, for the nominal input width."""
        n = int(output_shape[0]) if output_shape is not None else 1
        hw = int(math.prod(output_shape[2:])) if output_shape is not None else self.hw
        op: SearchOp = self.ops[self.op_index()]
        return n * int(op.macs(self.c_in, self.width(), hw))

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, op: int | None = None,
               width: int | None = None) -> fx.Node:
        """Plain nodes computing this cell's operator ``op`` (index) at ``width`` for an input of ``c_in`` channels."""
        k = self.op_index() if op is None else op
        w = self.width() if width is None else width
        return self.ops[k].derive(b, x, c_in, w)

    def extra_repr(self) -> str:
        return (f"{self.c_in}->{self.c_out}, candidates={list(self.candidates)}, widths={list(self.widths)}, "
                f"norm={self.norm}, padding={self.padding}")


_NORM_TYPES = (nn.InstanceNorm2d, nn.BatchNorm2d)


@register_leaf
class WidthOp(Cell):
    """A width-only cell around a conv (``Conv2d`` / ``ConvTranspose2d``, groups 1) -> [norm] -> [activation].

    The conv's output channels are cut to the chosen width (weights ``[:w]``; a ``BatchNorm2d`` uses its
    running statistics, sliced; an ``InstanceNorm2d`` normalises each channel by itself) and zero-padded
    back to ``c_out``. The activation must map 0 to 0 and act per element (ReLU, LeakyReLU, a single-slope
    PReLU, ...). At full width it computes exactly what the wrapped layers compute.
    """

    def __init__(self, conv: nn.Module, norm: nn.Module | None, act: nn.Module | None, widths: Sequence[int], *,
                 hw: int = 0) -> None:
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or conv.groups != 1:
            raise ValueError(f"WidthOp needs a Conv2d / ConvTranspose2d with groups 1, got {conv!r}")
        super().__init__(conv.in_channels, conv.out_channels, widths)
        self.conv, self.norm, self.act, self.hw = conv, norm, act, int(hw)

    def _conv(self, x: torch.Tensor, w: int) -> torch.Tensor:
        c = self.conv
        bias = c.bias[:w] if c.bias is not None else None
        if isinstance(c, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, c.weight[:, :w], bias, c.stride, c.padding, c.output_padding, 1, c.dilation)
        return c._conv_forward(x, c.weight[:w], bias)

    def _norm(self, y: torch.Tensor, w: int) -> torch.Tensor:
        n = self.norm
        if n is None:
            return y
        wt = n.weight[:w] if getattr(n, "weight", None) is not None else None
        bs = n.bias[:w] if getattr(n, "bias", None) is not None else None
        if isinstance(n, nn.BatchNorm2d):
            return F.batch_norm(y, n.running_mean[:w], n.running_var[:w], wt, bs, False, 0.0, n.eps)
        return F.instance_norm(y, weight=wt, bias=bs, eps=n.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, r = self._sample_width()
        y = self._norm(self._conv(x, w), w)
        if self.act is not None:
            y = self.act(y)
        return self._pad(y, r)

    def op_macs(self, k: int, c_in: int, w: int) -> int:
        c = self.conv
        return int(self.hw * w * c_in * math.prod(c.kernel_size))

    def count_macs(self, input_shapes, output_shape) -> int:  # noqa: ANN001 - profiler hook
        n = int(output_shape[0]) if output_shape is not None else 1
        hw = int(math.prod(output_shape[2:])) if output_shape is not None else self.hw
        return n * int(hw * self.width() * self.c_in * math.prod(self.conv.kernel_size))

    def derive(self, b: GraphBuilder, x: fx.Node, c_in: int, op: int | None = None,
               width: int | None = None) -> fx.Node:
        w = self.width() if width is None else width
        c = self.conv
        bias = c.bias is not None
        if isinstance(c, nn.ConvTranspose2d):
            new = nn.ConvTranspose2d(c_in, w, c.kernel_size, c.stride, c.padding, c.output_padding, 1, bias,
                                     c.dilation)
            src_w = c.weight[:c_in, :w]
        else:
            new = nn.Conv2d(c_in, w, c.kernel_size, c.stride, c.padding, c.dilation, 1, bias, c.padding_mode)
            src_w = c.weight[:w, :c_in]
        with torch.no_grad():
            new.weight.copy_(src_w)
            if bias:
                new.bias.copy_(c.bias[:w])
        y = b.module("conv", new, x)
        n = self.norm
        if n is not None:
            if isinstance(n, nn.BatchNorm2d):
                nn_ = nn.BatchNorm2d(w, eps=n.eps, momentum=n.momentum, affine=n.affine)
                with torch.no_grad():
                    nn_.running_mean.copy_(n.running_mean[:w])
                    nn_.running_var.copy_(n.running_var[:w])
                    nn_.num_batches_tracked.copy_(n.num_batches_tracked)
            else:
                nn_ = nn.InstanceNorm2d(w, eps=n.eps, momentum=n.momentum, affine=n.affine,
                                        track_running_stats=False)
            if n.affine:
                with torch.no_grad():
                    nn_.weight.copy_(n.weight[:w])
                    nn_.bias.copy_(n.bias[:w])
            nn_.eval()
            y = b.module("norm", nn_, y)
        if self.act is not None:
            import copy

            y = b.module("act", copy.deepcopy(self.act), y)
        return y

    def extra_repr(self) -> str:
        return f"{self.c_in}->{self.c_out}, widths={list(self.widths)}"


def cells(model: nn.Module) -> dict[str, Cell]:
    """Every searchable cell of ``model`` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Cell)}


def set_mode(model: nn.Module, mode: str, *, tau: float | None = None) -> None:
    """Set the width-sampling mode (:data:`MODES`) of every cell (and the Gumbel temperature)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for c in cells(model).values():
        c.mode = mode
        if tau is not None:
            c.tau = float(tau)


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture logits of every cell (operator and width)."""
    out: list[nn.Parameter] = []
    for c in cells(model).values():
        out += c.arch_parameters()
    return out


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that is not an architecture logit."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]

