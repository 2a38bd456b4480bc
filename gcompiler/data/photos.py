"""The photos the built-in tasks are made of, and their one fixed train / held-out split.

Nothing is downloaded: every photo comes from ``skimage.data`` as shipped with scikit-image (the
images that need the optional ``pooch`` download are not used). The split is by name and fixed:

* :data:`HELDOUT_PHOTOS` (``chelsea``, ``rocket``): evaluation only, never trained on, by any task;
* :data:`TRAIN_COLOR` (colour photos) and :data:`TRAIN_GRAY` (grayscale photos, given as RGB with the
  gray value in all three channels; they teach luminance detail, which is what PSNR-Y measures).
  The two stereo views of ``stereo_motorcycle`` (``motorcycle_left``/``_right``) show the same scene,
  so both sit on the training side. ``skimage.data.cat`` is the same photo as ``chelsea`` and is never
  used; ``colorwheel``, ``logo``, ``checkerboard``, ``binary_blobs``, ``horse`` and
  ``shepp_logan_phantom`` are synthetic and not used; ``text`` and ``page`` are scanned documents and
  not used; ``cell`` and ``microaneurysms`` are microscopy and not used.
* :data:`EXTRA_PHOTOS` (``grace_hopper``, the portrait matplotlib ships as sample data): training-side
  photos a task may opt into by name (``builtin:sr`` ``images=``); not in :data:`TRAIN_PHOTOS`, so the
  default training sets, and the teachers trained on them, stay as recorded.

:func:`load_photo` returns a read-only ``uint8`` (H, W, 3) array.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import DataError

#: Held-out photos: evaluation only, for every built-in task.
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "rocket")
#: Colour training photos (``motorcycle_*`` are the two views of ``stereo_motorcycle``).
TRAIN_COLOR: tuple[str, ...] = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry",
                                "retina", "motorcycle_left", "motorcycle_right")
#: Grayscale training photos (replicated to RGB).
TRAIN_GRAY: tuple[str, ...] = ("camera", "brick", "grass", "gravel", "clock", "moon")
TRAIN_PHOTOS: tuple[str, ...] = TRAIN_COLOR + TRAIN_GRAY
#: Opt-in training photos from other installed packages (matplotlib's sample data).
EXTRA_PHOTOS: tuple[str, ...] = ("grace_hopper",)
ALL_PHOTOS: tuple[str, ...] = TRAIN_PHOTOS + EXTRA_PHOTOS + HELDOUT_PHOTOS

assert not set(TRAIN_PHOTOS + EXTRA_PHOTOS) & set(HELDOUT_PHOTOS)


def skimage_data():
    """``skimage.data``, or a :class:`DataError` saying how to install scikit-image."""
    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise DataError("the built-in tasks need scikit-image (its photos are the data): "
                        "pip install 'scikit-image>=0.21' (or the gcompiler[data] extra)") from exc
    return skdata


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` as a read-only ``uint8`` (H, W, 3) array (grayscale photos replicated)."""
    if name not in ALL_PHOTOS:
        raise DataError(f"unknown built-in photo {name!r}; known: {', '.join(ALL_PHOTOS)}")
    if name == "grace_hopper":
        img, where = _matplotlib_sample("grace_hopper.jpg"), "matplotlib's grace_hopper.jpg"
    else:
        skdata, where = skimage_data(), f"skimage.data.{name}"
        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(skdata, name)()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"{where} is not an 8-bit image ({img.dtype}, {img.shape})")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{where} is not an RGB or gray image ({img.shape})")
    out = np.ascontiguousarray(img)
    out.setflags(write=False)
    return out


def _matplotlib_sample(filename: str) -> np.ndarray:
    """A photo from matplotlib's bundled sample data, as an RGB array (:func:`load_photo` checks it)."""
    try:
        from matplotlib import cbook
        from PIL import Image
        with Image.open(cbook.get_sample_data(filename)) as im:
            return np.asarray(im.convert("RGB"))
    except (ImportError, OSError, ValueError) as exc:
        raise DataError(f"cannot read matplotlib's sample photo {filename!r} ({exc}); "
                        "it ships with matplotlib: pip install 'matplotlib>=3.5'") from exc
