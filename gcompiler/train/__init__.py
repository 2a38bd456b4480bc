"""Distillation training: the engine (:class:`Trainer` + :class:`Recipe`), losses, taps, checkpoints, logs.

Minimal use::

    from gcompiler.train import Trainer, TrainConfig, Distill, DistillConfig
    trainer = Trainer(Distill(DistillConfig(pixel="l1", gan="lsgan")), student=gm, teacher=teacher,
                      data=loader, config=TrainConfig(out_dir="runs/x", max_steps=1000, resume=True))
    result = trainer.fit()

A training recipe (the GAN Slimming search, AGD, ...) subclasses :class:`Recipe` (or :class:`Distill`) and
supplies parameter groups, phases and hooks; see :mod:`gcompiler.train.recipe` (the types) and
:mod:`gcompiler.train.engine` (the trainer).
"""
from __future__ import annotations

from .checkpoint import latest_checkpoint, list_checkpoints, read_run_checkpoint, write_run_checkpoint
from .distill import Distill, DistillConfig
from .distributed import DistInfo, dist_info
from .engine import NonFiniteError, Trainer
from .recipe import ParamGroup, Phase, Recipe, StepContext, TrainConfig, TrainResult, adam, sgd
from .losses import (FeatureDistillLoss, GANLoss, PerceptualLoss, PixelDistance, build_distance, gram_matrix,
                     pixel_loss)
from .runlog import ScalarLogger, make_grid, read_scalars, save_grid
from .schedules import Constant, Cosine, LinearDecay, Schedule, parse_schedule
from .taps import TappedModel, tap_graph

__all__ = [
    "Trainer", "TrainConfig", "TrainResult", "Recipe", "ParamGroup", "Phase", "StepContext", "NonFiniteError",
    "adam", "sgd", "Distill", "DistillConfig", "DistInfo", "dist_info",
    "FeatureDistillLoss", "GANLoss", "PerceptualLoss", "PixelDistance", "build_distance", "gram_matrix", "pixel_loss",
    "TappedModel", "tap_graph", "Schedule", "Constant", "Cosine", "LinearDecay", "parse_schedule",
    "ScalarLogger", "read_scalars", "make_grid", "save_grid",
    "write_run_checkpoint", "read_run_checkpoint", "latest_checkpoint", "list_checkpoints",
]
