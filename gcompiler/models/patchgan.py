"""pix2pix/CycleGAN PatchGAN discriminator (``patchgan_d``, the reference ``NLayerDiscriminator``).

4x4 convs: ``ndf`` stride 2 + LeakyReLU(0.2), then ``n_layers - 1`` stride-2 convs doubling the width
(capped at 8 ndf) with norm + LeakyReLU, one stride-1 conv with norm + LeakyReLU and a 1-channel
stride-1 conv giving a map of patch scores (30x30 for a 256x256 input). One ``model`` Sequential as
in pytorch-CycleGAN-and-pix2pix. 3 layers, ndf 64, InstanceNorm: 2,764,737 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.models._common import check_positive, conv_bias, norm_factory
from gcompiler.models.registry import image, register_model


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``(N, input_nc, H, W)`` -> ``(N, 1, H', W')`` raw scores (no sigmoid)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        check_positive("patchgan_d", input_nc=input_nc, ndf=ndf)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ConfigError(f"model 'patchgan_d': n_layers must be an int >= 1, got {n_layers!r}")
        make_norm = norm_factory("patchgan_d", norm)
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias), make_norm(ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_model("patchgan_d", family="pix2pix", kind="discriminator",
                default_input=lambda input_nc=3, **_: (image(input_nc, 256),))
def patchgan_d(*, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> NLayerDiscriminator:
    """70x70 PatchGAN discriminator (2,764,737 params with 3 layers, ndf 64, InstanceNorm)."""
    return NLayerDiscriminator(input_nc, ndf, n_layers, norm)
