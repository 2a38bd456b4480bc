"""What every compression method gets: :class:`Settings` (the shared options) and :class:`CompressJob`.

The job owns the parts common to all methods:

* the **teacher** (built from its spec, frozen, eval mode) and its **reference input**: the input at
  which MACs are counted before and after (the zoo's reference input for zoo models and ``builtin:sr``,
  else one training crop), with the teacher's :class:`~gcompiler.profiler.Profile` at it;
* the **data**: the training dataset (random crops, flips) and loaders with an exact, resumable position;
  :meth:`CompressJob.check_teacher_on_data` runs the teacher on the first sample and fails with a message
  saying what was expected when its output cannot match the data (an SR teacher on a folder whose
  targets are input-sized, a teacher for other channel counts ...);
* **evaluation** (:meth:`CompressJob.evaluate`): PSNR of the student to the teacher and, where the data
  has ground truth, to the target, on held-out images;
* **export** (:meth:`CompressJob.export`): the student as ``model.safetensors`` + ``architecture.json``
  directly in the run directory (so ``gcompiler.load(run_dir)`` loads it), ``summary.json`` with the
  keys of :data:`SUMMARY_KEYS`, and ``report.json`` with everything else a method wants to record;
* **wall time across resumes** (:meth:`CompressJob.wall_s`): the time of earlier sessions of the same
  run directory is kept in ``run_state.json``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError, DataError
from ..ioutil import atomic_write_json, fsync_dir

log = logging.getLogger("gcompiler.compress")

#: The keys of ``summary.json``, in order.
SUMMARY_KEYS = ("method", "input_shape", "macs_before", "macs_after", "params_before", "params_after",
                "size_bytes_before", "size_bytes_after", "psnr_to_teacher", "psnr_to_target", "teacher_psnr",
                "baseline", "baseline_psnr", "steps", "wall_s")
#: Keys of ``summary.json`` that :meth:`CompressJob.export` fills itself when a method leaves them out:
#: the teacher's PSNR to the ground truth and the task's baseline (name and PSNR) on the same held-out images.
REFERENCE_KEYS = ("teacher_psnr", "baseline", "baseline_psnr")


from .settings import Settings  # noqa: E402  (re-exported: the shared options live in settings.py)


class CompressJob:
    """Teacher, data, run directory and shared settings of one ``gcompiler compress`` run.

    Build it with :meth:`create`; methods use its attributes and helpers (module docstring).

    Attributes:
        settings: the resolved :class:`Settings`.
        run_dir: the run directory (created).
        teacher: the frozen teacher (eval mode, on the CPU until a trainer moves it).
        teacher_info: ``{"spec", "arch", "kwargs"}`` describing it.
        dataset: the training dataset; ``value_range`` its value range.
        reference_input: ``(1, C, H, W)`` tensor the MACs are counted at (and the student is traced at).
        teacher_profile: the teacher's profile at ``reference_input``.
        target_macs: the resolved ``--target-macs`` (an absolute count) or ``None``.
        builtin_sr: whether the data is ``builtin:sr`` (held-out images with ground truth).
        train_output_shape: ``(C, H, W)`` of the teacher's output on one training crop.
    """

    def __init__(self, settings: Settings, run_dir: Path, teacher: nn.Module, teacher_info: dict[str, Any],
                 dataset: Any, reference_input: torch.Tensor) -> None:
        from ..profiler import profile

        from ..train.distributed import dist_info

        self.settings = settings
        self.run_dir = run_dir
        self.teacher = teacher
        #: where this process sits in a ``torchrun`` job (rank 0 of 1 without one); see :mod:`gcompiler.methods.dist`
        self.dist = dist_info()
        #: whether this process writes the run directory, evaluates and runs the once-only work (rank 0)
        self.is_main = self.dist.is_main
        self.teacher_info = teacher_info
        self.dataset = dataset
        self.value_range: tuple[float, float] = tuple(getattr(dataset, "value_range", (-1.0, 1.0)))  # type: ignore
        self.reference_input = reference_input
        from ..data.tasks import task_names

        #: the built-in task of the data (``"builtin:sr"``, ``"builtin:cartoon"``) or ``None`` (a folder)
        self.builtin_task: str | None = settings.data.strip() if settings.data.strip() in task_names() else None
        self.builtin_sr = self.builtin_task == "builtin:sr"
        self._reference_scores: dict[str, Any] | None = None
        self.train_output_shape: tuple[int, ...] = ()
        self.teacher_profile = profile(teacher, reference_input)
        from ..spec import parse_target_macs

        self.target_macs = parse_target_macs(settings.target_macs, self.teacher_profile.macs)
        self._session_start = time.perf_counter()
        state = self._read_state()
        self._wall_before = float(state.get("wall_s", 0.0)) if settings.resume else 0.0
        #: rows of every :meth:`rewrite` of this run (earlier sessions included with ``--resume``)
        self.pass_log: list[dict[str, Any]] = list(state.get("pass_log", [])) if settings.resume else []

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: Settings, teacher: nn.Module | None = None) -> "CompressJob":
        """Build the teacher and the dataset, check them against each other and fix the reference input.

        ``teacher``: an ``nn.Module`` to use instead of building ``settings.teacher`` from its spec (the job
        works on a deep copy; ``settings.teacher`` then only names it in the run's files).
        """
        from ..data import open_dataset
        from ..spec import build_teacher, parse_teacher

        settings.validate()
        run_dir = Path(settings.out)
        info: dict[str, Any] = {"spec": settings.teacher, "arch": None, "kwargs": dict(settings.teacher_kw)}
        if teacher is not None:
            import copy

            teacher = copy.deepcopy(teacher).cpu()
            info["kwargs"] = {}
        else:
            from ..spec import warn_if_no_weights

            tspec = parse_teacher(settings.teacher)
            teacher = build_teacher(tspec, **settings.teacher_kw)
            warn_if_no_weights(tspec)
            if tspec.kind == "builtin":
                from ..data.tasks import teacher_meta

                meta = teacher_meta(tspec.name)
                info.update(arch=meta.get("arch"), kwargs=dict(meta.get("kwargs", {})))
            elif tspec.kind == "zoo":
                info["arch"] = tspec.name
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()

        crop = settings.crop
        if crop is None:
            crop = 48 if settings.data.strip() == "builtin:sr" else 128
        kwargs: dict[str, Any] = {}
        if settings.data.strip() == "builtin:sr":
            kwargs["patches_per_epoch"] = max(1000, settings.batch_size * 50)
        dataset = open_dataset(settings.data, split="train", crop_size=crop, seed=settings.seed, **kwargs)
        held_out: list[int] = []
        if settings.data.strip() not in _builtin_tasks() and not settings.eval_data:
            held_out = heldout_indices(len(dataset), settings.eval_images)
            if held_out:
                dataset = _Without(dataset, held_out)
        report = getattr(dataset, "report", None)
        if report is not None and getattr(report, "skipped", None):
            names = ", ".join(p for p, _ in report.skipped[:5])
            more = f" and {len(report.skipped) - 5} more" if len(report.skipped) > 5 else ""
            log.warning(f"--data {settings.data}: skipped {len(report.skipped)} unreadable image(s): {names}{more}")
        if len(dataset) < settings.batch_size:
            raise DataError(f"--data {settings.data} gives {len(dataset)} training samples, fewer than --batch-size "
                            f"{settings.batch_size}: lower the batch size or add images")
        sample = _first_sample(dataset)
        reference = _reference_input(info, sample["input"], settings.macs_size)
        job = cls(settings, run_dir, teacher, info, dataset, reference)
        job.held_out = held_out
        job.train_output_shape = tuple(job.check_teacher_on_data(sample).shape[1:])
        return job

    def check_teacher_on_data(self, sample: Mapping[str, Any]) -> torch.Tensor:
        """Run the teacher on one training sample; :class:`DataError` when its output cannot fit the data.

        The output must be an NCHW image; where the data carries ``"target"`` (paired ground truth) or
        ``"reference"`` (unpaired domain-B images, the size a discriminator compares), the output must have
        their channel count and size. Returns the teacher's output.
        """
        x = sample["input"][None]
        spec = self.settings.teacher
        try:
            with torch.no_grad():
                out = self.teacher(x)
        except Exception as exc:  # a user model can raise anything on an input it does not expect
            raise DataError(f"the teacher {spec!r} fails on the data's input of shape {tuple(x.shape)} "
                            f"(--data {self.settings.data}): {type(exc).__name__}: {exc}. The teacher must take "
                            f"the data's images ({x.shape[1]} channels, values in {list(self.value_range)})") from exc
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise DataError(f"the teacher {spec!r} must return one NCHW image tensor, got "
                            f"{type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}")
        if not torch.isfinite(out).all():
            raise DataError(f"the teacher {spec!r} outputs NaN/inf on the first training sample of "
                            f"--data {self.settings.data}: check its weights and the data's value range")
        for key, what in (("target", "ground-truth targets"), ("reference", "reference (domain B) images")):
            ref = sample.get(key)
            if isinstance(ref, torch.Tensor) and tuple(ref.shape) != tuple(out.shape[1:]):
                ratio = ""
                if ref.shape[-1] and out.shape[-1] % ref.shape[-1] == 0 and out.shape[-1] != ref.shape[-1]:
                    ratio = (f" (the teacher enlarges its input {out.shape[-1] // x.shape[-1]}x: a super-resolution "
                             f"teacher needs paired low/high-resolution data such as builtin:sr)")
                raise DataError(f"the teacher {spec!r} maps an input of shape {tuple(x.shape[1:])} to "
                                f"{tuple(out.shape[1:])}, but the {what} of --data {self.settings.data} are "
                                f"{tuple(ref.shape)}: expected the teacher's output to have the shape of the "
                                f"data's {key} images{ratio}")
        return out

    # -- models -------------------------------------------------------------------------------------
    def discriminator_spec(self) -> str | None:
        """``--discriminator``, else ``builtin:NAME:discriminator`` for a ``builtin:NAME`` teacher, else ``None``."""
        if self.settings.discriminator:
            return self.settings.discriminator
        spec = self.settings.teacher.strip()
        if spec.startswith("builtin:") and spec.count(":") == 1:
            return f"{spec}:discriminator"
        return None

    def build_discriminator(self) -> nn.Module | None:
        """The pretrained discriminator of :meth:`discriminator_spec` (same spec forms as ``--teacher``; float32,
        eval mode, trainable), or ``None`` when there is none to load (a method then builds a fresh one)."""
        from ..spec import build_teacher, parse_teacher

        spec = self.discriminator_spec()
        if spec is None:
            return None
        try:
            disc = build_teacher(parse_teacher(spec))
        except ConfigError as exc:
            raise ConfigError(f"--discriminator {spec!r}: {exc}") from exc
        for p in disc.parameters():
            p.requires_grad_(True)
        return disc

    # -- training -----------------------------------------------------------------------------------
    def train_config(self, out_dir: str | os.PathLike, max_steps: int, **overrides: Any) -> Any:
        """The :class:`~gcompiler.train.TrainConfig` of one training stage of this run: the shared settings
        (checkpoint / log / sample intervals, seed, device, ``--resume``, progress bar, the data's value range),
        ``out_dir`` and ``max_steps``; ``overrides`` set other fields (``amp``, ``keep_last`` ...)."""
        from ..train import TrainConfig

        s = self.settings
        kw: dict[str, Any] = dict(out_dir=Path(out_dir), max_steps=max_steps, save_every=s.save_every,
                                  log_every=s.log_every, sample_every=s.sample_every, seed=s.seed, device=s.device,
                                  resume=s.resume, progress=not s.quiet, value_range=self.value_range, amp="off")
        kw.update(overrides)
        return TrainConfig(**kw)

    def state_saver(self, stage: str) -> Any:
        """A trainer callback recording ``{"stage", "step"}`` and the wall time in ``run_state.json`` at every
        checkpoint interval and at the last step of a training stage."""
        every = max(self.settings.save_every, 1)

        def cb(trainer: Any, ctx: Any) -> None:
            if trainer.step % every == 0 or trainer.step >= trainer.config.max_steps:
                self.save_state(stage=stage, step=trainer.step)

        return cb

    def train_stage(self, recipe: Any, student: nn.Module, *, stage: str, steps: int,
                    out_dir: str | os.PathLike | None = None, data: Any = None, seed_offset: int = 0,
                    teacher: nn.Module | None = None, **config: Any) -> tuple[Any, Any]:
        """Run one training stage of this run and return ``(trainer, result)``.

        A :class:`~gcompiler.train.Trainer` of ``recipe`` over ``student`` with the job's teacher (or
        ``teacher``), data ``data`` (default: :meth:`make_loader` with ``seed_offset``), the shared settings
        (:meth:`train_config` in ``out_dir``, default ``run_dir/stage``, with ``config`` overrides) and the
        :meth:`state_saver` of ``stage``. After ``fit`` the student (``trainer.module("student")``) and the
        teacher are back on the CPU; other trained modules (``"disc"`` ...) are the caller's to move.
        """
        from ..train import Trainer

        t = teacher if teacher is not None else self.teacher
        trainer = Trainer(recipe, student=student, teacher=t,
                          data=data if data is not None else self.make_loader(seed_offset=seed_offset),
                          config=self.train_config(out_dir if out_dir is not None else self.run_dir / stage, steps,
                                                   **config),
                          callbacks=[self.state_saver(stage)])
        result = trainer.fit()
        trainer.module("student").cpu()
        t.cpu()
        self.teacher.cpu()
        return trainer, result

    def device(self) -> str:
        """The device of evaluation and export: ``--device``, with ``auto`` resolved."""
        d = self.settings.device
        return d if d != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    # -- the end of a run ---------------------------------------------------------------------------
    def finish(self, student: fx.GraphModule, *, steps: int, report: dict[str, Any] | None = None,
               method: str | None = None, bits: int | None = None, size_bytes_after: int | None = None,
               note: str | None = None) -> dict[str, Any]:
        """Measure, judge and export the final ``student``; returns ``{"summary", "report", "student"}``.

        Under ``torchrun`` every rank first takes rank 0's student (:func:`~gcompiler.methods.dist.sync_module`),
        rank 0 alone measures, evaluates and writes (:meth:`_finish_here`), and every rank returns rank 0's
        summary and report (as JSON) with the same student.
        """
        from .dist import on_rank0, sync_module

        kw = dict(steps=steps, report=report, method=method, bits=bits, size_bytes_after=size_bytes_after, note=note)
        if not self.dist.enabled:
            return self._finish_here(student, **kw)
        student = sync_module(student.cpu().eval(), what="the final student")
        here: dict[str, Any] = {}

        def main() -> dict[str, Any]:
            here.update(self._finish_here(student, **kw))
            return {"summary": here["summary"], "report": here["report"]}

        shared = on_rank0(main, what="the final evaluation and export")
        if here:
            return here
        for p in student.parameters():
            p.requires_grad_(False)
        return {**shared, "student": student}

    def _finish_here(self, student: fx.GraphModule, *, steps: int, report: dict[str, Any] | None = None,
                     method: str | None = None, bits: int | None = None, size_bytes_after: int | None = None,
                     note: str | None = None) -> dict[str, Any]:
        """:meth:`finish` in this process (all of it in a single-process run; rank 0's part under torchrun).

        Profiles the student at :attr:`reference_input` (MACs, params; size at ``bits`` per weight, or each
        layer's own weight bits when ``None``, or ``size_bytes_after`` when given, e.g. a sparse encoding),
        evaluates it beside the teacher and the baseline (:meth:`evaluate`), draws the held-out sample grid,
        builds the :data:`SUMMARY_KEYS` dict (``steps``: training steps of the whole run), writes everything
        with :meth:`export` and marks the run done in ``run_state.json``. ``note`` goes into the report.
        """
        from ..fx import propagate_shapes
        from ..profiler import profile

        report = dict(report or {})
        student = student.cpu().eval()
        for p in student.parameters():
            p.requires_grad_(False)
        propagate_shapes(student, self.reference_input)
        prof = profile(student, self.reference_input)
        device = self.device()
        ev = self.evaluate(student.to(device), device=device)
        grid = self.save_samples(student, self.run_dir / "samples" / "heldout.png", device=device)
        student = student.cpu()
        self.teacher.cpu()
        tp = self.teacher_profile
        size_after = size_bytes_after if size_bytes_after is not None else prof.size_bytes(bits)
        summary = {
            "method": method or self.settings.method,
            "input_shape": [int(v) for v in self.reference_input.shape],
            "macs_before": int(tp.macs), "macs_after": int(prof.macs),
            "params_before": int(tp.params), "params_after": int(prof.params),
            "size_bytes_before": int(round(tp.size_bytes(32))), "size_bytes_after": int(round(size_after)),
            "psnr_to_teacher": ev["psnr_to_teacher"], "psnr_to_target": ev["psnr_to_target"],
            "teacher_psnr": ev.get("teacher_psnr"), "baseline": ev.get("baseline"),
            "baseline_psnr": ev.get("baseline_psnr"),
            "steps": int(steps), "wall_s": round(self.wall_s(), 2),
        }
        report.update(evaluation=ev, size=f"{describe_bytes(summary['size_bytes_before'])} -> "
                                         f"{describe_bytes(summary['size_bytes_after'])}")
        if grid is not None:
            report["samples"] = str(grid)
        if note:
            report["note"] = note
        from ..report import below_baseline, collect

        # measured parts for report.html (never raises; rank 0 writes the run directory)
        report["report_data"] = collect(self, student, evaluation=ev) if self.is_main else {}
        phases = {k[:-len("_steps")]: v for k, v in report.items()
                  if k.endswith("_steps") and isinstance(v, int) and not isinstance(v, bool)}
        report.setdefault("steps_per_phase", phases or {"total": int(steps)})
        loud = below_baseline({**summary, **{k: v for k, v in self.reference_scores().items()
                                             if summary.get(k) is None}})
        if loud:
            report["below_baseline"] = loud
        self.export(student, summary, report)
        self.save_state(stage="done", step=summary["steps"])
        self.write_report()
        return {"summary": summary, "report": {**report, "pass_log": self.pass_log_rows()}, "student": student}

    # -- graph rewrites ---------------------------------------------------------------------------
    def rewrite(self, gm: fx.GraphModule, pipeline: str | Sequence[Any], *, stage: str,
                verify: str | None = None, check: bool = True) -> fx.GraphModule:
        """Run the pass ``pipeline`` on ``gm`` **in place** through :func:`gcompiler.run_pipeline` and log it.

        Every graph rewrite of a method goes through here: the pass manager verifies the graph after every
        pass (lint, shapes; ``GCOMPILER_VERIFY=numeric`` compares outputs within each pass's contract) and
        checks the whole pipeline against its combined contract at the end. One row per pass is appended to
        :attr:`pass_log` (and so to ``report.json["pass_log"]`` at :meth:`export`, and to ``run_state.json``
        so that a resumed run keeps the rows of its earlier sessions): ``{"stage", "pass", "options",
        "seconds", "nodes", "params", "macs", "error", "contract"}`` (before/after pairs for nodes, params and
        MACs). Rows of an earlier session with the same ``stage`` are replaced. ``pipeline`` is text
        (``"insert-masks{round_to=8},eliminate-dead-channels"``) or a list of items as
        :func:`~gcompiler.passes.manager.run_pipeline` takes them (``(name, {option: python value})`` pairs
        for options that are not text, such as calibration batches). Returns ``gm``.
        """
        from ..passes.manager import run_pipeline

        from .dist import agree, sync_module

        gm.meta.pop("pass_log", None)
        _, plog = agree(lambda: run_pipeline(gm, pipeline, verify=verify, check=check, seed=self.settings.seed),
                        what=f"the graph rewrite of stage {stage!r}")
        sync_module(gm, what=f"the graph rewrite of stage {stage!r}")  # every rank continues with rank 0's graph
        self.pass_log = [r for r in self.pass_log if r.get("stage") != stage or r.get("session") == id(self)]
        for r in plog.records:
            self.pass_log.append({"stage": stage, "pass": r.name,
                                  "options": {k: _jsonable(v) for k, v in r.options.items()},
                                  "seconds": round(r.seconds, 4), "nodes": list(r.nodes), "params": list(r.params),
                                  "macs": list(r.macs), "error": r.error, "contract": r.contract,
                                  **({"notes": r.notes} if r.notes else {}), "session": id(self)})
        gm.meta.pop("pass_log", None)
        if self.run_dir.exists():
            self.save_state()
        return gm

    def pass_log_rows(self) -> list[dict[str, Any]]:
        """:attr:`pass_log` as written to ``report.json`` (without the session marker)."""
        return [{k: v for k, v in r.items() if k != "session"} for r in self.pass_log]

    # -- data -------------------------------------------------------------------------------------
    #: indices of the folder images held out of training for evaluation (no ``--eval-data``)
    held_out: list[int] = []

    def eval_dataset(self, crop_size: int | None = None) -> tuple[Any, list[int], str]:
        """The evaluation images of a folder run: ``(dataset, indices, note)``. ``--eval-data`` when given
        (all its images, up to ``--eval-images``), else the images of ``--data`` held out of training
        (:func:`heldout_indices`); ``note`` says which, for the summary and the report."""
        from ..data import open_dataset

        s = self.settings
        spec = s.eval_data or s.data
        ds = open_dataset(spec, split="eval", value_range=self.value_range, seed=0, crop_size=crop_size)
        if s.eval_data:
            idx = list(range(min(len(ds), s.eval_images) if s.eval_images else len(ds)))
            return ds, idx, f"evaluated on --eval-data {s.eval_data} ({len(idx)} images)"
        if self.held_out:
            return ds, list(self.held_out), (f"no --eval-data: {len(self.held_out)} of the {len(ds)} images of "
                                             f"--data {s.data} (every k-th in file order) were held out of "
                                             f"training and evaluated on")
        idx = list(range(min(len(ds), s.eval_images) if s.eval_images else len(ds)))
        return ds, idx, (f"no --eval-data and too few images to hold any out: evaluated on {len(idx)} TRAINING "
                         f"images of --data {s.data} (pass --eval-data FOLDER)")

    def make_loader(self, *, seed_offset: int = 0, batch_size: int | None = None, shard: bool = True,
                    dataset=None):
        """A resumable loader over the training data (drop_last, seeded by ``--seed`` + ``seed_offset``).

        ``batch_size`` (default ``--batch-size``) is the *global* batch: under ``torchrun`` with ``shard``
        each rank loads ``batch_size / world_size`` samples of it (rank ``r`` takes positions ``r, r + N, ...``
        of the shared order, so the ranks together see exactly the batches of a one-process run). A loader
        for work done on one rank (calibration batches, a search split) passes ``shard=False``: every rank
        then loads the same full batches. ``dataset`` (default: the job's training data) loads another split
        with the same settings."""
        from ..data import make_loader

        bs = batch_size or self.settings.batch_size
        world = self.dist.world_size if shard else 1
        if bs % world:
            from ..errors import DistributedError

            raise DistributedError(f"the global batch of {bs} samples cannot be split evenly across {world} "
                                   f"processes: choose a --batch-size divisible by {world}")
        return make_loader(self.dataset if dataset is None else dataset, batch_size=bs // world,
                           seed=self.settings.seed + seed_offset, num_workers=self.settings.data_workers(),
                           rank=self.dist.rank if shard else 0, world_size=world)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, student: nn.Module, device: str | torch.device = "cpu") -> dict[str, Any]:
        """PSNR of ``student`` to the teacher and to the ground truth on held-out images, with the teacher's
        and the baseline's numbers beside it (:func:`gcompiler.methods.evaluation.evaluate_student`)."""
        from .evaluation import evaluate_student

        return evaluate_student(self, student, device)

    def reference_scores(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """``{"teacher_psnr", "baseline", "baseline_psnr"}`` on the held-out images (measured once per job;
        :func:`gcompiler.methods.evaluation.reference_scores`)."""
        from .evaluation import reference_scores

        return reference_scores(self, device)

    def save_samples(self, student: nn.Module, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                     rows: int = 4) -> Path | None:
        """A PNG grid of held-out samples, input | teacher | student (| ground truth)
        (:func:`gcompiler.methods.evaluation.save_samples`)."""
        from .evaluation import save_samples

        return save_samples(self, student, path, device=device, rows=rows)

    # -- export -----------------------------------------------------------------------------------
    def export(self, student: fx.GraphModule, summary: Mapping[str, Any], report: Mapping[str, Any] | None = None
               ) -> Path:
        """Write the student (``model.safetensors`` + ``architecture.json``), ``summary.json`` and ``report.json``.

        The student goes directly into the run directory, so ``gcompiler.load(run_dir)`` returns it.
        ``summary`` must hold exactly the keys of :data:`SUMMARY_KEYS`.
        """
        from .. import serialize

        summary = dict(summary)
        if not self.is_main:  # rank 0 writes the run directory
            return self.run_dir
        if any(k not in summary for k in REFERENCE_KEYS):
            ref = self.reference_scores()
            for k in REFERENCE_KEYS:
                summary.setdefault(k, ref[k])
        missing = [k for k in SUMMARY_KEYS if k not in summary]
        extra = [k for k in summary if k not in SUMMARY_KEYS]
        if missing or extra:
            raise ValueError(f"summary keys: missing {missing}, unexpected {extra}")
        staged = self.run_dir / ".student-export"  # serialize.save writes it atomically; each file then moves
        shutil.rmtree(staged, ignore_errors=True)   # into the run directory with one atomic rename
        serialize.save(student, staged)
        # no mismatched pair even mid-way: a kill between the renames leaves weights without an architecture
        (self.run_dir / serialize.ARCH_FILE).unlink(missing_ok=True)  # (load: "missing"; --resume rewrites both)
        for name in (serialize.WEIGHTS_FILE, serialize.ARCH_FILE):
            os.replace(staged / name, self.run_dir / name)
        fsync_dir(self.run_dir)
        shutil.rmtree(staged, ignore_errors=True)
        atomic_write_json(self.run_dir / "summary.json", {k: summary[k] for k in SUMMARY_KEYS})
        if report is not None:
            report = dict(report)
            report.setdefault("pass_log", self.pass_log_rows())
            atomic_write_json(self.run_dir / "report.json", report)
        return self.run_dir

    def write_report(self) -> Path | None:
        """Render ``report.html`` / ``report.md`` of the exported run (:func:`gcompiler.report.render`); a
        failure is logged as a warning (the student and its numbers are already written)."""
        from ..report import render

        if not self.is_main:
            return None
        try:
            html_path, _ = render(self.run_dir)
        except Exception as exc:  # the report must not take a finished run down with it
            log.warning(f"report: could not write report.html / report.md: {type(exc).__name__}: {exc}")
            return None
        log.info(f"report: {html_path} (and report.md)")
        return html_path

    # -- run state --------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        p = self.run_dir / "run_state.json"
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return {}

    def wall_s(self) -> float:
        """Seconds this run has taken, earlier (resumed-from) sessions included."""
        return self._wall_before + (time.perf_counter() - self._session_start)

    def save_state(self, **extra: Any) -> None:
        """Record the accumulated wall time (and ``extra``) in ``run_state.json`` (rank 0; with the number of
        processes, which a resumed run must match)."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        state.update(extra)
        state["wall_s"] = self.wall_s()
        state["pass_log"] = self.pass_log_rows()
        state["world_size"] = self.dist.world_size
        atomic_write_json(self.run_dir / "run_state.json", state)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``run_dir/name`` atomically (rank 0 only; the path on every rank)."""
        p = self.run_dir / name
        if not self.is_main:
            return p
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, obj)
        return p


def _builtin_tasks() -> list[str]:
    from ..data.tasks import task_names

    return list(task_names())


def heldout_indices(n: int, eval_images: int) -> list[int]:
    """The fixed hold-out of a folder of ``n`` images without ``--eval-data``: every k-th image in file order
    (k = max(5, n // eval_images)), starting at k - 1, at most ``eval_images``; none when ``n < 8`` (too few
    to spare any: the evaluation then runs on training images and says so)."""
    if n < 8 or eval_images <= 0:
        return []
    k = max(5, n // max(eval_images, 1))
    return list(range(k - 1, n, k))[:eval_images]


class _Without(torch.utils.data.Dataset):
    """A dataset without some indices (the held-out images); other attributes are the wrapped dataset's."""

    def __init__(self, base: Any, drop: Sequence[int]) -> None:
        self.base = base
        dropped = set(drop)
        self.keep = [i for i in range(len(base)) if i not in dropped]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: Any) -> Any:
        from ..data.sampler import SampleKey

        if isinstance(i, SampleKey):  # the resumable sampler's keys carry the augmentation entropy
            return self.base[SampleKey(self.keep[int(i.index)], i.entropy)]
        return self.base[self.keep[i]]

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "keep"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _first_sample(dataset: Any) -> dict[str, Any]:
    from ..train import checkpoint as ckpt

    state = ckpt.capture_rng_state()
    try:
        item = dataset[0]
    finally:
        ckpt.restore_rng_state(state)
    if not isinstance(item, Mapping) or not isinstance(item.get("input"), torch.Tensor):
        raise DataError(f"the dataset's items must be dicts with an 'input' tensor, got {type(item).__name__}")
    return dict(item)


def _reference_input(info: Mapping[str, Any], first_input: torch.Tensor, size: int | None) -> torch.Tensor:
    """The input MACs are counted at: ``size`` x ``size`` if given, else the zoo's reference input for a zoo
    architecture (with the data's channel count), else one training crop. Values in the data's range."""
    c = first_input.shape[0]
    hw: tuple[int, int] | None = (size, size) if size is not None else None
    arch = info.get("arch")
    if hw is None and arch:
        from .. import models

        try:
            (x, *_rest) = models.spec(arch).example_inputs(batch=1, **dict(info.get("kwargs") or {}))
        except (ConfigError, TypeError):
            x = None
        if x is not None and x.dim() == 4 and x.shape[1] == c:
            hw = (int(x.shape[-2]), int(x.shape[-1]))
    if hw is None:
        return first_input[None].clone()
    g = torch.Generator().manual_seed(0)
    lo, hi = (0.0, 1.0) if float(first_input.min()) >= 0 else (-1.0, 1.0)
    return torch.rand((1, c, *hw), generator=g) * (hi - lo) + lo


def _jsonable(v: Any) -> Any:
    """A pass option as it is recorded in the pass log: JSON values as they are, others described."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (list, tuple)):
        if len(v) > 16 or any(isinstance(x, torch.Tensor) for x in v):
            return f"<{type(v).__name__} of {len(v)}>"
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        if len(v) > 16:
            return f"<{type(v).__name__} of {len(v)} entries>"
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        return f"<tensor {tuple(v.shape)}>"
    return f"<{type(v).__name__}>"


def merge_options(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later mappings override earlier ones (``None`` values in a later layer do not override)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if v is not None:
                out[k] = v
    return out


def reference_shape(x: torch.Tensor) -> list[int]:
    return [int(s) for s in x.shape]


def finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


from .evaluation import describe_bytes, pass_log_table, summary_table  # noqa: E402,F401  (re-exported)

__all__: Sequence[str] = ("Settings", "CompressJob", "SUMMARY_KEYS", "REFERENCE_KEYS", "merge_options",
                          "summary_table", "pass_log_table", "describe_bytes")
