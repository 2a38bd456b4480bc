"""Checkpoint I/O of the :class:`~gcompiler.train.Trainer`: what a run checkpoint holds and how a run resumes.

:func:`save_trainer` gathers the run state (modules, optimizers, AMP scaler, step, recipe state, and per
rank the RNG streams and data positions) and writes it with
:func:`~gcompiler.train.checkpoint.write_run_checkpoint` (atomic); :func:`restore_trainer` reads it back
into a trainer built with the same recipe, modules and data sources, so the resumed run reaches the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from ..errors import CheckpointError
from . import checkpoint as ckpt
from .distributed import all_gather_objects, barrier

if TYPE_CHECKING:
    from .engine import Trainer

log = logging.getLogger("gcompiler.train")


def save_trainer(trainer: "Trainer", losses: Mapping[str, float] | None = None) -> Path | None:
    """Save ``trainer``'s full run state at its current step (rank 0 writes; all ranks must call it).

    Tensors of every saved module go to ``model.safetensors`` (``"<module>.<key>"``); optimizers, scaler,
    step, recipe state and, per rank, the RNG and data-stream positions to ``state.pt``. Returns the
    checkpoint directory on rank 0 (``None`` on the others)."""
    ranks = all_gather_objects({"rng": ckpt.capture_rng_state(), **trainer.streams.state_dict()})
    path = None
    if trainer.is_main:
        tensors = {}
        for name, e in trainer._entries.items():
            if e.save:
                for k, v in e.module.state_dict().items():
                    tensors[f"{name}.{k}"] = v
        state = {
            "step": trainer.step,
            "max_steps": trainer.config.max_steps,
            "world_size": trainer.info.world_size,
            "seed": trainer.config.seed,
            "recipe": trainer.recipe.name,
            "recipe_state": trainer.recipe.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in trainer.optimizers.items()},
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
            "ranks": ranks,
            "losses": {k: float(v) for k, v in (losses or {}).items()},
            "wall_s": trainer._wall_offset + (time.perf_counter() - trainer._t_fit if trainer._t_fit else 0.0),
        }
        meta = {"recipe": trainer.recipe.name, "max_steps": trainer.config.max_steps,
                "losses": {k: float(v) for k, v in (losses or {}).items()},
                "modules": sorted(n for n, e in trainer._entries.items() if e.save)}
        path = ckpt.write_run_checkpoint(trainer.ckpt_dir, trainer.step, tensors, state, meta, keep_last=trainer.config.keep_last)
    barrier()
    trainer.last_checkpoint = path if path is not None else trainer.ckpt_dir / ckpt.checkpoint_name(trainer.step)
    return path


def restore_trainer(trainer: "Trainer", path: str | os.PathLike) -> None:
    """Restore ``trainer``'s modules, optimizers, scaler, step, RNG streams, data positions and recipe state
    from the checkpoint directory ``path``; :class:`CheckpointError` naming what does not match."""
    tensors, state, _meta = ckpt.read_run_checkpoint(path, map_location="cpu")
    written_by = state.get("recipe", state.get("method"))  # "method": checkpoints before the rename
    if written_by not in (None, trainer.recipe.name):
        raise CheckpointError(f"{path} was written by recipe {written_by!r}, this run is "
                              f"{trainer.recipe.name!r}")
    ws = int(state.get("world_size", 1))
    if ws != trainer.info.world_size:
        raise CheckpointError(f"{path} was written by a {ws}-process run; resume it with the same number of "
                              f"processes (this run has {trainer.info.world_size}) for an exact continuation")
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        mod, _, sub = key.partition(".")
        by_module.setdefault(mod, {})[sub] = t
    for name, e in trainer._entries.items():
        if not e.save:
            continue
        if name not in by_module:
            raise CheckpointError(f"{path} has no tensors for module {name!r} (it has {sorted(by_module)})")
        try:
            e.module.load_state_dict(by_module[name], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: module {name!r} does not match the checkpoint: {err}") from err
    extra = set(by_module) - {n for n, e in trainer._entries.items() if e.save}
    if extra:
        raise CheckpointError(f"{path} holds modules {sorted(extra)} that this run does not have")
    opt_states = state.get("optimizers", {})
    if set(opt_states) != set(trainer.optimizers):
        raise CheckpointError(f"{path} has optimizer groups {sorted(opt_states)}, this run has "
                              f"{sorted(trainer.optimizers)}")
    for n, o in trainer.optimizers.items():
        try:
            o.load_state_dict(opt_states[n])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer of group {n!r} does not match: {err}") from err
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.recipe.load_state_dict(state.get("recipe_state", state.get("method_state", {})))
    if int(state.get("max_steps", trainer.config.max_steps)) != trainer.config.max_steps and trainer.is_main:
        log.warning(f"{path} was saved by a run of {state['max_steps']} steps, this one has "
                    f"{trainer.config.max_steps}: schedules now follow the new length")
    mine = state["ranks"][trainer.info.rank]
    trainer.streams.load_state_dict(mine, where=str(path))
    ckpt.restore_rng_state(mine["rng"])
    trainer.step = int(state["step"])
    trainer._wall_offset = float(state.get("wall_s", 0.0))
    trainer.last_checkpoint = Path(path)
