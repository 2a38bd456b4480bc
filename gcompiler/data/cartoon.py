"""The built-in task ``builtin:cartoon``: paired photo -> cartoon translation on the shipped photos.

Nothing is downloaded: the photos are those of :mod:`gcompiler.data.photos` (``skimage.data``), with
its fixed split (held out: ``chelsea``, ``rocket``). Each photo is first brought to the task's working
size (:func:`load_photo_small`: short side :data:`SHORT_SIDE` = 256 pixels, long side rounded to a
multiple of 4 so that encoder-decoder generators with two stride-2 stages map it to itself;
antialiased ``skimage.transform.resize``, order 3, rounded to 8 bits); its target is :func:`stylize` of that image,
a fixed, deterministic cartoon stylization made of three documented scikit-image steps:

1. **edge-preserving smoothing**: total-variation denoising,
   ``skimage.restoration.denoise_tv_chambolle(img, weight=TV_WEIGHT, channel_axis=-1)`` on [0, 1]
   floats (flattens texture into piecewise-smooth regions, keeps strong edges);
2. **colour quantization**: every RGB channel of the smoothed image rounded to :data:`LEVELS` evenly
   spaced levels (``round(x * (LEVELS - 1)) / (LEVELS - 1)``, a fixed palette of ``LEVELS ** 3`` colours,
   the same for every image);
3. **dark edges**: ``skimage.feature.canny`` on the gray (BT.601 luma) of the smoothed image
   (``sigma=CANNY_SIGMA``, hysteresis thresholds :data:`CANNY_LOW`/:data:`CANNY_HIGH` on the gradient
   magnitude), dilated by a 3x3 square (``skimage.morphology.dilation``); edge pixels are multiplied by
   :data:`EDGE_DARKNESS`.

The result is rounded to 8 bits. The same scikit-image version gives the same bytes
(``tests/test_tasks.py`` checks a rerun is identical and records a digest).

Value range: items are in **[-1, 1]** (``value_range``), the convention of pix2pix/CycleGAN generators
(tanh output), as for the folder datasets. Metrics (:func:`evaluate_cartoon`): the network runs on each
whole held-out photo; its output (and the identity baseline: the input photo itself) is mapped to
[0, 1], clamped and rounded to 8 bits, and PSNR / SSIM are measured against the target on RGB (no
border crop). The reference size for MACs is 256x256.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..metrics import psnr, ssim
from .datasets import CropFlipDataset
from .images import RANGE_GAN, ScanReport, to_tensor
from .photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, load_photo

#: Working size: every photo is resized so its shorter side has this many pixels.
SHORT_SIDE = 256
TV_WEIGHT = 0.15
LEVELS = 6
CANNY_SIGMA = 2.5
CANNY_LOW = 0.10
CANNY_HIGH = 0.20
EDGE_DARKNESS = 0.4
#: Training / held-out photos of the task (the split of :mod:`gcompiler.data.photos`).
TRAIN_IMAGES: tuple[str, ...] = TRAIN_PHOTOS
HELDOUT_IMAGES: tuple[str, ...] = HELDOUT_PHOTOS
#: Side of the square input at which the teacher's MACs are reported.
REFERENCE_SIZE = 256


def _check(name: str) -> None:
    if name not in TRAIN_IMAGES + HELDOUT_IMAGES:
        raise DataError(f"unknown builtin:cartoon image {name!r}; known: {', '.join(TRAIN_IMAGES + HELDOUT_IMAGES)}")


def load_photo_small(name: str, short_side: int = SHORT_SIDE) -> np.ndarray:
    """The photo ``name`` at the working size (short side ``short_side``, default :data:`SHORT_SIDE`),
    ``uint8`` (H, W, 3), read-only. Other short sides are a training-side augmentation
    (:class:`CartoonTrainDataset` ``short_sides``); held-out photos are only used at :data:`SHORT_SIDE`."""
    _check(name)
    if short_side < 32:
        raise DataError(f"builtin:cartoon short side must be >= 32 pixels, got {short_side}")
    return _photo_small(name, int(short_side))


@functools.lru_cache(maxsize=None)  # one cache key per (name, size), however the size was passed
def _photo_small(name: str, short_side: int) -> np.ndarray:
    from skimage.transform import resize

    img = load_photo(name)
    h, w = img.shape[:2]
    s = short_side / min(h, w)
    size = (max(short_side, 4 * round(h * s / 4)), max(short_side, 4 * round(w * s / 4)))
    small = resize(img.astype(np.float64) / 255.0, size, order=3, anti_aliasing=True, mode="reflect")
    out = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def stylize(img: np.ndarray) -> np.ndarray:
    """The task's cartoon stylization of an ``uint8`` (H, W, 3) image (see the module docstring)."""
    from skimage.feature import canny
    from skimage.morphology import dilation
    from skimage.restoration import denoise_tv_chambolle

    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"stylize takes an 8-bit RGB image, got {img.dtype} {img.shape}")
    x = img.astype(np.float64) / 255.0
    smooth = denoise_tv_chambolle(x, weight=TV_WEIGHT, channel_axis=-1)
    q = np.rint(np.clip(smooth, 0.0, 1.0) * (LEVELS - 1)) / (LEVELS - 1)
    gray = smooth @ np.array([0.299, 0.587, 0.114])
    edges = canny(gray, sigma=CANNY_SIGMA, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH)
    edges = dilation(edges, np.ones((3, 3), dtype=bool))
    q[edges] *= EDGE_DARKNESS
    return np.clip(np.rint(q * 255.0), 0, 255).astype(np.uint8)


