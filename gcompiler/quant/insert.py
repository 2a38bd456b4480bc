"""Pass ``insert-fake-quant``: GAN-Slimming-style quantization-aware graphs, with per-layer mixed precision.

Per-layer overrides (option ``overrides``) are text::

    overrides := rule (";" rule)*
    rule      := GLOB ":" SPEC
    SPEC      := "float"                 leave this conv untouched (float weight, float input)
               | PART [PART]             PART := ("w" | "a") (BITS | "f")

``GLOB`` is an ``fnmatch`` pattern (``*``, ``?``, ``[..]``) matched against both the conv node's name
(``model_1``, ``model_10_conv_block_1``) and its module path (``model.1``, ``model.10.conv_block.1``).
The *first* matching rule decides; a part a rule leaves out falls back to the pass options, ``f`` keeps that
part float. Examples::

    "model_1:w8a8;model_26:w8a8;*:w4a4"      first and last conv at 8 bits, everything else at 4
    "model.19:w8;model.22:w8"                the two transposed convs of resnet_9blocks get 8-bit weights
    "*conv_block*:w4;model_26:float"         4-bit weights in the residual blocks, last conv left in float

Rules are separated by ``;`` (or ``|``), the list syntax of every pass option
(:func:`gcompiler.passes.registry.parse_list`); they contain no commas, so the option reads unquoted in
pipeline text (``"insert-fake-quant{act_bits=8,overrides=model_1:w8a8;*:w4a4}"``); surrounding quotes are
stripped. Every rule must match at least one conv that it decides; an unused rule (a typo, or one shadowed
by an earlier rule) is an error that lists the conv names. The image input of a conv fed by a graph input
through value-preserving ops only (:func:`image_input_convs`) stays float unless ``quantize_first_input`` is
set, whatever the overrides say.

Ranges and contract: :func:`nonnegative_input` (the sign analysis behind ``act_range=auto``) and
:func:`fake_quant_bound` (the per-input, bits- and clip-dependent bound of :mod:`gcompiler.quant.error_bound`).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PassError
from ..fx.utils import not_plain_reason, replace_module
from ..passes.registry import Contract, parse_list, register_pass
from .qmodules import QUANT_CONV_TYPES, QConv2d, QConvTranspose2d
from .ranges import PAD_MODULES, image_input_convs, nonnegative_input  # noqa: F401  (public here as well)
from .quantizers import act_qrange, weight_levels

log = logging.getLogger("gcompiler.quant")

_FLOAT = None  # a bit width of None means "keep float"


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Bit widths decided for one conv; ``None`` keeps that part float."""

    weight_bits: int | None
    act_bits: int | None


@dataclasses.dataclass
class OverrideRule:
    pattern: str
    weight_bits: int | None | Literal["default"]
    act_bits: int | None | Literal["default"]
    text: str
    used: int = 0


_PART = re.compile(r"([wa])(\d+|f)")


def parse_overrides(text: str) -> list[OverrideRule]:
    """Parse the ``overrides`` option (grammar in the module docstring)."""
    rules: list[OverrideRule] = []
    for raw in parse_list(text, "insert-fake-quant{overrides}"):  # the one list syntax: ';' (or '|')
        rule = raw.strip()
        if not rule:
            continue
        if ":" not in rule:
            raise PassError(f"insert-fake-quant{{overrides}}: rule {rule!r} needs the form GLOB:SPEC, e.g. "
                            "'model_1:w8a8' or '*:w4a4' or 'model_26:float'")
        pattern, spec = (s.strip() for s in rule.rsplit(":", 1))
        if not pattern:
            raise PassError(f"insert-fake-quant{{overrides}}: rule {rule!r} has an empty pattern")
        w: int | None | Literal["default"] = "default"
        a: int | None | Literal["default"] = "default"
        if spec.lower() == "float":
            w, a = None, None
        else:
            pos = 0
            seen = set()
            for m in _PART.finditer(spec):
                if m.start() != pos or m.group(1) in seen:
                    break
                seen.add(m.group(1))
                value = None if m.group(2) == "f" else int(m.group(2))
                if m.group(1) == "w":
                    w = value
                else:
                    a = value
                pos = m.end()
            if pos != len(spec) or not seen:
                raise PassError(f"insert-fake-quant{{overrides}}: cannot read spec {spec!r} in rule {rule!r}; "
                                "write 'float' or parts like 'w8a8', 'w4', 'a8', 'w8af' (f = keep float)")
        rules.append(OverrideRule(pattern, w, a, rule))
    return rules


