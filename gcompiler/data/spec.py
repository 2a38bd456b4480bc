"""Dataset specifications: the strings ``--data`` takes.

Forms:

* ``builtin:sr``: the built-in x2 super-resolution task (:mod:`gcompiler.data.sr`);
* ``builtin:cartoon``: the built-in photo -> cartoon translation task (:mod:`gcompiler.data.cartoon`);
* ``single:PATH``: every image of folder PATH (inputs only; teacher outputs are computed by the trainer);
* ``aligned:PATH``: side-by-side A|B images in folder PATH (pix2pix layout);
* ``paired:PATH``: PATH/A and PATH/B (or trainA/trainB) matched by file name;
* ``unpaired:PATH``: PATH/A and PATH/B unrelated;
* ``PATH`` alone: ``paired`` if PATH has A/ and B/ subfolders whose file names all match, ``unpaired``
  if it has them and they do not, else ``single``. (Side-by-side images cannot be told apart from
  ordinary wide photos, so they always need ``aligned:``.)
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from ..errors import DataError
from .datasets import (AlignedDataset, PairedFolderDataset, SingleFolderDataset, UnpairedFolderDataset,
                       find_ab_folders)
from .images import RANGE_GAN, is_image_file

MODES = ("single", "aligned", "paired", "unpaired")
BUILTIN = ("builtin:sr", "builtin:cartoon")
SPLITS = ("train", "eval")


def detect_mode(path: str | os.PathLike) -> str:
    """The folder layout of ``path`` for a spec without a prefix (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data folder {str(p)!r} does not exist")
    try:
        a, b = find_ab_folders(p)
    except DataError:
        return "single"
    stems_a = {f.stem for f in a.iterdir() if f.is_file() and is_image_file(f)}
    stems_b = {f.stem for f in b.iterdir() if f.is_file() and is_image_file(f)}
    return "paired" if stems_a and stems_a == stems_b else "unpaired"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``spec`` -> ``(mode, path)``; mode is one of :data:`BUILTIN` (path ``None``) or of :data:`MODES`."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec {spec!r}: give a folder, builtin:sr or builtin:cartoon")
    spec = spec.strip()
    if spec.startswith("builtin:"):
        if spec not in BUILTIN:
            raise DataError(f"unknown built-in data set {spec!r}; available: {', '.join(BUILTIN)}")
        return spec, None
    head, sep, rest = spec.partition(":")
    if sep and head in MODES:
        return head, rest
    return detect_mode(spec), spec


def open_dataset(spec: str, *, split: str = "train", crop_size: int | None = None, flip: bool | None = None,
                 value_range: Sequence[float] | None = None, channels: int = 3, strict: bool = False,
                 seed: int | None = None, **kwargs: Any) -> Dataset:
    """Open the dataset a spec names (see the module docstring for the forms).

    ``split="train"`` gives augmented training items (random crops of ``crop_size`` if given,
    horizontal flips unless ``flip=False``); ``split="eval"`` gives whole images (unless ``crop_size``)
    without flips. For ``builtin:sr`` (``builtin:cartoon``) the eval split is the fixed held-out photos and
    ``crop_size`` defaults to 48 LR pixels (128 pixels) for training; a folder has no split of its own, so
    ``eval`` reads the same folder (pass another folder to evaluate on held-out images).
    Folder datasets give tensors in ``value_range`` (default [-1, 1]); ``builtin:sr`` always [0, 1],
    ``builtin:cartoon`` always [-1, 1].
    Extra ``kwargs`` go to the dataset class (e.g. ``direction`` for ``aligned``,
    ``patches_per_epoch``/``augment`` for ``builtin:sr``).
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    mode, path = parse_spec(spec)
    train = split == "train"
    if mode == "builtin:sr":
        from . import sr

        if value_range is not None and tuple(map(float, value_range)) != (0.0, 1.0):
            raise DataError("builtin:sr images are in [0, 1]; value_range cannot be changed for it")
        if train:
            if flip is False:
                kwargs.setdefault("augment", "none")
            _check_kwargs(sr.SRTrainDataset, kwargs, "builtin:sr")
            return sr.SRTrainDataset(crop_size=48 if crop_size is None else crop_size, seed=seed, **kwargs)
        _check_kwargs(sr.SRHeldoutDataset, kwargs, "builtin:sr")
        return sr.SRHeldoutDataset(crop_size=crop_size, seed=0 if seed is None else seed, **kwargs)
    if mode == "builtin:cartoon":
        from . import cartoon

        if value_range is not None and tuple(map(float, value_range)) != (-1.0, 1.0):
            raise DataError("builtin:cartoon images are in [-1, 1]; value_range cannot be changed for it")
        if train:
            if flip is not None:
                kwargs.setdefault("flip", flip)
            _check_kwargs(cartoon.CartoonTrainDataset, kwargs, "builtin:cartoon")
            return cartoon.CartoonTrainDataset(crop_size=128 if crop_size is None else crop_size, seed=seed,
                                               **kwargs)
        _check_kwargs(cartoon.CartoonHeldoutDataset, kwargs, "builtin:cartoon")
        return cartoon.CartoonHeldoutDataset(crop_size=crop_size, seed=0 if seed is None else seed, **kwargs)
    assert path is not None
    common = dict(crop_size=crop_size, flip=train if flip is None else flip,
                  value_range=RANGE_GAN if value_range is None else value_range,
                  channels=channels, strict=strict, seed=seed if train or seed is not None else 0)
    cls = {"single": SingleFolderDataset, "aligned": AlignedDataset, "paired": PairedFolderDataset,
           "unpaired": UnpairedFolderDataset}[mode]
    _check_kwargs(cls, kwargs, mode)
    return cls(path, **common, **kwargs)


def _check_kwargs(cls: type, kwargs: dict[str, Any], what: str) -> None:
    allowed = set(inspect.signature(cls).parameters)
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise DataError(f"unknown option(s) {bad} for a {what!r} dataset; it takes {sorted(allowed)}")
