"""Once-for-all supernets (GAN Compression): configurations, selection, extraction, search spaces.

A supernet is a traced network after the ``make-supernet`` pass (:mod:`gcompiler.passes.supernet`):
one run-time width per prunable channel group, weights sliced to their first ``k`` channels.

Configurations take two forms:

* **a per-group width dict** ``{group name: units}`` for any traced model (groups and their full
  widths in ``supernet.meta["supernet"]["groups"]``; groups not named stay at full width);
* **GAN Compression's 8-integer string** for the ResNet generator family (``resnet_9blocks``,
  ``mobile_resnet_9blocks`` and their ``model.N`` layout): ``"16_16_32_16_32_32_16_16"`` =
  ``c0..c7`` with widths stem ``c0``, first down conv ``2*c1``, trunk (second down conv and every
  residual block's output) ``4*c2``, hidden width of blocks 1-3 / 4-6 / 7-9 ``4*c3`` / ``4*c4`` /
  ``4*c5`` (the residual blocks split in three equal runs), first up conv ``2*c6``, second up conv
  ``c7`` (``mit-han-lab/gan-compression``'s ``configs`` and ``SuperMobileResnetGenerator``).

Public API (also as ``gcompiler.set_config`` / ``gcompiler.extract``):

* :func:`set_config` selects a sub-network in place (training, evaluation), returns its width dict;
* :func:`extract` returns the sub-network as a plain slim GraphModule (same output, exactly);
* :func:`subnet_cost` prices a configuration (MACs, params) without building it;
* :func:`encode_config` / :func:`decode_config`: the string codec; :func:`resnet_slots` finds the 8
  positions in a supernet; :func:`search_space` gives the choices per position for the search.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import torch.fx as fx

from .errors import ConfigError
from .passes.supernet import apply_widths, extract_widths, is_supernet
from .passes.supernet import subnet_cost as _plan_cost

__all__ = ["set_config", "extract", "subnet_cost", "encode_config", "decode_config", "resnet_slots",
           "config_to_widths", "widths_to_config", "search_space", "SearchSpace", "make_supernet", "GROUP_CHOICES"]

Config = "str | Sequence[int] | Mapping[str, int]"

#: GAN Compression's ``channels-64-cycleGAN`` choices per position at ngf 64 (scaled to other ngf).
RESNET_CHOICES_64 = (64, 48, 32, 24, 16)
#: Fractions of a group's full width offered for any traced model.
GROUP_CHOICES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


# ------------------------------------------------------------------------------------------------
# the string codec

def encode_config(values: Sequence[int]) -> str:
    """``[16, 16, 32, ...]`` -> ``"16_16_32_..."``."""
    vals = list(values)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ConfigError(f"a channel configuration is a list of positive integers, got {values!r}")
    return "_".join(str(v) for v in vals)


def decode_config(text: str | Sequence[int]) -> list[int]:
    """``"16_16_32_16_32_32_16_16"`` -> ``[16, 16, 32, 16, 32, 32, 16, 16]`` (8 integers; or the legacy 6)."""
    from .models.mobile_resnet import parse_config

    return parse_config(text, "supernet")


# ------------------------------------------------------------------------------------------------
# the ResNet layout

_HIDDEN = re.compile(r"^model\.(\d+)\.conv_block\.1(\.conv\.2)?$")


@dataclasses.dataclass(frozen=True)
class ResnetSlots:
    """Group names of the 8 positions: ``stem``, ``down1``, ``trunk``, ``hidden`` (one per block), ``up1``, ``up2``."""

    stem: str
    down1: str
    trunk: str
    hidden: tuple[str, ...]
    up1: str
    up2: str
    ngf: int


def resnet_slots(supernet: fx.GraphModule) -> ResnetSlots | None:
    """The groups behind GAN Compression's 8 positions, or None when the graph is not of that family."""
    meta = _meta(supernet)
    groups: dict[str, int] = meta["groups"]
    target_of = {n.name: str(n.target) for n in supernet.graph.nodes if n.op == "call_module"}
    by_target = {target_of.get(g): g for g in groups}
    hidden: list[tuple[int, str]] = []
    for g in groups:
        m = _HIDDEN.match(target_of.get(g, ""))
        if m:
            hidden.append((int(m.group(1)), g))
    hidden.sort()
    nb = len(hidden)
    if nb == 0 or nb % 3 or [i for i, _ in hidden] != list(range(10, 10 + nb)):
        return None
    names = {"stem": "model.1", "down1": "model.4", "trunk": "model.7", "up1": f"model.{10 + nb}",
             "up2": f"model.{13 + nb}"}
    found = {k: by_target.get(t) for k, t in names.items()}
    if any(v is None for v in found.values()):
        return None
    ngf = groups[found["stem"]]
    want = {"down1": 2 * ngf, "trunk": 4 * ngf, "up1": 2 * ngf, "up2": ngf}
    if any(groups[found[k]] != v for k, v in want.items()) or any(groups[g] != 4 * ngf for _, g in hidden):
        return None
    return ResnetSlots(found["stem"], found["down1"], found["trunk"], tuple(g for _, g in hidden), found["up1"],
                       found["up2"], ngf)


