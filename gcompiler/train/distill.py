"""``Distill``: the generic teacher -> student distillation recipe (and the base of the methods' training recipes).

Losses of the generator phase ``"G"`` (each optional, each weighted, logged as ``G/<term>``):

* ``pixel``: L1 / MSE between the student's output and the target (the teacher's output, or the
  batch's ground truth ``"target"`` with ``target="target"``);
* the ``distance`` module's terms (e.g. :class:`~gcompiler.train.losses.PerceptualLoss`: ``content`` and
  ``style``), student output vs teacher output;
* ``feature``: :class:`~gcompiler.train.losses.FeatureDistillLoss` at tapped graph nodes;
* ``gan``: the generator's adversarial loss against the discriminator.

With a discriminator a ``"D"`` phase follows: the teacher's outputs (or the batch's ``"target"`` /
``"reference"``) are "real", the student's (detached) outputs "fake". Real and fake go through D in
*one* forward call (concatenated on the batch dimension) so DDP sees one forward per backward; with a
per-sample-normalised D (PatchGAN with InstanceNorm) that equals two separate calls.

Parameter groups: ``"weights"`` (student parameters not claimed by :meth:`Distill.extra_groups`, plus
the feature mappings), the extra groups a subclass adds (GAN Slimming's ``"masks"``), and ``"disc"``.
Subclasses override :meth:`extra_groups`, :meth:`extra_losses`, :meth:`progress` and the hooks of
:class:`~gcompiler.train.engine.Recipe`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from .engine import Trainer
from .recipe import ParamGroup, Phase, Recipe, StepContext, adam
from .losses import GAN_MODES, PIXEL_LOSSES, FeatureDistillLoss, GANLoss, pixel_loss, set_requires_grad
from .schedules import Schedule
from .taps import TappedModel


@dataclass
class DistillConfig:
    """Options of :class:`Distill` (defaults: L1 to the teacher, Adam 2e-4 / (0.5, 0.999), linear decay
    from half-way).

    ``discriminator``: an ``nn.Module`` or a zoo name (``"patchgan_d"``, built with ``disc_kwargs``);
    used when ``gan`` is set. ``d_real``: where D's real samples come from (``"teacher"`` outputs as in
    GAN Slimming, ``"target"`` ground truth, ``"reference"`` unpaired domain-B images).
    ``d_conditional``: feed D ``cat([input, image])`` (pix2pix style; needs equal input/output size).
    ``stats``: optional ``fn(trainer) -> {name: value}`` merged into :meth:`Distill.progress`.
    """

    pixel: str | None = "l1"
    pixel_weight: float = 1.0
    target: str = "teacher"
    distance: nn.Module | None = None
    distance_weight: float = 1.0
    distance_note: str = ""
    feature_pairs: Sequence[tuple[str, str]] = ()
    feature_weight: float = 1.0
    gan: str | None = None
    gan_weight: float = 1.0
    discriminator: nn.Module | str | None = None
    disc_kwargs: Mapping[str, Any] = field(default_factory=dict)
    d_real: str = "teacher"
    d_conditional: bool = False
    d_every: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_lr: float | None = None
    schedule: Schedule | str = "linear_decay:0.5"
    d_schedule: Schedule | str | None = None
    clip_grad_norm: float | None = None
    stats: Callable[[Trainer], Mapping[str, float]] | None = None

    def validate(self) -> None:
        if self.pixel is not None and self.pixel not in PIXEL_LOSSES:
            raise ConfigError(f"pixel loss must be one of {PIXEL_LOSSES} or None, got {self.pixel!r}")
        if self.target not in ("teacher", "target"):
            raise ConfigError(f"target must be 'teacher' or 'target', got {self.target!r}")
        if self.gan is not None and self.gan not in GAN_MODES:
            raise ConfigError(f"gan must be one of {GAN_MODES} or None, got {self.gan!r}")
        if self.d_real not in ("teacher", "target", "reference"):
            raise ConfigError(f"d_real must be 'teacher', 'target' or 'reference', got {self.d_real!r}")
        if self.pixel is None and self.distance is None and not self.feature_pairs and self.gan is None:
            raise ConfigError("Distill has no loss at all: set pixel, distance, feature_pairs or gan")


class Distill(Recipe):
    """Teacher -> student distillation; see the module docstring."""

    name = "distill"

    def __init__(self, config: DistillConfig | None = None) -> None:
        self.cfg = config or DistillConfig()
        self.cfg.validate()
        self.gan = GANLoss(self.cfg.gan) if self.cfg.gan else None
        self.feature_loss: FeatureDistillLoss | None = None

    # -- hooks a subclass overrides ---------------------------------------------------------------
    def extra_groups(self, trainer: Trainer) -> list[ParamGroup]:
        """Parameter groups besides ``weights`` / ``disc`` (their parameters leave ``weights``)."""
        return []

    def extra_losses(self, ctx: StepContext, student_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """More generator-phase loss terms (already weighted)."""
        return {}

    # -- Recipe -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer) -> None:
        cfg = self.cfg
        if cfg.feature_pairs:
            if not trainer.has_module("teacher"):
                raise ConfigError("feature distillation needs the teacher model (not only cached outputs)")
            s_taps = [s for s, _ in cfg.feature_pairs]
            t_taps = [t for _, t in cfg.feature_pairs]
            s_run = TappedModel(trainer.module("student"), s_taps)
            t_run = TappedModel(trainer.module("teacher"), t_taps)
            x = trainer.example_input()
            t_ch = t_run.channels(x)
            s_ch = s_run.channels(x)
            self.feature_loss = FeatureDistillLoss(cfg.feature_pairs, s_ch, t_ch)
            trainer.register_module("feature_maps", self.feature_loss, trainable=True)
            trainer.set_runner("student", s_run)
            trainer.set_runner("teacher", t_run)
        if cfg.distance is not None:
            trainer.register_module("distance", cfg.distance, trainable=False, save=False)
        if self.gan is not None:
            d = cfg.discriminator if cfg.discriminator is not None else "patchgan_d"
            if isinstance(d, str):
                from ..models import create

                d = create(d, **dict(cfg.disc_kwargs))
            trainer.register_module("disc", d, trainable=True)

    def param_groups(self, trainer: Trainer) -> list[ParamGroup]:
        cfg = self.cfg
        extra = self.extra_groups(trainer)
        claimed = {id(p) for g in extra for p in g.params}
        weights = [p for p in trainer.module("student").parameters() if p.requires_grad and id(p) not in claimed]
        if self.feature_loss is not None:
            weights += list(self.feature_loss.parameters())
        groups = []
        if weights:
            groups.append(ParamGroup("weights", weights, adam(cfg.lr, cfg.betas), cfg.schedule,
                                     clip_grad_norm=cfg.clip_grad_norm))
        groups += extra
        if self.gan is not None:
            groups.append(ParamGroup("disc", list(trainer.module("disc").parameters()),
                                     adam(cfg.d_lr if cfg.d_lr is not None else cfg.lr, cfg.betas),
                                     cfg.d_schedule if cfg.d_schedule is not None else cfg.schedule))
        return groups

    def phases(self, trainer: Trainer) -> list[Phase]:
        g_groups = [g.name for g in trainer.groups.values() if g.name != "disc"]
        phases = [Phase("G", g_groups, self.generator_loss)]
        if self.gan is not None:
            phases.append(Phase("D", ["disc"], self.discriminator_loss, every=self.cfg.d_every))
        return phases

    def describe(self) -> str:
        cfg = self.cfg
        parts = []
        if cfg.pixel:
            parts.append(f"{cfg.pixel_weight:g} x {cfg.pixel.upper()} to the {cfg.target}")
        if cfg.distance is not None:
            parts.append(f"{cfg.distance_weight:g} x distance ({cfg.distance_note or type(cfg.distance).__name__})")
        if cfg.feature_pairs:
            parts.append(f"{cfg.feature_weight:g} x feature MSE at {list(cfg.feature_pairs)}")
        if cfg.gan:
            parts.append(f"{cfg.gan_weight:g} x {cfg.gan} GAN (D real = {cfg.d_real})")
        return "; ".join(parts)

    def progress(self, trainer: Trainer) -> dict[str, float]:
        return dict(self.cfg.stats(trainer)) if self.cfg.stats is not None else {}

    # -- losses -----------------------------------------------------------------------------------
    def _teacher(self, ctx: StepContext, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = ctx.batch()
        trainer = ctx.trainer
        if self.feature_loss is None and "teacher" in batch:
            return batch["teacher"], {}
        if not trainer.has_module("teacher"):
            raise DataError("the batch carries no 'teacher' output and no teacher model was given to the trainer")
        out = ctx.teacher(x)
        if self.feature_loss is not None:
            return out[0], out[1]
        return out, {}

    def _d_input(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if not self.cfg.d_conditional:
            return img
        if x.shape[-2:] != img.shape[-2:]:
            raise ConfigError(f"d_conditional needs input and output of one size, got {tuple(x.shape[-2:])} and "
                              f"{tuple(img.shape[-2:])}")
        return torch.cat([x, img], dim=1)

    def generator_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg, trainer = self.cfg, ctx.trainer
        batch = ctx.batch()
        x = batch["input"]
        t_out, t_feats = self._teacher(ctx, x)
        res = trainer.net("student")(x)
        s_out, s_feats = (res[0], res[1]) if self.feature_loss is not None else (res, {})
        if s_out.shape != t_out.shape:
            raise DataError(f"the student's output {tuple(s_out.shape)} and the teacher's {tuple(t_out.shape)} "
                            f"differ in shape")
        terms: dict[str, torch.Tensor] = {}
        if cfg.pixel:
            if cfg.target == "target":
                if "target" not in batch:
                    raise DataError("target='target' but the batch has no ground-truth 'target' (unpaired data?)")
                tgt = batch["target"]
                if tgt.shape != s_out.shape:
                    raise DataError(f"the batch's ground truth 'target' is {tuple(tgt.shape)} but the models output "
                                    f"{tuple(s_out.shape)}: the teacher does not fit this data (another scale or "
                                    f"number of channels?)")
            else:
                tgt = t_out
            terms["pixel"] = cfg.pixel_weight * pixel_loss(cfg.pixel, s_out, tgt)
        if cfg.distance is not None:
            for k, v in trainer.net("distance")(s_out, t_out).items():
                terms[k] = cfg.distance_weight * v
        if self.feature_loss is not None:
            terms["feature"] = cfg.feature_weight * trainer.net("feature_maps")(s_feats, t_feats)
        if self.gan is not None:
            d = trainer.module("disc")
            set_requires_grad(d, False)
            try:
                terms["gan"] = cfg.gan_weight * self.gan.g_loss(d(self._d_input(x, s_out)))
            finally:
                set_requires_grad(d, True)
        terms.update(self.extra_losses(ctx, s_out))
        ctx.cache.update(input=x.detach(), teacher=t_out.detach(), student=s_out.detach())
        return terms

    def discriminator_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.batch()
        x = batch["input"]
        if "student" not in ctx.cache:  # D runs on a step where G did not (G every k > 1 is not offered; be safe)
            with torch.no_grad():
                res = ctx.trainer.net("student")(x)
            ctx.cache["student"] = (res[0] if self.feature_loss is not None else res).detach()
        fake = ctx.cache["student"]
        if self.cfg.d_real == "teacher":
            real = ctx.cache.get("teacher")
            if real is None:
                real = self._teacher(ctx, x)[0].detach()
        else:
            if self.cfg.d_real not in batch:
                raise DataError(f"d_real={self.cfg.d_real!r} but the batch has no {self.cfg.d_real!r} images")
            real = batch[self.cfg.d_real]
        if real.shape[1:] != fake.shape[1:]:
            raise DataError(f"discriminator real images {tuple(real.shape)} and student outputs {tuple(fake.shape)} "
                            f"differ in shape")
        scores = ctx.trainer.net("disc")(torch.cat([self._d_input(x, real), self._d_input(x, fake)], dim=0))
        n = real.shape[0]
        if isinstance(scores, torch.Tensor):
            r, f = scores[:n], scores[n:]
        else:
            r, f = [s[:n] for s in scores], [s[n:] for s in scores]
        assert self.gan is not None
        return {"gan": self.gan.d_loss(r, f)}
