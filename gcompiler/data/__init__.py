"""Data for distillation: image-folder datasets, the built-in tasks (sr, cartoon), resumable loading.

Quick use::

    from gcompiler.data import open_dataset, make_loader
    ds = open_dataset("photos/", crop_size=128)        # or "paired:dir", "aligned:dir", "builtin:sr"
    loader = make_loader(ds, batch_size=8, seed=0)     # ResumableLoader
    for batch in loader.batches():                     # endless; batch["input"] is (8, 3, 128, 128)
        ...
        ckpt["data"] = loader.state_dict()             # epoch + index, restored by load_state_dict

Items are dicts of float32 CHW tensors (``"input"``, and ``"target"`` / ``"teacher"`` / ``"reference"``
where the source has them, plus ``"index"``) in the dataset's ``value_range``: [-1, 1] for folders by
default, [0, 1] for ``builtin:sr``. See :mod:`gcompiler.data.datasets` for augmentation and for what
happens to unreadable images (skipped with a warning and counted in ``dataset.report`` unless
``strict=True``).
"""
from .datasets import (AlignedDataset, CropFlipDataset, PairedFolderDataset, SingleFolderDataset, SourceSubset,
                       TeacherCachedDataset, UnpairedFolderDataset, crop_and_flip)
from .images import (IMAGE_EXTENSIONS, RANGE_GAN, RANGE_UNIT, ScanReport, list_images, load_image, save_image,
                     to_tensor, to_uint8)
from .loader import ResumableLoader, default_num_workers, make_loader
from .sampler import ResumableSampler, SampleKey
from .spec import open_dataset, parse_spec

__all__ = [
    "AlignedDataset", "CropFlipDataset", "IMAGE_EXTENSIONS", "PairedFolderDataset", "RANGE_GAN", "RANGE_UNIT",
    "ResumableLoader", "ResumableSampler", "SampleKey", "ScanReport", "SingleFolderDataset", "SourceSubset",
    "TeacherCachedDataset", "UnpairedFolderDataset", "crop_and_flip", "default_num_workers", "list_images",
    "load_image", "make_loader", "open_dataset", "parse_spec", "save_image", "to_tensor", "to_uint8",
]
