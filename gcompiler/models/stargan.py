"""StarGAN generator (``stargan_g``; Choi et al., CVPR 2018), label-conditioned image translation.

The target-domain label ``c`` (``c_dim`` = 5 for the CelebA attributes) is broadcast over the image
plane and concatenated to the image channels; then a 7x7 stem, two stride-2 4x4 convs, ``repeat_num``
residual blocks, two 4x4 transposed convs and a 7x7 head (tanh). Convs carry no bias; the norm is
InstanceNorm2d with affine parameters and running statistics, as in yunjey/stargan, whose layout we
keep: one ``main`` Sequential with residual blocks at ``main.9``... holding ``main.{0,1,3,4}``.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_positive
from gcompiler.models.registry import image, label, register_model


def _in(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=True)


class StarResidualBlock(nn.Module):
    """``x + main(x)``; main = conv3x3, IN, ReLU, conv3x3, IN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _in(dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _in(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class StarGANGenerator(nn.Module):
    """``forward(x, c)``: image ``(N, 3, H, W)`` and label ``(N, c_dim)`` -> image ``(N, 3, H, W)``."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        check_positive("stargan_g", conv_dim=conv_dim, c_dim=c_dim, repeat_num=repeat_num)
        layers: list[nn.Module] = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _in(conv_dim), nn.ReLU()]
        c = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), _in(2 * c), nn.ReLU()]
            c *= 2
        layers += [StarResidualBlock(c) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), _in(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.Conv2d(c, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.main(torch.cat([x, c], 1))


@register_model("stargan_g", family="stargan", kind="generator",
                default_input=lambda c_dim=5, **_: (image(3, 128), label(c_dim)))
def stargan_g(*, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> StarGANGenerator:
    """StarGAN generator (5 CelebA domains by default); inputs: a 128x128 image and a one-hot label."""
    return StarGANGenerator(conv_dim, c_dim, repeat_num)
