"""Post-training calibration of activation clip values (min/max or percentile over a few batches).

As a pass (``calibrate-activations``, data from ``gm.meta["calibration_inputs"]`` or the ``data`` option)::

    job.rewrite(gm, "insert-fake-quant{weight_bits=8,act_bits=8},calibrate-activations{method=percentile}")

As a function::

    gm = gcompiler.compile(model, "fold-norms,insert-fake-quant{act_range=signed}", x)
    clips = calibrate(gm, [batch1, batch2, batch3], method="percentile", percentile=99.99)

While calibrating, every :class:`~gcompiler.quant.quantizers.ActFakeQuant` passes its input through in float
and records statistics, so each layer sees the float activations of the layers before it (weights stay
fake-quantized, as they will be deployed). Afterwards each
quantizer's clip is set to

* ``minmax``: the largest value seen (unsigned: ``max x``; signed: ``max |x|``) over all batches;
* ``percentile``: the given percentile of ``x`` (unsigned) or ``|x|`` (signed) over a bounded uniform random
  sample of the values of all batches (``max_samples`` per quantizer), which ignores rare outliers.

A quantizer that only saw values <= 0 (unsigned) or only zeros keeps a tiny positive clip (1e-8). Learnable
clips are set too (calibration is a good initialisation for ``learn_clip``).
"""
from __future__ import annotations

from typing import Any, Iterable, Literal

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError, DataError, PassError
from ..passes.registry import Contract, register_pass
from .quantizers import ActFakeQuant

_MIN_CLIP = 1e-8


class _Observer:
    def __init__(self, signed: bool, method: str, max_samples: int, generator: torch.Generator) -> None:
        self.signed, self.method, self.max_samples, self.gen = signed, method, max_samples, generator
        self.max = 0.0
        self.samples: list[torch.Tensor] = []
        self.seen = 0

    def observe(self, x: torch.Tensor) -> None:
        v = x.detach().reshape(-1).float()
        v = v.abs() if self.signed else v
        if v.numel() == 0:
            return
        self.max = max(self.max, float(v.max()))
        self.seen += v.numel()
        if self.method == "percentile":
            if v.numel() > self.max_samples:
                idx = torch.randint(0, v.numel(), (self.max_samples,), generator=self.gen)
                v = v[idx.to(v.device)]
            self.samples.append(v.cpu())

    def value(self, percentile: float) -> float:
        if self.method == "minmax" or not self.samples:
            return self.max
        allv = torch.cat(self.samples)
        if allv.numel() > self.max_samples:
            idx = torch.randint(0, allv.numel(), (self.max_samples,), generator=self.gen)
            allv = allv[idx]
        return float(torch.quantile(allv, percentile / 100.0))


def act_quantizers(model: nn.Module) -> dict[str, ActFakeQuant]:
    """Every activation fake quantizer in ``model`` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ActFakeQuant)}


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]], *,
              method: Literal["minmax", "percentile"] = "minmax", percentile: float = 99.99,
              max_samples: int = 1 << 18, seed: int = 0) -> dict[str, float]:
    """Set every activation quantizer's clip from statistics over ``batches``; returns ``{path: clip}``.

    ``batches`` yields model inputs (a tensor, or a tuple of positional inputs). The model runs in eval mode
    without gradients; its training flags are restored afterwards.

    Raises:
        ConfigError: unknown ``method``, ``percentile`` outside (0, 100], or no activation quantizer in the model.
        DataError: ``batches`` is empty.
    """
    if method not in ("minmax", "percentile"):
        raise ConfigError(f"calibrate: method must be 'minmax' or 'percentile', got {method!r}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"calibrate: percentile must be in (0, 100], got {percentile}")
    quants = act_quantizers(model)
    if not quants:
        raise ConfigError("calibrate: the model has no activation quantizer; run insert-fake-quant first")
    gen = torch.Generator().manual_seed(seed)
    observers = {name: _Observer(q.act_range == "signed", method, max_samples, gen) for name, q in quants.items()}
    flags = {m: m.training for m in model.modules()}
    model.eval()
    n = 0
    try:
        for name, q in quants.items():
            q.observer = observers[name]
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                n += 1
    finally:
        for q in quants.values():
            q.observer = None
        for m, t in flags.items():
            m.training = t
    if n == 0:
        raise DataError("calibrate: no batches were given")
    clips = {}
    for name, q in quants.items():
        value = max(observers[name].value(percentile), _MIN_CLIP)
        q.set_clip(value)
        clips[name] = float(q.clip.detach())
    return clips


@register_pass("calibrate-activations", contract=Contract.changes_semantics(), preserves=("channel-groups",))
def calibrate_activations(gm: fx.GraphModule, *, method: Literal["minmax", "percentile"] = "percentile",
                          percentile: float = 99.99, batches: int = 0, max_samples: int = 1 << 18,
                          seed: int = 0, data: Any = None) -> fx.GraphModule:
    """Set every activation quantizer's clip from the float activations on calibration batches (:func:`calibrate`).

    Data: the ``data`` option (an iterable of input batches; Python pipelines only), else
    ``gm.meta["calibration_inputs"]`` (a list of input batches the caller puts there, e.g. a method's
    training batches). ``batches`` > 0 uses only the first that many. The clips are recorded in
    ``gm.meta["act_clips"]`` (quantizer path -> clip).

    Contract: changes semantics (the clips move; where they cut activations is decided by the data).
    """
    source = data if data is not None else gm.meta.get("calibration_inputs")
    if source is None:
        raise PassError("calibrate-activations: no calibration data; put a list of input batches in "
                        "gm.meta['calibration_inputs'] or pass [('calibrate-activations', {'data': batches})]")
    if batches < 0:
        raise PassError(f"calibrate-activations{{batches}} must be >= 0, got {batches}")
    items = list(source)[:batches] if batches else list(source)
    try:
        device = next(iter(gm.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    moved = [tuple(t.to(device) for t in b) if isinstance(b, (tuple, list)) else b.to(device) for b in items]
    try:
        clips = calibrate(gm, moved, method=method, percentile=percentile, max_samples=max_samples, seed=seed)
    except (ConfigError, DataError) as exc:
        raise PassError(f"calibrate-activations: {exc}") from exc
    gm.meta["act_clips"] = clips
    return gm
