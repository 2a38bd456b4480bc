"""GAN Compression's mobile ResNet generator and its channel-configured sub-networks.

``mobile_resnet_9blocks`` is the CycleGAN ResNet generator with every residual-block conv replaced by
a depthwise-separable conv (depthwise 3x3 -> InstanceNorm -> pointwise 1x1); stem, down-sampling,
up-sampling and head stay ordinary convs. 1,987,075 parameters at ngf 64.

State-dict layout (mit-han-lab/gan-compression): the same ``model.N`` indices as ``resnet_9blocks``;
each block's ``conv_block`` always contains a Dropout at index 4 (rate 0 unless asked), so the
separable convs sit at ``conv_block.1`` and ``conv_block.6``, each as ``.conv.0`` (depthwise) and
``.conv.2`` (pointwise).

``sub_mobile_resnet_9blocks(config="16_16_32_16_32_32_16_16")`` builds a sub-network of the
once-for-all supernet. The 8 integers c0..c7 map to widths: stem c0, first down conv 2*c1, trunk
(second down conv and every residual-block output) 4*c2, hidden width of blocks 1-3 / 4-6 / 7-9
4*c3 / 4*c4 / 4*c5, first up conv 2*c6, second up conv c7. A legacy 6-integer form
(c0, c1, c2, hidden for all blocks, c4 -> 2*c4, c5) is accepted too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.models._common import check_positive, conv_bias, norm_factory, pad_layers
from gcompiler.models.registry import image, register_model


class SeparableConv2d(nn.Module):
    """Depthwise kxk conv -> InstanceNorm (no affine) -> pointwise 1x1 conv; keys ``conv.0`` / ``conv.2``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=bias),
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    """``x + conv_block(x)`` with two separable convs: ``dim -> hidden -> dim``."""

    def __init__(self, dim: int, hidden: int, *, norm: str = "instance", dropout: float = 0.0,
                 padding_type: str = "reflect", separable_bias: bool = True,
                 model_name: str = "mobile_resnet") -> None:
        super().__init__()
        make_norm = norm_factory(model_name, norm)
        pads1, p = pad_layers(model_name, padding_type, 1)
        pads2, _ = pad_layers(model_name, padding_type, 1)
        self.conv_block = nn.Sequential(
            *pads1,
            SeparableConv2d(dim, hidden, 3, padding=p, bias=separable_bias), make_norm(hidden), nn.ReLU(),
            nn.Dropout(dropout),
            *pads2,
            SeparableConv2d(hidden, dim, 3, padding=p, bias=separable_bias), make_norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class MobileResnetGenerator(nn.Module):
    """Mobile ResNet generator with explicit per-layer widths (see the module docstring)."""

    def __init__(self, input_nc: int, output_nc: int, *, stem: int, down1: int, trunk: int,
                 hidden: Sequence[int], up1: int, up2: int, norm: str = "instance", dropout: float = 0.0,
                 padding_type: str = "reflect", separable_bias: bool | None = None,
                 model_name: str = "mobile_resnet_9blocks") -> None:
        super().__init__()
        check_positive(model_name, input_nc=input_nc, output_nc=output_nc, stem=stem, down1=down1,
                       trunk=trunk, up1=up1, up2=up2)
        for h in hidden:
            check_positive(model_name, hidden=h)
        make_norm = norm_factory(model_name, norm)
        bias = conv_bias(norm)
        sep_bias = bias if separable_bias is None else separable_bias
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(input_nc, stem, 7, bias=bias), make_norm(stem), nn.ReLU(),
            nn.Conv2d(stem, down1, 3, stride=2, padding=1, bias=bias), make_norm(down1), nn.ReLU(),
            nn.Conv2d(down1, trunk, 3, stride=2, padding=1, bias=bias), make_norm(trunk), nn.ReLU(),
        ]
        for h in hidden:
            layers.append(MobileResnetBlock(trunk, h, norm=norm, dropout=dropout, padding_type=padding_type,
                                            separable_bias=sep_bias, model_name=model_name))
        layers += [
            nn.ConvTranspose2d(trunk, up1, 3, stride=2, padding=1, output_padding=1, bias=bias),
            make_norm(up1), nn.ReLU(),
            nn.ConvTranspose2d(up1, up2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            make_norm(up2), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(up2, output_nc, 7), nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def parse_config(config: str | Sequence[int], model_name: str = "sub_mobile_resnet_9blocks") -> list[int]:
    """``"16_16_32_16_32_32_16_16"`` (or a sequence of ints) -> list of 8 (or legacy 6) positive ints."""
    if isinstance(config, int) and not isinstance(config, bool):
        raise ConfigError(
            f"model {model_name!r}: config={config!r} is an int; a channel configuration is a string such as "
            "'16_16_32_16_32_32_16_16' (Python reads 16_16_32... without quotes as one integer)"
        )
    if isinstance(config, str):
        try:
            vals = [int(v) for v in config.strip().split("_")]
        except ValueError:
            vals = []
    else:
        vals = list(config)
    if len(vals) not in (6, 8) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ConfigError(
            f"model {model_name!r}: config={config!r} is not a channel configuration; expected 8 positive "
            "integers joined by '_' (stem, down1, trunk, hidden of blocks 1-3, 4-6, 7-9, up1, up2), "
            "e.g. '16_16_32_16_32_32_16_16'"
        )
    return vals


def config_widths(config: str | Sequence[int], n_blocks: int = 9) -> dict:
    """The layer widths a GAN Compression channel configuration stands for."""
    c = parse_config(config)
    if len(c) == 6:
        hidden = [4 * c[3]] * n_blocks
        up1, up2 = 2 * c[4], c[5]
    else:
        # blocks split into three equal groups (1-3, 4-6, 7-9 for nine blocks)
        hidden = [4 * c[3 + min(i * 3 // n_blocks, 2)] for i in range(n_blocks)]
        up1, up2 = 2 * c[6], c[7]
    return dict(stem=c[0], down1=2 * c[1], trunk=4 * c[2], hidden=hidden, up1=up1, up2=up2)


def _inputs(input_nc: int = 3, **_: object):
    return (image(input_nc, 256),)


@register_model("mobile_resnet_9blocks", family="gan_compression", kind="generator", default_input=_inputs)
def mobile_resnet_9blocks(*, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                          norm: str = "instance", dropout: float = 0.0,
                          padding_type: str = "reflect") -> MobileResnetGenerator:
    """GAN Compression's mobile ResNet student (1,987,075 params at ngf 64)."""
    check_positive("mobile_resnet_9blocks", ngf=ngf, n_blocks=n_blocks)
    return MobileResnetGenerator(input_nc, output_nc, stem=ngf, down1=2 * ngf, trunk=4 * ngf,
                                 hidden=[4 * ngf] * n_blocks, up1=2 * ngf, up2=ngf, norm=norm,
                                 dropout=dropout, padding_type=padding_type,
                                 model_name="mobile_resnet_9blocks")


@register_model("sub_mobile_resnet_9blocks", family="gan_compression", kind="generator", default_input=_inputs)
def sub_mobile_resnet_9blocks(*, config: str | Sequence[int] = "16_16_32_16_32_32_16_16", input_nc: int = 3,
                              output_nc: int = 3, n_blocks: int = 9, norm: str = "instance",
                              dropout: float = 0.0, padding_type: str = "reflect") -> MobileResnetGenerator:
    """A sub-network of GAN Compression's once-for-all mobile ResNet, given its 8-integer channel config."""
    check_positive("sub_mobile_resnet_9blocks", n_blocks=n_blocks)
    widths = config_widths(config, n_blocks)
    # The reference sub-network's separable convs always carry a bias, whatever the norm.
    return MobileResnetGenerator(input_nc, output_nc, **widths, norm=norm, dropout=dropout,
                                 padding_type=padding_type, separable_bias=True,
                                 model_name="sub_mobile_resnet_9blocks")
