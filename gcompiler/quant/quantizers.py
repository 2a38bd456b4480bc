"""Fake quantizers with straight-through gradients (GAN Slimming's ``q_w`` / ``q_a``, BRIEF section 1).

Conventions (the "clean" choice among the paper's and its public code's; see below):

* **Weights**, symmetric, per tensor or per output channel, ``n`` bits::

      L   = 2^(n-1) - 1                      (127 at 8 bits)
      s_w = max|w| / L                       (per tensor, or per output channel)
      q_w(w) = clamp(round(w / s_w), -L, L) * s_w

  The paper writes ``s_w = max|w| / 2^(n-1)``, which maps ``max|w|`` to ``2^(n-1)`` = 128, a level an
  ``n``-bit signed integer cannot hold. Dividing by ``L`` (as the public code does) keeps the largest weight
  exactly representable and the integer range symmetric, ``[-L, L]``, so no zero point is needed.
  Gradient (STE): ``dq_w/dw = 1`` everywhere; ``s_w`` is treated as a constant.

* **Activations**, ``m`` bits, clip value ``p`` (``act_clip``, 4 in GS):

  - unsigned (GS default, inputs after ReLU): ``L = 2^m - 1`` (255 at 8 bits), integers ``[0, L]``;
  - signed (symmetric): ``L = 2^(m-1) - 1`` (127 at 8 bits), integers ``[-L, L]``;

  with ``s_a = p / L`` and ``q_a(a) = clamp(round(a / s_a), qmin, qmax) * s_a``. The paper writes
  ``s_a = p / 2^m``, whose ``2^m + 1`` levels ``0 .. 2^m`` do not fit ``m`` bits; ``p / (2^m - 1)`` uses exactly
  ``2^m`` levels and keeps ``p`` itself representable. Zero point is 0 in both ranges (unsigned integers are
  stored as uint8). Gradient (STE): ``dq_a/da = 1`` where ``qmin <= a / s_a <= qmax`` (i.e. inside
  ``[0, p]`` or ``[-p, p]``), 0 outside.

* **Learnable clip** (``learn_clip``, PACT / LSQ style): ``p`` is a parameter and receives the exact gradient
  of the STE surrogate of ``q_a`` (``round`` differentiated as the identity, ``s_a = p / L`` as a function of
  ``p``)::

      dq_a/dp = (round(a/s_a) - a/s_a) / L     inside the range   (LSQ's term)
              = qmax / L = 1                   above the range    (PACT's term: the output is p)
              = qmin / L  (0 or -1)            below the range

  Rounding and clamping both use ``torch.round`` (half to even), the same as ONNX ``QuantizeLinear``.

Integers are computed *first* (``clamp(round(x / s))``) and multiplied by ``s`` after, in this module and in
the integer modules of :mod:`gcompiler.quant.int_ops`, so both produce bit-identical integers for equal inputs.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError

ActRange = Literal["unsigned", "signed"]

_MIN_SCALE = 1e-12  # an all-zero tensor quantizes with this scale (every value maps to integer 0)


# ----------------------------------------------------------------------------------------------- integer ranges
def weight_levels(bits: int) -> int:
    """``L = 2^(bits-1) - 1``: weights quantize to integers in ``[-L, L]``."""
    _check_bits(bits, "weight", low=2)
    return 2 ** (bits - 1) - 1


def act_qrange(bits: int, act_range: ActRange) -> tuple[int, int]:
    """``(qmin, qmax)`` of an activation quantizer: ``(0, 2^m-1)`` unsigned, ``(-(2^(m-1)-1), 2^(m-1)-1)`` signed."""
    if act_range == "unsigned":
        _check_bits(bits, "activation", low=1)
        return 0, 2 ** bits - 1
    if act_range == "signed":
        _check_bits(bits, "activation", low=2)
        level = 2 ** (bits - 1) - 1
        return -level, level
    raise ConfigError(f"act_range must be 'unsigned' or 'signed', got {act_range!r}")


def _check_bits(bits: int, what: str, *, low: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= 16:
        raise ConfigError(f"{what} bits must be an int in [{low}, 16], got {bits!r}")


# ------------------------------------------------------------------------------------------------ weight scales
def out_channel_view(t: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], *, transposed: bool,
                     groups: int) -> torch.Tensor:
    """Reshape a per-output-channel vector ``t`` (length C_out) to broadcast against a conv weight.

    Conv weights are ``[C_out, C_in/g, kh, kw]`` (output channel on dim 0). Transposed conv weights are
    ``[C_in, C_out/g, kh, kw]``: output channel ``c = g * (C_out/g) + j`` lives at dim 1 index ``j`` of the
    rows of group ``g``, so the vector is viewed as ``[g, 1, C_out/g, 1, ...]`` against the weight viewed as
    ``[g, C_in/g, C_out/g, kh, kw]`` (:func:`grouped_weight`).
    """
    nd = len(weight_shape)
    if not transposed:
        return t.reshape((-1,) + (1,) * (nd - 1))
    return t.reshape((groups, 1, -1) + (1,) * (nd - 2))


def grouped_weight(w: torch.Tensor, *, transposed: bool, groups: int) -> torch.Tensor:
    """``w`` itself for convs; ``[g, C_in/g, C_out/g, kh, kw]`` view of a transposed conv weight."""
    if not transposed:
        return w
    return w.reshape((groups, w.shape[0] // groups) + tuple(w.shape[1:]))


def weight_scale(w: torch.Tensor, bits: int, *, per_channel: bool, transposed: bool = False,
                 groups: int = 1) -> torch.Tensor:
    """Per-output-channel scales ``s_w = max|w| / (2^(bits-1) - 1)``, a float vector of length C_out.

    Per tensor, every entry is the same value (one ``max|w|``). Transposed conv weights are reduced per output
    channel, i.e. over dims (0, 2, 3) within each group (dim 1 holds the output channel).
    """
    level = weight_levels(bits)
    w = w.detach()
    if per_channel:
        if transposed:
            gw = grouped_weight(w, transposed=True, groups=groups)  # [g, C_in/g, C_out/g, ...]
            dims = (1,) + tuple(range(3, gw.dim()))
            amax = gw.abs().amax(dim=dims).reshape(-1)
        else:
            amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    else:
        c_out = w.shape[1] * groups if transposed else w.shape[0]
        amax = w.abs().amax().expand(c_out)
    return (amax / level).clamp_min(_MIN_SCALE)


def quantize_weight_int(w: torch.Tensor, scale: torch.Tensor, bits: int, *, transposed: bool = False,
                        groups: int = 1) -> torch.Tensor:
    """The integer weights ``clamp(round(w / s_w[c]), -L, L)`` (same dtype as ``w``; cast by the caller)."""
    level = weight_levels(bits)
    gw = grouped_weight(w, transposed=transposed, groups=groups)
    s = out_channel_view(scale.to(w.dtype), w.shape, transposed=transposed, groups=groups)
    return torch.clamp(torch.round(gw / s), -level, level).reshape(w.shape)


class _WeightSTE(torch.autograd.Function):
    """``clamp(round(w/s), -L, L) * s`` forward; identity backward (gradient 1, BRIEF)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor, level: int, transposed: bool, groups: int):
        gw = grouped_weight(w, transposed=transposed, groups=groups)
        s = out_channel_view(scale.to(w.dtype), w.shape, transposed=transposed, groups=groups)
        return (torch.clamp(torch.round(gw / s), -level, level) * s).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None, None