def load_target(name: str, short_side: int = SHORT_SIDE) -> np.ndarray:
    """:func:`stylize` of :func:`load_photo_small` ``(name, short_side)`` (read-only, cached)."""
    load_photo_small(name, short_side)  # checks the arguments
    return _target(name, int(short_side))


@functools.lru_cache(maxsize=None)
def _target(name: str, short_side: int) -> np.ndarray:
    out = stylize(_photo_small(name, short_side))
    out.setflags(write=False)
    return out


class CartoonTrainDataset(CropFlipDataset):
    """Random aligned photo / cartoon crops from the training photos.

    An item is ``{"input": (3, c, c) photo, "target": (3, c, c) cartoon, "index"}`` in [-1, 1],
    ``c = crop_size``; each item picks a training photo uniformly at random, then a random crop, then a
    horizontal flip with probability 1/2 (``flip``). The epoch has ``patches_per_epoch`` items.

    ``short_sides`` (default ``(SHORT_SIDE,)``): each photo is used at each of these working sizes, its
    target stylized at that size (the stylization's pixel-sized parameters then cover other scales of
    the scene); every (photo, size) pair is one source.
    """

    random_sources = True

    def __init__(self, *, crop_size: int = 128, patches_per_epoch: int = 1000, flip: bool = True,
                 images: Sequence[str] = TRAIN_IMAGES, seed: int | None = None,
                 short_sides: Sequence[int] = (SHORT_SIDE,)) -> None:
        if patches_per_epoch < 1:
            raise DataError(f"patches_per_epoch must be >= 1, got {patches_per_epoch}")
        leaked = set(images) & set(HELDOUT_IMAGES)
        if leaked:
            raise DataError(f"held-out images {sorted(leaked)} cannot be used for training")
        for n in images:
            _check(n)
        sides = tuple(int(v) for v in short_sides)
        if not sides or any(v < 32 for v in sides) or len(set(sides)) != len(sides):
            raise DataError(f"short_sides must be distinct sizes >= 32 pixels, got {tuple(short_sides)}")
        self.short_sides = sides
        self.images = tuple(images)
        self.crop_size = int(crop_size)
        self.flip = bool(flip)
        self.value_range = RANGE_GAN
        self.seed = seed
        self.length = int(patches_per_epoch)
        self._sources = [(n, v) for v in sides for n in self.images]
        self.names = [n if v == SHORT_SIDE else f"{n}@{v}" for n, v in self._sources]
        self.report = ScanReport(used=len(self._sources))
        self._check_crop([(n, (v, v)) for n, (_, v) in zip(self.names, self._sources)])

    def __len__(self) -> int:
        return self.length

    def num_sources(self) -> int:
        return len(self._sources)

    def source_of(self, index, rng):
        return int(rng.integers(0, len(self._sources)))

    def load_views(self, i, rng):
        n, v = self._sources[i]
        return ({"input": (load_photo_small(n, v), 1), "target": (load_target(n, v), 1)}, {},
                f"builtin:cartoon image {self.names[i]!r}")


