"""Finding, checking and decoding image files, and converting them to and from tensors.

Value ranges: images are decoded to ``uint8`` HWC arrays and turned into float32 CHW tensors in one
of two ranges, named by a ``(low, high)`` tuple:

* ``(-1.0, 1.0)`` (:data:`RANGE_GAN`): ``x / 127.5 - 1``; the convention of pix2pix / CycleGAN
  generators (tanh output), the default of the folder datasets;
* ``(0.0, 1.0)`` (:data:`RANGE_UNIT`): ``x / 255``; the convention of super-resolution networks
  (no output activation) and of PSNR/SSIM, used by ``builtin:sr``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError

#: File name extensions (lower case) treated as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

RANGE_GAN: tuple[float, float] = (-1.0, 1.0)
RANGE_UNIT: tuple[float, float] = (0.0, 1.0)
_RANGES = (RANGE_GAN, RANGE_UNIT)


def check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    """Return ``value_range`` as a tuple, or raise :class:`DataError` if it is not a supported one."""
    vr = (float(value_range[0]), float(value_range[1])) if len(value_range) == 2 else None
    if vr not in _RANGES:
        raise DataError(f"unsupported value_range {tuple(value_range)!r}: use (-1, 1) or (0, 1)")
    return vr


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Raises :class:`DataError` if ``folder`` is not a directory or holds no image file; the message
    names the folder, the extensions looked for and any subfolders that might be meant instead.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = ""
        if subdirs:
            shown = ", ".join(subdirs[:8]) + (", ..." if len(subdirs) > 8 else "")
            hint = (f"; it has subfolders ({shown}): point at one of them, or use 'paired:'/'unpaired:' "
                    f"for a folder with A/ and B/")
        raise DataError(f"no images in folder {str(root)!r} (looked for files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}; the search is not recursive){hint}")
    return files


@dataclass
class ScanReport:
    """What scanning a data source found: usable files, and the files skipped with the reason."""

    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.used} images used"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable skipped")
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} without a partner skipped")
        return ", ".join(parts)


def probe_image(path: Path) -> tuple[int, int]:
    """Open ``path``'s header, verify the file's structure and return its ``(width, height)``.

    This reads the file but does not decode the pixels (PIL ``verify``: chunk checksums for PNG);
    a truncated pixel stream can still pass and then fails in :func:`load_image`.
    Raises :class:`DataError` naming the file if it is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc
    # EXIF rotations by 90 degrees swap the stored size; load_image applies them.
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block only means "no rotation"
        orientation = 1
    if orientation in (5, 6, 7, 8):
        size = (size[1], size[0])
    return size


#: unreadable files skipped with a warning before a folder is refused: at most this fraction of the
#: files (a folder with no more than MAX_UNREADABLE unreadable files is never refused for it).
MAX_UNREADABLE_FRACTION = 0.5
MAX_UNREADABLE = 2


def scan_images(paths: Sequence[Path], *, strict: bool, report: ScanReport) -> list[tuple[Path, tuple[int, int]]]:
    """Probe each file; unreadable ones raise (``strict``) or are skipped with a warning and recorded."""
    good: list[tuple[Path, tuple[int, int]]] = []
    for p in paths:
        try:
            good.append((p, probe_image(p)))
        except DataError as exc:
            if strict:
                raise
            report.skipped.append((str(p), str(exc)))
            warnings.warn(f"skipping unreadable image: {exc}", stacklevel=3)
    bad = len(paths) - len(good)
    if good and bad > MAX_UNREADABLE and bad > MAX_UNREADABLE_FRACTION * len(paths):
        first = ", ".join(Path(p).name for p, _ in report.skipped[-bad:][:5])
        raise DataError(f"{bad} of {len(paths)} images in {str(Path(paths[0]).parent)!r} are unreadable (more than "
                        f"{MAX_UNREADABLE_FRACTION:.0%}; first: {first}): the data looks damaged; repair or remove "
                        "them (up to that fraction is skipped with a warning)")
    report.used += len(good)
    return good


def load_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Decode ``path`` to a ``uint8`` array of shape (H, W, channels), EXIF orientation applied.

    Grayscale images are replicated to RGB and alpha is dropped when ``channels == 3``; colour images
    are converted to luma when ``channels == 1``. Raises :class:`DataError` naming the file if it
    cannot be decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = _to_8bit(im, path)
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {str(path)!r}: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _to_8bit(im: Any, path: Any) -> Any:
    """PIL's 16/32-bit integer and float modes scaled to 8-bit grayscale ("L"); PIL's own ``convert`` clips
    them at 255 instead (a 16-bit image would come out nearly white). Integer images whose values all fit
    in 8 bits stay as they are; float images must hold values in [0, 1] or [0, 255]."""
    from PIL import Image

    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im, dtype=np.float64)
    hi = float(a.max()) if a.size else 0.0
    lo = float(a.min()) if a.size else 0.0
    if im.mode == "F":
        if not np.isfinite(a).all() or lo < 0 or hi > 255:
            raise DataError(f"image {str(path)!r} is a floating-point image with values in [{lo:g}, {hi:g}]; "
                            "only [0, 1] or [0, 255] can be read: convert it to 8 or 16-bit PNG")
        scale = 255.0 if hi <= 1.0 else 1.0
    else:
        if lo < 0 or hi > 65535:
            raise DataError(f"image {str(path)!r} ({im.mode}) has values in [{lo:g}, {hi:g}], outside 16 bits; "
                            "convert it to an 8 or 16-bit PNG")
        scale = 1.0 if hi <= 255 and not im.mode.startswith("I;16") else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


def to_tensor(arr: np.ndarray, value_range: tuple[float, float] = RANGE_GAN) -> torch.Tensor:
    """``uint8`` (H, W, C) array -> float32 (C, H, W) tensor in ``value_range``."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # torch warns on read-only buffers (the cached builtin photos)
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32)
    if value_range == RANGE_UNIT:
        return t.div_(255.0)
    return t.div_(127.5).sub_(1.0)


def to_uint8(t: torch.Tensor, value_range: tuple[float, float] = RANGE_GAN) -> np.ndarray:
    """Float (C, H, W) or (1, C, H, W) tensor in ``value_range`` -> ``uint8`` (H, W, C) array.

    Values are clamped to the range and rounded to the nearest of the 256 levels.
    """
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise DataError(f"to_uint8 takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    lo, hi = value_range
    x = (t.detach().to("cpu", torch.float32).clamp(lo, hi) - lo) * (255.0 / (hi - lo))
    return x.round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def save_image(t: torch.Tensor, path: str | os.PathLike, value_range: tuple[float, float] = RANGE_GAN) -> None:
    """Write one image tensor (see :func:`to_uint8`) as a PNG/JPEG chosen by ``path``'s extension, atomically."""
    from PIL import Image

    from ..ioutil import atomic_file

    arr = to_uint8(t, value_range)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"save_image: cannot tell the image format of {path} from its extension")
    with atomic_file(path) as tmp:
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(tmp, format=fmt)
