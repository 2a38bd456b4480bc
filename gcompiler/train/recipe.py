"""The recipe-facing types of the training engine: :class:`Recipe` (what a training recipe supplies),
:class:`ParamGroup`, :class:`Phase`, :class:`StepContext` (what a phase sees), :class:`TrainConfig` and
:class:`TrainResult`, and the optimizer factories :func:`adam` / :func:`sgd`.

The :class:`~gcompiler.train.engine.Trainer` that runs them is in :mod:`gcompiler.train.engine`; this module
holds no training logic, so a recipe reads in one screen against it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .schedules import Schedule

if TYPE_CHECKING:
    from .engine import Trainer

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
PostStep = Callable[[list[nn.Parameter], float], None]


# ------------------------------------------------------------------------------------------------
# recipe-facing types

def adam(lr: float, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 0.0) -> OptimizerFactory:
    """Optimizer factory: ``torch.optim.Adam(params, lr, betas, weight_decay)``."""
    return lambda params: torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> OptimizerFactory:
    """Optimizer factory: ``torch.optim.SGD(params, lr, momentum, weight_decay)``."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass
class ParamGroup:
    """Parameters trained by one optimizer with one schedule.

    Args:
        name: unique name (``"weights"``, ``"masks"``, ``"arch"``, ``"disc"`` ...); used in logs
            (``lr/<name>``) and checkpoints.
        params: the parameters; a parameter may belong to one group only.
        optimizer: ``factory(params) -> Optimizer`` (see :func:`adam`, :func:`sgd`); the learning
            rates it sets are the base rates the schedule multiplies.
        schedule: a :class:`~gcompiler.train.schedules.Schedule` or its string form
            (``"constant"``, ``"linear_decay:0.5"``, ``"cosine"``).
        post_step: ``hook(params, lr)`` called under ``no_grad`` right after each optimizer step of
            this group with the learning rate just used (a proximal operator, a clamp, ...).
        clip_grad_norm: clip the group's gradient norm to this value before the step.
    """

    name: str
    params: Sequence[nn.Parameter]
    optimizer: OptimizerFactory
    schedule: Schedule | str = "constant"
    post_step: PostStep | None = None
    clip_grad_norm: float | None = None


LossFn = Callable[["StepContext"], Mapping[str, torch.Tensor]]


@dataclass
class Phase:
    """One forward/backward/step of a training step.

    ``loss(ctx)`` returns ``{term_name: scalar tensor}`` (already weighted); the engine checks each
    term is finite, back-propagates their sum and steps the optimizers of ``groups`` (their gradients
    are zeroed first). The phase runs on steps where ``step % every == 0`` and takes its batch from
    the data source ``data`` (phases naming the same source in one step share its batch).
    """

    name: str
    groups: Sequence[str]
    loss: LossFn
    every: int = 1
    data: str = "train"


class StepContext:
    """What a phase's loss function sees: the trainer, the step, the batch(es) and a per-step cache.

    ``step`` is the 0-based index of the update being computed; ``phase`` and ``data`` name the running
    phase and its data source. ``cache`` is shared by the phases of
    one step (a generator phase stores its detached output there for the discriminator phase; the
    default sample grid reads ``cache["input"]``, ``cache["teacher"]``, ``cache["student"]``).
    """

    def __init__(self, trainer: "Trainer", step: int) -> None:
        self.trainer = trainer
        self.step = step
        self.phase = ""
        self.data = "train"
        self.cache: dict[str, Any] = {}
        self.losses: dict[str, float] = {}
        self._batches: dict[str, dict[str, Any]] = {}

    def batch(self, data: str | None = None) -> dict[str, Any]:
        """The step's batch from data source ``data`` (default: the running phase's source), fetched on
        first use and moved to the device."""
        if data is None:
            data = self.data
        if data not in self._batches:
            self._batches[data] = self.trainer._next_batch(data)
        return self._batches[data]

    def net(self, name: str) -> nn.Module:
        """Shorthand for :meth:`Trainer.net`."""
        return self.trainer.net(name)

    def teacher(self, *inputs: torch.Tensor) -> Any:
        """The teacher's output for ``inputs`` (no gradient; computed once per step and cached)."""
        key = ("teacher", tuple(id(t) for t in inputs))
        if key not in self.cache:
            with torch.no_grad():
                # the inputs are kept with the output so their ids cannot be reused within the step
                self.cache[key] = (inputs, self.trainer.net("teacher")(*inputs))
        return self.cache[key][1]


class Recipe:
    """Base class of a training recipe; override what you need (see the module docstring)."""

    name = "recipe"

    def setup(self, trainer: "Trainer") -> None:
        """Create and register extra modules (``trainer.register_module``) and runners (``trainer.set_runner``)."""

    def param_groups(self, trainer: "Trainer") -> list[ParamGroup]:
        raise NotImplementedError(f"{type(self).__name__} must define param_groups()")

    def phases(self, trainer: "Trainer") -> list[Phase]:
        raise NotImplementedError(f"{type(self).__name__} must define phases()")

    def after_step(self, trainer: "Trainer", ctx: StepContext) -> None:
        """Called after all phases of a step (``trainer.step`` already counts it)."""

    def progress(self, trainer: "Trainer") -> dict[str, float]:
        """Live statistics for the progress bar and the logs (``"sparsity"``, ``"macs"``, ...)."""
        return {}

    def sample_columns(self, trainer: "Trainer", ctx: StepContext) -> list[torch.Tensor] | None:
        """Images (NCHW) shown side by side in the sample grid; default input | teacher | student."""
        cols = [ctx.cache.get(k) for k in ("input", "teacher", "student")]
        cols = [c for c in cols if isinstance(c, torch.Tensor) and c.dim() == 4]
        return cols or None

    def describe(self) -> str:
        """One line saying which losses / groups the recipe uses (logged at start)."""
        return self.name

    def state_dict(self) -> dict[str, Any]:
        """Recipe state outside modules (plain data / tensors; saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# configuration and results

@dataclass
class TrainConfig:
    """Settings of a run (everything a recipe does not decide).

    ``out_dir`` receives ``checkpoints/``, ``scalars.csv``, ``tb/``, ``samples/`` and ``train.log``.
    ``amp``: ``"auto"`` (bf16 on CUDA when supported, else fp16 with a grad scaler; off on CPU),
    ``"off"``, ``"bf16"`` or ``"fp16"`` (CUDA only). ``resume=True`` continues from the newest
    checkpoint in ``out_dir/checkpoints`` (a fresh start if there is none).
    ``sample_every=0`` disables sample grids; ``save_every=0`` saves only at the end;
    ``keep_last=0`` keeps every checkpoint. ``value_range`` of the images (for sample grids):
    ``None`` takes the dataset's ``value_range`` attribute (gcompiler datasets have one; ``builtin:sr``
    is [0, 1]), else [-1, 1].
    """

    out_dir: str | os.PathLike
    max_steps: int
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    tensorboard: bool | None = None
    find_unused_parameters: bool = False
    value_range: tuple[float, float] | None = None
    sample_rows: int = 4

    def validate(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ConfigError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for name in ("save_every", "log_every", "sample_every", "keep_last"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {self.amp!r}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns. ``wall_s``: seconds of this call; ``total_wall_s``: of the whole
    run, earlier sessions included (as of the last checkpoint they left)."""

    steps: int
    wall_s: float
    total_wall_s: float
    losses: dict[str, float]
    checkpoint: Path | None
    run_dir: Path
    stats: dict[str, float] = field(default_factory=dict)
