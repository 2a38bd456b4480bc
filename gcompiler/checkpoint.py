"""Reading public checkpoints into zoo models, and writing our own (safetensors).

:func:`load_checkpoint` accepts the files the reference implementations publish, with their own key
names, and repairs the known legacy differences before matching keys:

1. the file is read safely: ``.safetensors`` with safetensors, anything else with
   ``torch.load(weights_only=True)`` (a pickle that needs arbitrary objects is refused, never run);
2. a training container (``{"state_dict": ...}``, ``{"params_ema": ...}``, ``{"params": ...}``,
   ``{"model": ...}``, ...) is unwrapped to its tensor dict;
3. ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) key prefixes are stripped;
4. the model may adapt the dict itself: a model defining ``adapt_state_dict(state_dict) -> state_dict``
   (e.g. CartoonGAN's ``scale``/``shift`` norm names, VGG's unused classifier) gets it called;
5. residual blocks saved with the other Dropout layout are re-indexed: pytorch-CycleGAN-and-pix2pix's
   ``conv_block`` has its second conv at ``.5`` without dropout and at ``.6`` with it, and a
   checkpoint of either kind loads into a model built either way;
6. InstanceNorm ``running_mean`` / ``running_var`` / ``num_batches_tracked`` entries written by old
   PyTorch versions are dropped where the model's InstanceNorm keeps no running statistics.

Whatever still does not match is reported in one :class:`~gcompiler.errors.CheckpointError` listing the
missing keys, the unexpected keys and the shape conflicts.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import nn

from gcompiler.errors import CheckpointError

__all__ = ["load_checkpoint", "read_state_dict", "save_checkpoint", "CONTAINER_KEYS"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
StateDict = dict[str, torch.Tensor]

#: Keys under which training scripts nest the weights, tried in this order (``params_ema`` before
#: ``params``: BasicSR/Real-ESRGAN files keep both and the EMA copy is the one to use).
CONTAINER_KEYS = ("state_dict", "model_state_dict", "params_ema", "params", "model", "net", "generator",
                  "netG", "G", "ema")
_PREFIXES = ("module.", "_orig_mod.")
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_LIST_LIMIT = 12
_BLOCK_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?conv_block)\.(?P<idx>\d+)\.(?P<rest>.+)$")


# --------------------------------------------------------------------------------------------- reading
def read_state_dict(path: PathLike) -> StateDict:
    """Read a checkpoint file and return its tensor dict (container unwrapped, nothing renamed).

    Raises CheckpointError naming the file for a missing, unreadable, corrupt or unsafe file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: '{p}'")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path '{p}' is a directory; pass the weights file inside it")
    if p.suffix == ".safetensors":
        obj: Any = _read_safetensors(p)
    else:
        obj = _read_torch(p)
    return _unwrap(obj, p)


