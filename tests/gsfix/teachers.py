"""Teachers small enough for tests, importable by ``--teacher gsfix.teachers:Class`` (tests/ is on sys.path)."""
from __future__ import annotations

import time

import torch
from torch import nn


class TinyGen(nn.Module):
    """Same-size image-to-image net: conv-BN-ReLU, conv-BN-ReLU, conv, tanh (BN gammas are GS masks).

    ``delay`` (seconds) makes every forward call sleep, so a test can interrupt a training run mid-way.
    """

    def __init__(self, width: int = 8, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = float(delay)
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 3, 3, 1, 1), nn.Tanh())
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial running statistics, as a trained teacher has
            for m in self.body:
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(width, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(width, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(width, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.body(x)


class BrightNaN(TinyGen):
    """``TinyGen`` whose output is NaN for images brighter than ``threshold`` on average (in [-1, 1])."""

    def __init__(self, width: int = 8, threshold: float = 0.5) -> None:
        super().__init__(width)
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        bright = x.mean(dim=(1, 2, 3), keepdim=True) > self.threshold
        return torch.where(bright, torch.full_like(y, float("nan")), y)


class Upscale2x(nn.Module):
    """A x2 super-resolution teacher for same-size data: conv, PixelShuffle(2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))
