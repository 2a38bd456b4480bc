"""CycleGAN / pix2pix ResNet generator (``resnet_9blocks``, ``resnet_6blocks``).

Architecture and state-dict layout of pytorch-CycleGAN-and-pix2pix's ``ResnetGenerator`` (one
``model`` Sequential): ``model.1`` 7x7 stem conv, ``model.4`` / ``model.7`` stride-2 convs,
``model.10``... residual blocks whose ``conv_block`` holds convs at ``.1`` and ``.5`` (``.6`` when a
Dropout sits between them), then two transposed convs and the 7x7 head conv. With 9 blocks and ngf 64
this is 11,378,179 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.models._common import check_positive, conv_bias, norm_factory, pad_layers
from gcompiler.models.registry import image, register_model


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``; conv_block = pad, conv3x3, norm, ReLU, [Dropout(0.5)], pad, conv3x3, norm."""

    def __init__(self, dim: int, *, norm: str = "instance", dropout: bool = False,
                 padding_type: str = "reflect", model_name: str = "resnet") -> None:
        super().__init__()
        make_norm = norm_factory(model_name, norm)
        bias = conv_bias(norm)
        layers: list[nn.Module] = []
        pads, p = pad_layers(model_name, padding_type, 1)
        layers += pads + [nn.Conv2d(dim, dim, 3, padding=p, bias=bias), make_norm(dim), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += pads_copy(pads) + [nn.Conv2d(dim, dim, 3, padding=p, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def pads_copy(pads: list[nn.Module]) -> list[nn.Module]:
    """Fresh instances of the given padding modules (a module must not appear twice in a Sequential)."""
    return [type(m)(m.padding) for m in pads]


class ResnetGenerator(nn.Module):
    """Encoder (7x7 stem, two stride-2 convs) -> ``n_blocks`` residual blocks -> two transposed convs -> 7x7 head, tanh."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, *, n_blocks: int = 9,
                 norm: str = "instance", dropout: bool = False, padding_type: str = "reflect",
                 model_name: str = "resnet_9blocks") -> None:
        super().__init__()
        check_positive(model_name, input_nc=input_nc, output_nc=output_nc, ngf=ngf)
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
            raise ConfigError(f"model {model_name!r}: n_blocks must be an int >= 0, got {n_blocks!r}")
        make_norm = norm_factory(model_name, norm)
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=bias), make_norm(ngf), nn.ReLU(),
        ]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), make_norm(2 * c), nn.ReLU()]
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * 4, norm=norm, dropout=dropout, padding_type=padding_type,
                                      model_name=model_name))
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                make_norm(c // 2), nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _inputs(input_nc: int = 3, **_: object):
    return (image(input_nc, 256),)


@register_model("resnet_9blocks", family="cyclegan", kind="generator", default_input=_inputs)
def resnet_9blocks(*, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                   norm: str = "instance", dropout: bool = False,
                   padding_type: str = "reflect") -> ResnetGenerator:
    """CycleGAN/pix2pix ResNet generator with 9 residual blocks (11,378,179 params at ngf 64)."""
    return ResnetGenerator(input_nc, output_nc, ngf, n_blocks=n_blocks, norm=norm, dropout=dropout,
                           padding_type=padding_type, model_name="resnet_9blocks")


@register_model("resnet_6blocks", family="cyclegan", kind="generator", default_input=_inputs)
def resnet_6blocks(*, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 6,
                   norm: str = "instance", dropout: bool = False,
                   padding_type: str = "reflect") -> ResnetGenerator:
    """CycleGAN ResNet generator with 6 residual blocks (the reference's choice for 128x128 images)."""
    return ResnetGenerator(input_nc, output_nc, ngf, n_blocks=n_blocks, norm=norm, dropout=dropout,
                           padding_type=padding_type, model_name="resnet_6blocks")
