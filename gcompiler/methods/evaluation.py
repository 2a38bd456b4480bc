"""Judging a student: held-out PSNR beside the teacher and the baseline, sample grids, the result tables.

* :func:`evaluate_student`: PSNR of the student to the teacher and to the ground truth on held-out images.
  Built-in tasks (``builtin:sr``, ``builtin:cartoon``) use the task's own protocol
  (:func:`gcompiler.data.tasks.evaluate`: fixed held-out photos, whole, 8-bit outputs; Y channel for SR);
  folders use up to ``--eval-images`` images of the data's eval split (RGB PSNR over the value range).
* :func:`reference_scores`: the teacher's PSNR to the ground truth and the task's baseline (bicubic for SR,
  identity for cartoon) on the same images, measured once per job. These land in ``summary.json``
  (``teacher_psnr``, ``baseline``, ``baseline_psnr``) and in the printed table; a student below the
  baseline is reported loudly (a warning in the log and a line under the table).
* :func:`save_samples`: a PNG grid input | teacher | student (| ground truth).
* :func:`summary_table` / :func:`pass_log_table`: the text tables printed at the end of a run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .base import CompressJob

log = logging.getLogger("gcompiler.compress")


# --------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_student(job: "CompressJob", student: nn.Module, device: str | torch.device = "cpu") -> dict[str, Any]:
    """PSNR of ``student`` to the teacher and to the ground truth (``None`` without one) on held-out images.

    Returns ``{"psnr_to_teacher", "psnr_to_target", "teacher_psnr", "baseline", "baseline_psnr", "protocol",
    "details"}``; logs a warning when the student is below the baseline. ``student`` is evaluated in eval
    mode (its training flag is restored).
    """
    was = student.training
    student.eval()
    teacher = job.teacher.to(device)
    try:
        if job.builtin_task is not None:
            from ..data import tasks

            res = tasks.evaluate(job.builtin_task, student, reference=teacher, device=device)
            ref = reference_scores(job, device)
            out = {"psnr_to_teacher": res.get("psnr_to_reference"), "psnr_to_target": res.get("psnr"),
                   **ref, "protocol": f"{job.builtin_task} held-out photos; {res.get('metric')}",
                   "details": {"student": {k: v for k, v in res.items() if k != "per_image"},
                               "per_image": res.get("per_image")}}
        else:
            out = _evaluate_folder(job, student, teacher, device)
            out.update(reference_scores(job, device))
    finally:
        student.train(was)
    if out["psnr_to_target"] is not None and out["baseline_psnr"] is not None \
            and out["psnr_to_target"] < out["baseline_psnr"]:
        log.warning(f"STUDENT BELOW BASELINE: the student's PSNR to the ground truth, {out['psnr_to_target']:.2f} dB, "
                    f"is below the {out['baseline']} baseline's {out['baseline_psnr']:.2f} dB on the same held-out "
                    f"images: this student is worse than not using a network (train longer, prune less, or raise "
                    f"the bits)")
    return out


def reference_scores(job: "CompressJob", device: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"teacher_psnr", "baseline", "baseline_psnr"}``: the teacher's PSNR to the ground truth and the task's
    baseline on the held-out images of :func:`evaluate_student` (``None`` where the data has no ground truth
    or no baseline). Measured once per job and cached on it."""
    cached = getattr(job, "_reference_scores", None)
    if cached is not None:
        return dict(cached)
    if job.builtin_task is not None:
        from ..data import tasks

        base = tasks.baseline_metrics(job.builtin_task)
        with torch.no_grad():
            t = tasks.evaluate(job.builtin_task, job.teacher.to(device), device=device)
        job._teacher_eval = t  # the report's teacher row (SSIM too) reuses it
        scores = {"teacher_psnr": t.get("psnr"), "baseline": base["name"], "baseline_psnr": base["psnr"]}
    else:
        scores = _folder_reference(job, device)
    job._reference_scores = scores
    return dict(scores)


def _grid_images(job: "CompressJob") -> "_Picked":
    """The evaluation images cut at the reference input's size, or at the training crop when some image is
    smaller than that (a zoo teacher's reference is 256 pixels; the images may be smaller)."""
    from ..errors import DataError

    if not job.settings.crop:
        return _Picked(job, None)
    sizes = dict.fromkeys([int(job.reference_input.shape[-1]), int(job.settings.crop)])
    for size in sizes:
        try:
            return _Picked(job, size)
        except DataError as exc:
            err = exc
    raise ValueError(f"no crop size fits the evaluation images: {err}")


class _Picked:
    """The evaluation images of a folder run (:meth:`CompressJob.eval_dataset`) as a sequence."""

    def __init__(self, job: "CompressJob", crop_size: int | None = None) -> None:
        self.ds, self.idx, self.note = job.eval_dataset(crop_size)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Any:
        return self.ds[self.idx[i]]


def _folder_items(job: "CompressJob") -> tuple[Any, int]:
    ds = _Picked(job)
    return ds, len(ds)


