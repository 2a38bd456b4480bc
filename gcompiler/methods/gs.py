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
smallest relative magnitude until the exact estimated MACs (:func:`gcompiler.estimate`) meet it,
``eliminate-dead-channels`` removes the dead channels exactly (their constant values folded into the next
layer), ``fold-norms`` folds BatchNorm into the convs, fake quantization is put back (``--bits`` < 32) and
the slim student is fine-tuned for ``--finetune-steps`` with the same losses (without rho), then exported.

As code, GS is pass pipelines plus training recipes: every graph rewrite is a pipeline run by the pass
manager through ``job.rewrite`` (verified, logged in ``report.json["pass_log"]``; the stages and their
pipelines are listed in :mod:`gcompiler.methods.gs_graph`), and training is two recipes of the engine,
:class:`~gcompiler.methods.gs_recipes.GSTraining` (search) and
:class:`~gcompiler.methods.gs_recipes.GSFinetune` (:mod:`gcompiler.methods.gs_recipes`). This module holds
the options and the driver that strings them together.

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
  ``--opt rho=`` sets it directly. Use ``--target-macs`` for a predictable size.
* ``gan_weight`` 0.01: next to an MSE d (values ~1e-4), weight 1 dominates and costs fidelity;
* activation ranges signed where the conv input can be negative and clips calibrated per layer (SRResNet's
  convs read PReLU outputs and residual sums, which ``[0, 4]`` truncates);
* the fine-tuning stage uses Adam 2e-4 (``finetune_lr``); the PatchGAN is as wide as the teacher's first
  conv (clamped to [16, 64]).

``--opt lr=1e-5 --opt gamma_lr=0.1 --opt rho=0.01 --opt gan_weight=1 --opt act_range=unsigned
--opt act_clip=4 --opt disc_ndf=64 --opt vgg_weights=PATH`` and many more steps follow the paper.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..train import build_distance
from . import register_method
from .base import CompressJob
from .gs_graph import add_fake_quant, export_integer, min_reachable_macs, search_student, slim_student
from .gs_recipes import (FrozenNormStats, GSFinetune, GSTraining, auto_rho, build_discriminator, distill_config,
                         first_conv_width, mask_sparsity)

log = logging.getLogger("gcompiler.compress")

__all__ = ["GSOptions", "run_gs", "GSTraining", "GSFinetune", "FrozenNormStats", "auto_rho", "mask_sparsity",
           "search_student", "slim_student", "add_fake_quant", "min_reachable_macs", "export_integer"]

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


def _distance(opts: GSOptions, job: CompressJob) -> tuple[nn.Module, str]:
    """The distillation distance ``d`` and the sentence saying which one it is."""
    if opts.distance == "perceptual" and not opts.vgg_weights:
        distance, _ = build_distance(opts.distance_fallback)
        return distance, (f"{opts.distance_fallback.upper()} on pixels (the perceptual distance needs VGG16 "
                          f"weights: --opt vgg_weights=PATH)")
    return build_distance(opts.distance, vgg_weights=opts.vgg_weights, fallback=opts.distance_fallback,
                          value_range=job.value_range)


@register_method("gs", options=GSOptions,
                 summary="GAN Slimming: masks + L1 proximal step + fake quantization, minimax with a PatchGAN, "
                         "distillation; then eliminate dead channels, fine-tune, export",
                 defaults={"max_steps": 300, "finetune_steps": 100, "batch_size": 8})
