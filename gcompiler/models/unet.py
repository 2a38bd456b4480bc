"""pix2pix U-Net generator (``unet_256``, ``unet_128``).

Layout of pytorch-CycleGAN-and-pix2pix's ``UnetGenerator``: nested ``UnetSkipConnectionBlock``s, each
holding a ``model`` Sequential whose index 1 (outermost: 0/1) is the down conv and whose submodule
sits at index 3 (outermost: 1), so keys nest as ``model.model.1.model.3.model.3...``. With 8
downsamplings, ngf 64, BatchNorm and dropout this is 54,413,955 parameters.

The reference applies its down LeakyReLU in place, so the skip connection concatenates the
*activated* input; we reproduce that result without in-place ops (the skip is the LeakyReLU's
output), so public checkpoints give the same images.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.models._common import check_positive, conv_bias, norm_factory
from gcompiler.models.registry import image, register_model


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down(conv 4x4 s2) -> submodule -> up(transposed conv 4x4 s2), concatenated with its input."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, *, outermost: bool = False, innermost: bool = False,
                 norm: str = "batch", dropout: bool = False, model_name: str = "unet") -> None:
        super().__init__()
        self.outermost = outermost
        make_norm = norm_factory(model_name, norm)
        bias = conv_bias(norm)
        if input_nc is None:
            input_nc = outer_nc
        down = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        layers: list[nn.Module]
        if outermost:
            assert submodule is not None
            up = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [down, submodule, nn.ReLU(), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, make_norm(outer_nc)]
        else:
            assert submodule is not None
            up = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2), down, make_norm(inner_nc), submodule,
                      nn.ReLU(), up, make_norm(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # Index 0 is the down LeakyReLU; its output is what the reference's skip carries.
        skip = self.model[0](x)
        h = skip
        for layer in self.model[1:]:
            h = layer(h)
        return torch.cat([skip, h], 1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` stride-2 levels; a ``2**num_downs`` input becomes 1x1 at the bottleneck."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64, *,
                 norm: str = "batch", dropout: bool = True, model_name: str = "unet_256") -> None:
        super().__init__()
        check_positive(model_name, input_nc=input_nc, output_nc=output_nc, ngf=ngf)
        if isinstance(num_downs, bool) or not isinstance(num_downs, int) or num_downs < 5:
            raise ConfigError(f"model {model_name!r}: num_downs must be an int >= 5, got {num_downs!r}")
        kw = dict(norm=norm, model_name=model_name)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, dropout=dropout, **kw)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_model("unet_256", family="pix2pix", kind="generator",
                default_input=lambda input_nc=3, **_: (image(input_nc, 256),))
def unet_256(*, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "batch",
             dropout: bool = True) -> UnetGenerator:
    """pix2pix U-Net for 256x256 images (8 levels; 54,413,955 params at ngf 64)."""
    return UnetGenerator(input_nc, output_nc, 8, ngf, norm=norm, dropout=dropout, model_name="unet_256")


@register_model("unet_128", family="pix2pix", kind="generator",
                default_input=lambda input_nc=3, **_: (image(input_nc, 128),))
def unet_128(*, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "batch",
             dropout: bool = True) -> UnetGenerator:
    """pix2pix U-Net for 128x128 images (7 levels)."""
    return UnetGenerator(input_nc, output_nc, 7, ngf, norm=norm, dropout=dropout, model_name="unet_128")
