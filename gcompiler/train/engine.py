"""The training engine: teacher -> student distillation driven by a pluggable :class:`Recipe`
(a training recipe; a compression *method* of :mod:`gcompiler.methods` runs one or more recipes).

A recipe (plain distillation, the GAN Slimming search, AGD, GAN Compression, ...) supplies three things:

* **parameter groups** (:class:`ParamGroup`): which parameters, which optimizer, which learning-rate
  schedule, and an optional hook run after each optimizer step (e.g. the proximal step of an L1
  penalty, which receives the group's *current* learning rate);
* **phases** (:class:`Phase`): one step of training runs each phase in order; a phase computes a
  dict of named loss terms from a :class:`StepContext`, the engine sums them, back-propagates and
  steps the optimizers of the phase's groups (a GAN has a ``"G"`` and a ``"D"`` phase);
* hooks: ``setup`` (create extra modules: feature mappings, discriminator, taps), ``after_step``,
  ``progress`` (live statistics such as sparsity and MACs), ``sample_columns`` (images for grids),
  ``state_dict``/``load_state_dict`` (recipe state that is not in modules).

The :class:`Trainer` owns everything else: device, mixed precision (``torch.autocast`` bf16/fp16 on
CUDA), DDP (under ``torchrun``), data streams with exact positions, atomic checkpoints with full
resume, NaN/inf detection, a tqdm bar, CSV/TensorBoard scalars and PNG sample grids.

Determinism and resume: the trainer keeps two RNG streams, one for training (the global RNGs the
model and recipe use) and one for data fetching (swapped in around every batch fetch), and saves
both with the data positions, optimizers and modules. On CPU a run resumed from a checkpoint
reaches bitwise the weights of the uninterrupted run (tested).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, NonFiniteError
from . import checkpoint as ckpt
from . import run_state
from .distributed import DistInfo, any_true, init_distributed
from .runlog import ScalarLogger, save_grid
from .schedules import Schedule, parse_schedule
from .streams import DataStreams, as_batch_dict, rng_seed

log = logging.getLogger("gcompiler.train")

from .recipe import (OptimizerFactory, ParamGroup, Phase, PostStep, Recipe, StepContext, TrainConfig,  # noqa: F401
                     TrainResult, adam, sgd)  # re-exported: recipes import them from here too


@dataclass
class _Entry:
    module: nn.Module
    trainable: bool
    save: bool
    ddp: bool
    runner: nn.Module
    wrapped: nn.Module | None = None


def _resolve_device(spec: str, info: DistInfo) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return dev


def _fmt_stat(name: str, v: float) -> str:
    lname = name.lower()
    if "macs" in lname or "flops" in lname:
        for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.3g}{unit}"
        return f"{v:.3g}"
    if "sparsity" in lname or "ratio" in lname:
        return f"{100 * v:.1f}%"
    return f"{v:.4g}"


# ------------------------------------------------------------------------------------------------
# the trainer

class Trainer:
    """Trains ``student`` against ``teacher`` with ``recipe``; see the module docstring.

    Args:
        recipe: the :class:`Recipe`.
        student: the model being trained (a compiled ``torch.fx.GraphModule`` or any ``nn.Module``);
            registered as module ``"student"``. Trained in place.
        teacher: the frozen reference model (module ``"teacher"``), or ``None`` when the batches carry
            ``"teacher"`` outputs (a cached-teacher dataset) and the recipe needs nothing else.
        data: a loader, or ``{source_name: loader}`` (the default source is ``"train"``). A loader is
            gcompiler's ResumableLoader (exact data position) or any iterable of batches; a batch is a
            dict (``"input"``, ``"target"``, ``"teacher"``, ...), a tensor (the input) or a tuple
            ``(input, target)``. Under DDP build it with ``rank``/``world_size`` from :func:`dist_info`.
        config: :class:`TrainConfig`.
        callbacks: ``fn(trainer, ctx)`` called after every step (after checkpointing).

    Construction seeds the global RNGs from ``config.seed`` (so modules the recipe creates are
    initialised reproducibly), joins the process group when launched by ``torchrun``, runs
    ``recipe.setup``, builds the optimizers and, with ``config.resume``, loads the newest checkpoint.
    """

    def __init__(self, recipe: Recipe, *, student: nn.Module, teacher: nn.Module | None = None,
                 data: Any | Mapping[str, Any], config: TrainConfig,
                 callbacks: Sequence[Callable[["Trainer", StepContext], None]] = ()) -> None:
        config.validate()
        self.config = config
        self.recipe = recipe
        self.callbacks = list(callbacks)
        self.info, self._owns_group = init_distributed(config.device)
        self.device = _resolve_device(config.device, self.info)
        self.is_main = self.info.is_main
        self.run_dir = Path(config.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._closed = False
        self._wall_offset = 0.0  # training seconds of earlier (interrupted) sessions of this run
        self._t_fit: float | None = None

        self._seed_everything(config.seed)
        self.amp_dtype, self.scaler = self._setup_amp()
        self.streams = DataStreams(data, seed=config.seed, info=self.info)
        self.value_range = self._value_range()

        self._entries: dict[str, _Entry] = {}
        self._setup_done = False
        self.register_module("student", student, trainable=True, save=True)
        if teacher is not None:
            self.register_module("teacher", teacher, trainable=False, save=False)
        self.recipe.setup(self)
        self._setup_done = True

        self.groups: dict[str, ParamGroup] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedules: dict[str, Schedule] = {}
        self._base_lrs: dict[str, list[float]] = {}
        self._build_optimizers(self.recipe.param_groups(self))
        self.phases = list(self.recipe.phases(self))
        self._check_phases()

        self.resumed_from: Path | None = None
        if config.resume:
            latest = ckpt.latest_checkpoint(self.ckpt_dir)
            if latest is not None:
                self.resume_from(latest)
                self.resumed_from = latest
        self._wrap_ddp()
        self.scalars = ScalarLogger(self.run_dir, enabled=self.is_main, tensorboard=config.tensorboard,
                                    resume_step=self.step if self.resumed_from is not None else None)

    def _value_range(self) -> tuple[float, float]:
        if self.config.value_range is not None:
            lo, hi = self.config.value_range
        else:
            ds = getattr(self.streams.first().loader, "dataset", None)
            lo, hi = getattr(ds, "value_range", (-1.0, 1.0))
        if not float(lo) < float(hi):
            raise ConfigError(f"value_range must be (low, high) with low < high, got {(lo, hi)}")
        return float(lo), float(hi)

    # -- RNG --------------------------------------------------------------------------------------
    def _seed_everything(self, seed: int) -> None:
        import random

        s = rng_seed(seed, 0, 0x7EA1)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    # -- AMP --------------------------------------------------------------------------------------
    def _setup_amp(self) -> tuple[torch.dtype | None, Any]:
        amp, cuda = self.config.amp, self.device.type == "cuda"
        if amp == "off" or (amp == "auto" and not cuda):
            return None, None
        if amp == "fp16" and not cuda:
            raise ConfigError("amp='fp16' needs a CUDA device (use 'bf16' or 'off' on CPU)")
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of this run (a no-op when AMP is off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- modules ----------------------------------------------------------------------------------
    def register_module(self, name: str, module: nn.Module, *, trainable: bool = True, save: bool | None = None,
                        ddp: bool | None = None) -> nn.Module:
        """Add a module to the run (moved to the device; returned).

        ``trainable=False`` freezes it (eval mode, no gradients: the teacher, a VGG). ``save`` (default:
        ``trainable``) puts its state in checkpoints. ``ddp`` (default: ``trainable``) wraps its runner in
        DistributedDataParallel under torchrun. Only during ``Recipe.setup`` (or before).
        """
        if self._setup_done:
            raise ConfigError(f"register_module({name!r}) must be called in Recipe.setup")
        if name in self._entries:
            raise ConfigError(f"a module named {name!r} is already registered")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"module {name!r} must be an nn.Module, got {type(module).__name__}")
        module = module.to(self.device)
        if not trainable:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        else:
            module.train()
        self._entries[name] = _Entry(module, trainable, trainable if save is None else save,
                                     trainable if ddp is None else ddp, module)
        return module

    def set_runner(self, name: str, runner: nn.Module) -> None:
        """Run module ``name`` through ``runner`` (e.g. a TappedModel sharing its parameters).

        ``net(name)`` then returns the runner (DDP-wrapped when distributed) while checkpoints still
        hold the registered module's state. Only during ``Recipe.setup``.
        """
        if self._setup_done:
            raise ConfigError(f"set_runner({name!r}) must be called in Recipe.setup")
        if name not in self._entries:
            raise ConfigError(f"set_runner: no module named {name!r} is registered")
        e = self._entries[name]
        e.runner = runner.to(self.device)
        e.runner.train(e.trainable)

    def module(self, name: str) -> nn.Module:
        """The registered module ``name`` itself (not its runner, never DDP-wrapped)."""
        if name not in self._entries:
            raise ConfigError(f"no module named {name!r} is registered (have: {sorted(self._entries)})")
        return self._entries[name].module

    def net(self, name: str) -> nn.Module:
        """What to call to run module ``name``: its runner, DDP-wrapped under torchrun."""
        if name not in self._entries:
            raise ConfigError(f"no module named {name!r} is registered (have: {sorted(self._entries)})")
        e = self._entries[name]
        return e.wrapped if e.wrapped is not None else e.runner

    def has_module(self, name: str) -> bool:
        return name in self._entries

    @property
    def student(self) -> nn.Module:
        return self._entries["student"].module

    def _wrap_ddp(self) -> None:
        if not self.info.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        for name, e in self._entries.items():
            if e.ddp and any(p.requires_grad for p in e.runner.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                e.wrapped = DDP(e.runner, device_ids=ids, find_unused_parameters=self.config.find_unused_parameters)

    def example_input(self) -> torch.Tensor:
        """One example input (batch 1) on the device: the student's traced input shape, else sample 0 of the data."""
        meta = getattr(self.student, "meta", None)
        if isinstance(meta, dict) and meta.get("input_shapes"):
            shape = tuple(meta["input_shapes"][0])
            g = torch.Generator().manual_seed(0)
            return (torch.rand((1, *shape[1:]), generator=g) * 2 - 1).to(self.device)
        src = self.streams.first()
        dataset = getattr(src.loader, "dataset", None)
        if dataset is None:
            raise ConfigError("cannot find an example input: the student has no traced input shape and the data "
                              "loader exposes no .dataset")
        state = ckpt.capture_rng_state()
        try:
            item = as_batch_dict(dataset[0])
        finally:
            ckpt.restore_rng_state(state)
        x = item["input"]
        return (x if x.dim() == 4 else x.unsqueeze(0)).to(self.device)

    # -- optimizers -------------------------------------------------------------------------------
    def _build_optimizers(self, groups: Sequence[ParamGroup]) -> None:
        owner: dict[int, str] = {}
        for g in groups:
            if g.name in self.groups:
                raise ConfigError(f"two parameter groups are named {g.name!r}")
            params = list(dict.fromkeys(g.params))
            if not params:
                raise ConfigError(f"parameter group {g.name!r} has no parameters")
            for p in params:
                if not isinstance(p, torch.Tensor) or not p.requires_grad:
                    raise ConfigError(f"parameter group {g.name!r} holds a tensor that does not require grad")
                if id(p) in owner:
                    raise ConfigError(f"a parameter of shape {tuple(p.shape)} is in groups {owner[id(p)]!r} and "
                                      f"{g.name!r}; each parameter must belong to one group")
                if p.device != self.device:
                    raise ConfigError(f"parameter group {g.name!r} holds a parameter on {p.device}, not on the run's "
                                      f"device {self.device}: register its module with trainer.register_module")
                owner[id(p)] = g.name
            opt = g.optimizer(params)
            self.groups[g.name] = ParamGroup(g.name, params, g.optimizer, g.schedule, g.post_step, g.clip_grad_norm)
            self.optimizers[g.name] = opt
            self.schedules[g.name] = parse_schedule(g.schedule)
            self._base_lrs[g.name] = [float(pg["lr"]) for pg in opt.param_groups]

    def _check_phases(self) -> None:
        if not self.phases:
            raise ConfigError(f"recipe {self.recipe.name!r} defines no phases")
        used = set()
        for ph in self.phases:
            if ph.every < 1:
                raise ConfigError(f"phase {ph.name!r}: every must be >= 1, got {ph.every}")
            if ph.data not in self.streams:
                raise ConfigError(f"phase {ph.name!r} reads data source {ph.data!r} but the trainer has "
                                  f"{sorted(self.streams.sources)}")
            for g in ph.groups:
                if g not in self.groups:
                    raise ConfigError(f"phase {ph.name!r} steps parameter group {g!r}, which does not exist "
                                      f"(groups: {sorted(self.groups)})")
                used.add(g)
        unused = set(self.groups) - used
        if unused:
            raise ConfigError(f"parameter group(s) {sorted(unused)} are stepped by no phase")

    def lr(self, group: str) -> float:
        """The learning rate (of the first torch param group) that ``group`` uses at the current step."""
        return self._base_lrs[group][0] * self.schedules[group](self.step, self.config.max_steps)

    def _apply_schedules(self) -> None:
        for name, opt in self.optimizers.items():
            f = self.schedules[name](self.step, self.config.max_steps)
            for pg, base in zip(opt.param_groups, self._base_lrs[name]):
                pg["lr"] = base * f

    # -- data -------------------------------------------------------------------------------------
    def _next_batch(self, source: str) -> dict[str, Any]:
        return self.streams.next(source, self.device)

    # -- one step ---------------------------------------------------------------------------------
    def _run_phase(self, ph: Phase, ctx: StepContext) -> None:
        ctx.phase, ctx.data = ph.name, ph.data
        for g in ph.groups:
            self.optimizers[g].zero_grad(set_to_none=True)
        with self.autocast():
            terms = dict(ph.loss(ctx))
        if not terms:
            raise ConfigError(f"phase {ph.name!r} of recipe {self.recipe.name!r} returned no loss terms")
        values: dict[str, float] = {}
        bad: list[str] = []
        for k, v in terms.items():
            if not isinstance(v, torch.Tensor) or v.numel() != 1:
                raise ConfigError(f"loss term {ph.name}/{k} must be a scalar tensor, got "
                                  f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
            f = float(v.detach())
            values[k] = f
            if not math.isfinite(f):
                bad.append(k)
        if any_true(bool(bad), self.device):
            self._raise_nonfinite(ph.name, bad, values)
        total = sum(terms.values())
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        for g in ph.groups:
            opt, grp = self.optimizers[g], self.groups[g]
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            if grp.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(grp.params, grp.clip_grad_norm)
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
            if grp.post_step is not None:
                with torch.no_grad():
                    grp.post_step(list(grp.params), float(opt.param_groups[0]["lr"]))
        if self.scaler is not None:
            self.scaler.update()
        for k, f in values.items():
            ctx.losses[f"{ph.name}/{k}"] = f
        ctx.losses[f"{ph.name}/total"] = float(sum(values.values()))

    def _raise_nonfinite(self, phase: str, bad: list[str], values: Mapping[str, float]) -> None:
        step = self.step + 1
        if bad:
            what = ", ".join(f"'{phase}/{k}' = {values[k]}" for k in bad)
            where = f"loss {what}"
            term = bad[0]
        else:
            where = f"a loss of phase '{phase}' on another process"
            term = None
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        keep = (f"the last good checkpoint is {last} (step {ckpt.list_checkpoints(self.ckpt_dir)[-1][0]}); "
                f"continue from it with resume (--resume), e.g. after lowering the learning rate"
                if last is not None else "no checkpoint had been saved yet")
        msg = f"non-finite {where} at step {step} (recipe {self.recipe.name!r}); training stopped and {keep}"
        if self.is_main:
            log.error(msg)
        raise NonFiniteError(msg, step=step, phase=phase, term=term, checkpoint=last)

    def train_step(self) -> StepContext:
        """Run one step (all due phases), advance ``self.step`` and call ``recipe.after_step``."""
        ctx = StepContext(self, self.step)
        self._apply_schedules()
        for ph in self.phases:
            if self.step % ph.every == 0:
                ctx.batch(ph.data)
                self._run_phase(ph, ctx)
        self.step += 1
        self.recipe.after_step(self, ctx)
        return ctx

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``config.max_steps``; save, log and draw samples on the way. Returns a summary."""
        from tqdm.auto import tqdm

        cfg = self.config
        handler = None
        t_start = time.perf_counter()
        self._t_fit = t_start
        ctx: StepContext | None = None
        acc: dict[str, list[float]] = {}
        last_losses: dict[str, float] = {}
        stats: dict[str, float] = {}
        try:
            if self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                handler = logging.FileHandler(self.run_dir / "train.log")
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
                log.addHandler(handler)
                if log.level == logging.NOTSET or log.level > logging.INFO:
                    log.setLevel(logging.INFO)
                self._log_start()
            bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                       desc=self.recipe.name, dynamic_ncols=True, leave=True)
            with bar:
                if self.step >= cfg.max_steps and self.is_main:
                    log.info(f"already at step {self.step} of {cfg.max_steps}: nothing to train")
                t_log = time.perf_counter()
                steps_since = 0
                while self.step < cfg.max_steps:
                    ctx = self.train_step()
                    steps_since += 1
                    for k, v in ctx.losses.items():
                        acc.setdefault(k, []).append(v)
                    last_losses = dict(ctx.losses)
                    final = self.step >= cfg.max_steps
                    if (cfg.save_every and self.step % cfg.save_every == 0) or final:
                        self.save_run_checkpoint(losses=last_losses)
                    if (cfg.log_every and self.step % cfg.log_every == 0) or final or self.step == 1:
                        now = time.perf_counter()
                        stats = {k: float(v) for k, v in self.recipe.progress(self).items()}
                        self._log_scalars(acc, stats, (now - t_log) / max(steps_since, 1), now - t_start)
                        bar.set_postfix_str(self._postfix(acc, stats), refresh=False)
                        acc, t_log, steps_since = {}, now, 0
                    if cfg.sample_every and self.is_main and (self.step % cfg.sample_every == 0 or final):
                        self._save_samples(ctx)
                    bar.update(1)
                    for cb in self.callbacks:
                        cb(self, ctx)
            if self.step >= cfg.max_steps and self.last_checkpoint is None:
                self.last_checkpoint = ckpt.latest_checkpoint(self.ckpt_dir)
            wall = time.perf_counter() - t_start
            if self.is_main:
                log.info(f"finished at step {self.step} in {wall:.1f}s; checkpoint {self.last_checkpoint}")
            return TrainResult(self.step, wall, self._wall_offset + wall, last_losses, self.last_checkpoint,
                               self.run_dir, stats)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
            self.close()

    def _log_start(self) -> None:
        cfg = self.config
        groups = "; ".join(f"{n}: {type(o).__name__} lr {self._base_lrs[n][0]:g} {self.schedules[n].describe()}"
                           f" ({sum(p.numel() for p in self.groups[n].params)} params)"
                           for n, o in self.optimizers.items())
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        log.info(f"recipe {self.recipe.name}: {self.recipe.describe()}")
        log.info(f"device {self.device}, amp {amp}, processes {self.info.world_size}, steps {cfg.max_steps}, "
                 f"seed {cfg.seed}; groups: {groups}")
        if self.resumed_from is not None:
            log.info(f"resumed from {self.resumed_from} at step {self.step}")
        if self.scalars.note:
            log.info(self.scalars.note)

    def _log_scalars(self, acc: Mapping[str, list[float]], stats: Mapping[str, float], step_s: float,
                     wall: float) -> None:
        if not self.is_main:
            return
        scalars = {f"loss/{k}": sum(v) / len(v) for k, v in acc.items()}
        scalars.update({f"lr/{n}": self.optimizers[n].param_groups[0]["lr"] for n in self.optimizers})
        scalars.update({f"stats/{k}": v for k, v in stats.items()})
        scalars["time/step_s"] = step_s
        self.scalars.log(self.step, scalars, wall)

    def _postfix(self, acc: Mapping[str, list[float]], stats: Mapping[str, float]) -> str:
        parts = [f"{k.split('/')[0]}={sum(v) / len(v):.4g}" for k, v in acc.items() if k.endswith("/total")]
        parts += [f"{k}={_fmt_stat(k, v)}" for k, v in stats.items()]
        return ", ".join(parts)

    def _save_samples(self, ctx: StepContext) -> None:
        cols = self.recipe.sample_columns(self, ctx)
        if not cols:
            return
        try:
            save_grid(cols, self.run_dir / "samples" / f"step_{self.step:08d}.png", self.value_range,
                      max_rows=self.config.sample_rows)
        except (OSError, ValueError) as e:
            log.warning(f"could not write the sample grid at step {self.step}: {e}")

    # -- checkpoints ------------------------------------------------------------------------------
    def _check_finite_params(self) -> None:
        for name, e in self._entries.items():
            if not e.save:
                continue
            for pname, t in e.module.state_dict().items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    last = ckpt.latest_checkpoint(self.ckpt_dir)
                    msg = (f"tensor {name}.{pname} holds NaN/inf after step {self.step}; not saving it. The last good "
                           f"checkpoint is {last}" if last else
                           f"tensor {name}.{pname} holds NaN/inf after step {self.step}; no checkpoint had been saved")
                    raise NonFiniteError(msg, step=self.step, phase=None, term=f"{name}.{pname}", checkpoint=last)

    def save_run_checkpoint(self, losses: Mapping[str, float] | None = None) -> Path | None:
        """Save the full run state at the current step (rank 0 writes; all ranks must call it); see
        :func:`gcompiler.train.run_state.save_trainer`."""
        self._check_finite_params()
        return run_state.save_trainer(self, losses)

    def resume_from(self, path: str | os.PathLike) -> None:
        """Restore modules, optimizers, scaler, step, RNG streams, data positions and recipe state; see
        :func:`gcompiler.train.run_state.restore_trainer`."""
        run_state.restore_trainer(self, path)

    def close(self) -> None:
        """Close the loggers (the process group, if any, stays up for later trainers; see
        :func:`gcompiler.train.distributed.shutdown`)."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "scalars"):
            self.scalars.close()
