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


@dataclasses.dataclass(frozen=True)
class Task:
    """One built-in task (see the module docstring)."""

    name: str  #: short name, e.g. ``"sr"``
    description: str
    teacher_weights: Path
    baseline: str  #: ``"bicubic"`` or ``"identity"``
    metric: str  #: what ``psnr``/``ssim`` mean for this task
    value_range: tuple[float, float]
    reference_input: Callable[[], tuple[int, ...]]  #: shape of the input MACs are reported at
    _evaluate: Callable[..., dict[str, Any]] = dataclasses.field(repr=False)
    _baseline_key: str = dataclasses.field(repr=False)
    _psnr_key: str = dataclasses.field(repr=False)
    _ssim_key: str = dataclasses.field(repr=False)

    @property
    def spec(self) -> str:
        return f"builtin:{self.name}"

    @property
    def discriminator_weights(self) -> Path:
        return discriminator_path(self.teacher_weights)


def _eval_sr(model: torch.nn.Module | None, reference: torch.nn.Module | None, device: Any) -> dict[str, Any]:
    from .sr import evaluate_sr

    return evaluate_sr(model, device=device, reference=reference)


def _eval_cartoon(model: torch.nn.Module | None, reference: torch.nn.Module | None, device: Any) -> dict[str, Any]:
    from .cartoon import evaluate_cartoon

    return evaluate_cartoon(model, device=device, reference=reference)


TASKS: dict[str, Task] = {
    "sr": Task(
        name="sr", description="x2 super-resolution of photos (LR: antialiased bicubic downsampling, 8-bit)",
        teacher_weights=SR_TEACHER, baseline="bicubic",
        metric="PSNR/SSIM on Y (BT.601), 2-pixel border, 8-bit outputs, whole held-out photos",
        value_range=(0.0, 1.0), reference_input=lambda: (1, 3, 64, 64),
        _evaluate=_eval_sr, _baseline_key="bicubic", _psnr_key="psnr_y", _ssim_key="ssim_y"),
    "cartoon": Task(
        name="cartoon", description="photo -> cartoon (TV smoothing, colour quantization, dark Canny edges)",
        teacher_weights=CARTOON_TEACHER, baseline="identity",
        metric="PSNR/SSIM on RGB, 8-bit outputs, whole held-out photos (short side 256)",
        value_range=(-1.0, 1.0), reference_input=lambda: (1, 3, 256, 256),
        _evaluate=_eval_cartoon, _baseline_key="identity", _psnr_key="psnr", _ssim_key="ssim"),
}


def task_names() -> list[str]:
    """Specs of the built-in tasks: ``["builtin:sr", "builtin:cartoon"]``."""
    return [t.spec for t in TASKS.values()]


def get_task(name: str | Task) -> Task:
    """The task ``name`` (``"sr"``, ``"builtin:sr"``, ``"builtin:sr:discriminator"`` all give ``sr``)."""
    if isinstance(name, Task):
        return name
    key = str(name).strip()
    if key.startswith("builtin:"):
        key = key[len("builtin:"):]
    key = key.split(":", 1)[0]
    if key not in TASKS:
        raise DataError(f"unknown built-in task {name!r}; available: {', '.join(task_names())}")
    return TASKS[key]


def teacher_meta(task: str | Task) -> dict[str, Any]:
    """The JSON record shipped with the task's teacher (arch, kwargs, command, seed, recorded held-out numbers)."""
    return read_asset_meta(get_task(task).teacher_weights)


def load_teacher(task: str | Task, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The shipped teacher of ``task`` (float32, eval mode)."""
    return load_asset_model(get_task(task).teacher_weights, device)


def load_discriminator(task: str | Task, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The discriminator the task's teacher was trained against (``builtin:NAME:discriminator``; float32,
    eval mode). Its input and loss are described in its JSON record (``discriminator_meta``)."""
    return load_asset_model(get_task(task).discriminator_weights, device)


def discriminator_meta(task: str | Task) -> dict[str, Any]:
    return read_asset_meta(get_task(task).discriminator_weights)


def _summarize(task: Task, res: dict[str, Any]) -> dict[str, Any]:
    mean, base = res["mean"], res["mean"][task._baseline_key]
    out: dict[str, Any] = {"task": task.spec, "metric": task.metric, "baseline": task.baseline,
                           "baseline_psnr": base[task._psnr_key], "baseline_ssim": base[task._ssim_key]}
    if "model" in mean:
        out.update(psnr=mean["model"][task._psnr_key], ssim=mean["model"][task._ssim_key])
        out["gain_over_baseline_db"] = out["psnr"] - out["baseline_psnr"]
    if "model_vs_reference" in mean:
        out.update(psnr_to_reference=mean["model_vs_reference"][task._psnr_key],
                   ssim_to_reference=mean["model_vs_reference"][task._ssim_key])
    out["per_image"] = {n: {k: {"psnr": v[task._psnr_key], "ssim": v[task._ssim_key]} for k, v in row.items()}
                        for n, row in res["per_image"].items()}
    return out


def evaluate(task: str | Task, model: torch.nn.Module, *, reference: torch.nn.Module | None = None,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    """``model`` on the task's held-out photos with the task's protocol, the baseline beside it.

    Returns ``{"task", "metric", "baseline", "psnr", "ssim", "baseline_psnr", "baseline_ssim",
    "gain_over_baseline_db", "per_image"}`` (dB; with ``reference``, e.g. the teacher, also
    ``"psnr_to_reference"``/``"ssim_to_reference"``). ``model`` is put in eval mode for the call.
    """
    t = get_task(task)
    was = model.training
    model.eval()
    try:
        return _summarize(t, t._evaluate(model, reference, device))
    finally:
        model.train(was)


_BASELINE_CACHE: dict[str, dict[str, Any]] = {}


def baseline_metrics(task: str | Task) -> dict[str, Any]:
    """The task's baseline (bicubic for ``builtin:sr``, identity for ``builtin:cartoon``) on its held-out
    photos: ``{"task", "name", "metric", "psnr", "ssim", "per_image"}`` (dB). Measured on the first call
    (the data are fixed, so the result is cached per process)."""
    t = get_task(task)
    if t.name not in _BASELINE_CACHE:
        s = _summarize(t, t._evaluate(None, None, "cpu"))
        _BASELINE_CACHE[t.name] = {"task": t.spec, "name": t.baseline, "metric": t.metric,
                                   "psnr": s["baseline_psnr"], "ssim": s["baseline_ssim"],
                                   "per_image": {n: r[t.baseline] for n, r in s["per_image"].items()}}
    return dict(_BASELINE_CACHE[t.name])
