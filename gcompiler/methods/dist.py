"""How a compression method runs under ``torchrun``: one mechanism for the parts that are not data-parallel.

A method's training phases are data-parallel by themselves (the engine's :class:`~gcompiler.train.Trainer`
wraps the trainable modules in DDP; :meth:`CompressJob.make_loader
<gcompiler.methods.base.CompressJob.make_loader>` shards the global ``--batch-size`` across the ranks).
Everything else follows three rules, implemented here and used by :class:`~gcompiler.methods.base.CompressJob`:

* **Graph rewrites** (``job.rewrite``) run on every rank -- passes are deterministic functions of the graph,
  its weights and their options, and the weights are identical on every rank after a DDP phase -- and are
  then settled by :func:`sync_module`: the ranks compare a fingerprint of the result (generated code,
  names, shapes and dtypes of every parameter and buffer) and stop with a :class:`DistributedError` naming
  the ranks that differ; then rank 0's parameters and buffers (masks, calibrated clips ...) are broadcast,
  so every rank continues with rank 0's graph bit for bit. Replaying the rewrite (instead of shipping a
  serialized graph) keeps ``gm.meta`` and in-place semantics the same as in a single process.
* **Work done once** -- a search, a choice, an evaluation -- runs on rank 0 through :func:`on_rank0`, whose
  result (JSON: an architecture, a config string, numbers) is broadcast; an exception on rank 0 reaches
  every rank (rank 0 re-raises it, the others raise :class:`DistributedError` with rank 0's reason).
* **Files** of the run directory are written by rank 0 only (``job.is_main``), atomically.

:func:`agree` is the phase boundary: every rank runs a check and every rank stops, naming the failing rank
and its reason, if any rank failed. A rank that dies in the middle of a DDP phase cannot reach a boundary;
there ``torchrun`` ends the other workers (and the collectives time out after ``GCOMPILER_DIST_TIMEOUT``
seconds when the job was launched another way).

Without a process group every helper is the plain single-process operation.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, TypeVar

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import DistributedError
from ..train.distributed import (all_gather_json, broadcast_json, collective_device, dist_info,
                                 is_distributed)

T = TypeVar("T")

__all__ = ["on_rank0", "agree", "sync_module", "fingerprint", "rank_prefix"]


def rank_prefix() -> str:
    """``"rank R of N: "`` in a multi-process run, else ``""``."""
    info = dist_info()
    return f"rank {info.rank} of {info.world_size}: " if info.enabled else ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def on_rank0(fn: Callable[[], T], *, what: str) -> T:
    """Run ``fn()`` on rank 0 only and return its result on every rank.

    The result must be JSON (dicts, lists, strings, numbers; tuples come back as lists). ``what`` names the
    work in the error the other ranks raise when ``fn`` fails on rank 0.
    """
    if not is_distributed():
        return fn()
    if dist_info().rank == 0:
        try:
            result = fn()
        except BaseException as exc:
            broadcast_json({"ok": False, "error": _describe(exc)})
            raise
        broadcast_json({"ok": True, "value": result})
        return result
    msg = broadcast_json(None)
    if not msg["ok"]:
        raise DistributedError(f"{rank_prefix()}stopping: rank 0 failed in {what}: {msg['error']}")
    return msg["value"]


def agree(fn: Callable[[], T], *, what: str) -> T:
    """Run ``fn()`` on every rank; if it raises on any rank, every rank stops.

    The failing rank re-raises its own exception; the others raise :class:`DistributedError` naming the
    first failing rank and its reason. Returns ``fn()``'s result on every rank.
    """
    if not is_distributed():
        return fn()
    error: BaseException | None = None
    result: Any = None
    try:
        result = fn()
    except BaseException as exc:  # reported to the other ranks, then re-raised
        error = exc
    reports = all_gather_json(None if error is None else _describe(error))
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(reports) if m is not None]
    if failed:
        r, m = failed[0]
        raise DistributedError(f"{rank_prefix()}stopping: rank {r} failed in {what}: {m}")
    return result


def fingerprint(module: nn.Module) -> str:
    """A hash of what must be equal on every rank: the generated code of a GraphModule (its structure), and the
    names, shapes and dtypes of every parameter and buffer (not their values)."""
    h = hashlib.sha256()
    if isinstance(module, fx.GraphModule):
        h.update(module.code.encode())
    for name, t in module.state_dict(keep_vars=True).items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()


@torch.no_grad()
def sync_module(module: nn.Module, *, what: str) -> nn.Module:
    """Make ``module`` on every rank equal to rank 0's: compare :func:`fingerprint` s (a
    :class:`DistributedError` naming the ranks whose structure differs from rank 0's), then broadcast every
    parameter and buffer of rank 0 in place. Returns ``module``."""
    if not is_distributed():
        return module
    import torch.distributed as dist

    prints = all_gather_json(fingerprint(module))
    differ = [r for r, p in enumerate(prints) if p != prints[0]]
    if differ:
        raise DistributedError(f"{rank_prefix()}{what}: rank(s) {differ} built a different graph than rank 0 "
                               f"(generated code or parameter shapes differ); the run cannot continue data-"
                               f"parallel. A pass that depends on anything but the graph, its weights and its "
                               f"options (the clock, per-rank data) is the usual cause")
    dev = collective_device()
    for t in module.state_dict(keep_vars=True).values():
        data = t.data if isinstance(t, nn.Parameter) else t
        if data.device == dev and data.is_contiguous():
            dist.broadcast(data, 0)
        else:
            buf = data.to(dev)
            dist.broadcast(buf, 0)
            data.copy_(buf)
    return module
