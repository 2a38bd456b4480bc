"""Self-supervised GAN compression: the teacher's own discriminator D0 supervises a pruned student.

The student G_c starts as a copy of the teacher G_o and is pruned while it trains to make the *losses*
D0 assigns to it match the teacher's (BRIEF section 1; the ICLR 2020 submission)::

    L = L_GC + λ·L_DC + w_rec·L1(G_c(x), G_o(x))
    L_GC = |l_adv(o) − l_adv(c)| / |l_adv(o)|  +  α·|l_rec(o) − l_rec(c)| / |l_rec(o)|
    L_DC = |l_D(o) − l_D(c)| / |l_D(o)|

with ``l_adv(·) = GAN generator loss of D0(output)``, ``l_rec(·) = L1(output, real)`` and
``l_D(·) = GAN discriminator loss of D0 on (real, output)``. ``real`` is the batch's ground truth
(paired data), else its unpaired ``reference`` images, else the teacher's output (then ``l_rec`` is dropped:
the teacher's is 0). Teacher terms carry no gradient. D0 is frozen by default (``--opt finetune_d0=true``
trains it against the student with the ordinary discriminator loss).

Granularities:

* ``weight`` (default): fine-grained magnitude pruning of every conv / linear weight on the AGP schedule
  (sparsity from 5 % to ``sparsity`` at ``agp_end`` of the training steps), masks never revive a weight.
  Dense MACs are unchanged; the size reported is that of the sparse encoding of :mod:`gcompiler.sparse`,
  written to ``RUN/sparse.safetensors``.
* ``channel``: ``insert-masks``, then the same schedule over channel groups through ``prune-by-ratio``
  (per-group ``ratio``, or a MACs budget interpolated to ``--target-macs``), zeroed units held at 0, then
  ``eliminate-dead-channels`` (exact) and an optional fine-tuning of the slim net: real MACs cut.

Every graph rewrite runs through :meth:`CompressJob.rewrite` (verifier, pass log in report.json).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..train import ParamGroup, Phase, Recipe, StepContext, Trainer, adam
from ..train.losses import GANLoss, set_requires_grad
from . import register_method
from .base import CompressJob
from .dist import on_rank0

log = logging.getLogger("gcompiler.compress")


@dataclass
class SelfSupervisedOptions:
    granularity: Literal["weight", "channel"] = "weight"
    "What is pruned: single weights (AGP magnitude pruning, sparse export) or whole channels (real MACs cut)."
    sparsity: float = 0.5
    "Final sparsity: the fraction of conv/linear weights (weight) or of each group's channels (channel) removed."
    lam: float = 0.5
    "λ, the weight of the discriminative consistency term L_DC (the paper uses 0.5)."
    alpha: float = 1.0
    "α, the weight of the reconstruction part inside L_GC."
    recon_weight: float = 1.0
    "Weight of the task's reconstruction term, L1 of the student to the teacher's output."
    gan: Literal["lsgan", "vanilla"] = "lsgan"
    "GAN loss form D0 was trained with (builtin teachers: lsgan)."
    d0: Literal["given", "train"] = "given"
    "given: D0 from --discriminator (builtin teachers ship theirs); train: fit a PatchGAN against the teacher first."
    d0_steps: int = 300
    "Steps of fitting D0 against the teacher when d0=train."
    finetune_d0: bool = False
    "Train D0 against the student during compression (default: D0 frozen)."
    lr: float = 1e-4
    "Adam learning rate of the student."
    d_lr: float = 2e-4
    "Adam learning rate of D0 (d0=train and finetune_d0)."
    agp_initial: float = 0.05
    "AGP: sparsity at the first step."
    agp_end: float = 0.5
    "AGP: fraction of the training steps at which the final sparsity is reached."
    prune_every: int = 0
    "channel: steps between two pruning rewrites (0: about 10 rewrites over the AGP ramp)."
    criterion: Literal["l1", "gamma"] = "l1"
    "channel: unit score, filter L1 norm of the producers or |mask|."
    round_to: int = 1
    "channel: each group keeps a multiple of this many units."

    def validate(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"self-supervised option sparsity must be in (0, 1), got {self.sparsity}")
        if not 0 <= self.agp_initial <= self.sparsity:
            raise ConfigError(f"self-supervised option agp_initial must be in [0, sparsity], got {self.agp_initial}")
        if not 0 < self.agp_end <= 1:
            raise ConfigError(f"self-supervised option agp_end must be in (0, 1], got {self.agp_end}")
        for name in ("lam", "alpha", "recon_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"self-supervised option {name} must be >= 0, got {getattr(self, name)}")
        if self.d0_steps < 1 or self.prune_every < 0 or self.round_to < 1:
            raise ConfigError("self-supervised options d0_steps >= 1, prune_every >= 0 and round_to >= 1 are required")


# -- the loss ---------------------------------------------------------------------------------------------

def normalized_difference(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``|l_o − l_c| / |l_o|`` with the teacher's loss ``l_o`` detached (``eps`` keeps it finite at 0)."""
    lo = teacher.detach()
    return (lo - student).abs() / lo.abs().clamp_min(eps)


