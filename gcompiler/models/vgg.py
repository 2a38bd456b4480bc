"""VGG feature extractors for perceptual losses (``vgg16_features``, ``vgg19_features``).

The module holds torchvision's ``features`` Sequential (so its keys are ``features.N.weight`` /
``.bias``, truncated after the deepest requested layer) and returns a dict of the requested
activations, named ``relu{stage}_{i}`` (or ``conv{stage}_{i}`` for the pre-activation output,
e.g. ESRGAN's ``conv5_4``). Input: RGB in [0, 1]; with ``normalize=True`` (default) the ImageNet
mean/std normalization torchvision's weights expect is applied inside.

Weights come only from a file the user passes (``weights=PATH``): torchvision's
``vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth`` state dicts or a safetensors copy of them. The
classifier keys those files carry are ignored. Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from gcompiler.errors import CheckpointError, ConfigError
from gcompiler.models.registry import image, register_model

_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
_FILES = {
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg19": ("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
}
DEFAULT_LAYERS = {
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
    "vgg19": ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_indices(arch: str) -> dict[str, int]:
    """``{"conv1_1": 0, "relu1_1": 1, ...}``: index of each named layer in torchvision's ``features``."""
    names: dict[str, int] = {}
    idx, stage, i = 0, 1, 1
    for v in _CFGS[arch]:
        if v == "M":
            idx, stage, i = idx + 1, stage + 1, 1
            continue
        names[f"conv{stage}_{i}"] = idx
        names[f"relu{stage}_{i}"] = idx + 1
        idx, i = idx + 2, i + 1
    return names


class VGGFeatures(nn.Module):
    """Frozen-architecture VGG trunk returning ``{layer_name: activation}`` for ``layers``."""

    def __init__(self, arch: str = "vgg16", layers: Sequence[str] | None = None, normalize: bool = True) -> None:
        super().__init__()
        if arch not in _CFGS:
            raise ConfigError(f"unknown VGG variant {arch!r}; choose one of {', '.join(_CFGS)}")
        self.arch = arch
        index = layer_indices(arch)
        layers = tuple(DEFAULT_LAYERS[arch] if layers is None else ([layers] if isinstance(layers, str) else layers))
        bad = [n for n in layers if n not in index]
        if not layers or bad:
            raise ConfigError(
                f"model '{arch}_features': unknown layer name(s) {bad or '(none given)'}; available: "
                f"{', '.join(index)}"
            )
        self.layers = layers
        self._taps = {index[n]: n for n in layers}
        last = max(self._taps)
        mods: list[nn.Module] = []
        cin = 3
        for v in _CFGS[arch]:
            if len(mods) > last:
                break
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*mods[: last + 1])
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.normalize:
            x = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return {n: out[n] for n in self.layers}

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep only the ``features.N`` entries this (possibly truncated) trunk has; drop the classifier."""
        n = len(self.features)
        out = {}
        for k, v in state_dict.items():
            parts = k.split(".")
            if parts[0] == "classifier":
                continue
            if parts[0] == "features" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) >= n:
                continue
            out[k] = v
        return out


def missing_weights_message(arch: str) -> str:
    fname, url = _FILES[arch]
    return (
        f"{arch}_features: pretrained weights were requested but no file was given, and gcompiler never "
        f"downloads weights. Get torchvision's ImageNet {arch.upper()} state dict '{fname}' (keys "
        f"'features.N.weight' / 'features.N.bias'; published at {url}) on a machine that may download, "
        f"then pass it: create('{arch}_features', weights='/path/to/{fname}')"
    )


def _build(arch: str, weights: str | os.PathLike | None, pretrained: bool, layers, normalize: bool) -> VGGFeatures:
    if pretrained and weights is None:
        raise CheckpointError(missing_weights_message(arch))
    model = VGGFeatures(arch, layers, normalize)
    if weights is not None:
        from gcompiler.checkpoint import load_checkpoint

        load_checkpoint(model, weights)
    return model


@register_model("vgg16_features", family="vgg", kind="features", default_input=(image(3, 224),))
def vgg16_features(*, weights: str | os.PathLike | None = None, pretrained: bool = False,
                   layers: Sequence[str] | None = None, normalize: bool = True) -> VGGFeatures:
    """VGG16 relu features for perceptual losses (default relu1_2, relu2_2, relu3_3, relu4_3)."""
    return _build("vgg16", weights, pretrained, layers, normalize)


@register_model("vgg19_features", family="vgg", kind="features", default_input=(image(3, 224),))
def vgg19_features(*, weights: str | os.PathLike | None = None, pretrained: bool = False,
                   layers: Sequence[str] | None = None, normalize: bool = True) -> VGGFeatures:
    """VGG19 relu features for perceptual losses (default relu1_2 ... relu5_4; 'conv5_4' for ESRGAN's loss)."""
    return _build("vgg19", weights, pretrained, layers, normalize)
