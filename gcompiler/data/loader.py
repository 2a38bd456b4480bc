"""A DataLoader wrapper that knows its exact position in the data stream (for checkpoint resume)."""
from __future__ import annotations

import os
from typing import Any, Iterator

from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .sampler import ResumableSampler


def default_num_workers() -> int:
    """Worker processes for decoding: one fewer than the usable CPUs, at most 4, 0 on a single CPU.

    On the 2-core machines this project targets that is 1 worker: decoding overlaps with the
    training step in the main process without oversubscribing the cores.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class ResumableLoader:
    """Batches from a :class:`ResumableSampler`, tracking how many samples the caller consumed.

    ``iter(loader)`` yields the rest of the current epoch and then moves the sampler to the next
    epoch; :meth:`batches` chains epochs forever. ``state_dict()`` / ``load_state_dict()`` save and
    restore ``(epoch, index)``: after a restore the next batch is exactly the one that would have
    come next in the original run (same samples, same crops and flips), whatever ``num_workers``.
    Batches are delivered in sampler order (DataLoader keeps order), so the consumed count is
    advanced arithmetically as each batch is handed out.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, sampler: ResumableSampler,
                 num_workers: int, drop_last: bool, pin_memory: bool = False,
                 persistent_workers: bool | None = None, collate_fn: Any = None) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(sampler) < batch_size:
            raise DataError(f"the dataset gives {len(sampler)} samples per epoch (per process), fewer than "
                            f"batch_size {batch_size}, and drop_last=True would give no batch at all: "
                            f"lower the batch size or add images")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.drop_last = bool(drop_last)
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 drop_last=drop_last, pin_memory=pin_memory, collate_fn=collate_fn,
                                 persistent_workers=persistent_workers and num_workers > 0)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        """Batches in a full epoch."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_exhausted(self) -> bool:
        left = len(self.sampler) - self.sampler.index
        return left < (self.batch_size if self.drop_last else 1)

    def __iter__(self) -> Iterator[Any]:
        if self._epoch_exhausted():
            self.sampler.set_epoch(self.sampler.epoch + 1)
        for batch in self.loader:
            self.sampler.advance(self.batch_size)
            yield batch
        if self._epoch_exhausted():
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def batches(self) -> Iterator[Any]:
        """An endless stream of batches across epochs."""
        while True:
            yield from self

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = True, seed: int = 0,
                num_workers: int | None = None, drop_last: bool = True, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False, collate_fn: Any = None) -> ResumableLoader:
    """A :class:`ResumableLoader` over ``dataset`` with a seeded :class:`ResumableSampler`.

    ``num_workers=None`` uses :func:`default_num_workers`. Under DDP pass ``rank``/``world_size``: each
    process gets a disjoint share of every epoch and the same seed must be used by all.
    """
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, num_replicas=world_size, rank=rank)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 0:
        raise DataError(f"num_workers must be >= 0, got {workers}")
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                           drop_last=drop_last, pin_memory=pin_memory, collate_fn=collate_fn)
