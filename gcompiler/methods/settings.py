"""The settings every compression method shares: the generic ``gcompiler compress`` flags.

:class:`Settings` is filled by :func:`gcompiler.compression.resolve` from the method's defaults, a resumed
run's ``config.json``, a config file and the flags / keyword arguments; :meth:`Settings.validate` names the
flag at fault. A method's own options are its options dataclass (see :mod:`gcompiler.methods`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class Settings:
    """The options every method shares (``gcompiler compress`` flags; see its ``--help``)."""

    teacher: str = "builtin:sr"
    data: str = "builtin:sr"
    discriminator: str | None = None
    method: str = "gs"
    out: str = "runs/compress"
    bits: int = 8
    target_macs: str | None = None
    max_steps: int = 300
    finetune_steps: int = 100
    save_every: int = 50
    batch_size: int = 8
    crop: int | None = None
    macs_size: int | None = None
    seed: int = 0
    device: str = "auto"
    teacher_kw: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    threads: int | None = None
    sample_every: int = 100
    log_every: int = 10
    eval_images: int = 16
    #: held-out evaluation data (a folder spec); without it a fixed split of a folder --data is held out
    eval_data: str | None = None
    quiet: bool = False
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not (2 <= self.bits <= 16 or
                                                                                  self.bits == 32):
            raise ConfigError(f"--bits must be 32 (no quantization) or an integer in [2, 16], got {self.bits!r}")
        for name in ("max_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("finetune_steps", "save_every", "sample_every", "log_every", "eval_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative integer, got {v!r}")
        if self.crop is not None and (not isinstance(self.crop, int) or self.crop < 4):
            raise ConfigError(f"--crop must be an integer >= 4 (input pixels), got {self.crop!r}")
        if self.macs_size is not None and (not isinstance(self.macs_size, int) or self.macs_size < 4):
            raise ConfigError(f"--macs-size must be an integer >= 4, got {self.macs_size!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ConfigError(f"--workers must be a non-negative integer, got {self.workers!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"--threads must be a positive integer, got {self.threads!r}")

    def data_workers(self) -> int:
        """Loader worker processes: ``--workers``, else 0 for ``builtin:sr`` (crops of in-memory photos) and
        one fewer than the CPUs (at most 4) for folders, which decode files."""
        if self.workers is not None:
            return self.workers
        if self.data.strip() == "builtin:sr":
            return 0
        from ..data import default_num_workers

        return default_num_workers()

    def compute_threads(self) -> int:
        """Torch CPU threads: ``--threads``, else half the CPUs left over by the data workers (at least 1).

        OpenMP threads spin at every barrier: when the cores are also claimed by data workers or other jobs,
        the steps of a small network get many times slower (a GS step of the builtin:sr teacher went from
        0.1 s with 1 thread to 0.5 s with 2 on a busy 2-core machine), so the default leaves headroom."""
        if self.threads is not None:
            return self.threads
        import os

        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, (cpus - self.data_workers()) // 2)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
