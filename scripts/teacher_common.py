"""Shared pieces of the teacher-training scripts (``train_teacher.py``, ``train_cartoon.py``).

* :class:`TimeSchedule`: the learning-rate factor as a function of the step and of the wall time: a
  linear warm-up over ``warmup`` steps, then a cosine decay from 1 to 0.01 over either ``steps``
  optimizer steps or, with a time budget, over ``budget_s`` seconds of training wall time (the run
  stops when the budget is spent, so it ends on time on a shared machine with its learning rate
  annealed; the number of steps done is recorded).
* :func:`comma_list`: an argparse type for comma-separated option values.
* :func:`ema_update` / :func:`blend_state`: weight averaging during training; a blend of two networks.
* :func:`cutmix_pairs`: CutMix for aligned (input, target) batches of an integer scale.
* :func:`save_ckpt` / :func:`load_ckpt`: atomic training checkpoints (``torch.save`` into a temp file
  renamed into place; read back with ``weights_only=True``), so a run can be stopped at any time and
  the latest checkpoint exported.
* :func:`export_model`: a model's weights as an fp16 (or fp32) ``.safetensors`` package asset with its
  ``{"arch", "kwargs"}`` JSON record next to it, written atomically.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch


class TimeSchedule:
    """Learning-rate factor: warm-up, then cosine 1 -> 0.01 over steps or over a wall-time budget."""

    def __init__(self, *, steps: int, warmup: int, budget_s: float = 0.0) -> None:
        self.steps, self.warmup, self.budget_s = int(steps), int(warmup), float(budget_s)
        self.t0 = time.time()
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def progress(self, step: int) -> float:
        """Fraction of the run done, in [0, 1]."""
        if self.budget_s > 0:
            return min(1.0, self.elapsed() / self.budget_s)
        return min(1.0, step / max(1, self.steps))

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0 or (self.budget_s <= 0 and step >= self.steps)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = self.progress(step)
        if self.budget_s <= 0:
            t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def comma_list(convert: Callable[[str], Any], ok: Callable[[Any], bool], flag: str, rule: str
               ) -> Callable[[str], tuple[Any, ...]]:
    """An argparse ``type=`` for ``flag``: comma-separated values converted by ``convert``, each ``ok``
    (else an argparse error that states ``rule``), e.g. ``--scales 1,0.75,0.5``."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            out = tuple(convert(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated values, got {text!r}") from None
        if not all(ok(v) for v in out):
            raise argparse.ArgumentTypeError(f"{flag}: {rule}, got {text!r}")
        return out
    return parse


def name_weights(text: str) -> tuple[str, float]:
    """An argparse ``type=`` for ``NAME=WEIGHT`` (a photo's sampling weight, finite and >= 0)."""
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not name or not (math.isfinite(weight) and weight >= 0.0):
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT with a finite weight >= 0, got {text!r}")
    return name, weight


