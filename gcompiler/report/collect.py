"""Measurements a run report needs beyond ``summary.json``: made once at the end of a run, while the teacher,
the student and the data are at hand, and stored in ``report.json["report_data"]``.

:func:`collect` returns ``{"quality", "latency", "widths", "grid"}``:

* ``quality``: rows ``{"model", "psnr_to_teacher", "ssim_to_teacher", "psnr_to_target", "ssim_to_target"}``
  for the baseline, the teacher and the student on the held-out images of the run's evaluation (built-in
  tasks: the task's own protocol, :func:`gcompiler.data.tasks.evaluate`; folders: the eval split, RGB);
* ``latency``: teacher and student at the reference input, each on the CPU back end ``gcompiler.deploy``
  chose for it, timed side by side (with their eager runs) at the run's thread count; a quantized student
  also through ``deploy(precision="int8")`` and as a float network (fake quantizers stripped); eager on the
  GPU when one is present;
* ``widths``: ``[{"group", "before", "after"}]`` per prunable channel group of the teacher's graph;
* ``grid``: the path of a labelled PNG, input | baseline | teacher | student | |student - teacher| x 10
  (| ground truth).

Every part is measured independently; one that fails is recorded as ``{"error": "..."}`` (the report says
so) rather than failing the run.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: a :class:`gcompiler.methods.base.CompressJob` (not imported: the methods layer imports this package)
CompressJob = Any

log = logging.getLogger("gcompiler.compress")

__all__ = ["collect", "time_interleaved", "kept_widths", "quality_rows", "sample_columns"]


def collect(job: CompressJob, student: torch.fx.GraphModule, *, rounds: int = 5,
            evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """All measurements of the module docstring for ``student`` (a CPU, eval-mode GraphModule).

    ``evaluation``: the run's :meth:`CompressJob.evaluate` result, whose student numbers are reused (built-in
    tasks) instead of evaluating the student again."""
    out: dict[str, Any] = {}
    for key, fn in (("quality", lambda: quality_rows(job, student, evaluation)),
                    ("latency", lambda: latency(job, student, rounds=rounds)),
                    ("widths", lambda: kept_widths(job, student)),
                    ("grid", lambda: str(write_grid(job, student)))):
        try:
            out[key] = fn()
        except Exception as exc:  # a report part must never take the finished run down with it
            log.warning(f"report: could not measure {key}: {type(exc).__name__}: {exc}")
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# --------------------------------------------------------------------------------------------- quality

@torch.no_grad()
def quality_rows(job: CompressJob, student: nn.Module, evaluation: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Baseline, teacher and student rows (PSNR / SSIM to the teacher and to the ground truth)."""
    if job.builtin_task is not None:
        from ..data import tasks

        s = ((evaluation or {}).get("details") or {}).get("student")
        if not isinstance(s, dict) or "ssim" not in s:
            s = tasks.evaluate(job.builtin_task, student, reference=job.teacher)
        t = getattr(job, "_teacher_eval", None) or tasks.evaluate(job.builtin_task, job.teacher)
        return [{"model": f"baseline ({s['baseline']})", "psnr_to_teacher": None, "ssim_to_teacher": None,
                 "psnr_to_target": s["baseline_psnr"], "ssim_to_target": s["baseline_ssim"]},
                {"model": "teacher", "psnr_to_teacher": None, "ssim_to_teacher": None,
                 "psnr_to_target": t.get("psnr"), "ssim_to_target": t.get("ssim")},
                {"model": "student", "psnr_to_teacher": s.get("psnr_to_reference"),
                 "ssim_to_teacher": s.get("ssim_to_reference"), "psnr_to_target": s.get("psnr"),
                 "ssim_to_target": s.get("ssim")}]
    from ..metrics import psnr, ssim

    base, idx, _note = job.eval_dataset()
    ds = [base[i] for i in idx]
    n = len(ds)
    lo, hi = job.value_range
    acc: dict[str, list[float]] = {}

    def add(key: str, a: torch.Tensor, b: torch.Tensor) -> None:
        a01, b01 = (a - lo) / (hi - lo), (b - lo) / (hi - lo)
        acc.setdefault("psnr_" + key, []).append(float(psnr(a01.clamp(0, 1), b01.clamp(0, 1))))
        acc.setdefault("ssim_" + key, []).append(float(ssim(a01.clamp(0, 1), b01.clamp(0, 1))))

    for i in range(n):
        item = ds[i]
        x = item["input"][None]
        t = job.teacher(x).float().clamp(lo, hi)
        s = student(x).float().clamp(lo, hi)
        add("s_t", s, t)
        if x.shape == t.shape:
            add("b_t", x.float().clamp(lo, hi), t)
        tgt = item.get("target")
        if isinstance(tgt, torch.Tensor) and tuple(tgt.shape) == tuple(s.shape[1:]):
            add("s_y", s, tgt[None])
            add("t_y", t, tgt[None])
            if x.shape == t.shape:
                add("b_y", x.float().clamp(lo, hi), tgt[None])

    def mean(k: str) -> float | None:
        v = acc.get(k)
        return float(sum(v) / len(v)) if v else None

    rows = []
    if "psnr_b_t" in acc:
        rows.append({"model": "baseline (identity)", "psnr_to_teacher": mean("psnr_b_t"),
                     "ssim_to_teacher": mean("ssim_b_t"), "psnr_to_target": mean("psnr_b_y"),
                     "ssim_to_target": mean("ssim_b_y")})
    rows.append({"model": "teacher", "psnr_to_teacher": None, "ssim_to_teacher": None,
                 "psnr_to_target": mean("psnr_t_y"), "ssim_to_target": mean("ssim_t_y")})
    rows.append({"model": "student", "psnr_to_teacher": mean("psnr_s_t"), "ssim_to_teacher": mean("ssim_s_t"),
                 "psnr_to_target": mean("psnr_s_y"), "ssim_to_target": mean("ssim_s_y")})
    return rows


