"""The training recipes of GAN Slimming (:mod:`gcompiler.methods.gs`) and their small helpers.

* :class:`GSTraining` — the search: :class:`~gcompiler.train.Distill` (distance ``d`` + GAN) plus the
  ``masks`` parameter group (SGD, cosine) followed after every step by the proximal operator of
  ``rho * ||gamma||_1`` (:func:`gcompiler.passes.sparsity.proximal_l1`); live sparsity and the exact MACs of
  the network elimination would build (:func:`gcompiler.estimate`).
* :class:`GSFinetune` — fine-tuning of the slim student with the same losses and no masks.
* :class:`FrozenNormStats` — runs the student with BatchNorm in eval mode (the teacher's statistics).
* :func:`auto_rho`, :func:`mask_sparsity`, :func:`float_copy`, :func:`build_discriminator`, :func:`distill_config`.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..cost import estimate
from ..errors import ConfigError
from ..passes.sparsity import proximal_l1
from ..train import Distill, DistillConfig, ParamGroup, Trainer, sgd

log = logging.getLogger("gcompiler.compress")


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


def float_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` without fake quantization (``strip-fake-quant`` through :func:`gcompiler.compile`, which
    never touches its argument), for pricing mask settings with :func:`gcompiler.estimate`, which counts float
    convs."""
    import copy

    from ..passes.manager import compile as compile_pipeline
    from ..quant.qmodules import QUANT_CONV_TYPES

    if not any(isinstance(m, QUANT_CONV_TYPES) for m in gm.modules()):
        return copy.deepcopy(gm)
    return compile_pipeline(gm, "strip-fake-quant", check=False)


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


class GSTraining(Distill):
    """The GS search: :class:`~gcompiler.train.Distill` (d + GAN) plus the ``masks`` group with the proximal step."""

    name = "gs"  # the checkpoint tag of the search stage (kept for runs started before the split)

    def __init__(self, config: DistillConfig, *, rho: float, gamma_lr: float, gamma_momentum: float,
                 freeze_norm_stats: bool = True) -> None:
        super().__init__(config)
        self.rho = float(rho)
        self.gamma_lr = float(gamma_lr)
        self.gamma_momentum = float(gamma_momentum)
        self.freeze_norm_stats = freeze_norm_stats
        self._priced: fx.GraphModule | None = None

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        student = trainer.module("student")
        if self.freeze_norm_stats:
            trainer.set_runner("student", FrozenNormStats(student))
        if isinstance(student, fx.GraphModule):
            self._priced = float_copy(student)

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
        if self._priced is not None:  # MACs of the network elimination would build from the current masks
            from ..passes.masks import masks

            stats["macs"] = float(estimate(self._priced, masks=masks(trainer.module("student"))).macs)
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


def build_discriminator(teacher_first_width: int, out_shape: tuple[int, ...], opts: Any) -> nn.Module:
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


def first_conv_width(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return int(m.out_channels)
    return 64


def distill_config(opts: Any, distance: nn.Module, note: str, disc: nn.Module | None, *, gan_weight: float,
                    lr: float) -> DistillConfig:
    return DistillConfig(pixel=None, distance=distance if opts.beta > 0 else None, distance_weight=opts.beta,
                         distance_note=note, gan=opts.gan if gan_weight > 0 else None, gan_weight=gan_weight,
                         discriminator=disc, d_real="teacher", lr=lr, betas=(0.5, 0.999), d_lr=opts.d_lr,
                         schedule="linear_decay:0.5")
