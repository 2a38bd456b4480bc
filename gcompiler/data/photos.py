"""The photos the built-in tasks are made of, and their one fixed train / held-out split.

Nothing is downloaded: the photos come from ``skimage.data`` as shipped with scikit-image (the images
that need the optional ``pooch`` download are not used), and the opt-in ones from the sample data that
matplotlib, scikit-learn, PyWavelets, mahotas and imgaug ship in their packages. The split is by name and
fixed:

* :data:`HELDOUT_PHOTOS` (``chelsea``, ``rocket``): evaluation only, never trained on, by any task;
* :data:`TRAIN_COLOR` (colour photos) and :data:`TRAIN_GRAY` (grayscale photos, given as RGB with the
  gray value in all three channels; they teach luminance detail, which is what PSNR-Y measures).
  The two stereo views of ``stereo_motorcycle`` (``motorcycle_left``/``_right``) show the same scene,
  so both sit on the training side. ``skimage.data.cat`` is the same photo as ``chelsea`` and is never
  used; ``colorwheel``, ``logo``, ``checkerboard``, ``binary_blobs``, ``horse`` and
  ``shepp_logan_phantom`` are synthetic and not used; ``text`` and ``page`` are scanned documents and
  not used; ``cell`` and ``microaneurysms`` are microscopy and not used.
* :data:`EXTRA_PHOTOS`: training-side photos a task may opt into by name (``builtin:sr`` ``images=``);
  not in :data:`TRAIN_PHOTOS`, so the default training sets, and the teachers trained on them, stay as
  recorded. Each is read from an installed package's files, without importing the package:
  ``grace_hopper``, the portrait matplotlib ships as sample data; ``china`` and ``flower``, the two colour
  photos scikit-learn ships (``sklearn/datasets/images``, CC BY 2.0); ``coins``, a grayscale
  ``skimage.data`` photo; ``aero`` and ``ascent``, the two grayscale photos PyWavelets ships
  (``pywt/data``, uint8 arrays in ``.npz`` files, read without pickles); ``luispedro``, the small portrait
  mahotas ships (``mahotas/demos/data``); ``quokka``, the photo imgaug ships (``imgaug/quokka.jpg``;
  install it with ``pip install --no-deps imgaug==0.4.0``: only the file is read, so its OpenCV
  dependency is not needed). scikit-learn, PyWavelets and mahotas are in the ``data`` and ``dev`` extras;
  ``make env`` installs imgaug that way. mahotas' other demo images are not used: ``DepartmentStore`` is
  a drawing, ``nuclear`` microscopy, and ``lena`` is left out.

:func:`load_photo` returns a read-only ``uint8`` (H, W, 3) array.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

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
#: Opt-in training photos (other packages' sample photos, one more scikit-image photo).
EXTRA_PHOTOS: tuple[str, ...] = ("grace_hopper", "china", "flower", "coins", "quokka", "aero", "ascent",
                                 "luispedro")
#: Where each opt-in photo that does not come from ``skimage.data`` is read from: (package, file).
_PACKAGE_PHOTOS: dict[str, tuple[str, str]] = {
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "china": ("scikit-learn", "china.jpg"),
    "flower": ("scikit-learn", "flower.jpg"),
    "quokka": ("imgaug", "quokka.jpg"),
    "aero": ("PyWavelets", "aero.npz"),
    "ascent": ("PyWavelets", "ascent.npz"),
    "luispedro": ("mahotas", "luispedro.jpg"),
}
#: Where each package keeps its sample photos: package -> (module, folder inside it, how to install it).
_PHOTO_PACKAGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "matplotlib": ("matplotlib", ("mpl-data", "sample_data"), "pip install 'matplotlib>=3.5'"),
    "scikit-learn": ("sklearn", ("datasets", "images"),
                     "pip install 'scikit-learn>=1.0' (or the gcompiler[data] extra)"),
    "PyWavelets": ("pywt", ("data",), "pip install 'PyWavelets>=1.4' (or the gcompiler[data] extra)"),
    "mahotas": ("mahotas", ("demos", "data"), "pip install 'mahotas>=1.4.19' (or the gcompiler[data] extra)"),
    # imgaug's own dependencies (OpenCV, Shapely) are not needed to read its one photo
    "imgaug": ("imgaug", (), "pip install --no-deps 'imgaug==0.4.0' (only its photo file is read)"),
}
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
    if name in _PACKAGE_PHOTOS:
        package, filename = _PACKAGE_PHOTOS[name]
        img, where = _package_sample(package, filename), f"{package}'s {filename}"
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


def package_photo_path(package: str, filename: str) -> Path:
    """The file of a sample photo shipped inside an installed package (``matplotlib`` or ``scikit-learn``).

    Found from the package's install location without importing it; a :class:`DataError` says how to
    install the package when it or the file is missing.
    """
    if package not in _PHOTO_PACKAGES:
        raise DataError(f"no sample photos are known in package {package!r}")
    module, folder, install = _PHOTO_PACKAGES[package]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the sample photo {filename!r} ships with {package}, which is not installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*folder, filename)
    if not path.is_file():
        raise DataError(f"{package} is installed but has no {'/'.join(folder + (filename,))} ({path}): {install}")
    return path


def _package_sample(package: str, filename: str) -> np.ndarray:
    """A photo from a package's bundled sample data, as an RGB array (:func:`load_photo` checks it)."""
    path = package_photo_path(package, filename)
    if path.suffix == ".npz":  # PyWavelets' gray photos: one uint8 array under "data"; no pickles
        try:
            with np.load(path, allow_pickle=False) as archive:
                return np.asarray(archive["data"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read {package}'s sample photo {path} ({exc})") from exc
    try:
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (ImportError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {package}'s sample photo {path} ({exc})") from exc