# --------------------------------------------------------------------------------------------- latency

def time_interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int = 5, device: str = "cpu"
                     ) -> dict[str, dict[str, float]]:
    """Run every function once (warm-up), then ``rounds`` rounds of one call each, interleaved (load changes on
    a shared machine hit all alike; :func:`gcompiler.deploy.measure.round_robin`); ``{name: {"median_ms",
    "min_ms"}}``."""
    from ..deploy.measure import round_robin, summarize

    with torch.no_grad():
        for fn in fns.values():
            fn()
    medians, runs = summarize(round_robin(fns, rounds=rounds, device=device))
    return {k: {"median_ms": round(medians[k], 3), "min_ms": round(min(v), 3)} for k, v in runs.items()}


@torch.no_grad()
def latency(job: CompressJob, student: torch.fx.GraphModule, *, rounds: int = 5) -> dict[str, Any]:
    """Latency of teacher and student at the reference input, each on the CPU back end ``gcompiler.deploy``
    chose for it (:func:`gcompiler.deploy.latency.compare`), timed side by side with their eager runs; a
    quantized student also through ``deploy(precision="int8")``. ``{"cpu": {"teacher", "student"}, "backends",
    "eager", "int8", "failed", "cuda"}``; ``cuda``: eager, when a GPU is present."""
    from ..deploy.latency import compare
    from ..quant import float_copy, is_quantized

    x = job.reference_input.cpu()
    fs = float_copy(student).eval()
    teacher = job.teacher.eval()
    models: dict[str, tuple[torch.nn.Module, str]] = {"teacher": (teacher, "fp32"), "student": (fs, "fp32")}
    if is_quantized(student):
        models["student int8"] = (student, "int8")
    res = compare(models, x, rounds=rounds)
    dep = res["deployed"]
    out: dict[str, Any] = {
        "input_shape": list(x.shape), "threads": res["threads"],
        "what": "through gcompiler.deploy: each network on the CPU back end deploy measured fastest for it "
                "(torch.compile not tried: it takes minutes to build); eager fp32 timed in the same interleaved "
                "rounds; the float student is the quantized one with its fake quantizers stripped",
        "backends": {k: v["backend"] for k, v in dep.items()}, "eager": res["eager"], "failed": res["failed"]}
    out["cpu"] = {k: {"median_ms": dep[k]["median_ms"], "min_ms": dep[k]["min_ms"]} if k in dep else res["eager"][k]
                  for k in ("teacher", "student")}
    if "student int8" in dep:
        out["int8"] = dep["student int8"]
    if torch.cuda.is_available():
        xc = x.cuda()
        tc, sc = copy.deepcopy(teacher).cuda(), copy.deepcopy(fs).cuda()
        out["cuda"] = time_interleaved({"teacher": lambda: tc(xc), "student": lambda: sc(xc)},
                                       rounds=max(rounds, 10), device="cuda")
    return out


