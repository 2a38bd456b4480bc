"""SNGAN's ResNet generator for 32x32 images (``sngan_g``; Miyato et al., ICLR 2018, CIFAR-10 model).

Noise ``z`` (``nz`` = 128) -> linear to ``ngf`` x 4 x 4 -> three up-sampling residual blocks
(BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, shortcut up + conv1x1) -> BN-ReLU-conv3x3 -> tanh. Spectral
normalization belongs to the discriminator only, so the generator is a plain network. Key names
follow the common ports: ``l1``, ``block{2,3,4}.{b1,c1,b2,c2,c_sc}``, ``b5``, ``c5``.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_positive
from gcompiler.models.registry import noise, register_model


class GenBlock(nn.Module):
    """Residual up-sampling block (x2 nearest)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.b1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.b2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.up_sc = nn.Upsample(scale_factor=2, mode="nearest")
        self.c_sc = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(self.up(self.relu1(self.b1(x))))
        h = self.c2(self.relu2(self.b2(h)))
        return h + self.c_sc(self.up_sc(x))


class SNGANGenerator(nn.Module):
    """``(N, nz)`` noise -> ``(N, 3, 32, 32)`` image in [-1, 1]."""

    def __init__(self, nz: int = 128, ngf: int = 256, bottom: int = 4, nc: int = 3) -> None:
        super().__init__()
        check_positive("sngan_g", nz=nz, ngf=ngf, bottom=bottom, nc=nc)
        self.ngf, self.bottom = ngf, bottom
        self.l1 = nn.Linear(nz, bottom * bottom * ngf)
        self.block2 = GenBlock(ngf, ngf)
        self.block3 = GenBlock(ngf, ngf)
        self.block4 = GenBlock(ngf, ngf)
        self.b5 = nn.BatchNorm2d(ngf)
        self.relu5 = nn.ReLU()
        self.c5 = nn.Conv2d(ngf, nc, 3, 1, 1)
        self.tanh = nn.Tanh()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.l1(z).reshape(-1, self.ngf, self.bottom, self.bottom)
        h = self.block4(self.block3(self.block2(h)))
        return self.tanh(self.c5(self.relu5(self.b5(h))))


@register_model("sngan_g", family="sngan", kind="generator",
                default_input=lambda nz=128, **_: (noise(nz),))
def sngan_g(*, nz: int = 128, ngf: int = 256, nc: int = 3) -> SNGANGenerator:
    """SNGAN ResNet generator for 32x32 images (CIFAR-10 architecture)."""
    return SNGANGenerator(nz, ngf, 4, nc)
