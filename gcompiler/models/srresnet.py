"""SRGAN's generator, SRResNet (``srresnet``).

Ledig et al. (CVPR 2017): 9x9 conv + PReLU, ``nb`` residual blocks (conv3x3-BN-PReLU-conv3x3-BN plus
skip), conv3x3-BN plus a long skip, then log2(scale) sub-pixel up-sampling steps (conv3x3 to 4x the
channels, PixelShuffle(2), PReLU) and a 9x9 output conv. SRGAN has no canonical public PyTorch
checkpoint, so the key names are ours: ``conv_first``, ``body.{i}.{conv1,bn1,conv2,bn2}``,
``conv_body``, ``bn_body``, ``upsample.{j}.conv``, ``conv_last``.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_choice, check_positive
from gcompiler.models.registry import image, register_model


class SRResidualBlock(nn.Module):
    """``x + bn2(conv2(prelu(bn1(conv1(x)))))``."""

    def __init__(self, nf: int, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(nf) if bn else nn.Identity()
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(nf) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class UpsampleBlock(nn.Module):
    """Sub-pixel x2 up-sampling: conv3x3 (nf -> 4 nf), PixelShuffle(2), PReLU."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(nf, nf * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """SRGAN generator for ``scale`` in {1, 2, 4, 8}; output is not squashed (SRResNet regresses pixels)."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 16, scale: int = 4,
                 bn: bool = True) -> None:
        super().__init__()
        check_positive("srresnet", in_nc=in_nc, out_nc=out_nc, nf=nf, nb=nb)
        check_choice("srresnet", "scale", scale, (1, 2, 4, 8))
        self.conv_first = nn.Conv2d(in_nc, nf, 9, 1, 4)
        self.prelu_first = nn.PReLU()
        self.body = nn.Sequential(*[SRResidualBlock(nf, bn) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1, bias=not bn)
        self.bn_body = nn.BatchNorm2d(nf) if bn else nn.Identity()
        self.upsample = nn.Sequential(*[UpsampleBlock(nf) for _ in range(scale.bit_length() - 1)])
        self.conv_last = nn.Conv2d(nf, out_nc, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.prelu_first(self.conv_first(x))
        fea = fea + self.bn_body(self.conv_body(self.body(fea)))
        return self.conv_last(self.upsample(fea))


@register_model("srresnet", family="srgan", kind="generator",
                default_input=lambda in_nc=3, **_: (image(in_nc, 64),))
def srresnet(*, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 16, scale: int = 4,
             bn: bool = True) -> SRResNet:
    """SRGAN generator (SRResNet, PixelShuffle up-sampling, x4 default); reference input 64x64 low-res."""
    return SRResNet(in_nc, out_nc, nf, nb, scale, bn)
