"""Distillation and adversarial losses.

* :func:`pixel_loss` — L1 / MSE between images.
* :class:`FeatureDistillLoss` — feature distillation at tapped nodes: a learnable 1x1 conv maps each
  student feature to the teacher feature's width, then MSE (GAN Compression's recipe).
* :class:`PerceptualLoss` — VGG16 content loss (L1 on relu1_2) + style loss (``1e5`` x MSE of the Gram
  matrices on relu1_2/2_2/3_3/4_3), images mapped from the generator's range to [0, 1] first (GAN
  Slimming's ``d``). :func:`build_distance` builds it when VGG weights are supplied and otherwise
  falls back to a pixel loss, *logging which one is used*.
* :class:`GANLoss` — LSGAN, hinge and vanilla (non-saturating) discriminator / generator losses.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

log = logging.getLogger("gcompiler.train")

PIXEL_LOSSES = ("l1", "mse")
GAN_MODES = ("lsgan", "hinge", "vanilla")


def pixel_loss(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean L1 (``"l1"``) or mean squared error (``"mse"``) between two equally shaped tensors."""
    if x.shape != y.shape:
        raise ConfigError(f"pixel loss: student output {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
    if kind == "l1":
        return F.l1_loss(x.float(), y.float())
    if kind == "mse":
        return F.mse_loss(x.float(), y.float())
    raise ConfigError(f"unknown pixel loss {kind!r}; use one of {PIXEL_LOSSES}")


# ------------------------------------------------------------------------------------------------
# adversarial

def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


class GANLoss:
    """Adversarial losses on raw discriminator scores (no sigmoid in D).

    For scores ``r = D(real)`` and ``f = D(fake)`` (means over all patch scores):

    ========  =============================================  ==========================
    mode      discriminator loss                             generator loss
    ========  =============================================  ==========================
    lsgan     ``0.5 * (mean((r - 1)^2) + mean(f^2))``         ``mean((f - 1)^2)``
    vanilla   ``0.5 * (BCE(r, 1) + BCE(f, 0))`` with logits   ``BCE(f, 1)`` (non-saturating)
    hinge     ``mean(relu(1 - r)) + mean(relu(1 + f))``       ``-mean(f)``
    ========  =============================================  ==========================

    The 0.5 of LSGAN / vanilla is pix2pix/CycleGAN's convention (it halves D's learning speed
    relative to G). A discriminator returning a list of score maps (multi-scale) gets the mean of
    the per-map losses.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        if mode not in GAN_MODES:
            raise ConfigError(f"unknown GAN loss {mode!r}; use one of {GAN_MODES}")
        self.mode = mode

    def d_loss(self, real: torch.Tensor | Sequence[torch.Tensor],
               fake: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        rs, fs = _as_list(real), _as_list(fake)
        terms = [self._d_one(r.float(), f.float()) for r, f in zip(rs, fs, strict=True)]
        return torch.stack(terms).mean()

    def g_loss(self, fake: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        terms = [self._g_one(f.float()) for f in _as_list(fake)]
        return torch.stack(terms).mean()

    def _d_one(self, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.mode == "lsgan":
            return 0.5 * (((r - 1) ** 2).mean() + (f ** 2).mean())
        if self.mode == "vanilla":
            return 0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                          + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()

    def _g_one(self, f: torch.Tensor) -> torch.Tensor:
        if self.mode == "lsgan":
            return ((f - 1) ** 2).mean()
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
        return -f.mean()


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------------
# feature distillation

def _key(name: str) -> str:
    return name.replace(".", "__")


class FeatureDistillLoss(nn.Module):
    """Sum over tap pairs of ``MSE(conv1x1_k(student_feat_k), teacher_feat_k)``.

    Args:
        pairs: ``(student_tap, teacher_tap)`` names (as given to :class:`~gcompiler.train.taps.TappedModel`).
        student_channels, teacher_channels: channel count of every tap.

    The 1x1 convs (with bias) are learnable and belong to the student side of training (put them in
    the weights' parameter group). They are initialised to the identity when the widths are equal
    (a student sharing the teacher's architecture, as in GAN Slimming), else with PyTorch's default.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], student_channels: Mapping[str, int],
                 teacher_channels: Mapping[str, int]) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError("feature distillation needs at least one (student_tap, teacher_tap) pair")
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        self.maps = nn.ModuleDict()
        for s, t in self.pairs:
            for name, table in ((s, student_channels), (t, teacher_channels)):
                if name not in table:
                    raise ConfigError(f"feature distillation: channel count of tap {name!r} unknown")
            cs, ct = int(student_channels[s]), int(teacher_channels[t])
            conv = nn.Conv2d(cs, ct, 1)
            if cs == ct:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(ct).view(ct, ct, 1, 1))
                    conv.bias.zero_()
            self.maps[_key(s) + "__to__" + _key(t)] = conv

    def forward(self, student_feats: Mapping[str, torch.Tensor],
                teacher_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for (s, t), conv in zip(self.pairs, self.maps.values()):
            fs, ft = student_feats[s], teacher_feats[t]
            mapped = conv(fs)
            if mapped.shape[-2:] != ft.shape[-2:]:
                raise ConfigError(f"feature distillation {s!r} -> {t!r}: spatial sizes differ "
                                  f"({tuple(mapped.shape[-2:])} vs {tuple(ft.shape[-2:])}); tap nodes at the same "
                                  f"resolution")
            term = F.mse_loss(mapped.float(), ft.detach().float())
            total = term if total is None else total + term
        assert total is not None
        return total


# ------------------------------------------------------------------------------------------------
# perceptual (VGG) distance

def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, C)``: ``F F^T / (C H W)`` per sample."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w).float()
    return torch.bmm(flat, flat.transpose(1, 2)) / float(c * h * w)