class CartoonHeldoutDataset(CropFlipDataset):
    """The whole held-out photos and their cartoons (``{"input", "target", "index"}`` in [-1, 1]).

    Images differ in size: use batch size 1, or pass ``crop_size`` for fixed crops at positions seeded
    by ``(seed, index)``.
    """

    def __init__(self, *, images: Sequence[str] = HELDOUT_IMAGES, crop_size: int | None = None,
                 seed: int | None = 0) -> None:
        for n in images:
            _check(n)
        self.images = tuple(images)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.flip = False
        self.value_range = RANGE_GAN
        self.seed = seed
        self.names = list(self.images)
        self.report = ScanReport(used=len(self.images))
        self._check_crop([(n, (SHORT_SIDE, SHORT_SIDE)) for n in self.images])

    def __len__(self) -> int:
        return len(self.images)

    def load_views(self, index, rng):
        n = self.images[index]
        return ({"input": (load_photo_small(n), 1), "target": (load_target(n), 1)}, {},
                f"builtin:cartoon image {n!r}")


def heldout_pairs(images: Sequence[str] = HELDOUT_IMAGES) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, photo (1, 3, H, W), cartoon (1, 3, H, W))]`` for the held-out photos, in [-1, 1]."""
    return [(n, to_tensor(load_photo_small(n), RANGE_GAN)[None], to_tensor(load_target(n), RANGE_GAN)[None])
            for n in images]


def to_unit_8bit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped and rounded to 8-bit levels."""
    return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _measure(out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    out, target = to_unit_8bit(out), to_unit_8bit(target)
    return {"psnr": psnr(out, target), "ssim": ssim(out, target)}


@torch.no_grad()
def evaluate_cartoon(model: torch.nn.Module | None = None, *, images: Sequence[str] = HELDOUT_IMAGES,
                     device: str | torch.device = "cpu", reference: torch.nn.Module | None = None
                     ) -> dict[str, Any]:
    """PSNR/SSIM (RGB, dB) of ``model`` (if given) and of the identity baseline on ``images``.

    Returns ``{"per_image": {name: {"identity": m, "model": m, "model_vs_reference": m}}, "mean": {...}}``
    with ``m = {"psnr", "ssim"}``; ``model_vs_reference`` (with ``reference``) scores the model's output
    against the reference network's output.
    """
    per: dict[str, dict[str, dict[str, float]]] = {}
    for name, x, y in heldout_pairs(images):
        row = {"identity": _measure(x, y)}
        if model is not None:
            out = model(x.to(device)).float().cpu()
            if out.shape != y.shape:
                raise DataError(f"model output {tuple(out.shape)} on builtin:cartoon image {name!r} does not "
                                f"match the target shape {tuple(y.shape)}: not an RGB-to-RGB translation model")
            row["model"] = _measure(out, y)
            if reference is not None:
                row["model_vs_reference"] = _measure(out, reference(x.to(device)).float().cpu())
        per[name] = row
    keys = next(iter(per.values())).keys()
    mean = {k: {m: float(np.mean([per[n][k][m] for n in per])) for m in ("psnr", "ssim")} for k in keys}
    return {"per_image": per, "mean": mean}
