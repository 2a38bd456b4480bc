"""Process-group set-up for ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU) and the few
collectives the rest of gcompiler uses outside DDP.

Results that one rank computes and the others receive travel as JSON text in a uint8 tensor
(:func:`broadcast_json`, :func:`all_gather_json`): nothing is unpickled. Collectives time out after
``GCOMPILER_DIST_TIMEOUT`` seconds (default 1800; a phase that rank 0 runs alone, such as a search or the
final evaluation, must fit in it), so a rank that is gone cannot hang the others forever.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The job layout from an initialized process group, else from torchrun's environment variables.

    Use it to build data loaders before the :class:`~gcompiler.train.engine.Trainer` exists
    (``make_loader(..., rank=info.rank, world_size=info.world_size)``).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ConfigError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    return DistInfo(rank, world, local)


def default_timeout_s() -> float:
    """``GCOMPILER_DIST_TIMEOUT`` (seconds) or 1800: how long a collective may wait for the other ranks."""
    raw = os.environ.get("GCOMPILER_DIST_TIMEOUT", "1800")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"GCOMPILER_DIST_TIMEOUT={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"GCOMPILER_DIST_TIMEOUT={raw!r}: expected a positive number of seconds")
    return value


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> tuple[DistInfo, bool]:
    """Join the process group described by torchrun's environment if ``WORLD_SIZE > 1``.

    Backend: nccl when the run is on CUDA, gloo otherwise. Returns ``(info, created)`` where
    ``created`` tells whether this call created the group. A group that already exists is reused;
    one created here stays up for later trainers of the same process and is left at exit.
    """
    info = dist_info()
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return info, False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(f"WORLD_SIZE={info.world_size} but {var} is not set: launch with "
                              f"`torchrun --nproc_per_node=N ...` (it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=default_timeout_s() if timeout_s is None else timeout_s))
    import atexit

    atexit.register(shutdown)
    return info, True


def shutdown() -> None:
    """Leave the process group (idempotent). Called at interpreter exit when :func:`init_distributed`
    created the group, so several trainers (train, then fine-tune) can share one torchrun job.

    With gloo, the ranks first meet at a barrier (at most 10 s): a rank that tore its connections down while
    another was still reading the last broadcast made that one abort at exit ("terminate called without an
    active exception", seen once in a fresh-clone CI run). A rank that never arrives (it died) costs the
    others that wait, then they leave anyway."""
    if dist.is_available() and dist.is_initialized():
        try:
            if dist.get_world_size() > 1 and dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=10))
        except Exception:  # noqa: BLE001 - a rank is gone: leave anyway
            pass
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one element without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """Logical OR of ``flag`` over all ranks."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def is_distributed() -> bool:
    """Whether a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where the tensors of a collective must live: the current CUDA device for nccl, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(obj: Any) -> torch.Tensor:
    data = json.dumps(obj, default=str).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _decode(t: torch.Tensor) -> Any:
    return json.loads(bytes(t.cpu().numpy().tobytes()).decode())


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """``obj`` (JSON-serializable; other values as ``str``) of rank ``src`` on every rank."""
    if not is_distributed():
        return json.loads(json.dumps(obj, default=str))
    dev = collective_device()
    payload = _encode(obj).to(dev) if dist.get_rank() == src else None
    n = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64, device=dev)
    dist.broadcast(n, src)
    buf = payload if payload is not None else torch.empty(int(n.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src)
    return _decode(buf)


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-serializable), in rank order."""
    if not is_distributed():
        return [json.loads(json.dumps(obj, default=str))]
    dev = collective_device()
    mine = _encode(obj).to(dev)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64, device=dev))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[:mine.numel()] = mine
    bufs = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return [_decode(b[:int(s.item())]) for b, s in zip(bufs, sizes)]
