"""DCGAN generator and discriminator for 64x64 images (``dcgan_g``, ``dcgan_d``).

Layout of the PyTorch examples' DCGAN (one ``main`` Sequential): the generator maps ``nz``x1x1 noise
through five 4x4 transposed convs (no bias; BatchNorm + ReLU between, tanh at the end); the
discriminator mirrors it with 4x4 stride-2 convs, LeakyReLU(0.2) and a sigmoid. With nz 100 and
ngf = ndf = 64: 3,576,704 / 2,765,568 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_positive
from gcompiler.models.registry import image, noise, register_model


class DCGANGenerator(nn.Module):
    """``(N, nz, 1, 1)`` noise -> ``(N, nc, 64, 64)`` image in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        check_positive("dcgan_g", nz=nz, ngf=ngf, nc=nc)
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """``(N, nc, 64, 64)`` image -> ``(N, 1, 1, 1)`` probability of being real."""

    def __init__(self, nc: int = 3, ndf: int = 64) -> None:
        super().__init__()
        check_positive("dcgan_d", nc=nc, ndf=ndf)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for cin, cout in ((ndf, ndf * 2), (ndf * 2, ndf * 4), (ndf * 4, ndf * 8)):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


@register_model("dcgan_g", family="dcgan", kind="generator",
                default_input=lambda nz=100, **_: (noise(nz, 1, 1),))
def dcgan_g(*, nz: int = 100, ngf: int = 64, nc: int = 3) -> DCGANGenerator:
    """DCGAN generator, 64x64 output (3,576,704 params at nz 100, ngf 64)."""
    return DCGANGenerator(nz, ngf, nc)


@register_model("dcgan_d", family="dcgan", kind="discriminator",
                default_input=lambda nc=3, **_: (image(nc, 64),))
def dcgan_d(*, nc: int = 3, ndf: int = 64) -> DCGANDiscriminator:
    """DCGAN discriminator for 64x64 images (2,765,568 params at ndf 64)."""
    return DCGANDiscriminator(nc, ndf)