# --------------------------------------------------------------------------------------------- widths

def kept_widths(job: CompressJob, student: torch.fx.GraphModule) -> list[dict[str, Any]]:
    """Units per prunable channel group of the teacher's graph and of the student's, matched by group name
    (else output channels per conv / linear layer matched by module path; :class:`ValueError` when neither
    corresponds)."""
    from .. import trace
    from ..analysis import channel_groups
    from ..fx import propagate_shapes

    tgm = trace(copy.deepcopy(job.teacher), job.reference_input)
    sgm = copy.deepcopy(student)
    propagate_shapes(sgm, job.reference_input)
    after = {g.name: g.channels for g in channel_groups(sgm)}
    prunable = [g for g in channel_groups(tgm) if g.prunable]
    rows = [{"group": g.name, "before": int(g.channels), "after": int(after[g.name])}
            for g in prunable if g.name in after]
    if prunable and len(rows) >= len(prunable) / 2:
        return rows
    # the student's graph was rebuilt (e.g. extracted from a supernet): match its layers by module path
    def convs(gm: torch.fx.GraphModule) -> dict[str, int]:
        out = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                m = gm.get_submodule(str(n.target))
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    out[str(n.target)] = int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        return out

    t_conv, s_conv = convs(tgm), convs(sgm)
    rows = [{"group": name, "before": w, "after": s_conv[name]} for name, w in t_conv.items() if name in s_conv]
    if len(rows) < max(1, len(t_conv) // 2):
        raise ValueError("the student's channel groups and layers do not correspond by name to the teacher's, "
                         "so kept widths cannot be shown per group")
    return rows


# --------------------------------------------------------------------------------------------- grid

@torch.no_grad()
def sample_columns(job: CompressJob, student: nn.Module, rows: int = 3) -> list[tuple[str, torch.Tensor]]:
    """The labelled columns of the report's image grid (held-out images)."""
    gt: torch.Tensor | None
    if job.builtin_sr:
        from ..data.sr import heldout_center_crops

        x, gt = heldout_center_crops(64)
        x, gt = x[:rows], gt[:rows]
    else:
        size = min(128, int(job.reference_input.shape[-1]))
        if job.builtin_task is not None:
            from ..data import open_dataset

            ds = open_dataset(job.settings.data, split="eval", value_range=job.value_range, seed=0, crop_size=size)
        else:
            from ..errors import DataError

            try:
                base, idx, _note = job.eval_dataset(size)
            except DataError:  # images smaller than the reference input: cut them at the training crop
                base, idx, _note = job.eval_dataset(min(size, int(job.settings.crop or size)))
            ds = [base[i] for i in idx[:rows]]
        items = [ds[i] for i in range(min(rows, len(ds)))]
        items = [it for it in items if it["input"].shape == items[0]["input"].shape]
        x = torch.stack([it["input"] for it in items])
        gt = (torch.stack([it["target"] for it in items])
              if all(isinstance(it.get("target"), torch.Tensor) for it in items) else None)
    lo, hi = job.value_range
    t = job.teacher(x).float().clamp(lo, hi)
    s = student(x).float().clamp(lo, hi)
    cols: list[tuple[str, torch.Tensor]] = [("input", x)]
    if job.builtin_sr or (x.shape[-1] != t.shape[-1] and t.shape[-1] % x.shape[-1] == 0):
        cols.append(("baseline (bicubic)", F.interpolate(x, size=t.shape[-2:], mode="bicubic",
                                                          align_corners=False).clamp(lo, hi)))
    elif x.shape == t.shape:
        cols.append(("baseline (identity)", x))
    cols += [("teacher", t), ("student", s), ("|student-teacher| x10", ((s - t).abs() * 10 + lo).clamp(lo, hi))]
    if gt is not None and tuple(gt.shape[1:]) == tuple(s.shape[1:]):
        cols.append(("ground truth", gt))
    return cols


def write_grid(job: CompressJob, student: nn.Module) -> Path:
    """The labelled grid of :func:`sample_columns` as ``RUN/samples/report_grid.png``."""
    from ..ioutil import atomic_write_bytes
    from .plots import labelled_grid

    was = student.training
    student.eval()
    try:
        png = labelled_grid(sample_columns(job, student), job.value_range)
    finally:
        student.train(was)
    path = job.run_dir / "samples" / "report_grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
    return path
