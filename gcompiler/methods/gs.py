"""GAN Slimming (GS-32 / GS-8; Wang et al., ECCV 2020) as ``gcompiler compress --method gs``.

One objective, solved end to end (BRIEF section 1)::

    min_{W, gamma} max_theta  L_GAN(G_q(x), D_theta) + beta * d(G_q(x), G0(x)) + rho * ||gamma||_1

* **Student** ``G_q``: the teacher ``G0`` traced to an FX graph (same architecture, same weights) with a
  mask on every prunable channel group (``insert-masks``: the affine scale ``gamma`` of the normalization
  after a conv where there is one, a :class:`~gcompiler.passes.masks.ChannelMask` otherwise, one shared
  mask for coupled groups such as a residual trunk) and, for ``--bits`` < 32, fake quantization with
  straight-through gradients (``insert-fake-quant``): every conv / transposed-conv input clamped to
  ``[0, p]`` and quantized to ``bits``, weights quantized symmetrically per tensor; the image input of the
  first conv stays float; norms, activations and D stay float. (GS uses ``[0, 4]`` everywhere:
  ``--opt act_range=unsigned --opt act_clip=4``. Our default keeps ``[0, p]`` after ReLUs but uses
  ``[-p, p]`` where the input can be negative, and calibrates ``p`` per layer; see the defaults below.)
* **Minimax**: a PatchGAN discriminator with LSGAN losses; its "real" samples are the teacher's outputs.
* **Distillation** ``d``: VGG16 perceptual distance (L1 on relu1_2 + 1e5 x Gram MSE) when VGG16 weights are
  given (``vgg_weights``), otherwise the pixel loss ``distance_fallback`` (MSE, the paper's ablation); the run
  log and ``report.json`` say which.
* **Optimizers**: weights (and the discriminator) with Adam, betas (0.5, 0.999), constant for the first half
  then linear decay to 0; the masks ``gamma`` with SGD (momentum 0.5, cosine schedule) followed after every
  step by the proximal operator of ``rho * ||gamma||_1`` with the *current* gamma learning rate ``eta_t``:
  ``gamma <- sign(gamma) * max(|gamma| - rho * eta_t, 0)``. Channels whose gamma ends exactly at 0 are dead.
* **Norm statistics** are frozen at the teacher's (BatchNorm runs in eval mode, ``freeze_norm_stats``): the
  student starts as an exact copy, gamma is a pure per-channel scale, and channel elimination and norm
  folding are exact. (The paper's CycleGAN uses InstanceNorm, which has no statistics to freeze.)

After the search: quantizers are taken off, ``--target-macs`` (if given and not met) zeroes the masks of
smallest relative magnitude until the estimated MACs meet it, ``eliminate-dead-channels`` removes the dead
channels exactly (their constant values folded into the next layer), ``fold-norms`` folds BatchNorm into
the convs, fake quantization is put back (``--bits`` < 32) and the slim student is fine-tuned for
``--finetune-steps`` with the same losses (without rho), then exported.

Ablations (``ablation`` option, the paper's study): ``prune-only`` (no quantization, i.e. GS-32),
``distill-only`` (rho = 0: masks train but nothing is pushed to 0; with ``--target-macs`` the channels are
then chosen by magnitude), ``ptq`` (search and fine-tune in float, then post-training quantization:
fake-quant inserted and activation clips calibrated on training batches), ``no-gan`` (no discriminator).

Defaults versus the paper. The paper trains 200 epochs with Adam lr 1e-5 for the weights, SGD lr 0.1
(momentum 0.5, cosine) for gamma, rho 0.01, beta 20 with the perceptual d, an LSGAN term of weight 1, a 64-wide
PatchGAN, and activations in [0, 4]. We keep the optimizers (Adam 1e-5, SGD 0.1) and beta, and choose for runs
of a few hundred steps on the small ``builtin:sr`` teacher (measurements in BENCHMARKS.md):

* ``rho`` from a shrinkage budget (``shrink``, default 1.0): ``rho * sum_t eta_t`` = the median initial
  |mask| (:func:`auto_rho`). Over a few hundred steps a fixed rho prunes nothing or nearly everything;
  ``--rho`` / ``--opt rho=`` sets it directly. Use ``--target-macs`` for a predictable size.
* ``gan_weight`` 0.01: next to an MSE d (values ~1e-4), weight 1 dominates and costs fidelity;
* activation ranges signed where the conv input can be negative and clips calibrated per layer (SRResNet's
  convs read PReLU outputs and residual sums, which ``[0, 4]`` truncates);
* the fine-tuning stage uses Adam 2e-4 (``finetune_lr``); the PatchGAN is as wide as the teacher's first
  conv (clamped to [16, 64]).

``--opt lr=1e-5 --opt gamma_lr=0.1 --opt rho=0.01 --opt gan_weight=1 --opt act_range=unsigned
--opt act_clip=4 --opt disc_ndf=64 --opt vgg_weights=PATH`` and many more steps follow the paper.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.fx as fx
import torch.nn as nn

from ..passes.sparsity import proximal_l1  # noqa: F401  (re-exported: the GS proximal L1 step)
from ..errors import ConfigError
from ..train import (Distill, DistillConfig, ParamGroup, TrainConfig, Trainer, build_distance, sgd)
from ..train.engine import StepContext
from . import register_method
from .base import CompressJob, describe_bytes

log = logging.getLogger("gcompiler.compress")

ABLATIONS = ("none", "prune-only", "distill-only", "ptq", "no-gan")


@dataclass
class GSOptions:
    """Options of the ``gs`` method (``--opt key=value``, or a ``[gs]`` table in ``--config``)."""

    ablation: Literal["none", "prune-only", "distill-only", "ptq", "no-gan"] = "none"
    "Paper ablation: prune-only (no quantization), distill-only (rho 0), ptq (quantize after float training), no-gan."
    rho: float | None = None
    "Weight of the L1 penalty on the masks; default: set from shrink (the paper: 0.01 over 200 epochs)."
    shrink: float = 1.0
    "With rho unset: total L1 shrinkage of the search, rho * sum_t eta_t, in units of the median initial |mask|."
    beta: float = 20.0
    "Weight of the distillation distance d (the paper's beta)."
    distance: Literal["perceptual", "mse", "l1"] = "perceptual"
    "d: 'perceptual' (VGG16, needs vgg_weights; else distance_fallback is used and logged), 'mse' or 'l1'."
    distance_fallback: Literal["mse", "l1"] = "mse"
    "Pixel loss used when distance='perceptual' but no VGG16 weights are given."
    vgg_weights: str | None = None
    "Path to torchvision's VGG16 state dict (vgg16-397923af.pth) for the perceptual distance."
    gan: Literal["lsgan", "hinge", "vanilla"] = "lsgan"
    "Adversarial loss (the paper: LSGAN)."
    gan_weight: float = 0.01
    "Weight of the generator's adversarial term (the paper: 1 next to a perceptual d with beta 20)."
    lr: float = 1e-5
    "Adam learning rate of the student's weights in the search (betas 0.5/0.999, linear decay from half-way)."
    d_lr: float | None = None
    "Adam learning rate of the discriminator (default: lr)."
    gamma_lr: float = 0.1
    "SGD learning rate of the masks (momentum gamma_momentum, cosine schedule)."
    gamma_momentum: float = 0.5
    "SGD momentum of the masks."
    finetune_lr: float | None = 2e-4
    "Adam learning rate of the fine-tuning stage (None: lr)."
    disc_ndf: int | None = None
    "PatchGAN width; default: the teacher's first conv width clamped to [16, 64] (64 for CycleGAN, the paper's D)."
    disc_layers: int = 3
    "PatchGAN stride-2 layers (3: the 70x70 PatchGAN)."
    quant: Literal["qat", "ptq"] = "qat"
    "With --bits < 32: quantization-aware (GS-8) or post-training (train float, then calibrate)."
    act_range: Literal["auto", "unsigned", "signed"] = "auto"
    "Quantizer range: unsigned [0, p] (GS), signed [-p, p], or auto (unsigned after ReLUs, signed elsewhere)."
    act_clip: float | None = None
    "Activation clip p; None: calibrated per layer (clip_percentile of |x| on calib_batches batches; GS: 4)."
    clip_percentile: float = 99.99
    "Percentile of the float activations that sets each calibrated clip."
    per_channel: bool = False
    "Quantize weights per output channel instead of per tensor (GS: per tensor)."
    calib_batches: int = 8
    "Training batches used to calibrate activation clips (act_clip None, and post-training quantization)."
    round_to: int = 1
    "Kept widths are multiples of this (or the full width)."
    freeze_norm_stats: bool = True
    "Run BatchNorm in eval mode with the teacher's statistics (exact pruning and folding)."

    def validate(self) -> None:
        for name in ("rho", "beta", "gan_weight", "gamma_momentum"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"gs option {name} must be a finite number >= 0, got {v!r}")
        for name in ("lr", "gamma_lr", "act_clip", "shrink"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"gs option {name} must be a finite number > 0, got {v!r}")
        for name in ("d_lr", "finetune_lr"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"gs option {name} must be a finite number > 0, got {v!r}")
        if self.disc_ndf is not None and self.disc_ndf < 1:
            raise ConfigError(f"gs option disc_ndf must be >= 1, got {self.disc_ndf}")
        if self.disc_layers < 1:
            raise ConfigError(f"gs option disc_layers must be >= 1, got {self.disc_layers}")
        if not 0 < self.clip_percentile <= 100:
            raise ConfigError(f"gs option clip_percentile must be in (0, 100], got {self.clip_percentile}")
        if self.calib_batches < 1 or self.round_to < 1:
            raise ConfigError("gs options calib_batches and round_to must be >= 1")
        if self.beta == 0 and self.gan_weight == 0:
            raise ConfigError("gs: beta = 0 and gan_weight = 0 leave the student without any loss")


# ------------------------------------------------------------------------------------------------
# pieces: frozen norms, MACs estimate (the proximal step is gcompiler.passes.sparsity.proximal_l1)

class FrozenNormStats(nn.Module):
    """Runs ``model`` with every BatchNorm in eval mode whatever ``train()`` is called with.

    Used as the trainer's runner of the student: the normalizations apply the teacher's running statistics,
    which stay fixed, so the student starts as an exact copy and a norm's ``gamma`` is a pure channel scale.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "FrozenNormStats":
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class MacsEstimate:
    """MACs of a masked graph if its dead channels were removed, estimated per conv from the masks.

    For every node with MACs (at the graph's recorded shapes): ``macs x f_out x f_in``, where ``f`` is the
    fraction of non-zero mask units of the channel group the node writes (producer) or reads (consumer;
    the mean when it reads several). Depthwise convs scale with their group once. Channels that
    ``eliminate-dead-channels`` must keep (a carrier for constants under zero padding, rounding) make the
    real count slightly higher; the real count is measured after elimination.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        from ..analysis import channel_groups
        from ..passes.masks import masks
        from ..profiler import profile

        self.gm = gm
        self.rows = {r.node: r.macs for r in profile(gm).rows if r.macs}
        masked = set(masks(gm))
        self.out_of: dict[str, str] = {}
        self.in_of: dict[str, list[str]] = defaultdict(list)
        for g in channel_groups(gm):
            if g.name not in masked:
                continue
            for p in g.producers:
                self.out_of[p] = g.name
            for c in g.consumers:
                self.in_of[c].append(g.name)
            for m in g.members:
                if g.kinds.get(m, "").startswith("depthwise"):
                    self.out_of[m] = g.name

    def fractions(self) -> dict[str, float]:
        from ..passes.masks import masks

        return {n: float((m.detach() != 0).sum()) / m.numel() for n, m in masks(self.gm).items()}

    def __call__(self, fractions: dict[str, float] | None = None) -> float:
        f = self.fractions() if fractions is None else fractions
        total = 0.0
        for node, macs in self.rows.items():
            fo = f.get(self.out_of.get(node, ""), 1.0)
            ins = self.in_of.get(node)
            fi = sum(f.get(g, 1.0) for g in ins) / len(ins) if ins else 1.0
            total += macs * fo * fi
        return total


def auto_rho(student: fx.GraphModule, *, shrink: float, gamma_lr: float, steps: int) -> float:
    """The rho whose total soft-threshold over a search, ``rho * sum_t eta_t``, is ``shrink`` median initial |masks|.

    ``student`` carries the masks at their initial values; ``eta_t`` is the cosine-scheduled gamma learning
    rate of each of the ``steps`` updates. A mask entry that the distillation and adversarial gradients do
    not defend ends at 0 when ``shrink`` exceeds its magnitude relative to the median; entries that matter
    are pushed back by their gradients. (With the paper's 200 epochs, rho = 0.01 gives a budget far above 1;
    over a few hundred steps a fixed rho prunes either nothing or nearly everything, so the default is set in
    these units instead.)
    """
    from ..passes.masks import masks
    from ..train.schedules import Cosine

    values = [m.detach().abs().flatten() for m in masks(student).values()]
    if not values:
        raise ConfigError("gs: the teacher has no prunable channel group to put a mask on")
    median = float(torch.cat(values).median())
    cos = Cosine()
    total_lr = gamma_lr * sum(cos(t, steps) for t in range(steps))
    return shrink * median / total_lr if total_lr > 0 else 0.0


def mask_sparsity(gm: fx.GraphModule) -> dict[str, Any]:
    """Zero mask units per group and overall (``{"zero", "units", "sparsity", "groups": {name: [zero, units]}}``)."""
    from ..passes.masks import masks

    groups = {n: [int((m.detach() == 0).sum()), int(m.numel())] for n, m in masks(gm).items()}
    zero = sum(z for z, _ in groups.values())
    units = sum(u for _, u in groups.values())
    return {"zero": zero, "units": units, "sparsity": zero / units if units else 0.0, "groups": groups}


# ------------------------------------------------------------------------------------------------
# the training methods

class GSTraining(Distill):
    """The GS search: :class:`~gcompiler.train.Distill` (d + GAN) plus the ``masks`` group with the proximal step."""

    name = "gs"

    def __init__(self, config: DistillConfig, *, rho: float, gamma_lr: float, gamma_momentum: float,
                 freeze_norm_stats: bool = True) -> None:
        super().__init__(config)
        self.rho = float(rho)
        self.gamma_lr = float(gamma_lr)
        self.gamma_momentum = float(gamma_momentum)
        self.freeze_norm_stats = freeze_norm_stats
        self.estimate: MacsEstimate | None = None

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        student = trainer.module("student")
        if self.freeze_norm_stats:
            trainer.set_runner("student", FrozenNormStats(student))
        if isinstance(student, fx.GraphModule):
            self.estimate = MacsEstimate(student)

    def extra_groups(self, trainer: Trainer) -> list[ParamGroup]:
        from ..passes.masks import masks

        params = list({id(p): p for p in masks(trainer.module("student")).values()}.values())
        if not params:
            raise ConfigError("gs: the student has no prunable channel group to put a mask on (every group is "
                              "pinned; see `gcompiler dump` for the reasons)")
        hook = proximal_l1(self.rho) if self.rho > 0 else None
        return [ParamGroup("masks", params, sgd(self.gamma_lr, momentum=self.gamma_momentum), "cosine",
                           post_step=hook)]

    def progress(self, trainer: Trainer) -> dict[str, float]:
        stats = super().progress(trainer)
        sp = mask_sparsity(trainer.module("student"))
        stats["sparsity"] = sp["sparsity"]
        if self.estimate is not None:
            stats["macs"] = self.estimate()
        return stats

    def describe(self) -> str:
        prox = (f"{self.rho:g} x L1(masks) by proximal SGD (lr {self.gamma_lr:g}, momentum {self.gamma_momentum:g},"
                f" cosine)" if self.rho > 0 else f"masks trained by SGD (lr {self.gamma_lr:g}) without L1 (rho 0)")
        return f"{super().describe()}; {prox}"


class GSFinetune(Distill):
    """Fine-tuning of the slim student: the same losses, no masks (norm statistics frozen as in the search)."""

    name = "gs-finetune"

    def __init__(self, config: DistillConfig, *, freeze_norm_stats: bool = True) -> None:
        super().__init__(config)
        self.freeze_norm_stats = freeze_norm_stats

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        if self.freeze_norm_stats:
            trainer.set_runner("student", FrozenNormStats(trainer.module("student")))


# ------------------------------------------------------------------------------------------------
# graph stages

def build_search_student(teacher: nn.Module, reference_input: torch.Tensor, *, bits: int, opts: GSOptions,
                         calib: list[torch.Tensor] | None = None) -> fx.GraphModule:
    """Trace a copy of the teacher, put masks on its prunable groups and (bits < 32) fake quantization
    (activation clips calibrated on the input batches ``calib`` when ``opts.act_clip`` is None)."""
    from ..fx import trace
    from ..passes.masks import insert_masks
    from ..quant.insert import insert_fake_quant

    model = copy.deepcopy(teacher).cpu().eval()
    gm = trace(model, reference_input.cpu())
    for p in gm.parameters():
        p.requires_grad_(True)
    insert_masks(gm, round_to=opts.round_to)
    if bits < 32:
        add_fake_quant(gm, bits, opts, calib)
    return gm


_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_PASS_MODULES = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.Identity, nn.Dropout, nn.Dropout2d,
                 nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.PixelShuffle)


def nonnegative_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the first input of ``node`` is >= 0 by construction (after a ReLU-like op, through padding,
    pooling, upsampling and pixel shuffles)."""
    import torch.nn.functional as F

    src = node.args[0] if node.args else None
    while isinstance(src, fx.Node):
        if src.op == "call_module":
            mod = gm.get_submodule(str(src.target))
            if isinstance(mod, _NONNEG_MODULES):
                return True
            if isinstance(mod, _PASS_MODULES):
                src = src.args[0] if src.args else None
                continue
            return False
        if src.op == "call_function":
            if src.target in (torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, F.softplus):
                return True
            if src.target in (F.pad, F.interpolate, F.pixel_shuffle, F.max_pool2d, F.avg_pool2d):
                src = src.args[0] if src.args else None
                continue
        return False
    return False