def fake_quant_bound(gm: fx.GraphModule, *inputs: torch.Tensor) -> tuple[float, str | None]:
    """The contract of ``insert-fake-quant``: a bound, on ``inputs``, of how far the fake-quantized
    graph ``gm`` is from the float graph it was made from, relative to ``max|y|`` (``(bound, reason)``;
    ``inf`` with the reason where an op without an error rule is reached).

    The quantized weights and the clips are run exactly (the systematic network); the rounding of activations
    to their grids is carried as noise, 8 standard deviations allowed. It depends on the bits, the clips and
    the network on these inputs; derivation, rules and measured tightness: :mod:`gcompiler.quant.error_bound`.
    """
    from .error_bound import quantization_error_bound

    return quantization_error_bound(gm, *inputs)


def _decide(node: fx.Node, rules: list[OverrideRule], default: LayerSpec) -> LayerSpec:
    names = (node.name, str(node.target))
    for r in rules:
        if any(fnmatch.fnmatchcase(n, r.pattern) for n in names):
            r.used += 1
            w = default.weight_bits if r.weight_bits == "default" else r.weight_bits
            a = default.act_bits if r.act_bits == "default" else r.act_bits
            return LayerSpec(w, a)
    return default


def _contract(opts: dict) -> Contract:
    """The contract of ``insert-fake-quant``, whatever the options: :func:`fake_quant_bound` evaluated on the
    inputs the verifier checks with (clips that cut activations are part of that bound)."""
    return Contract.bounded(fake_quant_bound, "bound of the quantization error: weights and clips run exactly, rounding noise at 8 sigma")


COVER_HEADROOM = 2.0  # act_clip=None: clip = this x the largest |input| seen on random example inputs
COVER_BATCHES = 3