@torch.no_grad()
def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One step of the weight average ``average <- decay * average + (1 - decay) * model``.

    Buffers (norm running statistics) are copied from ``model``, not averaged: they describe the
    activations of the model that is training, and the average is evaluated with them.
    """
    for pa, p in zip(average.parameters(), model.parameters()):
        pa.lerp_(p, 1.0 - decay)
    for ba, b in zip(average.buffers(), model.buffers()):
        ba.copy_(b)


@torch.no_grad()
def blend_state(model: torch.nn.Module, other: dict[str, torch.Tensor], weight: float) -> None:
    """In place: every floating-point parameter and buffer of ``model`` becomes ``(1 - weight) x`` its value
    ``+ weight x`` the same entry of the state dict ``other`` (integer buffers such as BatchNorm's batch
    counters keep ``model``'s). ``other`` must have exactly ``model``'s keys and shapes.

    Unlike :func:`ema_update`, norm statistics are blended too: the blend of two trained networks is
    evaluated with the blend of their statistics (as ``train_teacher.py --blend-init`` ships it).
    """
    own = model.state_dict()
    if set(own) != set(other) or any(own[k].shape != other[k].shape for k in own):
        raise ValueError("blend_state: the two networks differ in their parameters or shapes")
    for k, v in own.items():
        if v.is_floating_point():
            v.lerp_(other[k].to(v), weight)


def train_mode(model: torch.nn.Module, *, freeze_bn: bool) -> None:
    """``model.train()``, except that with ``freeze_bn`` its BatchNorm layers stay in eval mode: they
    normalize with their fixed running statistics (an affine map whose scale and shift still train), so
    the network that trains is the network that ships."""
    model.train()
    if freeze_bn:
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over the batches of
    ``inputs`` (forward passes in train mode, no gradients; weights unchanged). Returns the batch count.

    Running statistics kept with momentum 0.1 describe the last ~10 batches only; a model whose weights
    are an average (``ema_update``) or that is evaluated on other data than its last batches is better
    served by statistics measured over many batches with its own weights (as for SWA's ``update_bn``).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
    n = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        for x in inputs:
            model(x)
            n += 1
        if n == 0:
            raise ValueError("recalibrate_bn needs at least one batch")
    except BaseException:  # leave the statistics as they were
        for m, (_, state) in zip(bns, saved):
            m.load_state_dict(state)
        raise
    finally:
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)
    return n


def cutmix_pairs(inp: torch.Tensor, target: torch.Tensor, prob: float, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for aligned pairs: with probability ``prob`` per item, a random box of the item is replaced
    by the same box of the next item in the batch (the last takes from the first), in ``inp`` and, at
    ``target``'s scale, in ``target``; returns new tensors (the arguments are not changed).

    ``inp`` is (N, C, h, w), ``target`` (N, C', s*h, s*w) for an integer ``s``. The box sides are
    uniform in [1/4, 1/2] of the input's sides, the position uniform; all draws come from ``gen``. The
    pasted pair is exact in the target; in the input, the pixels within the degradation's kernel
    reach of the box edge come from the other photo's neighbourhood (a few pixels per box).
    """
    n, _, h, w = inp.shape
    s = target.shape[-1] // w
    if target.shape[0] != n or target.shape[-1] != s * w or target.shape[-2] != s * h or s < 1:
        raise ValueError(f"cutmix_pairs: target {tuple(target.shape)} is not input {tuple(inp.shape)} "
                         "times an integer scale")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutmix_pairs: prob must be in [0, 1], got {prob}")
    inp, target = inp.clone(), target.clone()
    if n < 2:
        return inp, target
    donor_inp, donor_target = inp.roll(-1, 0), target.roll(-1, 0)
    draws = torch.rand(n, 5, generator=gen)
    for i in range(n):
        if draws[i, 0] >= prob:
            continue
        bh = max(1, int(h * (0.25 + 0.25 * draws[i, 1])))
        bw = max(1, int(w * (0.25 + 0.25 * draws[i, 2])))
        y, x = int((h - bh + 1) * draws[i, 3]), int((w - bw + 1) * draws[i, 4])
        inp[i, :, y:y + bh, x:x + bw] = donor_inp[i, :, y:y + bh, x:x + bw]
        ty, tx = slice(s * y, s * (y + bh)), slice(s * x, s * (x + bw))
        target[i, :, ty, tx] = donor_target[i, :, ty, tx]
    return inp, target


def save_ckpt(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save(obj)`` into ``path`` atomically (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def export_model(model: torch.nn.Module, out: Path, *, arch: str, kwargs: dict[str, Any],
                 extra: dict[str, Any] | None = None, fp16: bool = True) -> None:
    """Write ``model``'s weights to ``out`` (.safetensors, floats stored as fp16 if ``fp16``) and
    ``out.with_suffix('.json')`` = ``{"arch", "kwargs", **extra}``, both atomically."""
    from safetensors.torch import save_file

    from gcompiler.ioutil import atomic_file, atomic_write_text

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        save_file(state, str(tmp), metadata={"arch": arch, "kwargs": json.dumps(kwargs)})
    os.chmod(out, 0o644)
    meta = {"arch": arch, "kwargs": kwargs, "storage": "fp16" if fp16 else "fp32", **(extra or {})}
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    os.chmod(out.with_suffix(".json"), 0o644)
