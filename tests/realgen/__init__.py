"""Generators written in the style of popular public generator code (our own code), for the whole-chain tests
of ``tests/test_real_generators.py``: each entry builds a small model and its example inputs.

``CASES[name] = Case(build, inputs, kwargs, exercises, prunable)``; ``prunable=False`` marks a model where
pruning is impossible and gcompiler must refuse with a reason (``refusal`` names a word of that reason);
``saveable=False`` one holding a user module type that ``gcompiler.save`` must refuse by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from . import misc, sr, translation


@dataclasses.dataclass
class Case:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]]
    exercises: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    prunable: bool = True
    refusal: str = ""
    saveable: bool = True  # False: a user module type that gcompiler.save must refuse (it needs the model's code)


def _img(n=1, c=3, s=16):
    return lambda g: (torch.randn(n, c, s, s, generator=g),)


def _star(g):
    return torch.randn(1, 3, 16, 16, generator=g), torch.eye(3)[:1]


CASES: dict[str, Case] = {
    "edsr": Case(sr.EDSR, _img(s=8), "MeanShift conv subclass (init only), res_scale mul, y += x, PixelShuffle"),
    "rcan": Case(sr.RCAN, _img(s=8), "channel attention (x * sigmoid), mean buffer reassigned with type_as in forward"),
    "swinir": Case(sr.SwinIRLite, _img(s=8), "window attention, Linear/MLP, LayerNorm, shape asserts in helpers, "
                   "pad from h % window, crop by input size"),
    "nafnet": Case(sr.NAFNetLite, _img(s=14), "custom autograd.Function channel LayerNorm, SimpleGate chunk, "
                   "pad to a multiple, crop to the input size", prunable=False, refusal="reduces over the channel"),
    "esrgan_rrdb": Case(sr.RRDBNet, _img(s=8), "dense concat, residual scaling, nearest upsampling"),
    "srgan": Case(sr.SRGANGenerator, _img(s=8), "PReLU, BatchNorm, PixelShuffle"),
    "antialiased": Case(translation.AntiAliasedResnet, _img(), "blur pool: functional conv with a buffer filter "
                        "and groups=x.shape[1]"),
    "ugatit": Case(translation.UGATITGenerator, _img(), "CAM attention from Linear weights read in forward, "
                   "AdaILN with gamma/beta from an MLP, flag return_cam, tuple output"),
    "ugatit_out_only": Case(translation.UGATITGenerator, _img(), "same, return_cam=False through kwargs",
                            kwargs={"return_cam": False}),
    "animegan": Case(translation.AnimeGANv2Generator, _img(), "GroupNorm(1, C), inverted residual, "
                     "align_corners flag", prunable=False, refusal="GroupNorm(1"),
    "cartoongan": Case(translation.CartoonGenerator, _img(), "ModuleList residual loop, ConvTranspose"),
    "gancomp_submobile": Case(translation.SubMobileResnetGenerator, _img(), "separable convs (depthwise), "
                              "clamp(-1, 1) on the input, per-block widths"),
    "pix2pixhd_global": Case(translation.GlobalGenerator, _img(), "BatchNorm, reflection pads, ConvTranspose"),
    "stargan": Case(translation.StarGANGenerator, _star, "label concat: view/repeat by input sizes, two inputs"),
    "unet": Case(translation.UNet, _img(), "skip concat, pad from size differences, MaxPool"),
    "spade": Case(translation.SPADEGenerator, lambda g: (torch.rand(1, 4, 16, 16, generator=g),),
                  "SPADE: interpolate segmap to x.size()[2:], param-free norm, z=None argument"),
    "dcgan": Case(misc.DCGANGenerator, lambda g: (torch.randn(2, 16, 1, 1, generator=g),),
                  "PyTorch DCGAN example: nz input, input.is_cuda / ngpu branch"),
    "buffers": Case(misc.BufferedNet, _img(), "buffers updated in forward (counter +=, EMA in training), "
                    "buffer reassigned with .to(x), F.relu(inplace=True)"),
    "helpers": Case(misc.HelperNet, _img(s=14), "helper functions with shape asserts, reflect pad to a multiple, "
                    "space-to-depth, crop"),
    "custom_conv": Case(misc.CustomConvNet, _img(), "conv subclasses: init-only (plain) and own forward (unknown; "
                        "kept float by insert-fake-quant, refused by save)", saveable=False),
    "groupnorm": Case(misc.GroupNormNet, _img(), "GroupNorm(1, C) everywhere", prunable=False, refusal="GroupNorm(1"),
}