def run_gs(job: CompressJob, opts: GSOptions) -> dict[str, Any]:
    """Run GS on ``job`` (see the module docstring); returns ``{"summary", "report", "student"}``."""
    import json

    from .. import serialize
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..profiler import profile

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
    distance, note = _distance(opts, job)
    log.info(f"gs: distillation distance d = {note}")
    calib_cache: list[torch.Tensor] = []

    def calibration_inputs() -> list[torch.Tensor]:
        """``calib_batches`` training batches (inputs only), the same in every session of the run."""
        if not calib_cache:
            for i, b in enumerate(job.make_loader(seed_offset=2, shard=False)):  # the same batches on every rank
                if i >= opts.calib_batches:
                    break
                calib_cache.append(b["input"])
        return calib_cache

    def distill(lr: float) -> Any:
        return distill_config(opts, distance, note, disc, gan_weight=gan_weight, lr=lr)

    stages = job.run_dir / "stages"
    pruned_dir = stages / "pruned"
    disc_path = stages / "disc.safetensors"
    report: dict[str, Any] = {"method": "gs", "bits": bits, "quantization": ("qat" if qat else quant) if bits < 32
                              else "none", "ablation": opts.ablation, "gan_weight": gan_weight,
                              "distance": note, "options": dataclasses.asdict(opts), "teacher": job.teacher_info,
                              "target_macs": job.target_macs}
    disc = build_discriminator(first_conv_width(job.teacher), job.train_output_shape, opts) if gan_weight > 0 else None

    # -- stage 1: the GS search, then slimming ------------------------------------------------------------
    if s.resume and (pruned_dir / serialize.ARCH_FILE).is_file():
        log.info(f"gs: search and pruning already done ({pruned_dir}); continuing with the fine-tuning")
        slim = serialize.load(pruned_dir)
        if disc is not None and disc_path.is_file():
            load_checkpoint(disc, disc_path)
        prev = stages / "prune.json"
        prune_info = json.loads(prev.read_text()) if prev.is_file() else {}
        search_steps = int(prune_info.get("search_steps", s.max_steps))
    else:
        student = search_student(job, opts, bits=bits if qat else 32, calib=calibration_inputs() if qat else None)
        if job.target_macs is not None:  # a budget the masks cannot reach fails now, not after the search
            floor = min_reachable_macs(student, opts.round_to)
            if job.target_macs < floor:
                raise ConfigError(f"--target-macs {s.target_macs}: {job.target_macs:.4g} MACs is below the smallest "
                                  f"network GS can reach by pruning channels ({floor:.4g} MACs with {opts.round_to} "
                                  f"unit(s) left in every channel group); raise the budget")
        if rho is None:
            rho = auto_rho(student, shrink=opts.shrink, gamma_lr=opts.gamma_lr, steps=s.max_steps)
            log.info(f"gs: rho = {rho:.4g} (total shrinkage {opts.shrink:g} x the median initial |mask| over "
                     f"{s.max_steps} steps of gamma lr {opts.gamma_lr:g}, cosine)")
            report["rho_from_shrink"] = opts.shrink
        report["rho"] = rho
        recipe = GSTraining(distill(opts.lr), rho=rho, gamma_lr=opts.gamma_lr, gamma_momentum=opts.gamma_momentum,
                            freeze_norm_stats=opts.freeze_norm_stats)
        trainer, result = job.train_stage(recipe, student, stage="search", steps=s.max_steps, out_dir=job.run_dir)
        search_steps = result.steps
        student = trainer.module("student")
        if disc is not None:
            disc = trainer.module("disc").cpu()
        slim, prune_info = slim_student(job, student, target_macs=job.target_macs, round_to=opts.round_to)
        prune_info.update(search_steps=search_steps, rho=rho, search_losses=result.losses)
        if job.is_main:  # rank 0 writes the run directory
            serialize.save(slim, pruned_dir)
            if disc is not None:
                save_checkpoint(disc, disc_path)
        job.write_json("stages/prune.json", prune_info)
        job.save_state(stage="pruned", step=search_steps)
    report["search"] = prune_info
    sp = prune_info.get("search_sparsity", {})
    log.info(f"gs: search done ({search_steps} steps): {sp.get('zero', 0)}/{sp.get('units', 0)} mask units at 0; "
             f"slim student {profile(slim, job.reference_input).macs / 1e9:.3f} G MACs")

    # -- stage 2: fine-tuning ----------------------------------------------------------------------------
    for p in slim.parameters():
        p.requires_grad_(True)
    if qat:
        add_fake_quant(job, slim, bits, opts, calibration_inputs(), stage="finetune-quant")
        report["act_clips"] = slim.meta.get("act_clips")
    ft_steps = 0
    if s.finetune_steps > 0:
        ft = GSFinetune(distill(opts.finetune_lr or opts.lr), freeze_norm_stats=opts.freeze_norm_stats)
        trainer, result = job.train_stage(ft, slim, stage="finetune", steps=s.finetune_steps, seed_offset=1)
        ft_steps = result.steps
        slim = trainer.module("student")
        report["finetune_losses"] = result.losses

    # -- stage 3: post-training quantization (ablation / quant=ptq) ----------------------------------------
    if bits < 32 and not qat:
        add_fake_quant(job, slim, bits, opts, calibration_inputs(), stage="ptq", always_calibrate=True)
        report["calibration"] = slim.meta.get("act_clips")

    # -- export --------------------------------------------------------------------------------------------
    slim = slim.cpu().eval()
    report.update(search_steps=search_steps, finetune_steps=ft_steps, quant_config=slim.meta.get("quant_config"))
    if bits < 32:
        report["int8_export"] = export_integer(job, slim, job.run_dir / "int8")
    return job.finish(slim, steps=search_steps + ft_steps, report=report, method="gs")