@register_pass("insert-fake-quant", contract=_contract)
def insert_fake_quant(gm: fx.GraphModule, *, weight_bits: int = 8, act_bits: int = 8,
                      act_range: Literal["auto", "unsigned", "signed"] = "auto", act_clip: float | None = None,
                      per_channel: bool = False, learn_clip: bool = False, quantize_first_input: bool = False,
                      overrides: str = "") -> fx.GraphModule:
    """Replace every plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` by a fake-quant ``QConv2d`` / ``QConvTranspose2d``.

    Placement (GAN Slimming): the input of every conv and transposed conv is fake-quantized to ``act_bits``
    within ``[0, act_clip]`` (unsigned) or ``[-act_clip, act_clip]`` (signed): ``act_range=auto`` (default)
    picks unsigned where the input is non-negative by construction (after a ReLU, see
    :func:`nonnegative_input`) and signed elsewhere; ``unsigned`` / ``signed`` force one range everywhere (GS:
    unsigned with clip 4, which zeroes every negative conv input). The weight is quantized symmetrically to
    ``weight_bits`` (per tensor, or per output channel with ``per_channel``; dim 1 of transposed conv
    weights). Norms, activations and additions stay float. The image input of the first conv(s) (a graph
    input seen through padding, casts, identity and ``clamp(-1, 1)``: :func:`image_input_convs`) stays float
    unless ``quantize_first_input``. ``act_clip=None`` (default) sets each clip to cover its activations
    (:func:`cover_clips`: twice the largest |input| seen on random example inputs; ``calibrate-activations``
    sets them from data), a number fixes every clip (GS: 4). ``learn_clip`` makes each clip value a parameter
    with the PACT/LSQ gradient. ``overrides`` sets bit widths per layer (grammar: :mod:`gcompiler.quant.insert`).
    The result trains (straight-through gradients) and is the input of ``convert-to-int``. The chosen ranges are in
    ``gm.meta["quant_config"]``.

    Contract: approximate, per input: the output moves by at most :func:`fake_quant_bound` x ``max|y|``, which
    the verifier evaluates on the inputs it checks with (weights and clips run exactly, activation rounding
    as noise). It holds for every clip setting; a clip that cuts the activations (GS's fixed ``[0, 4]`` on a
    network whose activations reach beyond 4) raises the bound, it does not void it.
    """
    rules = parse_overrides(overrides)
    check_range = "signed" if act_range == "auto" else act_range
    try:
        weight_levels(weight_bits)
        act_qrange(act_bits, check_range)
    except ConfigError as e:
        raise PassError(f"insert-fake-quant: {e}") from None
    if act_clip is not None and not (math.isfinite(act_clip) and act_clip > 0):
        raise PassError(f"insert-fake-quant{{act_clip}}: must be a finite number > 0 (or none), got {act_clip}")
    for r in rules:
        try:
            if r.weight_bits not in (None, "default"):
                weight_levels(int(r.weight_bits))
            if r.act_bits not in (None, "default"):
                act_qrange(int(r.act_bits), check_range)
        except ConfigError as e:
            raise PassError(f"insert-fake-quant{{overrides}}: rule {r.text!r}: {e}") from None

    default = LayerSpec(weight_bits, act_bits)
    first = image_input_convs(gm)
    convs: list[fx.Node] = []
    config: dict[str, dict[str, int | None]] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d, F.conv_transpose2d):
            log.warning("insert-fake-quant: functional convolution at node '%s' left in float (only nn.Conv2d / "
                        "nn.ConvTranspose2d modules are quantized)", node.name)
            continue
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, QUANT_CONV_TYPES):
            raise PassError(f"insert-fake-quant: node '{node.name}' ({node.target}) already carries fake "
                            "quantization; run the pass once (use overrides for per-layer bit widths)")
        if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d)):
            log.warning("insert-fake-quant: %s at node '%s' left in float (only 2-d convolutions are quantized)",
                        type(mod).__name__, node.name)
            continue
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            reason = not_plain_reason(mod)
            if reason is None:
                convs.append(node)
            else:
                log.warning("insert-fake-quant: %s at node '%s' left in float (not a plain convolution: %s)",
                            type(mod).__name__, node.name, reason)

    shared: dict[str, nn.Module] = {}
    for node in convs:
        target = str(node.target)
        spec = _decide(node, rules, default)
        if target in shared:  # one module called from several nodes: quantized once
            continue
        mod = gm.get_submodule(target)
        if spec.weight_bits is None and spec.act_bits is None:
            config[node.name] = {"weight_bits": None, "act_bits": None}
            continue
        quant_input = spec.act_bits is not None and (quantize_first_input or node not in first)
        rng = act_range
        if act_range == "auto":  # one module called from several nodes: signed unless every input is >= 0
            callers = [n for n in convs if str(n.target) == target]
            rng = "unsigned" if all(nonnegative_input(gm, n) for n in callers) else "signed"
        cls = QConvTranspose2d if isinstance(mod, nn.ConvTranspose2d) else QConv2d
        qmod = cls.from_float(mod, weight_bits=spec.weight_bits, per_channel=per_channel,
                              act_bits=spec.act_bits if quant_input else None, act_range=rng,
                              act_clip=4.0 if act_clip is None else act_clip, learn_clip=learn_clip)
        replace_module(gm, target, qmod)
        shared[target] = qmod
        config[node.name] = {"weight_bits": spec.weight_bits, "act_bits": qmod.act_bits,
                             "act_range": rng if qmod.act_bits is not None else None}

    unused = [r.text for r in rules if r.used == 0]
    if unused:
        names = ", ".join(f"{n.name} ({n.target})" for n in convs) or "(none)"
        raise PassError(f"insert-fake-quant{{overrides}}: rule(s) {', '.join(map(repr, unused))} matched no conv "
                        f"(a typo, or an earlier rule already decided every match). Conv nodes: {names}")
    gm.meta["quant_config"] = config
    gm.graph.lint()
    gm.recompile()
    if act_clip is None:
        cover_clips(gm)
    return gm


def cover_clips(gm: fx.GraphModule, *, headroom: float = COVER_HEADROOM, batches: int = COVER_BATCHES) -> None:
    """Set every activation clip to ``headroom`` x the largest |input| it sees on random example inputs.

    Random normal inputs of the recorded shapes (seeds 1000...) stand in for data; ``calibrate-activations``
    replaces these clips with clips measured on real batches.
    """
    from ..fx.utils import random_inputs
    from .calibrate import act_quantizers, calibrate

    if not act_quantizers(gm):
        return
    clips = calibrate(gm, [random_inputs(gm, seed=1000 + i) for i in range(batches)], method="minmax")
    quants = act_quantizers(gm)
    for name, value in clips.items():
        quants[name].set_clip(max(value, 1e-6) * headroom)


@register_pass("strip-fake-quant", contract=Contract.changes_semantics())
def strip_fake_quant(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace every fake-quant conv by the float conv it wraps (sharing its parameters): the inverse of
    ``insert-fake-quant``.

    Contract: changes semantics with respect to its input (the quantization error is taken out, and that
    error depends on the clips: unbounded in general); the result computes exactly what the float graph
    with the same weights computes. Drops ``gm.meta["quant_config"]``.
    """
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, QUANT_CONV_TYPES):
                replace_module(gm, str(node.target), mod.to_float())
    gm.meta.pop("quant_config", None)
    gm.graph.lint()
    gm.recompile()
    return gm
