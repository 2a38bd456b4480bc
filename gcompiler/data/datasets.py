"""Image datasets for distillation: single folder, side-by-side pairs, paired and unpaired folders.

Every dataset item is a dict of float32 CHW tensors in the dataset's ``value_range``
(``(-1, 1)`` by default, see :mod:`gcompiler.data.images`) plus the sample's index:

* ``"input"``: what the generator (teacher and student) takes;
* ``"target"`` (paired data only): the ground truth aligned with ``"input"`` (cropped and flipped
  together with it; it may be an integer ``scale`` times larger, e.g. super-resolution pairs);
* ``"teacher"`` (only from :class:`TeacherCachedDataset`): the cached teacher output, aligned;
* ``"reference"`` (unpaired data only): a random image of domain B, cropped and flipped on its own
  (a "real" sample for a discriminator, never a pixel target);
* ``"index"``: the dataset index (an int; a tensor after collation).

Augmentation: a random ``crop_size`` square (in ``"input"`` pixels; aligned views are cut at the
matching place) and, with ``flip=True``, a horizontal flip with probability 1/2 applied to all
aligned views at once. Randomness comes from the :class:`~gcompiler.data.sampler.SampleKey` the
sampler passes, so it is reproducible and independent of the number of DataLoader workers.

Unreadable files: at construction every file is opened and verified (header and structure, not the
pixels). By default (``strict=False``) a file that fails is *skipped* with a warning and listed in
``dataset.report`` (a :class:`~gcompiler.data.images.ScanReport`); ``strict=True`` raises
:class:`DataError` instead. If no usable file remains, :class:`DataError` is raised either way. A file
that passes the check but whose pixels cannot be decoded later raises :class:`DataError` naming it
when it is loaded (skipping then would silently change the batch composition of an exact resume).
A ``crop_size`` larger than any image raises :class:`DataError` at construction, naming the image.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .images import (RANGE_GAN, ScanReport, check_value_range, list_images, load_image, scan_images,
                     to_tensor)
from .sampler import sample_rng

Array = np.ndarray | torch.Tensor


def _hw(a: Array) -> tuple[int, int]:
    """Height and width of a uint8 HWC array or a float CHW tensor."""
    return (a.shape[0], a.shape[1]) if isinstance(a, np.ndarray) else (a.shape[-2], a.shape[-1])


def _crop(a: Array, y: int, x: int, h: int, w: int) -> Array:
    if isinstance(a, np.ndarray):
        return a[y:y + h, x:x + w]
    return a[..., y:y + h, x:x + w]


def _hflip(a: Array) -> Array:
    if isinstance(a, np.ndarray):
        return a[:, ::-1]
    return torch.flip(a, dims=(-1,))


def crop_and_flip(aligned: Mapping[str, tuple[Array, int]], crop_size: int | None, flip: bool,
                  rng: np.random.Generator, where: str = "image") -> dict[str, Array]:
    """Cut the same random square out of aligned views and flip them together.

    ``aligned`` maps a name to ``(image, scale)``: ``"input"`` has scale 1 and a view of scale ``s``
    must be exactly ``s`` times its size. The crop is ``crop_size`` input pixels at an input position
    ``(y, x)`` and ``s * crop_size`` pixels at ``(s*y, s*x)`` in a scale-``s`` view. ``crop_size=None``
    keeps whole images. Raises :class:`DataError` (naming ``where``) for mismatched sizes or a crop
    larger than the image.
    """
    h, w = _hw(aligned["input"][0])
    for name, (img, s) in aligned.items():
        if _hw(img) != (h * s, w * s):
            raise DataError(f"{where}: view {name!r} is {_hw(img)[1]}x{_hw(img)[0]} but should be "
                            f"{s}x the input's {w}x{h} = {w * s}x{h * s}")
    if crop_size is None:
        y = x = 0
        ch, cw = h, w
    else:
        if crop_size > h or crop_size > w:
            raise DataError(f"crop {crop_size}x{crop_size} is larger than {where} ({w}x{h}); "
                            f"use a smaller crop size")
        y = int(rng.integers(0, h - crop_size + 1))
        x = int(rng.integers(0, w - crop_size + 1))
        ch = cw = crop_size
    do_flip = bool(flip) and bool(rng.random() < 0.5)
    out = {}
    for name, (img, s) in aligned.items():
        c = _crop(img, y * s, x * s, ch * s, cw * s)
        out[name] = _hflip(c) if do_flip else c
    return out


def _as_tensor(a: Array, value_range: tuple[float, float]) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        return to_tensor(a, value_range)
    return a.to(torch.float32).contiguous()


class CropFlipDataset(Dataset):
    """Base class: subclasses provide ``__len__``, :meth:`load_views` and ``names``.

    An item comes from a *source*, a whole image (or pair) the aligned views are cut from:
    :meth:`source_of` maps an item index to its source (the identity by default; a random photo for
    ``builtin:sr``), :meth:`num_sources` counts them, and ``load_views(source, rng)`` returns
    ``(aligned, unaligned, where)``: aligned views as ``{name: (uint8 HWC array or float CHW tensor,
    scale)}`` with ``"input"`` at scale 1, unaligned views as ``{name: array}`` (each cropped and flipped
    on its own), and a description of the source for error messages.
    """

    value_range: tuple[float, float] = RANGE_GAN
    crop_size: int | None = None
    flip: bool = True
    seed: int | None = None
    #: Ratio between the size of ``"target"`` (if any) and of ``"input"``.
    scale: int = 1
    #: True when :meth:`source_of` draws the source at random (every item may come from any source, e.g.
    #: ``builtin:sr``), False when it is a fixed function of the index (one item per file).
    random_sources: bool = False
    report: ScanReport
    names: list[str]

    def num_sources(self) -> int:
        """Number of whole source images (or pairs) the items are cut from."""
        return len(self)

    def source_of(self, index: int, rng: np.random.Generator) -> int:
        """The source of item ``index`` (may draw from ``rng``)."""
        return index

    def load_views(self, source: int, rng: np.random.Generator
                   ) -> tuple[dict[str, tuple[Array, int]], dict[str, Array], str]:
        raise NotImplementedError

    def finish(self, index: int, aligned: Mapping[str, tuple[Array, int]], unaligned: Mapping[str, Array],
               where: str, rng: np.random.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, a in crop_and_flip(aligned, self.crop_size, self.flip, rng, where).items():
            out[name] = _as_tensor(a, self.value_range)
        for name, img in unaligned.items():
            c = crop_and_flip({"input": (img, 1)}, self.crop_size, self.flip, rng, f"{where} ({name})")
            out[name] = _as_tensor(c["input"], self.value_range)
        out["index"] = index
        return out

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, rng = sample_rng(key, self.seed)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        aligned, unaligned, where = self.load_views(self.source_of(index, rng), rng)
        return self.finish(index, aligned, unaligned, where, rng)

    def _check_crop(self, sizes: Sequence[tuple[str, tuple[int, int]]]) -> None:
        """Fail early when ``crop_size`` exceeds the smallest input image (``sizes``: name, (w, h))."""
        if self.crop_size is None:
            return
        if self.crop_size < 1:
            raise DataError(f"crop_size must be positive, got {self.crop_size}")
        for name, (w, h) in sizes:
            if self.crop_size > min(w, h):
                raise DataError(f"crop {self.crop_size}x{self.crop_size} is larger than image {name!r} "
                                f"({w}x{h}); use a crop size <= {min(w, h)} or remove that image")


def _init_common(ds: CropFlipDataset, crop_size: int | None, flip: bool, value_range: Sequence[float],
                 channels: int, seed: int | None) -> None:
    ds.crop_size = None if crop_size is None else int(crop_size)
    ds.flip = bool(flip)
    ds.value_range = check_value_range(value_range)
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    ds.channels = channels
    ds.seed = seed
    ds.report = ScanReport()


class SingleFolderDataset(CropFlipDataset):
    """Every image of one folder as an ``"input"``; the trainer computes teacher outputs on the fly
    (or wrap it in :class:`TeacherCachedDataset`)."""

    def __init__(self, folder: str | os.PathLike, *, crop_size: int | None = None, flip: bool = True,
                 value_range: Sequence[float] = RANGE_GAN, channels: int = 3, strict: bool = False,
                 seed: int | None = None) -> None:
        _init_common(self, crop_size, flip, value_range, channels, seed)
        self.folder = Path(folder)
        good = scan_images(list_images(self.folder), strict=strict, report=self.report)
        if not good:
            raise DataError(f"no readable images in folder {str(self.folder)!r} "
                            f"({len(self.report.skipped)} files could not be read)")
        self.files = [p for p, _ in good]
        self.names = [p.name for p in self.files]
        self._check_crop([(str(p), s) for p, s in good])

    def __len__(self) -> int:
        return len(self.files)

    def load_views(self, index, rng):
        p = self.files[index]
        return {"input": (load_image(p, self.channels), 1)}, {}, f"image {str(p)!r}"


class SourceSubset(CropFlipDataset):
    """The items of ``base`` cut only from some of its sources (whole images or pairs).

    Two subsets with disjoint ``sources`` never share a pixel: this is how a method keeps a validation
    split of whole training images apart from what it trains on (``gan-compression``'s search split).
    For a base that draws its source at random (:attr:`CropFlipDataset.random_sources`) the subset has the
    base's length and draws uniformly from ``sources``; otherwise it keeps the base's items whose source is
    in ``sources``, in order. Crops, flips, value range and scale are the base's own; other attributes are
    read through to the base.
    """

    def __init__(self, base: CropFlipDataset, sources: Sequence[int]) -> None:
        n = base.num_sources()
        self.base = base
        self.sources = tuple(int(i) for i in sources)
        if not self.sources:
            raise DataError("a source subset needs at least one source")
        bad = [i for i in self.sources if not 0 <= i < n]
        if bad:
            raise DataError(f"source(s) {bad} out of range for a dataset of {n} sources")
        self.random_sources = base.random_sources
        if base.random_sources:
            self.items: list[int] | None = None
        else:
            keep, rng = set(self.sources), np.random.default_rng(0)
            self.items = [i for i in range(len(base)) if base.source_of(i, rng) in keep]
        self.value_range, self.crop_size, self.flip, self.seed = base.value_range, base.crop_size, base.flip, base.seed
        self.scale, self.report = base.scale, base.report
        self.names = [base.names[i] for i in self.sources] if len(base.names) == n else list(base.names)

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base) if self.items is None else len(self.items)

    def num_sources(self) -> int:
        return len(self.sources)

    def source_of(self, index: int, rng: np.random.Generator) -> int:
        if self.items is None:
            return self.sources[int(rng.integers(0, len(self.sources)))]
        return self.base.source_of(self.items[index], rng)

    def load_views(self, source, rng):
        return self.base.load_views(source, rng)

    def finish(self, index, aligned, unaligned, where, rng):
        return self.base.finish(index, aligned, unaligned, where, rng)


class AlignedDataset(CropFlipDataset):
    """Paired images stored side by side in one file: the left half is A, the right half is B
    (pix2pix's "aligned" layout). ``direction="AtoB"`` makes A the input and B the target."""

    def __init__(self, folder: str | os.PathLike, *, crop_size: int | None = None, flip: bool = True,
                 value_range: Sequence[float] = RANGE_GAN, channels: int = 3, strict: bool = False,
                 direction: str = "AtoB", seed: int | None = None) -> None:
        _init_common(self, crop_size, flip, value_range, channels, seed)
        if direction not in ("AtoB", "BtoA"):
            raise DataError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        self.direction = direction
        self.folder = Path(folder)
        good = []
        for p, (w, h) in scan_images(list_images(self.folder), strict=strict, report=self.report):
            if w % 2:
                msg = f"side-by-side image {str(p)!r} has an odd width {w}: cannot split it into A|B halves"
                if strict:
                    raise DataError(msg)
                warnings.warn(f"skipping: {msg}", stacklevel=2)
                self.report.skipped.append((str(p), msg))
                self.report.used -= 1
                continue
            good.append((p, (w // 2, h)))
        if not good:
            raise DataError(f"no usable side-by-side (A|B) images in folder {str(self.folder)!r}")
        self.files = [p for p, _ in good]
        self.names = [p.name for p in self.files]
        self._check_crop([(f"{p} (one half)", s) for p, s in good])

    def __len__(self) -> int:
        return len(self.files)

    def load_views(self, index, rng):
        p = self.files[index]
        img = load_image(p, self.channels)
        half = img.shape[1] // 2
        a, b = img[:, :half], img[:, half:2 * half]
        if self.direction == "BtoA":
            a, b = b, a
        return {"input": (a, 1), "target": (b, 1)}, {}, f"image {str(p)!r}"


def find_ab_folders(root: str | os.PathLike) -> tuple[Path, Path]:
    """The A and B subfolders of ``root``: ``A/`` and ``B/``, else ``trainA/`` and ``trainB/``."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"data folder {str(r)!r} does not exist or is not a folder")
    for a, b in (("A", "B"), ("trainA", "trainB")):
        if (r / a).is_dir() and (r / b).is_dir():
            return r / a, r / b
    subdirs = sorted(p.name for p in r.iterdir() if p.is_dir())
    raise DataError(f"folder {str(r)!r} has no A/ and B/ (or trainA/ and trainB/) subfolders "
                    f"(found: {', '.join(subdirs) or 'none'})")


def _two_folders(root_or_pair: str | os.PathLike | tuple) -> tuple[Path, Path]:
    if isinstance(root_or_pair, (tuple, list)):
        if len(root_or_pair) != 2:
            raise DataError(f"expected two folders (A, B), got {len(root_or_pair)}")
        return Path(root_or_pair[0]), Path(root_or_pair[1])
    return find_ab_folders(root_or_pair)


class PairedFolderDataset(CropFlipDataset):
    """Two folders A/ (inputs) and B/ (targets) whose files are matched by name without extension.

    B images must be the same size as their A partner or an integer multiple of it (one ratio for the
    whole dataset, e.g. 2 for x2 super-resolution pairs), available as ``dataset.scale``. Files without a
    partner are skipped with a warning and listed in ``report.unmatched`` (``strict=True``: an error).
    """

    def __init__(self, root: str | os.PathLike | tuple, *, crop_size: int | None = None, flip: bool = True,
                 value_range: Sequence[float] = RANGE_GAN, channels: int = 3, strict: bool = False,
                 seed: int | None = None) -> None:
        _init_common(self, crop_size, flip, value_range, channels, seed)
        self.dir_a, self.dir_b = _two_folders(root)
        a = {p.stem: p for p in list_images(self.dir_a)}
        b = {p.stem: p for p in list_images(self.dir_b)}
        unmatched = sorted(str(a[s]) for s in a.keys() - b.keys()) + sorted(str(b[s]) for s in b.keys() - a.keys())
        if unmatched:
            msg = (f"{len(unmatched)} files in {str(self.dir_a)!r} / {str(self.dir_b)!r} have no partner "
                   f"with the same name (e.g. {unmatched[0]!r})")
            if strict:
                raise DataError(msg)
            warnings.warn(f"skipping: {msg}", stacklevel=2)
            self.report.unmatched = unmatched
        stems = sorted(a.keys() & b.keys())
        if not stems:
            raise DataError(f"no file name of {str(self.dir_a)!r} matches one of {str(self.dir_b)!r}: "
                            f"paired folders must hold files with the same names (extension aside); "
                            f"use 'unpaired:' for unrelated A and B images")
        sub = ScanReport()
        good_a = dict(scan_images([a[s] for s in stems], strict=strict, report=sub))
        good_b = dict(scan_images([b[s] for s in stems], strict=strict, report=sub))
        self.report.skipped = sub.skipped
        pairs, sizes, scales = [], [], set()
        for s in stems:
            pa, pb = a[s], b[s]
            if pa not in good_a or pb not in good_b:
                continue
            (wa, ha), (wb, hb) = good_a[pa], good_b[pb]
            if wb % wa or hb % ha or wb // wa != hb // ha:
                raise DataError(f"paired images {str(pa)!r} ({wa}x{ha}) and {str(pb)!r} ({wb}x{hb}) differ in "
                                f"size: B must be A's size or an integer multiple of it")
            scales.add(wb // wa)
            pairs.append((pa, pb))
            sizes.append((str(pa), (wa, ha)))
        if len(scales) > 1:
            raise DataError(f"paired folders mix B/A size ratios {sorted(scales)}: one ratio is needed")
        if not pairs:
            raise DataError(f"no readable image pairs in {str(self.dir_a)!r} / {str(self.dir_b)!r}")
        self.report.used = len(pairs)
        self.pairs = pairs
        self.scale = scales.pop()
        self.names = [pa.stem for pa, _ in pairs]
        self._check_crop(sizes)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_views(self, index, rng):
        pa, pb = self.pairs[index]
        return ({"input": (load_image(pa, self.channels), 1), "target": (load_image(pb, self.channels), self.scale)},
                {}, f"pair {str(pa)!r} / {str(pb)!r}")


class UnpairedFolderDataset(CropFlipDataset):
    """Two unrelated folders A/ (inputs) and B/ (``"reference"`` images of the target domain).

    Length is ``max(len(A), len(B))``; item ``i`` is A image ``i % len(A)`` and a B image drawn at random
    (from the sample's seeded generator); each is cropped and flipped independently.
    """

    def __init__(self, root: str | os.PathLike | tuple, *, crop_size: int | None = None, flip: bool = True,
                 value_range: Sequence[float] = RANGE_GAN, channels: int = 3, strict: bool = False,
                 seed: int | None = None) -> None:
        _init_common(self, crop_size, flip, value_range, channels, seed)
        self.dir_a, self.dir_b = _two_folders(root)
        good_a = scan_images(list_images(self.dir_a), strict=strict, report=self.report)
        good_b = scan_images(list_images(self.dir_b), strict=strict, report=self.report)
        for d, g in ((self.dir_a, good_a), (self.dir_b, good_b)):
            if not g:
                raise DataError(f"no readable images in folder {str(d)!r}")
        self.files_a = [p for p, _ in good_a]
        self.files_b = [p for p, _ in good_b]
        self.names = [p.name for p in self.files_a]
        self._check_crop([(str(p), s) for p, s in good_a + good_b])

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def num_sources(self) -> int:
        return len(self.files_a)

    def source_of(self, index, rng):
        return index % len(self.files_a)

    def load_views(self, index, rng):
        pa = self.files_a[index]
        pb = self.files_b[int(rng.integers(0, len(self.files_b)))]
        return ({"input": (load_image(pa, self.channels), 1)},
                {"reference": load_image(pb, self.channels)}, f"image {str(pa)!r}")


def module_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TeacherCachedDataset(CropFlipDataset):
    """A dataset whose items also carry ``"teacher"``: the teacher's output on the *whole* input image,
    computed once at construction and then cropped/flipped together with ``"input"``.

    The teacher must be fully convolutional and map the dataset's ``value_range`` to itself; its output
    must be the input's size times an integer factor (else :class:`DataError`). Cropping a whole-image
    output differs from running the teacher on the crop only near crop borders, where the teacher sees
    real context instead of padding; that is the more faithful target.

    Outputs are kept in memory as float16, or, with ``cache_dir``, in one safetensors file per image named
    after the teacher's parameter hash so a changed teacher never reuses stale outputs.
    """

    def __init__(self, base: CropFlipDataset, teacher: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
                 *, device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> None:
        if getattr(base, "channel_shuffle", False):
            raise DataError("a cached teacher output cannot go with channel_shuffle: the teacher is not "
                            "colour-equivariant, so its output on the unshuffled image, shuffled, is no target; "
                            "build the base dataset without channel_shuffle")
        self.base = base
        self.crop_size, self.flip, self.seed = base.crop_size, base.flip, base.seed
        self.value_range, self.report, self.names = base.value_range, base.report, base.names
        self.scale = base.scale
        self.outputs: list[torch.Tensor | Path] = []
        fp = module_fingerprint(teacher) if isinstance(teacher, torch.nn.Module) else "fn"
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        self.teacher_scale: int | None = None
        rng = np.random.default_rng(0)  # only the unaligned views use it; they are discarded here
        with torch.no_grad():
            for i in tqdm(range(base.num_sources()), desc="caching teacher outputs", disable=not progress):
                aligned, _, where = base.load_views(i, rng)
                path = cache / f"{fp}_{i:06d}.safetensors" if cache is not None else None
                if path is not None and path.exists():
                    y = load_file(str(path))["teacher"]
                else:
                    x = _as_tensor(aligned["input"][0], base.value_range)[None].to(device)
                    y = teacher(x)
                    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != 1:
                        raise DataError(f"teacher output on {where} is not a (1, C, H, W) tensor "
                                        f"(got {type(y).__name__} {tuple(getattr(y, 'shape', ()))})")
                    y = y[0].to("cpu", torch.float16).contiguous()
                    if path is not None:  # atomically: a killed run never leaves a truncated cache entry
                        from ..ioutil import atomic_file

                        with atomic_file(path) as tmp:
                            save_file({"teacher": y}, str(tmp))
                self.teacher_scale = self._check_scale(x_hw=_hw(aligned["input"][0]), y=y, where=where)
                self.outputs.append(path if path is not None else y)

    def _check_scale(self, x_hw: tuple[int, int], y: torch.Tensor, where: str) -> int:
        (h, w), (oh, ow) = x_hw, (y.shape[-2], y.shape[-1])
        if oh % h or ow % w or oh // h != ow // w:
            raise DataError(f"teacher output {ow}x{oh} on {where} ({w}x{h}) is not an integer multiple of "
                            f"the input size: the teacher does not match this data")
        s = oh // h
        if self.teacher_scale is not None and s != self.teacher_scale:
            raise DataError(f"teacher output scale changes between images ({self.teacher_scale} vs {s} on {where})")
        return s

    def __len__(self) -> int:
        return len(self.base)

    def num_sources(self) -> int:
        return self.base.num_sources()

    def source_of(self, index, rng):
        return self.base.source_of(index, rng)

    def finish(self, index, aligned, unaligned, where, rng):
        return self.base.finish(index, aligned, unaligned, where, rng)

    def load_views(self, index, rng):
        aligned, unaligned, where = self.base.load_views(index, rng)
        out = self.outputs[index]
        if isinstance(out, Path):
            from safetensors.torch import load_file

            out = load_file(str(out))["teacher"]
        aligned = dict(aligned)
        aligned["teacher"] = (out, int(self.teacher_scale or 1))
        return aligned, unaligned, where
