"""The built-in task ``builtin:sr``: x2 super-resolution on the colour photos shipped with scikit-image.

Nothing is downloaded: the images are the photos of :mod:`gcompiler.data.photos` (from ``skimage.data``;
scikit-image is a runtime requirement of this task; opt-in training photos from other packages' sample
data), with its fixed split:

* training: :data:`TRAIN_IMAGES` (colour and grayscale photos); held-out (evaluation only):
  :data:`HELDOUT_IMAGES` (``chelsea``, ``rocket``).

Pairs: the high-resolution (HR) image is cut to even height and width, and its low-resolution (LR)
partner is ``torch.nn.functional.interpolate(hr, scale_factor=1/2, mode="bicubic", antialias=True,
align_corners=False)`` on [0, 1] floats, clamped and rounded to 8-bit levels (LR images are 8-bit images,
as in the SR benchmarks that make them with MATLAB's ``imresize``; torch's antialiased bicubic uses
the cubic convolution kernel with ``a = -0.5`` stretched to the downsampling factor, like PIL's).

Value range: tensors of this task are in **[0, 1]**, not the [-1, 1] of the folder datasets, because SR
networks (SRResNet, ESRGAN's RRDBNet) are trained on [0, 1] without an output activation and PSNR/SSIM
are defined on [0, 1]; each dataset carries it as ``value_range``.

Evaluation (:func:`evaluate_sr`): the network runs on each whole held-out LR image; its output (and the
bicubic baseline, ``interpolate(lr, scale_factor=2, mode="bicubic")``) is clamped to [0, 1] and rounded
to 8-bit levels, then PSNR and SSIM are measured against HR on the Y channel (BT.601) with a border of
``scale`` = 2 pixels cropped, the convention of SR papers; RGB PSNR is reported too.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..metrics import psnr, ssim
from .datasets import CropFlipDataset
from .images import RANGE_UNIT, ScanReport, to_tensor
from .photos import EXTRA_PHOTOS, HELDOUT_PHOTOS, TRAIN_PHOTOS, load_photo

SCALE = 2
#: Training photos (see :mod:`gcompiler.data.photos`).
TRAIN_IMAGES: tuple[str, ...] = TRAIN_PHOTOS
#: Held-out photos: never used for training the teacher or students, only for evaluation.
HELDOUT_IMAGES: tuple[str, ...] = HELDOUT_PHOTOS
#: Every photo :func:`load_hr` knows: the training photos, the opt-in extras, the held-out photos.
KNOWN_IMAGES: tuple[str, ...] = TRAIN_IMAGES + EXTRA_PHOTOS + HELDOUT_IMAGES

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
TEACHER_WEIGHTS = ASSET_DIR / "sr_teacher_x2.safetensors"
TEACHER_META = ASSET_DIR / "sr_teacher_x2.json"


def load_hr(name: str, scale: float = 1.0) -> np.ndarray:
    """The HR photo ``name`` as ``uint8`` (H, W, 3), cut to even height and width (read-only array).

    ``scale`` < 1 first shrinks the photo by that factor (antialiased bicubic, rounded to 8 bits): a
    training-side augmentation (:class:`SRTrainDataset` ``scales``) that gives sharper HR images with
    new content per pixel. Held-out photos are only ever used at ``scale`` 1.
    """
    if name not in KNOWN_IMAGES:
        raise DataError(f"unknown builtin:sr image {name!r}; known: {', '.join(KNOWN_IMAGES)}")
    if not 0.0 < scale <= 1.0:
        raise DataError(f"builtin:sr image scale must be in (0, 1], got {scale}")
    return _hr(name, float(scale))


@functools.lru_cache(maxsize=None)  # one cache key per (name, scale), however the scale was passed
def _hr(name: str, scale: float) -> np.ndarray:
    img = load_photo(name)
    if scale < 1.0:
        t = to_tensor(img, RANGE_UNIT)[None]
        size = (round(img.shape[0] * scale), round(img.shape[1] * scale))
        t = quantize_8bit(F.interpolate(t, size=size, mode="bicubic", antialias=True, align_corners=False))[0]
        img = t.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    h, w = img.shape[0] - img.shape[0] % SCALE, img.shape[1] - img.shape[1] % SCALE
    out = np.ascontiguousarray(img[:h, :w])
    out.setflags(write=False)
    return out


def bicubic_downsample(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Antialiased bicubic downsampling of float (N, C, H, W) images in [0, 1] (H, W divisible by scale)."""
    h, w = hr.shape[-2], hr.shape[-1]
    if h % scale or w % scale:
        raise DataError(f"HR size {w}x{h} is not divisible by the scale {scale}")
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                         align_corners=False).clamp_(0.0, 1.0)