def add_fake_quant(gm: fx.GraphModule, bits: int, opts: GSOptions,
                   calib: list[torch.Tensor] | None = None) -> fx.GraphModule:
    """``insert-fake-quant`` with the GS settings (weights and activations at ``bits``).

    ``act_range="auto"``: the GS range ``[0, p]`` for conv inputs that are non-negative by construction
    (after a ReLU), ``[-p, p]`` for the others (after PReLU / LeakyReLU / a norm / a residual sum), where
    clamping at 0 would erase half of the signal. ``act_clip=None``: each layer's ``p`` is calibrated on the
    inputs ``calib`` (``clip_percentile`` of its float input values), instead of GS's fixed ``p = 4``.
    """
    from ..quant.calibrate import calibrate
    from ..quant.insert import insert_fake_quant
    from ..quant.qmodules import QUANT_CONV_TYPES
    from ..quant.quantizers import ActFakeQuant

    clip = opts.act_clip if opts.act_clip is not None else 4.0
    rng = "unsigned" if opts.act_range == "auto" else opts.act_range
    gm = insert_fake_quant(gm, weight_bits=bits, act_bits=bits, act_range=rng, act_clip=clip,
                           per_channel=opts.per_channel)
    if opts.act_range == "auto":
        ranges = {}
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, QUANT_CONV_TYPES) and mod.input_quant is not None:
                if not nonnegative_input(gm, node):
                    mod.input_quant = ActFakeQuant(bits, "signed", clip)
                ranges[node.name] = mod.input_quant.act_range
        gm.meta["act_ranges"] = ranges
    if opts.act_clip is None and any(isinstance(m, QUANT_CONV_TYPES) and m.input_quant is not None
                                     for m in gm.modules()):
        if not calib:
            raise ConfigError("gs: act_clip=None calibrates the activation clips, but no calibration batches were "
                              "given")
        device = next(iter(gm.parameters())).device
        try:
            clips = calibrate(FrozenNormStats(gm), [b.to(device) for b in calib], method="percentile",
                              percentile=opts.clip_percentile)
        except ConfigError as exc:
            raise ConfigError(f"gs: calibrating the activation clips failed ({exc}): the network's activations are "
                              f"not finite on training batches (a diverged search? lower lr / gamma_lr / beta), or "
                              f"set a fixed clip with --opt act_clip=4") from exc
        gm.meta["act_clips"] = {k.removeprefix("model."): v for k, v in clips.items()}
    return gm