def fake_quant_weight(w: torch.Tensor, bits: int, *, per_channel: bool = False, transposed: bool = False,
                      groups: int = 1) -> torch.Tensor:
    """``q_w(w)`` with the straight-through gradient (see the module docstring)."""
    scale = weight_scale(w, bits, per_channel=per_channel, transposed=transposed, groups=groups)
    return _WeightSTE.apply(w, scale, weight_levels(bits), transposed, groups)


class WeightFakeQuant(nn.Module):
    """Fake-quantizes a conv / transposed conv weight on every call (the scale follows the current weights).

    Attributes: ``bits``, ``per_channel``, ``transposed`` (weights ``[C_in, C_out/g, kh, kw]``), ``groups``.
    """

    def __init__(self, bits: int = 8, *, per_channel: bool = False, transposed: bool = False, groups: int = 1):
        super().__init__()
        weight_levels(bits)
        self.bits = int(bits)
        self.per_channel = bool(per_channel)
        self.transposed = bool(transposed)
        self.groups = int(groups)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per-output-channel scale vector for weight ``w``."""
        return weight_scale(w, self.bits, per_channel=self.per_channel, transposed=self.transposed,
                            groups=self.groups)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _WeightSTE.apply(w, self.scale(w), weight_levels(self.bits), self.transposed, self.groups)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}" + (", transposed" if self.transposed else "")


# ------------------------------------------------------------------------------------------- activation quant
class _ActSTE(torch.autograd.Function):
    """``clamp(round(x/s), qmin, qmax) * s`` with ``s = clip / L``; STE gradients of the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: torch.Tensor, qmin: int, qmax: int, level: int, learn: bool):
        s = (clip.to(x.dtype) / level).clamp_min(_MIN_SCALE)
        z = x / s
        q = torch.clamp(torch.round(z), qmin, qmax)
        ctx.save_for_backward(z, q)
        ctx.qmin, ctx.qmax, ctx.level, ctx.learn = qmin, qmax, level, learn
        return q * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, q = ctx.saved_tensors
        inside = (z >= ctx.qmin) & (z <= ctx.qmax)
        gx = grad * inside.to(grad.dtype)
        gclip = None
        if ctx.learn and ctx.needs_input_grad[1]:
            # inside: (round(z) - z) / L; outside: the clamped integer / L (= +1 above, qmin/L below).
            d = torch.where(inside, q - z, q) / ctx.level
            gclip = (grad * d).sum().reshape(1)
        return gx, gclip, None, None, None, None


