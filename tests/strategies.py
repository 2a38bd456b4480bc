"""Hypothesis strategies that generate small, random, generator-like networks.

``generator_nets()`` draws a :class:`GeneratedNet` and an example input.  A net is a real ``nn.Module``
whose ``forward`` replays a recorded op list (``program``) over a list of values; torch.fx unrolls that
loop, so every net traces with ``gcompiler.trace``.  The pieces mirror the generators in the zoo:

* stems (optionally explicitly padded, kernel 3/5/7), stride-2 downsampling convs,
* residual trunks (plain, depthwise-separable "mobile" blocks, grouped-conv blocks, scaled residuals),
* U-Net concat skips, dense concat blocks (RRDB-like), attention gates (a 1-channel map broadcast by mul),
* upsampling by transposed conv (ordinary, grouped or depthwise), nearest / bilinear interpolation + conv,
  or conv + pixel shuffle,
* BatchNorm / InstanceNorm (affine or not) / no norm, ReLU / LeakyReLU / Tanh (as modules or functions),
* reflect / replicate / zero padding, both as pad modules and as ``Conv2d(padding_mode=...)``,
* a cat along the width (couples its inputs' channels) and, optionally, a channel permutation (shuffle
  through view / transpose / reshape, roll, flip: no known channel mapping, the analysis must pin it).

Widths are 2..16 channels and inputs 8..32 pixels so one example runs in milliseconds.  Norm parameters
and running statistics are randomized (never the identity defaults) and the net is in eval mode.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

__all__ = ["GeneratedNet", "Op", "generator_nets", "trace_net"]


@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a :class:`GeneratedNet` program; it appends one value computed from earlier ones.

    ``kind`` is one of ``layer`` (``args = (layer_index, src)``), ``add`` / ``sub`` / ``mul``
    (``(a, b)``), ``scale`` (``(src, factor)``), ``cat`` (``(srcs,)``, dim 1), ``cat_w`` (``(a, b)``,
    dim 3, then width-halving average pool), ``interp`` (``(src, mode)``, ×2), ``pixel_shuffle``
    (``(src, r)``), ``act`` (``(src, name)``: functional relu / leaky_relu / tanh / sigmoid) and
    ``channel_shuffle`` (``(src, groups)``: view / transpose / reshape), ``roll`` and ``flip``
    (``(src,)``: along dim 1).
    """

    kind: str
    args: tuple[Any, ...]

    def __repr__(self) -> str:
        return f"{self.kind}{self.args}"


