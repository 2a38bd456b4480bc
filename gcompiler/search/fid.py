"""FID between a sub-network's outputs and reference images, through a well-kept library.

The Fréchet distance itself is torchmetrics' ``FrechetInceptionDistance`` (optional extra ``search``:
``pip install 'gcompiler[search]'``), fed with the features of a module we pass in. The Inception of
FID is pytorch-fid's ``fid_inception_v3`` (optional extra ``fid``: pytorch-fid + torchvision), built
from weights the user supplies (``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid and
GAN Compression use): nothing is downloaded, and the file is read with ``torch.load(weights_only=True)``.

:func:`fid_score` works with any feature extractor ``nn.Module`` mapping images in [0, 1] to ``[N, D]``
features (the tests use a randomly initialised one).
"""
from __future__ import annotations

import os
from typing import Iterable
from unittest import mock

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError

__all__ = ["fid_score", "InceptionFeatures", "load_inception"]


class InceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3, 2048 features) as a ``[0, 1] images -> [N, 2048]`` extractor."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception(x.float())[0].flatten(1)


def load_inception(weights: str | os.PathLike | dict | None) -> InceptionFeatures:
    """FID's InceptionV3 with the user's weights file (or a state dict; ``None``: random initialisation, for tests).

    Needs the ``fid`` extra (pytorch-fid and a torchvision that matches the installed torch).
    """
    try:
        from pytorch_fid import inception as pf
    except Exception as exc:  # ImportError, or torchvision's RuntimeError when it does not match torch
        raise ConfigError(f"FID needs pytorch-fid and a torchvision matching torch ({type(exc).__name__}: {exc}); "
                          f"pip install 'gcompiler[fid]'") from exc
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.isfile(weights):
            raise CheckpointError(f"Inception weights file not found: '{weights}'")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        state = weights

    def loader(*_args, **_kwargs):  # replaces pytorch-fid's download with the given weights
        return state if state is not None else {}

    with mock.patch.object(pf, "load_state_dict_from_url", loader), \
            mock.patch.object(nn.Module, "load_state_dict", _lenient(state is None)):
        net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True,
                             use_fid_inception=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return InceptionFeatures(net)


def _lenient(random_init: bool):
    original = nn.Module.load_state_dict

    def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ANN001
        if random_init and not state_dict:
            return None  # random initialisation: keep the freshly initialised weights
        return original(self, state_dict, strict=strict, assign=assign)

    return load_state_dict


@torch.no_grad()
def fid_score(fake: Iterable[torch.Tensor], real: Iterable[torch.Tensor], features: nn.Module) -> float:
    """FID between batches ``fake`` and ``real`` (NCHW, values in [0, 1]) under the extractor ``features``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as exc:
        raise ConfigError("FID needs torchmetrics: pip install 'gcompiler[search]'") from exc
    metric = FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=True)
    n_real = n_fake = 0
    for r in real:
        metric.update(r.float().clamp(0, 1), real=True)
        n_real += r.shape[0]
    for f in fake:
        metric.update(f.float().clamp(0, 1), real=False)
        n_fake += f.shape[0]
    if n_real < 2 or n_fake < 2:
        raise ConfigError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    return float(metric.compute())
