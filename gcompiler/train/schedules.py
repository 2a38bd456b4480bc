"""Learning-rate schedules as pure functions of ``(step, total_steps)``.

A schedule returns the factor that multiplies a parameter group's base learning rate at the
optimizer update with 0-based index ``step`` of a run of ``total`` updates. Because the factor
depends on nothing but the step counter, resuming a run restores the schedule exactly from the
saved step (there is no scheduler state to save).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


class Schedule:
    """Base class: ``schedule(step, total) -> factor``."""

    def __call__(self, step: int, total: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Constant(Schedule):
    """The base learning rate throughout."""

    def __call__(self, step: int, total: int) -> float:
        return 1.0

    def describe(self) -> str:
        return "constant"


@dataclass(frozen=True)
class LinearDecay(Schedule):
    """Constant for the first ``start`` fraction of the run, then linear decay towards 0.

    The CycleGAN / GAN Slimming rule written per step: with ``s = round(start * total)``,
    ``factor(t) = 1 - max(0, t + 1 - s) / (total - s + 1)``, so the last update still uses a small
    positive rate (``1 / (total - s + 1)`` of the base).
    """

    start: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= 1.0:
            raise ConfigError(f"linear decay start must be a fraction in [0, 1], got {self.start}")

    def __call__(self, step: int, total: int) -> float:
        s = int(round(self.start * total))
        return 1.0 - max(0, step + 1 - s) / float(total - s + 1)

    def describe(self) -> str:
        return f"linear_decay:{self.start:g}"


@dataclass(frozen=True)
class Cosine(Schedule):
    """Cosine annealing from the base rate to ``min_factor`` times it over the run."""

    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_factor <= 1.0:
            raise ConfigError(f"cosine min_factor must be in [0, 1], got {self.min_factor}")

    def __call__(self, step: int, total: int) -> float:
        t = min(max(step, 0), total) / float(max(total, 1))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def describe(self) -> str:
        return f"cosine:{self.min_factor:g}" if self.min_factor else "cosine"


def parse_schedule(spec: str | Schedule | None) -> Schedule:
    """``"constant"``, ``"linear_decay[:START]"`` or ``"cosine[:MIN_FACTOR]"`` (or a Schedule) -> Schedule."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    name, _, arg = str(spec).partition(":")
    name = name.strip().lower().replace("-", "_")
    try:
        if name == "constant":
            return Constant()
        if name == "linear_decay":
            return LinearDecay(float(arg)) if arg else LinearDecay()
        if name == "cosine":
            return Cosine(float(arg)) if arg else Cosine()
    except ValueError:
        raise ConfigError(f"bad schedule argument in {spec!r}: {arg!r} is not a number") from None
    raise ConfigError(f"unknown schedule {spec!r}; use 'constant', 'linear_decay[:start_fraction]' or "
                      f"'cosine[:min_factor]'")