def _first_conv_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
    return None


class SelfSupervisedLoss:
    """The generator- and discriminator-consistency terms of one batch (see the module docstring).

    ``conditional``: D0 scores ``cat([input, image])`` (pix2pix); detected from D0's first conv when ``None``.
    """

    def __init__(self, d0: nn.Module, *, gan: str = "lsgan", lam: float = 0.5, alpha: float = 1.0,
                 conditional: bool | None = None) -> None:
        self.d0, self.gan, self.lam, self.alpha = d0, GANLoss(gan), lam, alpha
        self.conditional = conditional

    def _d_in(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if self.conditional is None:
            c = _first_conv_in_channels(self.d0)
            if c is None or c == img.shape[1]:  # no first layer to read: scores the image alone
                self.conditional = False
            elif c == img.shape[1] + x.shape[1] and x.shape[-2:] == img.shape[-2:]:
                self.conditional = True
            else:
                raise ConfigError(f"the discriminator's first layer takes {c} channels; the generator outputs "
                                  f"{img.shape[1]} (input {x.shape[1]}): it is not this generator's discriminator")
        return torch.cat([x, img], dim=1) if self.conditional else img

    def terms(self, x: torch.Tensor, y_teacher: torch.Tensor, y_student: torch.Tensor,
              real: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"gc_adv", "gc_rec" (when real is given), "dc"}``, each already weighted (α, λ)."""
        d = self.d0
        yo = y_teacher.detach()
        s_o, s_c = d(self._d_in(x, yo)), d(self._d_in(x, y_student))
        out = {"gc_adv": normalized_difference(self.gan.g_loss(s_o), self.gan.g_loss(s_c))}
        if real is None:
            real_scores = s_o  # the teacher's output stands in for real images
        else:
            if real.shape != yo.shape:
                raise DataError(f"real images {tuple(real.shape)} and generator outputs {tuple(yo.shape)} differ")
            out["gc_rec"] = self.alpha * normalized_difference(F.l1_loss(yo, real), F.l1_loss(y_student, real))
            real_scores = d(self._d_in(x, real))
        out["dc"] = self.lam * normalized_difference(self.gan.d_loss(real_scores, s_o),
                                                     self.gan.d_loss(real_scores, s_c))
        return out


def real_images(batch: Mapping[str, Any]) -> torch.Tensor | None:
    """The batch's real images for D0: ground truth, else unpaired references, else ``None``."""
    for key in ("target", "reference"):
        if isinstance(batch.get(key), torch.Tensor):
            return batch[key]
    return None


# -- recipes ----------------------------------------------------------------------------------------------

class SelfSupervisedRecipe(Recipe):
    """One generator phase ``G`` with the self-supervised loss (and ``D`` when D0 is fine-tuned).

    ``pruner``: an object with ``step(t)`` / ``state_dict()`` / ``load_state_dict()`` run after every step
    (fine-grained AGP), or ``None``.
    """

    name = "self-supervised"

    def __init__(self, loss: SelfSupervisedLoss, opts: SelfSupervisedOptions, *, pruner: Any = None) -> None:
        self.loss, self.opts, self.pruner = loss, opts, pruner

    def setup(self, trainer: Trainer) -> None:
        trainer.register_module("d0", self.loss.d0, trainable=self.opts.finetune_d0)
        if self.pruner is not None and trainer.step == 0:
            self.pruner.step(0)

    def param_groups(self, trainer: Trainer) -> list[ParamGroup]:
        student = [p for p in trainer.module("student").parameters() if p.requires_grad]
        groups = [ParamGroup("weights", student, adam(self.opts.lr), "constant")]
        if self.opts.finetune_d0:
            groups.append(ParamGroup("disc", list(trainer.module("d0").parameters()), adam(self.opts.d_lr),
                                     "constant"))
        return groups

    def phases(self, trainer: Trainer) -> list[Phase]:
        phases = [Phase("G", ["weights"], self.generator_loss)]
        if self.opts.finetune_d0:
            phases.append(Phase("D", ["disc"], self.discriminator_loss))
        return phases

    def generator_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.batch()
        x = batch["input"]
        yo = ctx.teacher(x)
        yc = ctx.net("student")(x)
        d0 = ctx.trainer.module("d0")
        set_requires_grad(d0, False)
        try:
            self.loss.d0 = ctx.trainer.net("d0")
            terms = self.loss.terms(x, yo, yc, real_images(batch))
        finally:
            set_requires_grad(d0, self.opts.finetune_d0)
        if self.opts.recon_weight > 0:
            terms["recon"] = self.opts.recon_weight * F.l1_loss(yc, yo.detach())
        ctx.cache.update(input=x.detach(), teacher=yo.detach(), student=yc.detach())
        return terms

    def discriminator_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.batch()
        x = batch["input"]
        fake = ctx.cache["student"]
        real = real_images(batch)
        if real is None:
            real = ctx.cache["teacher"]
        d = ctx.trainer.net("d0")
        return {"gan": self.loss.gan.d_loss(d(self.loss._d_in(x, real)), d(self.loss._d_in(x, fake)))}

    def after_step(self, trainer: Trainer, ctx: StepContext) -> None:
        if self.pruner is not None:
            self.pruner.step(trainer.step)

    def progress(self, trainer: Trainer) -> dict[str, float]:
        return {"sparsity": float(self.pruner.sparsity)} if self.pruner is not None else {}

    def describe(self) -> str:
        o = self.opts
        d = "fine-tuned" if o.finetune_d0 else "frozen"
        return (f"L_GC + {o.lam:g}·L_DC (D0 {d}, {o.gan}) + {o.recon_weight:g}·L1 to the teacher; "
                f"{o.granularity} pruning to {o.sparsity:g} on the AGP schedule")

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict()} if self.pruner is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.pruner is not None and "pruner" in state:
            self.pruner.load_state_dict(state["pruner"])