def config_to_widths(supernet: fx.GraphModule, config: Any) -> dict[str, int]:
    """Any accepted configuration form -> ``{group: units}`` (validated; groups not named at full width)."""
    from .passes.supernet import check_widths

    if isinstance(config, Mapping):
        return check_widths(supernet, {str(k): v for k, v in config.items()})
    slots = resnet_slots(supernet)
    if slots is None:
        groups = list(_meta(supernet)["groups"])
        raise ConfigError(f"a channel-configuration string needs a ResNet generator of the model.N layout "
                          f"(resnet_9blocks / mobile_resnet_9blocks); this supernet takes a width dict over its "
                          f"groups: {groups}")
    c = decode_config(config)
    nb = len(slots.hidden)
    if len(c) == 6:
        hidden = [4 * c[3]] * nb
        up1, up2 = 2 * c[4], c[5]
    else:
        hidden = [4 * c[3 + min(i * 3 // nb, 2)] for i in range(nb)]
        up1, up2 = 2 * c[6], c[7]
    widths = {slots.stem: c[0], slots.down1: 2 * c[1], slots.trunk: 4 * c[2], slots.up1: up1, slots.up2: up2}
    widths.update(zip(slots.hidden, hidden))
    groups = _meta(supernet)["groups"]
    over = [f"{g}={w} > {groups[g]}" for g, w in widths.items() if w > groups[g]]
    if over:
        raise ConfigError(f"configuration {encode_config(c)!r} asks for more channels than the supernet has "
                          f"(ngf {slots.ngf}: each integer is at most {slots.ngf}): {', '.join(over)}")
    return check_widths(supernet, widths)


def widths_to_config(supernet: fx.GraphModule, widths: Mapping[str, int]) -> str | None:
    """The 8-integer string of a width dict, or None when the widths have no such form."""
    slots = resnet_slots(supernet)
    if slots is None:
        return None
    full = dict(_meta(supernet)["groups"])
    full.update(widths)
    nb = len(slots.hidden)
    runs = [[full[g] for g in slots.hidden[i * nb // 3:(i + 1) * nb // 3]] for i in range(3)]
    if any(len(set(r)) != 1 for r in runs):
        return None
    vals = [full[slots.stem], full[slots.down1], full[slots.trunk], runs[0][0], runs[1][0], runs[2][0],
            full[slots.up1], full[slots.up2]]
    mult = [1, 2, 4, 4, 4, 4, 2, 1]
    if any(v % m for v, m in zip(vals, mult)):
        return None
    return encode_config([v // m for v, m in zip(vals, mult)])


# ------------------------------------------------------------------------------------------------
# selection and extraction

def _meta(supernet: fx.GraphModule) -> dict[str, Any]:
    if not is_supernet(supernet):
        raise ConfigError("expected a supernet (a GraphModule after the 'make-supernet' pass): "
                          "gcompiler.compile(model, 'make-supernet', x)")
    return supernet.meta["supernet"]


def set_config(supernet: fx.GraphModule, config: Any) -> dict[str, int]:
    """Select the sub-network ``config`` (8-integer string / list, or ``{group: units}``) in place.

    Returns the full width dict now active. Nothing is retraced; the next forward runs the sub-network.
    """
    return apply_widths(supernet, config_to_widths(supernet, config))


def extract(supernet: fx.GraphModule, config: Any = None) -> fx.GraphModule:
    """The sub-network ``config`` (default: the active one) as a plain slim GraphModule with its own weights.

    Its output equals the supernet's at that configuration exactly; the supernet is left unchanged.
    """
    widths = None if config is None else config_to_widths(supernet, config)
    sub = extract_widths(supernet, widths)
    label = widths_to_config(supernet, sub.meta["subnet_widths"])
    if label is not None:
        sub.meta["subnet_config"] = label
    return sub


def subnet_cost(supernet: fx.GraphModule, config: Any = None) -> dict[str, int]:
    """``{"macs", "params"}`` of a sub-network at the supernet's recorded input shape, without building it."""
    widths = None if config is None else config_to_widths(supernet, config)
    return _plan_cost(supernet, widths)


def make_supernet(model_or_gm: Any, *example_inputs: Any) -> fx.GraphModule:
    """Trace (if needed) and run ``make-supernet``; returns the supernet (the argument is not modified)."""
    from .passes.manager import compile as _compile

    return _compile(model_or_gm, "make-supernet", *example_inputs)


# ------------------------------------------------------------------------------------------------
# search spaces

@dataclasses.dataclass
class SearchSpace:
    """Choices per position; a candidate is a tuple with one choice per position.

    ``kind`` is ``"resnet"`` (positions are the 8 integers of the config string) or ``"groups"``
    (positions are channel groups, values their widths in units).
    """

    kind: str
    positions: list[str]
    choices: list[list[int]]

    @property
    def size(self) -> int:
        n = 1
        for c in self.choices:
            n *= len(c)
        return n

    def to_config(self, values: Sequence[int]) -> Any:
        """The configuration a candidate stands for (string or width dict)."""
        if self.kind == "resnet":
            return encode_config(list(values))
        return {p: int(v) for p, v in zip(self.positions, values)}

    def label(self, values: Sequence[int]) -> str:
        if self.kind == "resnet":
            return encode_config(list(values))
        return ",".join(f"{p}={v}" for p, v in zip(self.positions, values))

    def largest(self) -> tuple[int, ...]:
        return tuple(max(c) for c in self.choices)

    def smallest(self) -> tuple[int, ...]:
        return tuple(min(c) for c in self.choices)


def _round(v: float, step: int, full: int) -> int:
    k = int(round(v / step)) * step
    return max(min(k, full), min(step, full))


def search_space(supernet: fx.GraphModule, *, choices: Sequence[float] | None = None, round_to: int = 4,
                 form: str = "auto") -> SearchSpace:
    """The search space of ``supernet``.

    ``form="auto"``: the 8-integer space for a ResNet generator (GAN Compression's per-position choices
    ``{64, 48, 32, 24, 16}`` scaled to its ngf, or ``choices`` as fractions of ngf), else one position per
    sliceable group with ``choices`` (default :data:`GROUP_CHOICES`) as fractions of its full width,
    rounded to multiples of ``round_to`` units (the full width is always offered).
    """
    meta = _meta(supernet)
    slots = resnet_slots(supernet) if form in ("auto", "resnet") else None
    if form == "resnet" and slots is None:
        raise ConfigError("search space form 'resnet' needs a ResNet generator of the model.N layout")
    if slots is not None:
        ngf = slots.ngf
        fr = [v / 64 for v in RESNET_CHOICES_64] if choices is None else list(choices)
        vals = sorted({max(1, min(ngf, int(round(f * ngf)))) for f in fr}, reverse=True)
        return SearchSpace("resnet", ["stem", "down1", "trunk", "hidden1", "hidden2", "hidden3", "up1", "up2"],
                           [list(vals) for _ in range(8)])
    fr = list(GROUP_CHOICES if choices is None else choices)
    if any(not 0 < f <= 1 for f in fr):
        raise ConfigError(f"width choices are fractions in (0, 1], got {fr}")
    positions, opts = [], []
    for g, full in meta["groups"].items():
        vals = sorted({_round(f * full, round_to, full) for f in fr} | {full}, reverse=True)
        positions.append(g)
        opts.append(vals)
    if not positions:
        raise ConfigError("the supernet has no sliceable channel group: nothing to search "
                          f"(fixed groups: {meta['fixed'] or 'none'})")
    return SearchSpace("groups", positions, opts)
