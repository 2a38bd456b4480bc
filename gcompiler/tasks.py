"""``gcompiler tasks [--json]``: the built-in tasks, their teachers and baselines, measured on the spot.

For every task of :mod:`gcompiler.data.tasks` it loads the shipped teacher and discriminator, counts
the teacher's parameters and MACs at the task's reference input (:func:`gcompiler.profile`), and runs
the teacher and the baseline (bicubic / identity) on the held-out photos with the task's protocol, so
the numbers shown are those of the installed files, not stored ones (the recorded numbers from training
are shown beside them as ``recorded_psnr``).

``--json`` prints a list of objects with ``name``, ``layout``, ``teacher_params``, ``teacher_macs``,
``reference_input``, ``teacher_size_bytes`` (fp32), ``stored_bytes`` (teacher + discriminator files),
``teacher_psnr``, ``teacher_ssim``, ``baseline``, ``baseline_psnr``, ``baseline_ssim``,
``gain_db``, ``recorded_psnr``, ``discriminator_params``, ``metric``; a task whose assets are missing
or broken gets ``"error"`` instead of the numbers (and the command exits 1).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from .cli import command
from .errors import GCompilerError


def describe_task(name: str) -> dict[str, Any]:
    """The row of ``gcompiler tasks --json`` for the built-in task ``name`` (measured now)."""
    from .data import tasks as T
    from .profiler import profile

    task = T.get_task(name)
    row: dict[str, Any] = {"name": task.spec, "description": task.description, "baseline": task.baseline,
                           "metric": task.metric}
    try:
        meta = T.teacher_meta(task)
        teacher = T.load_teacher(task)
        disc = T.load_discriminator(task)
    except GCompilerError as exc:
        row["error"] = str(exc)
        return row
    shape = task.reference_input()
    with torch.no_grad():
        prof = profile(teacher, torch.zeros(shape))
    res = T.evaluate(task, teacher)
    kw = ", ".join(f"{k}={v}" for k, v in meta["kwargs"].items())
    row.update(
        layout=f"{meta['arch']}({kw})", teacher_params=int(prof.params), teacher_macs=int(prof.macs),
        reference_input=list(shape), teacher_size_bytes=int(prof.size_bytes(32)),
        stored_bytes=int(task.teacher_weights.stat().st_size + task.discriminator_weights.stat().st_size),
        teacher_psnr=res["psnr"], teacher_ssim=res["ssim"], baseline_psnr=res["baseline_psnr"],
        baseline_ssim=res["baseline_ssim"], gain_db=res["gain_over_baseline_db"],
        recorded_psnr=_recorded(task, meta),
        discriminator_params=sum(p.numel() for p in disc.parameters()),
        teacher_train_wall_s=meta.get("train_wall_s"), teacher_steps=meta.get("steps"))
    return row


def _recorded(task: Any, meta: dict[str, Any]) -> float | None:
    try:
        return float(meta["heldout"]["mean"]["model"][task._psnr_key])
    except (KeyError, TypeError, ValueError):
        return None


def tasks_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['name']}: {r['description']}")
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        lines.append(f"  teacher   {r['layout']}: {r['teacher_params']:,} params, "
                     f"{r['teacher_macs'] / 1e9:.3f} G MACs at {tuple(r['reference_input'])}, "
                     f"{r['teacher_size_bytes'] / 2**20:.2f} MiB fp32; shipped with its discriminator "
                     f"({r['discriminator_params']:,} params) in {r['stored_bytes'] / 1e6:.2f} MB")
        # three decimals: the gain is a small difference, and a rounded +1.80 must not pass for a met +1.8
        lines.append(f"  held-out  teacher {r['teacher_psnr']:.3f} dB / SSIM {r['teacher_ssim']:.4f}   "
                     f"{r['baseline']} {r['baseline_psnr']:.3f} dB / SSIM {r['baseline_ssim']:.4f}   "
                     f"gain {r['gain_db']:+.3f} dB")
        if r["gain_db"] <= 0:
            lines.append(f"  !! TEACHER BELOW BASELINE: the shipped teacher is worse than {r['baseline']} on the "
                         f"held-out photos; retrain it (scripts/train_teacher.py / scripts/train_cartoon.py)")
        lines.append(f"  metric    {r['metric']}")
    return "\n".join(lines)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--task", action="append", default=None, metavar="NAME",
                   help="only this task (sr, cartoon, builtin:sr, ...); repeatable")


def cmd_tasks(args: argparse.Namespace) -> int:
    from .data import tasks as T

    names = args.task or list(T.TASKS)
    for n in names:
        T.get_task(n)  # unknown names fail before any work
    rows = [describe_task(n) for n in names]
    print(json.dumps(rows, indent=1) if args.json else tasks_table(rows))
    return 1 if any("error" in r for r in rows) else 0


cmd_tasks.configure = _configure  # type: ignore[attr-defined]
command("tasks", "list the built-in tasks: teacher, baseline and held-out PSNR/SSIM, measured now")(cmd_tasks)