def bicubic_upsample(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """The bicubic baseline: (N, C, h, w) -> (N, C, scale*h, scale*w), clamped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def load_lr(name: str, scale: float = 1.0) -> np.ndarray:
    """The LR partner of :func:`load_hr` ``(name, scale)`` as ``uint8`` (H/2, W/2, 3) (read-only array)."""
    load_hr(name, scale)  # checks the arguments
    return _lr(name, float(scale))


@functools.lru_cache(maxsize=None)
def _lr(name: str, scale: float) -> np.ndarray:
    hr = to_tensor(_hr(name, scale), RANGE_UNIT)[None]
    lr = quantize_8bit(bicubic_downsample(hr))[0]
    out = lr.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    out.setflags(write=False)
    return out


def _dihedral(t: torch.Tensor, vflip: bool, transpose: bool) -> torch.Tensor:
    if vflip:
        t = torch.flip(t, dims=(-2,))
    if transpose:
        t = t.transpose(-1, -2)
    return t.contiguous()


class SRTrainDataset(CropFlipDataset):
    """Random aligned LR/HR patches from the training photos.

    An item is ``{"input": (3, p, p) LR, "target": (3, 2p, 2p) HR, "index"}`` in [0, 1], ``p = crop_size``.
    The epoch has ``patches_per_epoch`` items; each picks one of the photos uniformly at random (not
    by area: ``retina`` alone is 45 % of the pixels and mostly flat; see ``weights``), then a random
    patch, then (``augment="flip"``) a horizontal flip with probability 1/2 or (``augment="dihedral"``)
    one of the 8 flips/rotations.

    ``scales`` (default ``(1.0,)``): each photo is also used shrunk by these factors (:func:`load_hr`),
    every (photo, scale) pair being one source; e.g. ``(1.0, 0.75, 0.5)`` triples the sources.

    ``weights`` (default: all 1): relative sampling weight per photo name (every scale of the photo
    gets it), e.g. ``{"retina": 0.5}`` draws retina's sources half as often as the others. Photos not
    named weigh 1; a name that is not among ``images`` is an error.

    ``channel_shuffle`` (default off): after the flips, the RGB channels of input and target are put in
    one random order of the 6, the same for both: new colours for the same structure (an SR augmentation
    for small data sets, used to train a teacher). Not with a cached teacher output (a teacher is not
    colour-equivariant, so its shuffled output is no target): :class:`TeacherCachedDataset` refuses such
    a base. Off, the random stream is the one the shipped teachers were trained with.
    """

    random_sources = True

    scale = SCALE

    def __init__(self, *, crop_size: int = 48, patches_per_epoch: int = 1000, augment: str = "flip",
                 images: Sequence[str] = TRAIN_IMAGES, seed: int | None = None,
                 scales: Sequence[float] = (1.0,), weights: Mapping[str, float] | None = None,
                 channel_shuffle: bool = False) -> None:
        if augment not in ("flip", "dihedral", "none"):
            raise DataError(f"augment must be 'flip', 'dihedral' or 'none', got {augment!r}")
        if patches_per_epoch < 1:
            raise DataError(f"patches_per_epoch must be >= 1, got {patches_per_epoch}")
        if len(set(images)) != len(tuple(images)):
            raise DataError(f"images name a photo twice: {list(images)} (use weights to draw a photo more often)")
        leaked = set(images) & set(HELDOUT_IMAGES)
        if leaked:
            raise DataError(f"held-out images {sorted(leaked)} cannot be used for training")
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0.0 < s <= 1.0 for s in scales) or len(set(scales)) != len(scales):
            raise DataError(f"scales must be distinct factors in (0, 1], got {scales}")
        self.scales = scales
        self.images = tuple(images)
        self.crop_size = int(crop_size)
        self.flip = augment != "none"
        self.augment = augment
        self.channel_shuffle = bool(channel_shuffle)
        self.value_range = RANGE_UNIT
        self.seed = seed
        self.length = int(patches_per_epoch)
        self._sources = [(n, s) for s in scales for n in self.images]
        self.names = [n if s == 1.0 else f"{n}@{s:g}" for n, s in self._sources]
        self.report = ScanReport(used=len(self._sources))
        self._lr = [load_lr(n, s) for n, s in self._sources]
        self._hr = [load_hr(n, s) for n, s in self._sources]
        self._check_crop([(n, (a.shape[1], a.shape[0])) for n, a in zip(self.names, self._lr)])
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.images))
        if unknown:
            raise DataError(f"weights name {unknown}, which are not training images here ({', '.join(self.images)})")
        bad = {k: v for k, v in weights.items() if not (float(v) >= 0.0 and math.isfinite(float(v)))}
        if bad:
            raise DataError(f"weights must be finite and >= 0, got {bad}")
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.images}
        w = np.array([self.weights[n] for n, _ in self._sources])
        if w.sum() <= 0.0:
            raise DataError("weights are all zero: no photo left to sample")
        self._p = None if np.all(w == w[0]) else w / w.sum()

    def __len__(self) -> int:
        return self.length

    def num_sources(self) -> int:
        return len(self._lr)

    def source_of(self, index, rng):
        if self._p is None:  # the uniform draw the shipped teachers were trained with
            return int(rng.integers(0, len(self._lr)))
        return int(rng.choice(len(self._lr), p=self._p))

    def load_views(self, i, rng):
        return ({"input": (self._lr[i], 1), "target": (self._hr[i], SCALE)}, {},
                f"builtin:sr image {self.names[i]!r}")

    def finish(self, index, aligned, unaligned, where, rng):
        out = super().finish(index, aligned, unaligned, where, rng)
        if self.augment == "dihedral":
            vflip, transpose = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            for k, v in out.items():
                if isinstance(v, torch.Tensor):  # input, target and a cached "teacher" view alike
                    out[k] = _dihedral(v, vflip, transpose)
        if self.channel_shuffle:
            order = torch.from_numpy(rng.permutation(3))
            for k, v in out.items():
                if k in ("input", "target"):
                    out[k] = v.index_select(-3, order)
                elif isinstance(v, torch.Tensor):
                    raise DataError(f"builtin:sr channel_shuffle cannot shuffle the {k!r} view of {where}: "
                                    "only input and target may be shuffled")
        return out


class SRHeldoutDataset(CropFlipDataset):
    """The whole held-out photos: ``{"input": LR, "target": HR, "index"}`` in [0, 1], no augmentation.

    Images differ in size: use batch size 1, or pass ``crop_size`` for fixed-size crops at positions
    seeded by ``(seed, index)`` (the same crops on every call).
    """

    scale = SCALE

    def __init__(self, *, images: Sequence[str] = HELDOUT_IMAGES, crop_size: int | None = None,
                 seed: int | None = 0) -> None:
        self.images = tuple(images)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.flip = False
        self.value_range = RANGE_UNIT
        self.seed = seed
        self.names = list(self.images)
        self.report = ScanReport(used=len(self.images))
        self._lr = [load_lr(n) for n in self.images]
        self._hr = [load_hr(n) for n in self.images]
        self._check_crop([(n, (a.shape[1], a.shape[0])) for n, a in zip(self.images, self._lr)])

    def __len__(self) -> int:
        return len(self.images)

    def load_views(self, index, rng):
        return ({"input": (self._lr[index], 1), "target": (self._hr[index], SCALE)}, {},
                f"builtin:sr image {self.images[index]!r}")


def heldout_pairs(images: Sequence[str] = HELDOUT_IMAGES) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, lr (1, 3, h, w), hr (1, 3, 2h, 2w))]`` for the held-out photos, floats in [0, 1]."""
    return [(n, to_tensor(load_lr(n), RANGE_UNIT)[None], to_tensor(load_hr(n), RANGE_UNIT)[None]) for n in images]


def heldout_center_crops(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre ``size x size`` low-resolution crop of every held-out photo and its high-resolution match,
    stacked: ``(lr (n, 3, s, s), hr (n, 3, 2s, 2s))`` with ``s = min(size, photo sides)`` (sample grids)."""
    xs, ys = [], []
    for _name, lr, hr in heldout_pairs():
        h, w = lr.shape[-2:]
        c = min(size, h, w)
        top, left = (h - c) // 2, (w - c) // 2
        xs.append(lr[..., top:top + c, left:left + c])
        ys.append(hr[..., SCALE * top:SCALE * (top + c), SCALE * left:SCALE * (left + c)])
    return torch.cat(xs), torch.cat(ys)


def _measure(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    out = quantize_8bit(out)
    return {"psnr_y": psnr(out, hr, crop_border=SCALE, y_channel=True),
            "ssim_y": ssim(out, hr, crop_border=SCALE, y_channel=True),
            "psnr_rgb": psnr(out, hr, crop_border=SCALE)}


@torch.no_grad()
def evaluate_sr(model: torch.nn.Module | None = None, *, images: Sequence[str] = HELDOUT_IMAGES,
                device: str | torch.device = "cpu", reference: torch.nn.Module | None = None
                ) -> dict[str, Any]:
    """PSNR/SSIM of ``model`` (if given) and of bicubic upsampling on ``images`` (default: held out).

    Returns ``{"per_image": {name: {"bicubic": m, "model": m, "model_vs_reference": {...}}},
    "mean": {"bicubic": m, "model": m, ...}}`` where ``m = {"psnr_y", "ssim_y", "psnr_rgb"}``
    (see the module docstring for the protocol). With ``reference`` (e.g. the teacher), the model's
    output is also scored against the reference's output (``"model_vs_reference"``).
    """
    per: dict[str, dict[str, dict[str, float]]] = {}
    for name, lr, hr in heldout_pairs(images):
        row = {"bicubic": _measure(bicubic_upsample(lr), hr)}
        if model is not None:
            out = model(lr.to(device)).float().cpu()
            if out.shape != hr.shape:
                raise DataError(f"model output {tuple(out.shape)} on builtin:sr image {name!r} does not match "
                                f"the HR shape {tuple(hr.shape)}: not a x{SCALE} SR model for [0, 1] RGB")
            row["model"] = _measure(out, hr)
            if reference is not None:
                ref = quantize_8bit(reference(lr.to(device)).float().cpu())
                row["model_vs_reference"] = _measure(out, ref)
        per[name] = row
    keys = next(iter(per.values())).keys()
    mean = {k: {m: float(np.mean([per[n][k][m] for n in per])) for m in ("psnr_y", "ssim_y", "psnr_rgb")}
            for k in keys}
    return {"per_image": per, "mean": mean}


def load_teacher(device: str | torch.device = "cpu", *, weights: str | Path | None = None) -> torch.nn.Module:
    """The shipped x2 SR teacher (``gcompiler/assets/sr_teacher_x2.safetensors``), in eval mode.

    Its architecture comes from the JSON file next to the weights (``{"arch": ..., "kwargs": {...}}``,
    built with ``gcompiler.models.create``). Raises :class:`DataError` if the asset is missing (train
    it with ``python scripts/train_teacher.py``) or does not match the architecture.
    """
    from .tasks import load_asset_model

    return load_asset_model(Path(weights) if weights is not None else TEACHER_WEIGHTS, device)


def teacher_meta() -> dict[str, Any]:
    """The JSON record shipped with the teacher (architecture, command, seed, steps, held-out numbers)."""
    if not TEACHER_META.is_file():
        raise DataError(f"{str(TEACHER_META)!r} is missing: train the teacher with `python scripts/train_teacher.py`")
    return json.loads(TEACHER_META.read_text())
