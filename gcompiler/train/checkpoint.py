"""Atomic, resumable training checkpoints.

Layout of one checkpoint (a directory ``<ckpt_dir>/step_00000120``)::

    model.safetensors   every tensor of the registered modules (``"<module>.<state_dict key>"``)
    state.pt            optimizers, grad scaler, step, RNG states, data positions, method state:
                        plain dicts/lists/numbers/tensors, loadable with ``torch.load(weights_only=True)``
    meta.json           human-readable summary (step, time, last losses, file list)

Atomicity (:func:`gcompiler.ioutil.atomic_dir`): everything is written into a hidden temporary directory
next to the final one, each file is flushed and ``fsync``-ed, and the directory is then renamed into place
with ``os.replace`` (an atomic rename on POSIX). A crash (or ``kill -9``) at any moment therefore leaves either the complete
new checkpoint or none at all, and never touches the previous ones; leftover temporary directories
are ignored by :func:`list_checkpoints` and removed by the next save.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import CheckpointError

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``ckpt_dir`` as ``(step, path)``, oldest first (temp dirs ignored)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``ckpt_dir``, or ``None``."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no two sharing storage (safetensors refuses shared ones)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def clean_temporary(ckpt_dir: str | os.PathLike) -> None:
    """Remove temporary directories left by interrupted saves."""
    root = Path(ckpt_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX) or (p.name.startswith(".") and (".tmp-" in p.name
                                                                                or ".old-" in p.name)):
                shutil.rmtree(p, ignore_errors=True)


def write_run_checkpoint(ckpt_dir: str | os.PathLike, step: int, tensors: Mapping[str, torch.Tensor],
                    state: Mapping[str, Any], meta: Mapping[str, Any] | None = None, *,
                    keep_last: int | None = 3) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep_last`` (``None``: all).

    Returns the final directory. Raises :class:`CheckpointError` if anything cannot be written;
    the previously saved checkpoints are intact in that case.
    """
    from safetensors.torch import save_file

    from ..ioutil import atomic_dir

    root = Path(ckpt_dir)
    final = root / checkpoint_name(step)
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_temporary(root)
        with atomic_dir(final) as tmp:  # re-saving a step (a run resumed at a save step) swaps the directory
            save_file(_cpu_tensors(tensors), str(tmp / MODEL_FILE), metadata={"step": str(int(step))})
            torch.save({"format": FORMAT_VERSION, **dict(state)}, tmp / STATE_FILE)
            info = {"format": FORMAT_VERSION, "step": int(step), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "files": [MODEL_FILE, STATE_FILE, META_FILE], **dict(meta or {})}
            (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    except Exception as e:
        raise CheckpointError(f"could not write checkpoint {final}: {type(e).__name__}: {e} "
                              f"(previous checkpoints in {root} are untouched)") from e
    if keep_last is not None and keep_last > 0:
        for _, old_path in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old_path, ignore_errors=True)
    return final


def read_run_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read ``(tensors, state, meta)`` from a checkpoint directory, safely (no arbitrary unpickling)."""
    from safetensors.torch import load_file

    p = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (p / name).is_file():
            raise CheckpointError(f"{p} is not a complete checkpoint: {name} is missing")
    try:
        tensors = load_file(str(p / MODEL_FILE), device=str(map_location))
    except Exception as e:
        raise CheckpointError(f"cannot read {p / MODEL_FILE}: {e}") from e
    try:
        state = torch.load(p / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:
        unsafe = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))
        if unsafe:  # weights_only stopped the unpickler before it built (or called) anything
            raise CheckpointError(f"{p / STATE_FILE} refused: it holds a pickled Python object ({unsafe.group(1)}) "
                                  "besides tensors and plain data, and unpickling arbitrary objects can run code; "
                                  "gcompiler never does (torch.load(weights_only=True)). This file was not written "
                                  "by gcompiler") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"cannot read {p / STATE_FILE} (corrupt or truncated? it must be loadable with "
                              f"torch.load(weights_only=True)): {type(e).__name__}: {first}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{p / STATE_FILE} is not a gcompiler training state (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'}, expected {FORMAT_VERSION})")
    meta: dict[str, Any] = {}
    if (p / META_FILE).is_file():
        try:
            meta = json.loads((p / META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
    return tensors, state, meta


# ---------------------------------------------------------------------------------------------------
# RNG state as weights_only-loadable data

def capture_rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) global RNG states as plain data + tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    try:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                             int(n["has_gauss"]), float(n["cached_gaussian"])))
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"the checkpoint's RNG state is malformed: {e}") from e
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda_states])