class PerceptualLoss(nn.Module):
    """GAN Slimming's perceptual distance between student and teacher images.

    ``content_weight * L1(phi_relu1_2(x), phi_relu1_2(y)) + style_weight * sum_l MSE(Gram(phi_l(x)),
    Gram(phi_l(y)))`` over ``style_layers``, with ``phi`` a frozen VGG16 (``vgg`` must return a dict
    of activations by layer name, like the zoo's ``vgg16_features``). Images are mapped from
    ``value_range`` to [0, 1] before VGG (which applies the ImageNet normalization its weights
    expect). The second argument is treated as the fixed target (no gradient).

    ``forward`` returns ``{"content": ..., "style": ...}`` (already weighted).
    """

    def __init__(self, vgg: nn.Module, *, content_layer: str = "relu1_2",
                 style_layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                 content_weight: float = 1.0, style_weight: float = 1e5,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.vgg = vgg.eval()
        set_requires_grad(self.vgg, False)
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.vgg.eval()  # the feature net is frozen whatever the trainer does
        return self

    def _features(self, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        lo, hi = self.value_range
        feats = self.vgg((x - lo) / (hi - lo))
        if not isinstance(feats, Mapping):
            raise ConfigError("PerceptualLoss: the VGG module must return a dict {layer_name: activation} "
                              "(use gcompiler.models.create('vgg16_features', weights=...))")
        missing = [n for n in (self.content_layer, *self.style_layers) if n not in feats]
        if missing:
            raise ConfigError(f"PerceptualLoss: the VGG module does not return layer(s) {missing}; build it with "
                              f"layers={sorted({self.content_layer, *self.style_layers})}")
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        fx = self._features(x)
        with torch.no_grad():
            fy = self._features(y.detach())
        content = F.l1_loss(fx[self.content_layer].float(), fy[self.content_layer].float())
        style = sum(F.mse_loss(gram_matrix(fx[n]), gram_matrix(fy[n])) for n in self.style_layers)
        return {"content": self.content_weight * content, "style": self.style_weight * style}


class PixelDistance(nn.Module):
    """A pixel loss in the same ``{name: term}`` form as :class:`PerceptualLoss` (the fallback)."""

    def __init__(self, kind: str = "mse", weight: float = 1.0) -> None:
        super().__init__()
        if kind not in PIXEL_LOSSES:
            raise ConfigError(f"unknown pixel loss {kind!r}; use one of {PIXEL_LOSSES}")
        self.kind = kind
        self.weight = float(weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.kind: self.weight * pixel_loss(self.kind, x, y.detach())}


def build_distance(kind: str = "perceptual", *, vgg_weights: str | os.PathLike | None = None,
                   vgg: nn.Module | None = None, fallback: str = "mse",
                   value_range: tuple[float, float] = (-1.0, 1.0), style_weight: float = 1e5,
                   content_weight: float = 1.0) -> tuple[nn.Module, str]:
    """The distance ``d(student_image, teacher_image)`` and a one-line description of what it is.

    ``kind="perceptual"`` needs VGG16 weights (``vgg_weights=PATH`` to torchvision's state dict, or a
    ready ``vgg`` module). Without them the ``fallback`` pixel loss is used and a warning says so
    (nothing is downloaded). ``kind="l1"`` / ``"mse"`` give that pixel loss directly.
    """
    if kind in PIXEL_LOSSES:
        return PixelDistance(kind), f"{kind.upper()} on pixels"
    if kind != "perceptual":
        raise ConfigError(f"unknown distance {kind!r}; use 'perceptual', 'l1' or 'mse'")
    if vgg is None and vgg_weights is not None:
        from ..models import create

        vgg = create("vgg16_features", weights=vgg_weights)
    if vgg is None:
        msg = (f"perceptual (VGG16) distance requested but no VGG16 weights were supplied (vgg_weights=PATH to "
               f"torchvision's vgg16-397923af.pth): using {fallback.upper()} on pixels instead")
        log.warning(msg)
        return PixelDistance(fallback), msg
    return (PerceptualLoss(vgg, value_range=value_range, style_weight=style_weight, content_weight=content_weight),
            f"perceptual: {content_weight:g} x L1(relu1_2) + {style_weight:g} x Gram MSE(relu1_2/2_2/3_3/4_3)")