class FitDiscriminator(Recipe):
    """``d0=train``: fit a discriminator to tell real images from the teacher's outputs."""

    name = "fit-d0"

    def __init__(self, loss: SelfSupervisedLoss, lr: float) -> None:
        self.loss, self.lr = loss, lr

    def param_groups(self, trainer: Trainer) -> list[ParamGroup]:
        return [ParamGroup("disc", list(trainer.module("student").parameters()), adam(self.lr), "constant")]

    def phases(self, trainer: Trainer) -> list[Phase]:
        return [Phase("D", ["disc"], self.d_loss)]

    def d_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.batch()
        x = batch["input"]
        real = real_images(batch)
        if real is None:
            raise DataError("d0=train needs real images (paired ground truth or unpaired references) in --data")
        fake = ctx.teacher(x)
        d = ctx.net("student")
        ctx.cache.update(input=x.detach(), teacher=fake.detach())
        return {"gan": self.loss.gan.d_loss(d(self.loss._d_in(x, real)), d(self.loss._d_in(x, fake)))}

    def sample_columns(self, trainer: Trainer, ctx: StepContext) -> None:
        return None

    def describe(self) -> str:
        return f"fit D0 ({self.loss.gan.mode}) on real images vs the teacher's outputs"


class ChannelAGP:
    """AGP over channel groups: every ``every`` steps, ``prune-by-ratio`` (through the job's pipeline runner)
    zeroes the scheduled fraction of each group's units (or, with a MACs target, prunes to the budget
    interpolated on the same schedule); zeroed units are held at 0 after every optimizer step."""

    def __init__(self, job: CompressJob, student: fx.GraphModule, opts: SelfSupervisedOptions, total: int) -> None:
        from ..passes.sparsity import agp_sparsity

        self.job, self.gm, self.opts, self.total = job, student, opts, total
        self.every = opts.prune_every or max(1, round(opts.agp_end * total / 10))
        self._agp = lambda t: agp_sparsity(t, total, opts.sparsity, initial=opts.agp_initial,
                                           end_fraction=opts.agp_end)
        self.sparsity = 0.0
        self.done = -1
        self.keep: dict[str, torch.Tensor] = {}

    def _masks(self) -> dict[str, torch.Tensor]:
        from ..passes.masks import masks

        return masks(self.gm)

    def _budget(self, s: float) -> int:
        before, target = self.job.teacher_profile.macs, self.job.target_macs
        assert target is not None
        return int(before - (s / self.opts.sparsity) * (before - target))

    def step(self, t: int) -> None:
        s = self._agp(t)
        due = self.done < 0 or t - self.done >= self.every or s >= self.opts.sparsity
        if s > self.sparsity and due:
            o = self.opts
            if self.job.target_macs is not None:
                item = ("prune-by-ratio", {"target_macs": float(self._budget(s)), "criterion": o.criterion,
                                           "round_to": o.round_to})
            else:
                item = ("prune-by-ratio", {"ratio": s, "criterion": o.criterion, "round_to": o.round_to})
            self.job.rewrite(self.gm, [item], stage=f"agp-{t}")
            self.keep = {k: (m != 0).to(m.dtype) for k, m in self._masks().items()}
            self.sparsity, self.done = s, t
        with torch.no_grad():  # zeroed units stay at 0 whatever the optimizer did to them
            for k, m in self._masks().items():
                if k in self.keep:
                    m.mul_(self.keep[k])

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "done": self.done, "keep": {k: v.clone() for k, v in self.keep.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sparsity, self.done = float(state["sparsity"]), int(state["done"])
        self.keep = {k: v.clone() for k, v in state.get("keep", {}).items()}


# -- the method -------------------------------------------------------------------------------------------

def _fit_discriminator(job: CompressJob, loss: SelfSupervisedLoss, opts: SelfSupervisedOptions) -> nn.Module:
    from ..models import create

    d = create("patchgan_d", input_nc=job.train_output_shape[0])  # unconditional: scores output images alone
    loss.d0, loss.conditional = d, False
    trainer, res = job.train_stage(FitDiscriminator(loss, opts.d_lr), d, stage="d0", steps=opts.d0_steps,
                                   seed_offset=3)
    d = trainer.module("student").eval()
    for p in d.parameters():
        p.requires_grad_(False)
    log.info(f"self-supervised: fitted D0 against the teacher for {res.steps} steps (d0=train)")
    return d


@register_method("self-supervised", options=SelfSupervisedOptions,
                 summary="the teacher's discriminator D0 supervises a pruned student (L_GC + λ·L_DC); "
                         "fine-grained AGP with a sparse export, or channel pruning with exact elimination",
                 defaults={"max_steps": 300, "finetune_steps": 50, "batch_size": 8, "bits": 32}, bits=(32,),
                 bits_reason="self-supervised prunes without quantizing; use --method gs for a quantized student")
def run_self_supervised(job: CompressJob, opts: SelfSupervisedOptions) -> dict[str, Any]:
    """Run the method on ``job`` (see the module docstring)."""
    from .. import trace
    from ..passes.sparsity import FineGrainedPruner
    from ..sparse import save_sparse

    s = job.settings
    if opts.granularity == "weight" and job.target_macs is not None:
        raise ConfigError("--target-macs needs --opt granularity=channel: fine-grained (weight) sparsity leaves the "
                          "dense MACs unchanged")
    report: dict[str, Any] = {"method": "self-supervised", "options": dataclasses.asdict(opts),
                              "teacher": job.teacher_info, "target_macs": job.target_macs}
    d0 = job.build_discriminator() if opts.d0 == "given" else None
    if d0 is not None:
        d0.eval()
        for p in d0.parameters():
            p.requires_grad_(False)
    loss = SelfSupervisedLoss(d0 if d0 is not None else nn.Identity(), gan=opts.gan, lam=opts.lam, alpha=opts.alpha)
    if opts.d0 == "train":
        d0 = _fit_discriminator(job, loss, opts)
        report["d0"] = f"fitted against the teacher for {opts.d0_steps} steps (d0=train)"
    elif d0 is None:
        raise ConfigError("--method self-supervised needs the teacher's discriminator: pass --discriminator SPEC "
                          "(same forms as --teacher), or --opt d0=train to fit one against the teacher first")
    else:
        report["d0"] = job.discriminator_spec()
    loss.d0 = d0
    student = trace(job.teacher, job.reference_input)
    for p in student.parameters():
        p.requires_grad_(True)

    total = s.max_steps
    if opts.granularity == "weight":
        pruner: Any = FineGrainedPruner(student, opts.sparsity, total, initial=opts.agp_initial,
                                        end_fraction=opts.agp_end)
        total += s.finetune_steps  # the schedule holds the final sparsity over the fine-tuning steps
    else:
        student = job.rewrite(student, f"insert-masks{{round_to={opts.round_to}}}", stage="masks")
        pruner = ChannelAGP(job, student, opts, total)
    recipe = SelfSupervisedRecipe(loss, opts, pruner=pruner)
    trainer, result = job.train_stage(recipe, student, stage="compress", steps=total, out_dir=job.run_dir)
    steps = result.steps
    student = trainer.module("student").eval()
    report["losses"] = result.losses
    size_after = None
    note = None
    if opts.granularity == "weight":
        pruner.apply()
        report["sparsity"] = {"scheduled": pruner.sparsity, "measured_zero_fraction": pruner.zero_fraction()}
        state = {k: v for k, v in student.state_dict().items()}
        size_after = on_rank0(lambda: save_sparse(state, job.run_dir / "sparse.safetensors"),  # rank 0 writes
                              what="the sparse export")
        report["sparse_export"] = {"file": "sparse.safetensors", "payload_bytes": size_after}
        note = (f"fine-grained sparsity {pruner.zero_fraction():.1%} of conv/linear weights: the dense MACs are "
                "unchanged; the size is the sparse encoding's (sparse.safetensors)")
    else:
        student = job.rewrite(student, "eliminate-dead-channels", stage="eliminate")
        report["sparsity"] = {"scheduled": pruner.sparsity}
        if s.finetune_steps > 0:
            for p in student.parameters():
                p.requires_grad_(True)
            ft = SelfSupervisedRecipe(loss, dataclasses.replace(opts, finetune_d0=False), pruner=None)
            trainer, res = job.train_stage(ft, student, stage="finetune", steps=s.finetune_steps, seed_offset=1)
            steps += res.steps
            student = trainer.module("student").eval()
    for p in student.parameters():
        p.requires_grad_(False)
    log.info(f"self-supervised: {note}" if note else "self-supervised: slim student ready")
    return job.finish(student, method="self-supervised", steps=steps, report=report,
                      size_bytes_after=size_after, note=note)
