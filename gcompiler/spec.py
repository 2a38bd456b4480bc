"""Parsing what users type: teacher specifications, MACs targets and config files.

Teacher specs (``--teacher``):

* ``zoo_name`` or ``zoo_name:path/to/ckpt.pth`` — a model from :mod:`gcompiler.models`, optionally
  with weights (``.pth`` read with ``weights_only=True``, or ``.safetensors``);
* ``pkg.module:Class`` or ``pkg.module:Class:path/to/ckpt`` — the user's own ``nn.Module`` class,
  constructed without arguments (``--teacher-kw key=value`` passes constructor arguments to either form); the
  current directory is importable (``mynets:Gen`` finds ``./mynets.py``);
* ``path/to/file.py:Class[:ckpt]`` — the class from a Python file (loaded under a private module name, its
  directory importable for its own imports);
* a teacher given without weights is randomly initialised: a warning says so;
* ``builtin:sr`` / ``builtin:cartoon`` — the teachers of the built-in tasks shipped with the package
  (:mod:`gcompiler.data.tasks`), and ``builtin:NAME:discriminator`` — the discriminator each was trained
  against.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError


@dataclasses.dataclass
class TeacherSpec:
    kind: str  # "zoo" | "class" | "file" | "builtin"
    name: str
    checkpoint: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.checkpoint}" if self.checkpoint else self.name


def parse_teacher(spec: str) -> TeacherSpec:
    from . import models

    spec = spec.strip()
    if not spec:
        raise ConfigError("--teacher is empty; give a zoo name (see `gcompiler zoo`), pkg.module:Class or builtin:sr")
    if spec.startswith("builtin:"):
        from .data.tasks import TASKS

        parts = spec.split(":")[1:]
        if not (1 <= len(parts) <= 2 and parts[0] in TASKS and parts[1:] in ([], ["discriminator"])):
            forms = ", ".join(f"builtin:{n}, builtin:{n}:discriminator" for n in TASKS)
            raise ConfigError(f"--teacher {spec!r}: unknown built-in model; available: {forms}")
        return TeacherSpec("builtin", ":".join(parts))
    head, _, rest = spec.partition(":")
    if head in models.available():
        return TeacherSpec("zoo", head, rest or None)
    if head.endswith(".py"):
        cls, _, ckpt = rest.partition(":")
        if not cls.isidentifier():
            raise ConfigError(f"--teacher {spec!r}: a Python file needs the class name after it: "
                              f"{head}:ClassName[:weights.pth]")
        if not Path(head).is_file():
            raise ConfigError(f"--teacher {spec!r}: no such file {head!r} (relative to {os.getcwd()})")
        return TeacherSpec("file", f"{head}:{cls}", ckpt or None)
    if rest and all(p.isidentifier() for p in head.split(".")):
        cls, _, ckpt = rest.partition(":")
        if cls.isidentifier():
            return TeacherSpec("class", f"{head}:{cls}", ckpt or None)
    import difflib

    close = difflib.get_close_matches(head, models.available(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"--teacher {spec!r}: '{head}' is not a zoo model and not of the form module:Class or "
                      f"file.py:Class.{hint} Forms: zoo_name[:ckpt], pkg.module:Class[:ckpt], "
                      "path/to/file.py:Class[:ckpt], builtin:sr, builtin:cartoon")


def build_teacher(spec: TeacherSpec, **kw: Any) -> torch.nn.Module:
    """Instantiate (and load weights for) a parsed teacher spec; the result is in eval mode."""
    from . import models
    from .checkpoint import load_checkpoint

    if spec.kind == "builtin":
        from .data import tasks

        task, _, role = spec.name.partition(":")
        return (tasks.load_discriminator(task) if role == "discriminator" else tasks.load_teacher(task)).eval()
    if spec.kind == "zoo":
        model = models.create(spec.name, **kw)
    else:
        mod_name, cls_name = spec.name.rsplit(":", 1)
        mod = _import_file(spec, mod_name) if spec.kind == "file" else _import_module(spec, mod_name)
        cls = getattr(mod, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise ConfigError(f"--teacher {spec}: '{cls_name}' in module '{mod_name}' is not an nn.Module class")
        try:
            model = cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"--teacher {spec}: cannot construct {cls_name}({kw or ''}): {exc}; pass constructor "
                              "arguments with --teacher-kw key=value") from exc
    if spec.checkpoint:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def warn_if_no_weights(spec: TeacherSpec) -> bool:
    """Log a warning when a teacher to compress comes without weights (a zoo model or your own class built
    randomly initialised); returns whether it warned."""
    if spec.kind == "builtin" or spec.checkpoint:
        return False
    logging.getLogger("gcompiler.compress").warning(
        f"WARNING: --teacher {spec}: no weights given, so the teacher is randomly initialised (seeded) and a "
        f"student distilled from it learns nothing useful; give its checkpoint as {spec}:path/to/weights.pth")
    return True


def _import_module(spec: TeacherSpec, mod_name: str) -> Any:
    """Import ``mod_name`` with the current directory importable (as ``python -m`` would)."""
    import sys

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"--teacher {spec}: cannot import module '{mod_name}' (searched the current directory "
                          f"{cwd} and the installed packages): {exc}. A model in a file can also be given as "
                          f"path/to/file.py:Class") from exc


def _import_file(spec: TeacherSpec, path: str) -> Any:
    """Load the Python file ``path`` as a module (its directory importable for its own imports)."""
    import hashlib
    import importlib.util
    import sys

    full = Path(path).resolve()
    name = f"gcompiler_user_{full.stem}_{hashlib.sha1(str(full).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, full)
    if mspec is None or mspec.loader is None:
        raise ConfigError(f"--teacher {spec}: cannot load {path} as a Python module")
    mod = importlib.util.module_from_spec(mspec)
    if str(full.parent) not in sys.path:
        sys.path.insert(0, str(full.parent))
    sys.modules[name] = mod
    try:
        mspec.loader.exec_module(mod)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"--teacher {spec}: running {path} failed: {type(exc).__name__}: {exc}") from exc
    return mod


def parse_target_macs(text: str | float | None, macs_before: int) -> int | None:
    """``"2e9"`` -> 2_000_000_000 MACs; ``"8x"`` -> ``macs_before / 8``; ``None`` -> no target."""
    if text is None or text == "":
        return None
    s = str(text).strip().lower()
    try:
        if s.endswith("x"):
            factor = float(s[:-1])
            if not factor >= 1 or not math.isfinite(factor):  # NaN fails both comparisons
                raise ConfigError(f"--target-macs {text!r}: a reduction factor must be a finite number >= 1 (e.g. 8x)")
            value = macs_before / factor
        else:
            value = float(s[:-1] if s.endswith("g") else s) * (1e9 if s.endswith("g") else 1)
    except ValueError:
        raise ConfigError(f"--target-macs {text!r}: expected an absolute count like 2e9 (or 2g) or a reduction "
                          "factor like 8x") from None
    if not math.isfinite(value):
        raise ConfigError(f"--target-macs {text!r}: must be a finite number")
    if value < 1:
        raise ConfigError(f"--target-macs {text!r}: must be at least 1 MAC (it gives {value:.3g})")
    if value >= macs_before:
        raise ConfigError(f"--target-macs {text!r} is not below the teacher's {macs_before:.3g} MACs")
    return int(value)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) config file into a flat dict of option names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                                  "or write the config as TOML") from None
            data = yaml.safe_load(path.read_text()) or {}
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ConfigError(f"--config {path}: unknown format '{path.suffix}'; use .toml, .yaml or .json")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--config {path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a table of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def int_flag(flag: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``minimum``; a bad value is an error naming ``flag`` (exit code 2)."""
    import argparse

    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {v}")
        return v

    return conv