def _read_safetensors(p: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # SafetensorError and friends: header or data is damaged
        raise CheckpointError(
            f"checkpoint '{p}' is not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc


def _read_torch(p: Path) -> Any:
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        unsafe = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", msg)  # torch words it two ways
        if unsafe:
            raise CheckpointError(
                f"checkpoint '{p}' holds a pickled Python object ({unsafe.group(1)}) besides tensors, and "
                "gcompiler only loads checkpoints with weights_only=True (unpickling arbitrary objects can "
                "run code). If you trust the file, re-save just its state dict with your own code, e.g. "
                "torch.save(torch.load(f, weights_only=False)['state_dict'], 'clean.pth'), or use "
                "gcompiler.save_checkpoint to write a .safetensors file"
            ) from exc
        raise CheckpointError(
            f"checkpoint '{p}' is not a readable PyTorch checkpoint (corrupt, truncated, or another format): "
            f"{_reason(exc)}"
        ) from exc
    except Exception as exc:  # the unpickler surfaces damage as IndexError, EOFError, RuntimeError, ...
        raise CheckpointError(
            f"checkpoint '{p}' is not a readable PyTorch checkpoint (corrupt, truncated, or another format): "
            f"{type(exc).__name__}: {_reason(exc)}"
        ) from exc


def _reason(exc: BaseException) -> str:
    """One short line saying why torch.load failed (its own messages run to paragraphs)."""
    inner = exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ else exc
    text = str(inner).strip()
    first = text.splitlines()[0] if text else type(inner).__name__
    return first if len(first) <= 200 else first[:200] + "..."


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _unwrap(obj: Any, p: Path) -> StateDict:
    seen = []
    for _ in range(4):
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        for key in CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                seen.append(key)
                obj = obj[key]
                break
        else:
            break
    where = "".join(f"[{k!r}]" for k in seen)
    if isinstance(obj, Mapping):
        keys = list(obj)[:_LIST_LIMIT]
        kinds = {k: type(obj[k]).__name__ for k in keys}
        if not obj:
            raise CheckpointError(f"checkpoint '{p}'{where} is an empty dict: no weights in it")
        raise CheckpointError(
            f"checkpoint '{p}'{where} is not a state dict (a dict of name -> tensor) and holds none under the "
            f"usual keys {', '.join(CONTAINER_KEYS)}; its top-level entries are "
            f"{', '.join(f'{k!r}: {v}' for k, v in kinds.items())}"
            + (" ..." if len(obj) > _LIST_LIMIT else "")
        )
    raise CheckpointError(
        f"checkpoint '{p}'{where} holds a {type(obj).__name__}, not a state dict (a dict of name -> tensor)"
    )


# --------------------------------------------------------------------------------------------- patches
def _strip_prefixes(sd: StateDict, model_keys: set[str], notes: list[str]) -> StateDict:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in model_keys):
            continue
        n = sum(k.startswith(prefix) for k in sd)
        if n:
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
            notes.append(f"stripped the '{prefix}' prefix from {n} keys")
    return sd


def _block_groups(keys) -> dict[str, dict[str, set[tuple[int, str]]]]:
    """``prefix -> {"all": {(idx, rest)}, "params": {(idx, rest)} without running stats}``."""
    groups: dict[str, dict[str, set[tuple[int, str]]]] = defaultdict(lambda: {"all": set(), "params": set()})
    for k in keys:
        m = _BLOCK_KEY.match(k)
        if not m:
            continue
        item = (int(m["idx"]), m["rest"])
        g = groups[m["prefix"]]
        g["all"].add(item)
        if m["rest"].rsplit(".", 1)[-1] not in _RUNNING_STATS:
            g["params"].add(item)
    return groups


def _shift_dropout_layout(sd: StateDict, model_keys: set[str], notes: list[str]) -> StateDict:
    """Re-index residual blocks saved with/without the Dropout layer the model lacks/has.

    Inserting (removing) a layer at position t moves every later layer up (down) by one, so for each
    ``...conv_block`` group we look for a cut t and a shift of +-1 that turns the checkpoint's
    parameter keys into exactly the model's; only then is the group renamed.
    """
    ck_groups = _block_groups(sd)
    md_groups = _block_groups(model_keys)
    renames: dict[str, str] = {}
    shifted = []
    for prefix, ck in ck_groups.items():
        md = md_groups.get(prefix)
        if md is None or ck["params"] == md["params"] or not ck["params"]:
            continue
        for delta in (1, -1):
            hit = None
            for t in sorted({i for i, _ in ck["params"]}):
                mapped = {(i + delta if i >= t else i, r) for i, r in ck["params"]}
                if len(mapped) == len(ck["params"]) and mapped == md["params"]:
                    hit = t
                    break
            if hit is not None:
                for i, r in ck["all"]:
                    if i >= hit:
                        renames[f"{prefix}.{i}.{r}"] = f"{prefix}.{i + delta}.{r}"
                shifted.append(delta)
                break
    if not renames:
        return sd
    ups, downs = shifted.count(1), shifted.count(-1)
    if ups:
        notes.append(f"re-indexed {ups} residual block(s) saved without Dropout onto the model's Dropout layout")
    if downs:
        notes.append(f"re-indexed {downs} residual block(s) saved with Dropout (conv_block.6) onto the "
                     "model's layout without it (conv_block.5)")
    return {renames.get(k, k): v for k, v in sd.items()}


def _drop_instance_norm_stats(sd: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    modules = dict(model.named_modules())
    out, dropped = {}, 0
    for k, v in sd.items():
        path, _, leaf = k.rpartition(".")
        mod = modules.get(path)
        if (leaf in _RUNNING_STATS and isinstance(mod, nn.modules.instancenorm._InstanceNorm)
                and not mod.track_running_stats):
            dropped += 1
            continue
        out[k] = v
    if dropped:
        notes.append(f"dropped {dropped} InstanceNorm running-stat entries (old PyTorch wrote them; the model's "
                     "InstanceNorm keeps no running statistics)")
    return out


def _optional_missing(model: nn.Module) -> set[str]:
    """``num_batches_tracked`` buffers of norms with running stats: absent from files before PyTorch 0.4.1
    (``load_state_dict`` then sets them to 0, as PyTorch itself does for such files)."""
    return {f"{name}.num_batches_tracked" if name else "num_batches_tracked"
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats}


# --------------------------------------------------------------------------------------------- loading
def _fmt_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def load_checkpoint(model: nn.Module, path: PathLike, *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    Contract: after a successful return every parameter and buffer of ``model`` named in the checkpoint
    (after the patches in this module's docstring) holds the checkpoint's value, cast to the model's
    dtype and device. With ``strict=True`` (default) the key sets must match exactly, up to the norm
    ``num_batches_tracked`` buffers that old files lack; with ``strict=False`` missing and unexpected keys
    are skipped (and logged), but a shape conflict is always an error. On any error the model is left
    unchanged and a CheckpointError lists the missing keys, the unexpected keys and the shape conflicts.
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"load_checkpoint needs an nn.Module to load into, got {type(model).__name__}")
    p = Path(path)
    sd = read_state_dict(p)
    own = model.state_dict()
    model_keys = set(own)
    notes: list[str] = []
    sd = _strip_prefixes(sd, model_keys, notes)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        sd = dict(adapt(sd))
    sd = _shift_dropout_layout(sd, model_keys, notes)
    sd = _drop_instance_norm_stats(sd, model, notes)

    missing = sorted(model_keys - set(sd) - _optional_missing(model))
    unexpected = sorted(set(sd) - model_keys)
    conflicts = [
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
        for k in sorted(model_keys & set(sd)) if sd[k].shape != own[k].shape
    ]
    if conflicts or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(p, model, sd, own, missing, unexpected, conflicts, notes, strict))
    _check_loadable_values(p, sd, own)
    if missing or unexpected:
        log.info("load_checkpoint(%s, strict=False): skipped %d missing and %d unexpected keys",
                 p, len(missing), len(unexpected))
    model.load_state_dict({k: v for k, v in sd.items() if k in model_keys}, strict=False)
    return model


def _check_loadable_values(p: Path, sd: StateDict, own: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN/Inf in floating-point entries and values that cannot be cast to the model's dtype (a float
    weight from an integer or boolean tensor, a complex tensor), naming the file and the tensor."""
    for k in sorted(set(sd) & set(own)):
        t, mine = sd[k], own[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"checkpoint '{p}': entry '{k}' is a {type(t).__name__}, not a tensor")
        if mine.is_floating_point() and (t.is_complex() or t.dtype == torch.bool):
            raise CheckpointError(f"checkpoint '{p}': tensor '{k}' has dtype {t.dtype}, the model's is {mine.dtype}")
        if t.is_floating_point() and mine.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"checkpoint '{p}': tensor '{k}' holds {bad} NaN/Inf value(s) of {t.numel()}; "
                                  "the checkpoint is damaged (or saved from a diverged run)")
        if mine.is_floating_point() and not t.is_floating_point() and k.rsplit(".", 1)[-1] in ("weight", "bias"):
            raise CheckpointError(f"checkpoint '{p}': tensor '{k}' has dtype {t.dtype}, but the model's "
                                  f"{k} is {mine.dtype}; integer weights would load as nonsense")


def _mismatch_message(p: Path, model: nn.Module, sd: StateDict, own: Mapping[str, torch.Tensor],
                      missing: list[str], unexpected: list[str], conflicts: list[str], notes: list[str],
                      strict: bool) -> str:
    lines = [f"checkpoint '{p}' does not fit {type(model).__name__} "
             f"({len(sd)} tensors in the file, {len(own)} in the model):"]
    if missing and strict:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_fmt_list(missing)}")
    if unexpected and strict:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {_fmt_list(unexpected)}")
    if conflicts:
        lines.append(f"  shape conflicts ({len(conflicts)}): {_fmt_list(conflicts)}")
    if notes:
        lines.append(f"  (already applied: {'; '.join(notes)})")
    if not set(sd) & set(own):
        lines.append(f"  no key in common: the file is probably for another architecture (its first keys: "
                     f"{_fmt_list(list(sd)[:4])})")
    elif conflicts:
        lines.append("  shape conflicts usually mean a width option (ngf, nf, config, ...) differs from the one "
                     "the checkpoint was trained with")
    if strict and (missing or unexpected) and not conflicts:
        lines.append("  load_checkpoint(model, path, strict=False) loads the keys that do match")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- saving
def save_checkpoint(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike, *,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write a model's state dict (or a tensor dict) to ``path`` as safetensors, atomically.

    The data goes to a temporary file in the same directory which then replaces ``path``
    (:func:`gcompiler.ioutil.atomic_file`), so a reader never sees a half-written file. Tensors are saved contiguous on the CPU
    (shared storage is copied apart, as safetensors requires). ``path`` must end in ``.safetensors``.
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"save_checkpoint writes safetensors; name the file '*.safetensors', not '{p.name}'"
        )
    if isinstance(model_or_state_dict, nn.Module):
        sd: Mapping[str, Any] = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        sd = model_or_state_dict
    else:
        raise CheckpointError(
            f"save_checkpoint needs an nn.Module or a dict of tensors, got {type(model_or_state_dict).__name__}"
        )
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"save_checkpoint: entries that are not str -> tensor: {_fmt_list([repr(k) for k in bad])}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    from .ioutil import atomic_file

    try:
        with atomic_file(p) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint '{p}': {exc}") from exc
    return p