class GeneratedNet(nn.Module):
    """A network built from ``layers`` and a ``program`` of :class:`Op`; value 0 is the input."""

    def __init__(self, layers: list[nn.Module], program: list[Op]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.program = tuple(program)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = [x]
        for op in self.program:
            k, a = op.kind, op.args
            if k == "layer":
                y = self.layers[a[0]](vals[a[1]])
            elif k == "add":
                y = vals[a[0]] + vals[a[1]]
            elif k == "sub":
                y = vals[a[0]] - vals[a[1]]
            elif k == "mul":
                y = vals[a[0]] * vals[a[1]]
            elif k == "scale":
                y = vals[a[0]] * a[1]
            elif k == "cat":
                y = torch.cat([vals[i] for i in a[0]], 1)
            elif k == "cat_w":
                y = F.avg_pool2d(torch.cat([vals[a[0]], vals[a[1]]], dim=3), kernel_size=(1, 2))
            elif k == "interp":
                if a[1] == "nearest":
                    y = F.interpolate(vals[a[0]], scale_factor=2, mode="nearest")
                else:
                    y = F.interpolate(vals[a[0]], scale_factor=2, mode="bilinear", align_corners=False)
            elif k == "pixel_shuffle":
                y = F.pixel_shuffle(vals[a[0]], a[1])
            elif k == "act":
                v = vals[a[0]]
                y = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[a[1]](v) \
                    if a[1] != "leaky_relu" else F.leaky_relu(v, 0.2)
            elif k == "roll":
                y = torch.roll(vals[a[0]], shifts=1, dims=1)
            elif k == "flip":
                y = vals[a[0]].flip(1)
            elif k == "channel_shuffle":
                v, g = vals[a[0]], a[1]
                n, c, h, w = v.shape
                y = v.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
            else:
                raise ValueError(f"unknown op kind {k!r}")
            vals.append(y)
        return vals[-1]

    def extra_repr(self) -> str:
        return "program=[" + ", ".join(f"v{i + 1}={op!r}" for i, op in enumerate(self.program)) + "]"


def trace_net(module: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """Trace with the project's front end (torch.nn leaves, shapes in ``node.meta['tensor_meta']``)."""
    from gcompiler.fx import trace

    return trace(module, x)


# --------------------------------------------------------------------------------------------------
# The builder: tracks the shape of every value while ops are appended
# --------------------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, draw: Any, in_channels: int, height: int, width: int, allow_unknown: bool) -> None:
        self.draw = draw
        self.layers: list[nn.Module] = []
        self.program: list[Op] = []
        self.shapes: list[tuple[int, int, int]] = [(in_channels, height, width)]
        self.allow_unknown = allow_unknown

    @property
    def cur(self) -> int:
        return len(self.shapes) - 1

    def c(self, v: int) -> int:
        return self.shapes[v][0]

    def hw(self, v: int) -> tuple[int, int]:
        return self.shapes[v][1], self.shapes[v][2]

    def emit(self, op: Op, shape: tuple[int, int, int]) -> int:
        self.program.append(op)
        self.shapes.append(shape)
        return self.cur

    def layer(self, module: nn.Module, src: int, shape: tuple[int, int, int]) -> int:
        self.layers.append(module)
        return self.emit(Op("layer", (len(self.layers) - 1, src)), shape)

    # ---------------------------------------------------------------- drawn choices
    def width(self, lo: int = 2, hi: int = 16, multiple: int = 1) -> int:
        return multiple * self.draw(st.integers(max(1, -(-lo // multiple)), max(1, hi // multiple)))

    def norm(self, v: int) -> int:
        kind = self.draw(st.sampled_from(["bn", "bn_noaffine", "in", "in_affine", "none"]))
        c, h, w = self.shapes[v]
        if kind == "none":
            return v
        if kind.startswith("bn"):
            m = nn.BatchNorm2d(c, affine=kind == "bn")
        else:
            m = nn.InstanceNorm2d(c, affine=kind == "in_affine")
        return self.layer(m, v, (c, h, w))

    def act(self, v: int, allow_none: bool = False) -> int:
        choices = ["relu", "leaky", "tanh", "f_relu", "f_leaky"] + (["none"] if allow_none else [])
        kind = self.draw(st.sampled_from(choices))
        shape = self.shapes[v]
        if kind == "none":
            return v
        if kind.startswith("f_"):
            return self.emit(Op("act", (v, "relu" if kind == "f_relu" else "leaky_relu")), shape)
        m = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.2), "tanh": nn.Tanh()}[kind]
        return self.layer(m, v, shape)

    def conv(self, v: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool | None = None) -> int:
        """A conv that keeps the spatial size (stride 1) or halves it (stride 2), padded in a drawn way."""
        c, h, w = self.shapes[v]
        pad = k // 2
        bias = self.draw(st.booleans()) if bias is None else bias
        style = self.draw(st.sampled_from(["zeros", "reflect", "replicate", "pad_reflect", "pad_zero"])) \
            if pad else "zeros"
        if style.startswith("pad_") and min(h, w) > pad:
            pm = nn.ReflectionPad2d(pad) if style == "pad_reflect" else nn.ZeroPad2d(pad)
            v = self.layer(pm, v, (c, h + 2 * pad, w + 2 * pad))
            m = nn.Conv2d(c, c_out, k, stride, 0, groups=groups, bias=bias)
        else:
            mode = style if style in ("zeros", "reflect", "replicate") and min(h, w) > pad else "zeros"
            m = nn.Conv2d(c, c_out, k, stride, pad, groups=groups, bias=bias, padding_mode=mode)
        oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
        return self.layer(m, v, (c_out, oh, ow))

    def conv_norm_act(self, v: int, c_out: int, **kw: Any) -> int:
        return self.act(self.norm(self.conv(v, c_out, **kw)))

    # ---------------------------------------------------------------- blocks
    def stem(self) -> int:
        k = self.draw(st.sampled_from([3, 5, 7]))
        return self.conv_norm_act(self.cur, self.width(), k=k)

    def down(self, v: int) -> int:
        c_out = self.width()
        if self.draw(st.booleans()):
            return self.conv_norm_act(v, c_out, k=3, stride=2)
        c, h, w = self.shapes[v]
        m = nn.Conv2d(c, c_out, 4, 2, 1, bias=self.draw(st.booleans()))
        return self.act(self.norm(self.layer(m, v, (c_out, h // 2, w // 2))))

    def residual(self, v: int) -> int:
        c = self.c(v)
        kind = self.draw(st.sampled_from(["plain", "mobile", "grouped", "scaled"]))
        if kind == "mobile":
            # GAN Compression's block: [depthwise 3x3 -> norm -> pointwise 1x1] -> norm -> act ->
            # [depthwise 3x3 -> norm -> pointwise 1x1] -> norm; the first depthwise may multiply channels.
            mult = self.draw(st.sampled_from([1, 1, 2]))
            h = self.norm(self.conv(v, c * mult, k=3, groups=c))
            h = self.act(self.norm(self.conv(h, self.width(), k=1)))
            h = self.norm(self.conv(h, self.c(h), k=3, groups=self.c(h)))
            h = self.norm(self.conv(h, c, k=1))
        elif kind == "grouped":
            g = self.draw(st.sampled_from([2, 4]))
            if c % g:
                return self.residual_plain(v)
            inner = self.width(g, 16, multiple=g)
            h = self.conv_norm_act(v, inner, k=3, groups=g)
            h = self.norm(self.conv(h, c, k=3, groups=g))
        else:
            return self.residual_plain(v, scaled=kind == "scaled")
        return self.emit(Op("add", (v, h)), self.shapes[v])

    def residual_plain(self, v: int, scaled: bool = False) -> int:
        c = self.c(v)
        h = self.conv_norm_act(v, self.width())
        h = self.norm(self.conv(h, c))
        if scaled:
            h = self.emit(Op("scale", (h, 0.2)), self.shapes[h])
        if self.draw(st.booleans()):
            return self.emit(Op("add", (v, h)), self.shapes[v])
        return self.emit(Op("add", (h, v)), self.shapes[v])

    def dense(self, v: int) -> int:
        """RRDB-like: x_i = act(conv(cat(x, x_1..x_{i-1}))), out = conv(cat(all)) * 0.2 + x."""
        c, hh, ww = self.shapes[v]
        gc = self.width(2, 8)
        feats = [v]
        for _ in range(self.draw(st.integers(2, 3))):
            src = feats[0] if len(feats) == 1 else self.emit(
                Op("cat", (tuple(feats),)), (sum(self.c(f) for f in feats), hh, ww))
            feats.append(self.act(self.conv(src, gc, bias=True)))
        cat = self.emit(Op("cat", (tuple(feats),)), (sum(self.c(f) for f in feats), hh, ww))
        out = self.emit(Op("scale", (self.conv(cat, c, bias=True), 0.2)), (c, hh, ww))
        return self.emit(Op("add", (out, v)), (c, hh, ww))

    def gate(self, v: int) -> int:
        """Attention gate: a 1-channel sigmoid map multiplied onto v (broadcast, no channel coupling)."""
        c, h, w = self.shapes[v]
        a = self.conv(v, 1, k=3, bias=True)
        a = self.emit(Op("act", (a, "sigmoid")), (1, h, w))
        return self.emit(Op("mul", (v, a)), (c, h, w))

    def cat_width(self, v: int) -> int:
        """cat along the width couples the channels of both inputs (then pool the width back)."""
        c, h, w = self.shapes[v]
        other = self.conv_norm_act(v, c)
        return self.emit(Op("cat_w", (v, other)), (c, h, w))

    def shuffle(self, v: int) -> int:
        """A channel permutation with no known channel mapping: a shuffle through view / transpose /
        reshape, or a roll / flip along dim 1 (these keep the shape, so only the mapping betrays them)."""
        c, h, w = self.shapes[v]
        kind = self.draw(st.sampled_from(["view", "roll", "flip"]))
        if kind != "view":
            return self.emit(Op(kind, (v,)), (c, h, w))
        if c % 2:
            v = self.conv_norm_act(v, c + 1)
            c += 1
        return self.emit(Op("channel_shuffle", (v, 2)), (c, h, w))

    def up(self, v: int) -> int:
        c, h, w = self.shapes[v]
        kind = self.draw(st.sampled_from(["convT", "convT4", "convT_grouped", "convT_depthwise", "nearest",
                                          "bilinear", "pixel_shuffle"]))
        if kind in ("convT", "convT4", "convT_grouped"):
            groups = 2 if kind == "convT_grouped" and c % 2 == 0 else 1
            c_out = self.width(2, 16, multiple=groups)
            m = nn.ConvTranspose2d(c, c_out, 3, 2, 1, output_padding=1, groups=groups) if kind != "convT4" \
                else nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=self.draw(st.booleans()))
            return self.act(self.norm(self.layer(m, v, (c_out, 2 * h, 2 * w))))
        if kind == "convT_depthwise":
            m = nn.ConvTranspose2d(c, c, 4, 2, 1, groups=c)
            u = self.layer(m, v, (c, 2 * h, 2 * w))
            return self.conv_norm_act(u, self.width(), k=1)
        if kind == "pixel_shuffle":
            r = 2
            c_out = self.width()
            u = self.conv(v, c_out * r * r)
            if self.draw(st.booleans()):
                u = self.layer(nn.PixelShuffle(r), u, (c_out, 2 * h, 2 * w))
            else:
                u = self.emit(Op("pixel_shuffle", (u, r)), (c_out, 2 * h, 2 * w))
            return self.act(u)
        if self.draw(st.booleans()):
            u = self.emit(Op("interp", (v, kind)), (c, 2 * h, 2 * w))
        else:
            m = nn.Upsample(scale_factor=2, mode=kind) if kind == "nearest" \
                else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            u = self.layer(m, v, (c, 2 * h, 2 * w))
        return self.conv_norm_act(u, self.width())

    def head(self, v: int) -> int:
        c_out = self.draw(st.integers(1, 4))
        k = self.draw(st.sampled_from([1, 3, 7]))
        v = self.conv(v, c_out, k=k, bias=True)
        if self.draw(st.booleans()):
            v = self.layer(nn.Tanh(), v, self.shapes[v])
        return v


def _randomize(module: nn.Module, seed: int) -> None:
    """Give every parameter and norm statistic random values (the defaults 1 / 0 hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / max(1, m.weight[0].numel())) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    module.eval()


@st.composite
def generator_nets(draw: Any, *, allow_unknown: bool = True, max_blocks: int = 3,
                   max_down: int = 2) -> tuple[GeneratedNet, torch.Tensor]:
    """A random generator-like :class:`GeneratedNet` (eval mode, randomized params) and an example input.

    Args:
        allow_unknown: also draw an op whose channel mapping is unknown (a channel shuffle through
            view / transpose / reshape, ``torch.roll`` or ``flip`` along dim 1), which the channel analysis
            must pin.
        max_blocks: most body blocks (residual / dense / gate / cat along width / shuffle) at the bottleneck.
        max_down: most stride-2 downsamplings (each matched by an upsampling stage).
    """
    in_channels = draw(st.sampled_from([1, 3, 4]))
    height = draw(st.sampled_from([8, 12, 16, 24, 32]))
    width = draw(st.sampled_from([height, 8, 16]))
    batch = draw(st.integers(1, 2))
    b = _Builder(draw, in_channels, height, width, allow_unknown)

    v = b.stem()
    n_down = draw(st.integers(0, max_down))
    unet = draw(st.booleans())
    skips = []
    for _ in range(n_down):
        if min(b.hw(v)) < 8:
            break
        skips.append(v)
        v = b.down(v)
    body = ["residual", "residual", "dense", "gate", "cat_width"] + (["shuffle"] if allow_unknown else [])
    blocks = {"residual": b.residual, "dense": b.dense, "gate": b.gate, "cat_width": b.cat_width,
              "shuffle": b.shuffle}
    for _ in range(draw(st.integers(0, max_blocks))):
        v = blocks[draw(st.sampled_from(body))](v)
    for skip in reversed(skips):
        v = b.up(v)
        if b.hw(v) != b.hw(skip):  # cannot happen with even sizes; keep shapes honest if it does
            raise AssertionError(f"upsampled to {b.hw(v)}, skip is {b.hw(skip)}")
        if unet:
            order = (skip, v) if draw(st.booleans()) else (v, skip)
            v = b.emit(Op("cat", (order,)), (b.c(skip) + b.c(v), *b.hw(v)))
            v = b.conv_norm_act(v, b.width())
        elif draw(st.booleans()):
            v = b.emit(Op("add", (v, b.conv(skip, b.c(v), k=1))), b.shapes[v])
    v = b.head(v)

    net = GeneratedNet(b.layers, b.program)
    seed = draw(st.integers(0, 2**31 - 1))
    _randomize(net, seed)
    x = torch.randn(batch, in_channels, height, width, generator=torch.Generator().manual_seed(seed + 1))
    return net, x


def examples(ci: int) -> int:
    """``max_examples`` for a property too slow for the default count in CI: ``ci`` there (and under ``dev``),
    the profile's 1000 under ``thorough`` (every pass property runs 1000 examples in ``make test-thorough``)."""
    import os

    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "thorough":
        return settings().max_examples
    return min(ci, settings().max_examples)
