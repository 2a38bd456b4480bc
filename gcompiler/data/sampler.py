"""A seeded, resumable (and DDP-aware) sampler.

Exact resume needs two things from the data pipeline:

1. the *order* of samples is a pure function of ``(seed, epoch)``;
2. the *random augmentation* of each sample (crop position, flip, ...) is a pure function of
   ``(seed, epoch, position)``, not of which DataLoader worker happened to load it.

:class:`ResumableSampler` yields :class:`SampleKey` objects (a sample index plus the entropy for its
augmentation); the datasets of :mod:`gcompiler.data` accept them as ``dataset[key]`` and seed their
random transforms from ``key.entropy``. The sampler's position, ``(epoch, index)``, counts the
samples the *trainer* has consumed (advanced by :class:`gcompiler.data.loader.ResumableLoader` as it
hands out batches), not those prefetched by workers, so a checkpoint taken between two steps resumes
at the next unseen sample.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from ..errors import DataError


class SampleKey(NamedTuple):
    """A dataset index plus the entropy (``(seed, epoch, position)``) for its random augmentation."""

    index: int
    entropy: tuple[int, int, int]


def sample_rng(key: Any, fallback_seed: int | None = None) -> tuple[int, np.random.Generator]:
    """Split a dataset key into ``(index, rng)``.

    A :class:`SampleKey` gives a generator seeded from its entropy (reproducible). A plain ``int``
    (a dataset used with an ordinary sampler) gives one seeded from ``(fallback_seed, index)`` when a
    seed is given, else from torch's global RNG (which DataLoader seeds per worker and epoch).
    """
    if isinstance(key, SampleKey):
        return int(key.index), np.random.default_rng(list(key.entropy))
    if isinstance(key, (int, np.integer)):
        if fallback_seed is not None:
            return int(key), np.random.default_rng([int(fallback_seed), int(key)])
        import torch

        return int(key), np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
    raise DataError(f"dataset index must be an int or a SampleKey, got {type(key).__name__}")


class ResumableSampler(Sampler[SampleKey]):
    """Seeded sampler whose position ``(epoch, index)`` can be saved and restored.

    Args:
        length: number of samples in the dataset (``len(dataset)``).
        shuffle: a new permutation each epoch (seeded from ``(seed, epoch)``) or the natural order.
        seed: base seed; every replica of a DDP job must use the same one.
        num_replicas, rank: DDP split; replica ``rank`` takes positions ``rank, rank + num_replicas, ...``
            of the epoch's order. When ``length`` is not divisible, the order is padded by wrapping
            around (as torch's DistributedSampler does) so every replica sees the same count.

    ``index`` is the number of samples of the current epoch this replica has consumed; iterating
    starts there. ``state_dict()`` holds ``epoch``, ``index`` and what must match on load
    (``seed``, ``length``, ``num_replicas``, ``shuffle``).
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if length <= 0:
            raise DataError(f"cannot sample from an empty dataset (length {length})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise DataError(f"invalid DDP split: rank {rank} of {num_replicas} replicas")
        self.length = int(length)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.num_samples = math.ceil(self.length / self.num_replicas)
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        """Samples this replica yields in a full epoch."""
        return self.num_samples

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch`` for *all* replicas (padded), before the replica split."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, int(epoch), 0x5A4D]).permutation(self.length)
        else:
            order = np.arange(self.length)
        total = self.num_samples * self.num_replicas
        if total > self.length:
            order = np.concatenate([order, np.resize(order, total - self.length)])
        return order

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, start = self.epoch, self.index
        order = self.epoch_order(epoch)
        for k in range(start, self.num_samples):
            pos = self.rank + k * self.num_replicas
            yield SampleKey(int(order[pos]), (self.seed, epoch, pos))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch = int(epoch)
        self.index = 0

    def advance(self, n: int) -> None:
        """Mark ``n`` more samples of the current epoch as consumed."""
        self.index = min(self.index + int(n), self.num_samples)

    def state_dict(self) -> dict[str, int | bool]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "length": self.length,
                "num_replicas": self.num_replicas, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises :class:`DataError` if the saved seed, dataset length, replica count or shuffle flag
        differ from this sampler's (the saved position would then point at other samples).
        """
        missing = {"epoch", "index"} - set(state)
        if missing:
            raise DataError(f"sampler state lacks {sorted(missing)}: not a ResumableSampler state_dict")
        for name in ("seed", "length", "num_replicas", "shuffle"):
            if name in state and state[name] != getattr(self, name):
                raise DataError(f"cannot resume data position: the checkpoint's sampler has {name}="
                                f"{state[name]!r} but this run has {name}={getattr(self, name)!r} "
                                f"(same data, seed and number of processes are needed for an exact resume)")
        index = int(state["index"])
        if not 0 <= index <= self.num_samples:
            raise DataError(f"saved data index {index} is outside [0, {self.num_samples}]")
        self.epoch = int(state["epoch"])
        self.index = index
