"""Data streams of the training engine: endless batch streams with exact, saveable positions.

:class:`DataStreams` holds the named sources of one :class:`~gcompiler.train.Trainer` (``"train"`` by
default) and the *data* RNG stream, which is swapped in around every batch fetch so that data order and
augmentation never depend on what the model did with the training RNG (and the other way round). Its
:meth:`DataStreams.state_dict` (positions + data RNG) is what a checkpoint stores per rank; restoring it
continues every stream at the batch where the run stopped.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DataError
from . import checkpoint as ckpt
from .distributed import DistInfo


def rng_seed(seed: int, rank: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, rank, salt]).generate_state(1)[0])


class DataStream:
    """An endless batch stream over a loader, with a saveable position.

    Loaders with ``state_dict``/``load_state_dict`` (gcompiler's ResumableLoader) keep their own
    position. Any other iterable (a torch DataLoader, with a DistributedSampler or not) is tracked
    as ``(epoch, batches consumed)``: its sampler's ``set_epoch`` is called at each epoch, and on
    resume the epoch is re-created from the data RNG state saved at its start and the consumed
    batches are skipped (loaded and dropped).
    """

    def __init__(self, name: str, loader: Any) -> None:
        self.name = name
        self.loader = loader
        self.native = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
        self.epoch = 0
        self.consumed = 0
        self.skip = 0
        self.epoch_rng: dict[str, Any] | None = None
        self._it: Iterator[Any] | None = None

    def _epoch_iter(self) -> Iterator[Any]:
        for holder in (self.loader, getattr(self.loader, "batch_sampler", None)):
            sampler = getattr(holder, "sampler", None)
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
        return iter(self.loader)

    def next(self, rng_capture: Callable[[], dict], rng_restore: Callable[[dict], None]) -> Any:
        if self.native:
            if self._it is None:
                self._it = self.loader.batches() if hasattr(self.loader, "batches") else self._native_stream()
            return next(self._it)
        for _ in range(3):  # an empty epoch right after another one means the loader is empty
            if self._it is None:
                if self.epoch_rng is None or self.skip == 0:
                    self.epoch_rng = rng_capture()
                else:
                    rng_restore(self.epoch_rng)
                self._it = self._epoch_iter()
                while self.skip > 0:
                    if next(self._it, None) is None:
                        raise DataError(f"data source {self.name!r}: cannot skip to batch {self.consumed} of epoch "
                                        f"{self.epoch} on resume (the loader yields fewer batches now)")
                    self.skip -= 1
            batch = next(self._it, None)
            if batch is not None:
                self.consumed += 1
                return batch
            self._it = None
            self.epoch += 1
            self.consumed = 0
            self.epoch_rng = None
        raise DataError(f"data source {self.name!r} yields no batches (empty dataset, or fewer samples than "
                        f"the batch size with drop_last=True)")

    def _native_stream(self) -> Iterator[Any]:
        while True:
            got = False
            for b in self.loader:
                got = True
                yield b
            if not got:
                raise DataError(f"data source {self.name!r} yields no batches")

    def state_dict(self) -> dict[str, Any]:
        if self.native:
            return {"native": self.loader.state_dict()}
        return {"epoch": self.epoch, "consumed": self.consumed, "epoch_rng": self.epoch_rng}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.native:
            if "native" not in state:
                raise CheckpointError(f"data source {self.name!r}: the checkpoint has no position for a resumable "
                                      f"loader (it was saved with a different kind of loader)")
            self.loader.load_state_dict(state["native"])
        else:
            if "epoch" not in state:
                raise CheckpointError(f"data source {self.name!r}: the checkpoint's position was saved by a "
                                      f"resumable loader; use the same kind of loader to resume")
            self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
            self.skip = self.consumed
            self.epoch_rng = state.get("epoch_rng")
        self._it = None

    def check_replicas(self, info: DistInfo) -> None:
        for holder in (self.loader, getattr(self.loader, "batch_sampler", None)):
            sampler = getattr(holder, "sampler", None)
            n = getattr(sampler, "num_replicas", None)
            if n is not None and int(n) != info.world_size:
                raise ConfigError(f"data source {self.name!r} is split for {n} process(es) but the job has "
                                  f"{info.world_size}: build the loader with rank/world_size from "
                                  f"gcompiler.train.dist_info()")
            r = getattr(sampler, "rank", None)
            if r is not None and n is not None and int(r) != info.rank:
                raise ConfigError(f"data source {self.name!r} is built for rank {r} but this process is "
                                  f"rank {info.rank}")


def as_batch_dict(batch: Any) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, torch.Tensor):
        return {"input": batch}
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, torch.Tensor) for b in batch):
        names = ("input", "target", "teacher")
        if len(batch) > len(names):
            raise DataError(f"a batch given as a sequence may hold at most {len(names)} tensors {names}, "
                            f"got {len(batch)}; yield a dict instead")
        return dict(zip(names, batch))
    raise DataError(f"batches must be dicts of tensors (as gcompiler.data datasets give), a tensor or a tuple "
                    f"(input, target), got {type(batch).__name__}")


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class DataStreams:
    """The named :class:`DataStream` s of a run and their data RNG (see the module docstring).

    ``data``: one loader (the ``"train"`` source) or ``{name: loader}``. ``seed``/``info.rank`` seed the
    data RNG, so each rank of a DDP run draws its own augmentations.
    """

    def __init__(self, data: Any | Mapping[str, Any], *, seed: int, info: DistInfo) -> None:
        if isinstance(data, Mapping):
            if not data:
                raise ConfigError("no data sources given")
            self.sources = {str(k): DataStream(str(k), v) for k, v in data.items()}
        else:
            self.sources = {"train": DataStream("train", data)}
        for src in self.sources.values():
            src.check_replicas(info)
        saved = ckpt.capture_rng_state()
        s = rng_seed(seed, info.rank, 0xDA7A)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        self.rng = ckpt.capture_rng_state()
        ckpt.restore_rng_state(saved)

    def __contains__(self, name: str) -> bool:
        return name in self.sources

    def first(self) -> DataStream:
        return next(iter(self.sources.values()))

    @contextlib.contextmanager
    def rng_scope(self) -> Iterator[None]:
        """Run the body with the data RNG (the training RNG state is put back afterwards)."""
        train_state = ckpt.capture_rng_state()
        ckpt.restore_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = ckpt.capture_rng_state()
            ckpt.restore_rng_state(train_state)

    def next(self, name: str, device: torch.device) -> dict[str, Any]:
        """The next batch of source ``name`` as a dict of tensors on ``device``."""
        src = self.sources[name]
        with self.rng_scope():
            batch = src.next(ckpt.capture_rng_state, ckpt.restore_rng_state)
        return to_device(as_batch_dict(batch), device)

    def state_dict(self) -> dict[str, Any]:
        return {"data_rng": self.rng, "data": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: Mapping[str, Any], *, where: str = "the checkpoint") -> None:
        for n, src in self.sources.items():
            if n not in state["data"]:
                raise CheckpointError(f"{where} has no position for data source {n!r} (it has {sorted(state['data'])})")
            src.load_state_dict(state["data"][n])
        self.rng = state["data_rng"]
