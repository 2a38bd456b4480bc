"""ESRGAN's RRDBNet super-resolution generator (``rrdbnet``).

Layout of xinntao/ESRGAN's ``RRDBNet_arch.py`` (the public ``RRDB_ESRGAN_x4.pth``): ``conv_first``,
``RRDB_trunk.{i}.RDB{1,2,3}.conv{1..5}``, ``trunk_conv``, ``upconv1``, ``upconv2``, ``HRconv``,
``conv_last``. ×4 with nf 64, nb 23, gc 32: 16,697,987 parameters.

Each ×2 step is nearest-neighbour upsampling followed by a 3x3 conv (``upconv1``, ``upconv2``);
``scale=2`` keeps only ``upconv1`` and ``scale=1`` neither.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_choice, check_positive
from gcompiler.models.registry import image, register_model


class ResidualDenseBlock5C(nn.Module):
    """Five densely connected 3x3 convs (growth ``gc``); output ``0.2 * conv5(...) + x``."""

    def __init__(self, nf: int = 64, gc: int = 32, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1, bias=bias)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1, bias=bias)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1, bias=bias)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1, bias=bias)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1, bias=bias)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs, output ``0.2 * RDB3(RDB2(RDB1(x))) + x``."""

    def __init__(self, nf: int, gc: int = 32) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock5C(nf, gc)
        self.RDB2 = ResidualDenseBlock5C(nf, gc)
        self.RDB3 = ResidualDenseBlock5C(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.RDB3(self.RDB2(self.RDB1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator: conv_first -> nb RRDBs -> trunk_conv (+ skip) -> log2(scale) x (upsample, conv) -> HRconv -> conv_last."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32,
                 scale: int = 4) -> None:
        super().__init__()
        check_positive("rrdbnet", in_nc=in_nc, out_nc=out_nc, nf=nf, nb=nb, gc=gc)
        check_choice("rrdbnet", "scale", scale, (1, 2, 4))
        self.scale = scale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        if scale >= 2:
            self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        if scale >= 4:
            self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        if self.scale >= 2:
            fea = self.lrelu(self.upconv1(self.upsample(fea)))
        if self.scale >= 4:
            fea = self.lrelu(self.upconv2(self.upsample(fea)))
        return self.conv_last(self.lrelu(self.HRconv(fea)))


@register_model("rrdbnet", family="esrgan", kind="generator",
                default_input=lambda in_nc=3, **_: (image(in_nc, 64),))
def rrdbnet(*, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32,
            scale: int = 4) -> RRDBNet:
    """ESRGAN RRDBNet (x4 default; 16,697,987 params); the reference input is a 64x64 low-resolution image."""
    return RRDBNet(in_nc, out_nc, nf, nb, gc, scale)