@torch.no_grad()
def _evaluate_folder(job: "CompressJob", student: nn.Module, teacher: nn.Module, device: str | torch.device
                     ) -> dict[str, Any]:
    from ..metrics import psnr

    ds, n = _folder_items(job)
    lo, hi = job.value_range
    to_t, to_y = [], []
    for i in range(n):
        item = ds[i]
        x = item["input"][None].to(device)
        t = teacher(x).float().clamp(lo, hi)
        s = student(x).float().clamp(lo, hi)
        to_t.append(psnr(s, t, data_range=hi - lo))
        tgt = item.get("target")
        if isinstance(tgt, torch.Tensor) and tuple(tgt.shape) == tuple(s.shape[1:]):
            to_y.append(psnr(s, tgt[None].to(device), data_range=hi - lo))
    return {"psnr_to_teacher": float(sum(to_t) / len(to_t)) if to_t else None,
            "psnr_to_target": float(sum(to_y) / len(to_y)) if to_y else None,
            "protocol": f"{ds.note}; whole images, RGB PSNR over the value range {list(job.value_range)}",
            "details": {"images": n}}


@torch.no_grad()
def _folder_reference(job: "CompressJob", device: str | torch.device) -> dict[str, Any]:
    """Folders with ground truth: the teacher's PSNR to it, and the identity baseline (the input itself)
    where input and target have the same shape."""
    from ..metrics import psnr

    ds, n = _folder_items(job)
    lo, hi = job.value_range
    teacher = job.teacher.to(device)
    to_y, ident = [], []
    for i in range(n):
        item = ds[i]
        tgt = item.get("target")
        if not isinstance(tgt, torch.Tensor):
            continue
        x = item["input"][None].to(device)
        t = teacher(x).float().clamp(lo, hi)
        if tuple(tgt.shape) == tuple(t.shape[1:]):
            to_y.append(psnr(t, tgt[None].to(device), data_range=hi - lo))
        if tuple(tgt.shape) == tuple(x.shape[1:]):
            ident.append(psnr(x.float().clamp(lo, hi), tgt[None].to(device), data_range=hi - lo))
    return {"teacher_psnr": float(sum(to_y) / len(to_y)) if to_y else None,
            "baseline": "identity" if ident else None,
            "baseline_psnr": float(sum(ident) / len(ident)) if ident else None}


@torch.no_grad()
def save_samples(job: "CompressJob", student: nn.Module, path: str | os.PathLike, *,
                 device: str | torch.device = "cpu", rows: int = 4) -> Path | None:
    """A PNG grid of held-out samples, one row each: input | teacher | student (| ground truth).

    ``builtin:sr``: the centre 64 x 64 (low-resolution) crop of every held-out photo; other data: fixed
    crops of the first eval images. Returns the path, or ``None`` when nothing could be drawn.
    """
    from ..train.runlog import save_grid

    was = student.training
    student.eval()
    try:
        if job.builtin_sr:
            from ..data.sr import heldout_center_crops

            x, gt = heldout_center_crops(64)
        else:
            ds = _grid_images(job)
            items = [ds[i] for i in range(min(rows, len(ds)))]
            if not items or any(it["input"].shape != items[0]["input"].shape for it in items):
                return None
            x = torch.stack([it["input"] for it in items])
            gt = (torch.stack([it["target"] for it in items]) if all(isinstance(it.get("target"), torch.Tensor)
                                                                    for it in items) else None)
        x = x.to(device)
        cols = [x, job.teacher.to(device)(x), student(x)]
        if gt is not None and tuple(gt.shape[1:]) == tuple(cols[-1].shape[1:]):
            cols.append(gt)
        return save_grid(cols, path, job.value_range, max_rows=rows)
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning(f"could not draw the held-out sample grid: {exc}")
        return None
    finally:
        student.train(was)


# --------------------------------------------------------------------------------------------- tables

from ..report.tables import describe_bytes, pass_log_table  # noqa: E402,F401  (re-exported)


def _db(v: Any) -> str:
    return f"{v:.2f} dB" if isinstance(v, (int, float)) else "-"


def summary_table(summary: Mapping[str, Any]) -> str:
    """The before/after table of a summary: MACs, params, size; PSNR of the baseline, teacher and student.

    A student whose PSNR to the ground truth is below the baseline's gets a line saying so under the table.
    """
    rows = [("MACs", "", f"{summary['macs_before'] / 1e9:.3f} G", f"{summary['macs_after'] / 1e9:.3f} G",
             f"{summary['macs_before'] / max(summary['macs_after'], 1):.1f}x"),
            ("params", "", f"{summary['params_before']:,}", f"{summary['params_after']:,}",
             f"{summary['params_before'] / max(summary['params_after'], 1):.1f}x"),
            ("size", "", describe_bytes(summary["size_bytes_before"]), describe_bytes(summary["size_bytes_after"]),
             f"{summary['size_bytes_before'] / max(summary['size_bytes_after'], 1):.1f}x")]
    rows.append(("PSNR to teacher", "", "-", _db(summary.get("psnr_to_teacher")), ""))
    py, bp, tp = summary.get("psnr_to_target"), summary.get("baseline_psnr"), summary.get("teacher_psnr")
    if py is not None or tp is not None:
        rows.append(("PSNR to target", _db(bp), _db(tp), _db(py), ""))
    base = summary.get("baseline")
    head = ("", f"baseline ({base})" if base else "baseline", "teacher", "student", "ratio")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    if py is not None and bp is not None and py < bp:
        lines.append(f"!! STUDENT BELOW BASELINE: {py:.2f} dB < {base} {bp:.2f} dB -- worse than no network")
    return "\n".join(lines)
