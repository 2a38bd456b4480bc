"""Image quality metrics: PSNR and SSIM.

Conventions (those of the super-resolution literature, so numbers are comparable with papers):

* Inputs are float tensors ``(C, H, W)`` or ``(N, C, H, W)`` in ``[0, data_range]`` (``data_range=1`` for
  images in ``[0, 1]``; map ``[-1, 1]`` images with ``(x + 1) / 2`` first). Nothing is clamped or
  rounded here; callers that want 8-bit-image numbers round first (``builtin:sr``'s evaluation does).
* ``crop_border=b`` drops ``b`` pixels on every side before measuring (SR papers use ``b = scale``).
* ``y_channel=True`` measures the luma of ITU-R BT.601 in its studio range,
  ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for RGB in [0, 1] (MATLAB's ``rgb2ycbcr``);
  otherwise all channels are measured together (PSNR: MSE over all channels; SSIM: mean of the
  per-channel maps).
* A batch gives the mean of the per-image values.
* SSIM is Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, the
  population (biased) variances, averaged over the "valid" positions where the window fits inside the
  image. This equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=data_range)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = ["psnr", "ssim", "rgb_to_y", "psnr_per_image", "ssim_per_image"]


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise DataError(f"{name} must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 studio-range luma of RGB images in [0, 1]: ``(N, 3, H, W) -> (N, 1, H, W)``, also in [0, 1]."""
    if x.shape[-3] != 3:
        raise DataError(f"rgb_to_y needs 3 channels, got {x.shape[-3]}")
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _prepare(x: torch.Tensor, y: torch.Tensor, crop_border: int, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_batch(x, "x"), _as_batch(y, "y")
    if x.shape != y.shape:
        raise DataError(f"images to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if crop_border < 0:
        raise DataError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if x.shape[-1] <= 2 * crop_border or x.shape[-2] <= 2 * crop_border:
            raise DataError(f"crop_border {crop_border} leaves nothing of a {x.shape[-1]}x{x.shape[-2]} image")
        b = crop_border
        x, y = x[..., b:-b, b:-b], y[..., b:-b, b:-b]
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    return x, y


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
                   y_channel: bool = False) -> torch.Tensor:
    """PSNR in dB of each image of the batch, ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images."""
    x, y = _prepare(x, y, crop_border, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
         y_channel: bool = False) -> float:
    """Mean over the batch of the per-image PSNR (dB). See the module docstring for the conventions."""
    return float(psnr_per_image(x, y, data_range=data_range, crop_border=crop_border, y_channel=y_channel).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
                   y_channel: bool = False, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each image of the batch (mean over channels and valid window positions)."""
    x, y = _prepare(x, y, crop_border, y_channel)
    if x.shape[-1] < win_size or x.shape[-2] < win_size:
        raise DataError(f"SSIM needs images of at least {win_size}x{win_size}, got {x.shape[-1]}x{x.shape[-2]}")
    c = x.shape[1]
    g = _gaussian_window(win_size, sigma)
    wv = g.view(1, 1, win_size, 1).repeat(c, 1, 1, 1)
    wh = g.view(1, 1, 1, win_size).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable valid Gaussian filter, per channel
        return F.conv2d(F.conv2d(t, wv, groups=c), wh, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
         y_channel: bool = False) -> float:
    """Mean over the batch of the per-image SSIM. See the module docstring for the conventions."""
    return float(ssim_per_image(x, y, data_range=data_range, crop_border=crop_border, y_channel=y_channel).mean())


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR (dB) for a given mean squared error."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)