class ActFakeQuant(nn.Module):
    """Activation fake quantizer: clamp to ``[0, clip]`` (unsigned) or ``[-clip, clip]`` (signed), ``bits`` bits.

    ``clip`` is a 1-element buffer, or a parameter when ``learn_clip`` (then it gets the PACT / LSQ gradient).
    While :attr:`observer` is set (see :mod:`gcompiler.quant.calibrate`) the module records statistics of its
    input and passes the input through unchanged.
    """

    def __init__(self, bits: int = 8, act_range: ActRange = "unsigned", clip: float = 4.0, *,
                 learn_clip: bool = False):
        super().__init__()
        self.qmin, self.qmax = act_qrange(bits, act_range)
        if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
            raise ConfigError(f"activation clip must be a finite number > 0, got {clip!r}")
        self.bits = int(bits)
        self.act_range: ActRange = act_range
        self.learn_clip = bool(learn_clip)
        value = torch.tensor([float(clip)])
        if learn_clip:
            self.clip = nn.Parameter(value)
        else:
            self.register_buffer("clip", value)
        self.observer = None  # set by calibration helpers: an object with .observe(x)

    @property
    def level(self) -> int:
        """``L``: the integer that represents ``clip`` (255 unsigned / 127 signed at 8 bits)."""
        return self.qmax

    @property
    def zero_point(self) -> int:
        return 0

    def scale(self) -> torch.Tensor:
        """``s_a = clip / L`` (a 1-element tensor; detached)."""
        return (self.clip.detach() / self.level).clamp_min(_MIN_SCALE)

    def set_clip(self, value: float) -> None:
        """Set the clip value (e.g. from calibration), keeping it a parameter or a buffer."""
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"activation clip must be a finite number > 0, got {value!r}")
        with torch.no_grad():
            self.clip.fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return x
        return _ActSTE.apply(x, self.clip, self.qmin, self.qmax, self.level,
                             self.learn_clip and self.clip.requires_grad)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, range={self.act_range}, clip={float(self.clip.detach()):g}"
                + (", learn_clip" if self.learn_clip else ""))


def fake_quant_act(x: torch.Tensor, clip: torch.Tensor | float, bits: int, act_range: ActRange = "unsigned", *,
                   learn_clip: bool = False) -> torch.Tensor:
    """Functional ``q_a(x)``; ``clip`` may be a tensor that requires grad (then it receives the clip gradient)."""
    qmin, qmax = act_qrange(bits, act_range)
    if not isinstance(clip, torch.Tensor):
        clip = torch.tensor([float(clip)], dtype=x.dtype)
    return _ActSTE.apply(x, clip.reshape(1), qmin, qmax, qmax, learn_clip and clip.requires_grad)
