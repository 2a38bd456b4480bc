"""The registry of built-in tasks: ``builtin:sr`` and ``builtin:cartoon``.

A :class:`Task` bundles what a run on a built-in task needs: the teacher and the discriminator it was
trained against (package assets under ``gcompiler/assets``, fp16 storage loaded into float32 models),
the training / held-out datasets (through :func:`gcompiler.open_dataset`), the baseline that any
student must beat (bicubic upsampling for SR, the identity for cartoon), and the held-out metric.

Public API:

* :data:`TASKS`, :func:`get_task` (``"sr"``, ``"builtin:sr"``, ...), :func:`task_names`;
* :func:`load_teacher` / :func:`load_discriminator` (``builtin:NAME`` / ``builtin:NAME:discriminator``);
* :func:`baseline_metrics` ``(task) -> {"name", "metric", "psnr", "ssim", "per_image"}``: the baseline's
  held-out numbers, measured now, for summaries that show the baseline beside teacher and student;
* :func:`evaluate` ``(task, model) -> {"metric", "psnr", "ssim", "baseline_psnr", "baseline_ssim", ...}``:
  any model (teacher or student) on the task's held-out photos, with the baseline beside it;
* :func:`load_asset_model`, :func:`discriminator_path`: the asset format (``X.safetensors`` + ``X.json``
  holding ``{"arch", "kwargs", ...}``; the discriminator of ``X`` is ``X_discriminator.safetensors``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import DataError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
SR_TEACHER = ASSET_DIR / "sr_teacher_x2.safetensors"
CARTOON_TEACHER = ASSET_DIR / "cartoon_teacher.safetensors"


def discriminator_path(teacher_weights: str | Path) -> Path:
    """``X.safetensors`` -> ``X_discriminator.safetensors`` (the discriminator shipped with teacher X)."""
    p = Path(teacher_weights)
    return p.with_name(p.stem + "_discriminator.safetensors")


def read_asset_meta(weights: str | Path) -> dict[str, Any]:
    """The JSON record next to an asset's weights (``{"arch", "kwargs", ...}``)."""
    mpath = Path(weights).with_suffix(".json")
    if not mpath.is_file():
        raise DataError(f"{str(mpath)!r} is missing (the record of {str(weights)!r}); retrain the built-in "
                        f"teachers with scripts/train_teacher.py and scripts/train_cartoon.py")
    try:
        meta = json.loads(mpath.read_text())
        meta["arch"], meta["kwargs"] = str(meta["arch"]), dict(meta["kwargs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"asset record {str(mpath)!r} is unreadable or lacks 'arch'/'kwargs': {exc}") from exc
    return meta


def load_asset_model(weights: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build ``gcompiler.models.create(arch, **kwargs)`` from the asset's JSON and load its weights
    (fp16 or fp32 storage; the model is float32), in eval mode. Mismatches raise :class:`DataError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .. import models

    wpath = Path(weights)
    if not wpath.is_file():
        raise DataError(f"built-in model weights {str(wpath)!r} are missing; retrain with scripts/train_teacher.py "
                        f"(builtin:sr) or scripts/train_cartoon.py (builtin:cartoon)")
    meta = read_asset_meta(wpath)
    model = models.create(meta["arch"], **meta["kwargs"])
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"weights {str(wpath)!r} are unreadable: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"weights {str(wpath)!r} do not match {meta['arch']}({meta['kwargs']}): missing "
                        f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.float().to(device).eval()