def strip_fake_quant(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace fake-quant convs by the float convs they wrap (sharing the parameters)."""
    from ..fx.utils import replace_module
    from ..quant.qmodules import QUANT_CONV_TYPES

    for name, mod in list(gm.named_modules()):
        if isinstance(mod, QUANT_CONV_TYPES):
            replace_module(gm, name, mod.to_float())
    gm.meta.pop("quant_config", None)
    gm.recompile()
    return gm


def prune_to_macs(gm: fx.GraphModule, target: float, *, round_to: int = 1) -> dict[str, Any]:
    """Zero the mask units of smallest relative magnitude until the estimated MACs are <= ``target``.

    A unit's score is ``|m_u| / max_u' |m_u'|`` within its group (norm scales and channel-mask scales live
    on different scales); units already at 0 stay dead, and every group keeps at least ``round_to`` units.
    Returns ``{"zeroed": n, "estimate": macs}``. The caller measures the real MACs after elimination.
    """
    from ..passes.masks import masks

    est = MacsEstimate(gm)
    ms = masks(gm)
    alive = {n: int((m.detach() != 0).sum()) for n, m in ms.items()}
    units = {n: m.numel() for n, m in ms.items()}
    order: list[tuple[float, str, int]] = []
    for n, m in ms.items():
        a = m.detach().abs()
        mx = float(a.max()) if a.numel() else 0.0
        for u in torch.nonzero(a > 0).flatten().tolist():
            order.append((float(a[u]) / mx if mx > 0 else 0.0, n, u))
    order.sort()

    def plan(k: int) -> tuple[list[tuple[str, int]], dict[str, float]]:
        left = dict(alive)
        chosen = []
        for _, n, u in order:
            if len(chosen) >= k:
                break
            if left[n] - 1 < min(round_to, units[n]):
                continue
            left[n] -= 1
            chosen.append((n, u))
        return chosen, {n: left[n] / units[n] for n in units}

    lo, hi = 0, len(order)
    if est(plan(hi)[1]) > target:
        lo = hi  # cannot reach the target: take everything allowed
    while lo < hi:
        mid = (lo + hi) // 2
        if est(plan(mid)[1]) <= target:
            hi = mid
        else:
            lo = mid + 1
    chosen, fr = plan(lo)
    with torch.no_grad():
        for n, u in chosen:
            ms[n][u] = 0.0
    return {"zeroed": len(chosen), "estimate": est(fr)}


def slim_student(gm: fx.GraphModule, reference_input: torch.Tensor, *, target_macs: int | None,
                 round_to: int) -> tuple[fx.GraphModule, dict[str, Any]]:
    """After the search: drop quantizers, meet ``target_macs``, eliminate dead channels, fold norms."""
    from ..fx import propagate_shapes
    from ..passes.dead_channels import eliminate_dead_channels
    from ..profiler import profile
    from ..quant.fold import fold_norms

    gm = strip_fake_quant(gm.cpu().eval())
    propagate_shapes(gm, reference_input)
    info: dict[str, Any] = {"search_sparsity": mask_sparsity(gm), "estimate_after_search": MacsEstimate(gm)()}
    saved = {n: m.detach().clone() for n, m in _masks(gm).items()}
    result = None
    if target_macs is not None:
        goal = float(target_macs)
        for attempt in range(5):
            with torch.no_grad():
                for n, m in _masks(gm).items():
                    m.copy_(saved[n])
            trial = copy.deepcopy(gm)
            pr = prune_to_macs(trial, goal, round_to=round_to) if MacsEstimate(trial)() > goal else \
                {"zeroed": 0, "estimate": MacsEstimate(trial)()}
            sparsity = mask_sparsity(trial)
            trial = eliminate_dead_channels(trial, round_to=round_to)
            macs = profile(trial, reference_input).macs
            info["target_pruning"] = {"target": target_macs, "attempts": attempt + 1, **pr, "macs": macs,
                                      "sparsity": sparsity}
            result = trial
            if macs <= target_macs:
                break
            goal *= target_macs / macs * 0.98
        else:
            log.warning(f"--target-macs {target_macs:.4g}: reached {macs:.4g} MACs (the groups cannot shrink further "
                        f"without removing whole layers)")
    if result is None:
        result = eliminate_dead_channels(gm, round_to=round_to)
    info["dead_channels"] = result.meta.get("dead_channels")
    result = fold_norms(result)
    info["fold_norms"] = result.meta.get("fold_norms")
    result.meta.pop("masks", None)
    propagate_shapes(result, reference_input)
    return result, info


def _masks(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    from ..passes.masks import masks

    return masks(gm)


# ------------------------------------------------------------------------------------------------
# the driver

def _discriminator(teacher_first_width: int, out_shape: tuple[int, ...], opts: GSOptions) -> nn.Module:
    """PatchGAN on the student's outputs; fewer stride-2 layers when the training outputs are too small for
    ``disc_layers`` (its last InstanceNorm needs more than one patch)."""
    from ..models import create

    ndf = opts.disc_ndf if opts.disc_ndf is not None else max(16, min(64, teacher_first_width))
    side = min(out_shape[-2:])
    layers = opts.disc_layers
    while layers > 1 and side // 2 ** layers - 1 < 2:
        layers -= 1
    if side // 2 ** layers - 1 < 2:
        raise ConfigError(f"gs: the training outputs are {side} pixels wide, too small for a PatchGAN discriminator "
                          f"(at least {3 * 2} needed): use a larger --crop or the no-gan ablation")
    if layers != opts.disc_layers:
        log.warning(f"gs: PatchGAN with {layers} instead of {opts.disc_layers} stride-2 layers: the training outputs "
                    f"({side} pixels) are too small for {opts.disc_layers}; a larger --crop keeps the paper's D")
    return create("patchgan_d", input_nc=int(out_shape[0]), ndf=ndf, n_layers=layers)


def _first_conv_width(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return int(m.out_channels)
    return 64


def _distill_config(opts: GSOptions, distance: nn.Module, note: str, disc: nn.Module | None, *, gan_weight: float,
                    lr: float) -> DistillConfig:
    return DistillConfig(pixel=None, distance=distance if opts.beta > 0 else None, distance_weight=opts.beta,
                         distance_note=note, gan=opts.gan if gan_weight > 0 else None, gan_weight=gan_weight,
                         discriminator=disc, d_real="teacher", lr=lr, betas=(0.5, 0.999), d_lr=opts.d_lr,
                         schedule="linear_decay:0.5")


def _train_config(job: CompressJob, out_dir: Path, max_steps: int) -> TrainConfig:
    s = job.settings
    return TrainConfig(out_dir=out_dir, max_steps=max_steps, save_every=s.save_every, log_every=s.log_every,
                       sample_every=s.sample_every, seed=s.seed, device=s.device, resume=s.resume,
                       progress=not s.quiet, value_range=job.value_range, amp="off")


def _state_saver(job: CompressJob, stage: str) -> Callable[[Trainer, StepContext], None]:
    every = max(job.settings.save_every, 1)

    def cb(trainer: Trainer, ctx: StepContext) -> None:
        if trainer.step % every == 0 or trainer.step >= trainer.config.max_steps:
            job.save_state(stage=stage, step=trainer.step)

    return cb


def _save_module_state(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    from ..ioutil import atomic_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))


def _load_module_state(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


def _export_integer(student: fx.GraphModule, directory: Path, x: torch.Tensor) -> dict[str, Any]:
    """``convert-to-int`` of the fake-quant student, saved to ``directory`` (integer weights on disk)."""
    from .. import serialize
    from ..errors import GCompilerError
    from ..quant.convert import convert_to_int

    try:
        int_gm = convert_to_int(copy.deepcopy(student))
        with torch.no_grad():
            err = float((int_gm(x) - student(x)).abs().max())
        serialize.save(int_gm, directory)
    except (GCompilerError, RuntimeError, ValueError) as exc:
        log.warning(f"gs: the integer export failed ({type(exc).__name__}: {exc}); the fake-quant student is saved")
        return {"error": f"{type(exc).__name__}: {exc}"}
    size = (directory / serialize.WEIGHTS_FILE).stat().st_size
    log.info(f"gs: integer model (convert-to-int) in {directory}: {describe_bytes(size)} of weights on disk, "
             f"max |difference| to the fake-quant student {err:.2e} at the reference input")
    return {"dir": str(directory), "weights_file_bytes": size, "max_abs_diff": err}


@register_method("gs", options=GSOptions,
                 summary="GAN Slimming: masks + L1 proximal step + fake quantization, minimax with a PatchGAN, "
                         "distillation; then eliminate dead channels, fine-tune, export",
                 defaults={"max_steps": 300, "finetune_steps": 100, "batch_size": 8})
def run_gs(job: CompressJob, opts: GSOptions) -> dict[str, Any]:
    """Run GS on ``job`` (see the module docstring); returns ``{"summary": ..., "report": ...}``."""
    from .. import serialize
    from ..fx import propagate_shapes
    from ..profiler import profile
    from ..quant.calibrate import calibrate

    s = job.settings
    bits = s.bits
    if opts.ablation == "prune-only" and bits != 32:
        log.info(f"ablation prune-only: quantization off (--bits {bits} ignored)")
        bits = 32
    quant = "ptq" if opts.ablation == "ptq" else opts.quant
    gan_weight = 0.0 if opts.ablation == "no-gan" else opts.gan_weight
    qat = bits < 32 and quant == "qat"
    rho: float | None = 0.0 if opts.ablation == "distill-only" else opts.rho  # None: set from shrink below
    if opts.beta == 0 and gan_weight == 0:
        raise ConfigError("gs: with the no-gan ablation beta must be > 0")
    if opts.distance == "perceptual" and not opts.vgg_weights:
        distance, _ = build_distance(opts.distance_fallback)
        note = (f"{opts.distance_fallback.upper()} on pixels (the perceptual distance needs VGG16 weights: "
                f"--opt vgg_weights=PATH)")
    else:
        distance, note = build_distance(opts.distance, vgg_weights=opts.vgg_weights,
                                        fallback=opts.distance_fallback, value_range=job.value_range)
    log.info(f"gs: distillation distance d = {note}")
    calib_cache: list[torch.Tensor] = []

    def calibration_inputs() -> list[torch.Tensor]:
        """``calib_batches`` training batches (inputs only), the same in every session of the run."""
        if not calib_cache:
            for i, b in enumerate(job.make_loader(seed_offset=2)):
                if i >= opts.calib_batches:
                    break
                calib_cache.append(b["input"])
        return calib_cache

    stages = job.run_dir / "stages"
    pruned_dir = stages / "pruned"
    disc_path = stages / "disc.safetensors"
    report: dict[str, Any] = {"method": "gs", "bits": bits, "quantization": ("qat" if qat else quant) if bits < 32
                              else "none", "ablation": opts.ablation, "gan_weight": gan_weight,
                              "distance": note, "options": dataclasses.asdict(opts), "teacher": job.teacher_info,
                              "target_macs": job.target_macs}
    disc = _discriminator(_first_conv_width(job.teacher), job.train_output_shape, opts) if gan_weight > 0 else None

    # -- stage 1: the GS search --------------------------------------------------------------------------------
    search_steps = s.max_steps
    if s.resume and (pruned_dir / serialize.ARCH_FILE).is_file():
        log.info(f"gs: search and pruning already done ({pruned_dir}); continuing with the fine-tuning")
        slim = serialize.load(pruned_dir)
        if disc is not None and disc_path.is_file():
            _load_module_state(disc, disc_path)
        prev = (stages / "prune.json")
        if prev.is_file():
            import json

            prune_info = json.loads(prev.read_text())
            search_steps = int(prune_info.get("search_steps", s.max_steps))
        else:
            prune_info = {}
    else:
        student = build_search_student(job.teacher, job.reference_input, bits=bits if qat else 32, opts=opts,
                                       calib=calibration_inputs() if qat else None)
        if rho is None:
            rho = auto_rho(student, shrink=opts.shrink, gamma_lr=opts.gamma_lr, steps=s.max_steps)
            log.info(f"gs: rho = {rho:.4g} (total shrinkage {opts.shrink:g} x the median initial |mask| over "
                     f"{s.max_steps} steps of gamma lr {opts.gamma_lr:g}, cosine)")
            report["rho_from_shrink"] = opts.shrink
        report["rho"] = rho
        recipe = GSTraining(_distill_config(opts, distance, note, disc, gan_weight=gan_weight, lr=opts.lr),
                            rho=rho, gamma_lr=opts.gamma_lr, gamma_momentum=opts.gamma_momentum,
                            freeze_norm_stats=opts.freeze_norm_stats)
        trainer = Trainer(recipe, student=student, teacher=job.teacher, data=job.make_loader(),
                          config=_train_config(job, job.run_dir, s.max_steps), callbacks=[_state_saver(job, "search")])
        result = trainer.fit()
        search_steps = result.steps
        student = trainer.module("student").cpu()
        job.teacher.cpu()
        if disc is not None:
            disc = trainer.module("disc").cpu()
        slim, prune_info = slim_student(student, job.reference_input, target_macs=job.target_macs,
                                        round_to=opts.round_to)
        prune_info["search_steps"] = search_steps
        prune_info["rho"] = rho
        prune_info["search_losses"] = result.losses
        serialize.save(slim, pruned_dir)
        if disc is not None:
            _save_module_state(disc, disc_path)
        job.write_json("stages/prune.json", prune_info)
        job.save_state(stage="pruned", step=search_steps)
    report["search"] = prune_info
    sp = prune_info.get("search_sparsity", {})
    log.info(f"gs: search done ({search_steps} steps): {sp.get('zero', 0)}/{sp.get('units', 0)} mask units at 0; "
             f"slim student {profile(slim, job.reference_input).macs / 1e9:.3f} G MACs")

    # -- stage 2: fine-tuning ----------------------------------------------------------------------------------
    for p in slim.parameters():
        p.requires_grad_(True)
    if qat:
        add_fake_quant(slim, bits, opts, calibration_inputs())
        report["act_clips"] = slim.meta.get("act_clips")
    ft_steps = 0
    if s.finetune_steps > 0:
        ft = GSFinetune(_distill_config(opts, distance, note, disc, gan_weight=gan_weight,
                                        lr=opts.finetune_lr or opts.lr), freeze_norm_stats=opts.freeze_norm_stats)
        trainer = Trainer(ft, student=slim, teacher=job.teacher, data=job.make_loader(seed_offset=1),
                          config=_train_config(job, job.run_dir / "finetune", s.finetune_steps),
                          callbacks=[_state_saver(job, "finetune")])
        result = trainer.fit()
        ft_steps = result.steps
        slim = trainer.module("student").cpu()
        job.teacher.cpu()
        report["finetune_losses"] = result.losses

    # -- stage 3: post-training quantization (ablation / quant=ptq) ---------------------------------------------
    if bits < 32 and not qat:
        add_fake_quant(slim, bits, opts, calibration_inputs())
        if opts.act_clip is not None:  # post-training quantization always calibrates
            report["calibration"] = calibrate(FrozenNormStats(slim), calibration_inputs(),
                                              method="percentile", percentile=opts.clip_percentile)
        else:
            report["calibration"] = slim.meta.get("act_clips")

    # -- export -------------------------------------------------------------------------------------------------
    slim = slim.cpu().eval()
    for p in slim.parameters():
        p.requires_grad_(False)
    propagate_shapes(slim, job.reference_input)
    prof = profile(slim, job.reference_input)
    device = job.settings.device if job.settings.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    ev = job.evaluate(slim.to(device), device=device)
    grid = job.save_samples(slim, job.run_dir / "samples" / "heldout.png", device=device)
    if grid is not None:
        report["samples"] = str(grid)
    slim = slim.cpu()
    job.teacher.cpu()
    tp = job.teacher_profile
    summary = {
        "method": "gs",
        "input_shape": [int(v) for v in job.reference_input.shape],
        "macs_before": int(tp.macs),
        "macs_after": int(prof.macs),
        "params_before": int(tp.params),
        "params_after": int(prof.params),
        "size_bytes_before": int(round(tp.size_bytes(32))),
        "size_bytes_after": int(round(prof.size_bytes(None))),
        "psnr_to_teacher": ev["psnr_to_teacher"],
        "psnr_to_target": ev["psnr_to_target"],
        "steps": int(search_steps + ft_steps),
        "wall_s": round(job.wall_s(), 2),
    }
    report.update(search_steps=search_steps, finetune_steps=ft_steps, evaluation=ev,
                  quant_config=slim.meta.get("quant_config"),
                  size=(f"{describe_bytes(summary['size_bytes_before'])} -> "
                        f"{describe_bytes(summary['size_bytes_after'])}"))
    if bits < 32:
        report["int8_export"] = _export_integer(slim, job.run_dir / "int8", job.reference_input)
    job.export(slim, summary, report)
    job.save_state(stage="done", step=summary["steps"])
    return {"summary": summary, "report": report}
