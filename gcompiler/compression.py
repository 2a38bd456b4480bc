"""Running a compression method: the Python entry :func:`compress` and the one settings resolver.

``gcompiler.compress(teacher, data, method="gs", ...)`` and the ``gcompiler compress`` command are the same
run: both build their settings with :func:`resolve` from *layers*, in increasing priority:

1. the method's ``defaults`` (``register_method(..., defaults=...)``);
2. the run directory's saved ``config.json`` (when resuming);
3. a config file (``--config FILE`` / ``config=``: TOML, YAML or JSON);
4. the command-line flags / the keyword arguments of :func:`compress`.

Each layer is a flat mapping whose keys are shared settings (:class:`~gcompiler.methods.base.Settings`:
``max_steps``, ``bits``, ``target_macs`` ...), method options (the fields of the method's options
dataclass), an ``options`` table, or a table named after the method (``[gs]`` in a config file). Every
value goes through the one option parser, :func:`gcompiler.methods.options.coerce_option`, against the
field's type. The resolved settings are written to ``OUT/config.json`` (usable as a config file).

The run directory ``OUT`` receives ``config.json``, ``compress.log``, the method's training directories
(``checkpoints/`` ...), ``summary.json``, ``report.json`` (with the verified graph rewrites in
``report.json["pass_log"]``) and the student itself (``model.safetensors`` + ``architecture.json``:
``gcompiler.load(OUT)``).

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs :func:`run_compress`: :func:`start_distributed`
joins the process group (nccl on GPUs, gloo otherwise) and checks that ``--batch-size`` (the global batch)
splits across the processes; :func:`check_world_size` refuses to resume a run on another number of processes;
only rank 0 writes the run directory and ``compress.log``; how methods split their work is in
:mod:`gcompiler.methods.dist`. A failing rank prints ``rank R of N: failed: ...`` and exits non-zero.

This module sits below the command line (:mod:`gcompiler.cli` imports it, never the reverse).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import ConfigError
from .ioutil import atomic_write_json

log = logging.getLogger("gcompiler.compress")

Layer = tuple[str, Mapping[str, Any]]


@dataclass
class CompressResult:
    """What a compression run produced.

    Attributes:
        student: the compressed student (``gcompiler.load(run_dir)`` gives the same network back).
        summary: the before/after numbers (``summary.json``; keys :data:`~gcompiler.methods.base.SUMMARY_KEYS`).
        run_dir: the run directory.
        report: everything else the method recorded (``report.json``), including ``"pass_log"``.
    """

    student: fx.GraphModule
    summary: dict[str, Any]
    run_dir: Path
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        """The before/after table (teacher, student and, for built-in tasks, the baseline)."""
        from .methods.base import summary_table

        return summary_table(self.summary)

    def __repr__(self) -> str:
        return f"CompressResult(run_dir={str(self.run_dir)!r})\n{self.table()}"


# --------------------------------------------------------------------------------------------- settings

def _settings_fields() -> dict[str, dataclasses.Field]:
    from .methods.base import Settings

    return {f.name: f for f in dataclasses.fields(Settings)}


def coerce_setting(name: str, value: Any, source: str) -> Any:
    """A shared setting from any source, converted to its declared type (:class:`ConfigError` naming it)."""
    from .methods.base import Settings
    from .methods.options import coerce_option, guess_value, parse_key_values

    if name == "teacher_kw":
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, (list, tuple)):
            kv = parse_key_values([str(v) for v in value], flag="--teacher-kw", example="ngf=32")
            return {k: guess_value(v) for k, v in kv.items()}
        raise ConfigError(f"{source}: teacher_kw must be a table of constructor arguments")
    if name == "options":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: options must be a table of method options")
        return dict(value)
    if name == "target_macs" and value is not None:
        return str(value)
    hint = typing.get_type_hints(Settings)[name]
    try:
        return coerce_option("compress", name, value, hint)
    except ConfigError as exc:
        raise ConfigError(f"{source}: setting {name!r}: {exc}") from None


def _split(source: str, data: Mapping[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One layer -> (settings, method options); a table named after another method is ignored."""
    from .methods import available_methods

    fields = _settings_fields()
    sets: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key == "config" or v is None:
            continue
        if key == "options":
            if not isinstance(v, Mapping):  # a config file's "options" must be a table (fuzzing found dict(v) errors)
                raise ConfigError(f"{source}: 'options' must be a table of method options, got {v!r}")
            opts.update({str(a).replace("-", "_"): b for a, b in v.items()})
        elif key in fields:
            sets[key] = coerce_setting(key, v, source)
        elif isinstance(v, Mapping):
            if key == method:
                opts.update({str(a).replace("-", "_"): b for a, b in v.items()})
            elif key not in available_methods():
                raise ConfigError(f"{source}: unknown table [{key}]; tables name a method "
                                  f"({', '.join(available_methods())})")
        else:
            opts[key] = v  # a method option at the top level; checked against the method's options
    return sets, opts


def resolve(layers: Sequence[Layer]) -> tuple[Any, Any, Any]:
    """Merge method defaults, the saved ``config.json`` (when resuming), then ``layers`` (later wins).

    A layer may name a config file under ``"config"``; it is read and placed just below that layer.
    Returns ``(settings, method_info, options)``: the validated :class:`~gcompiler.methods.base.Settings`,
    the :class:`~gcompiler.methods.MethodInfo` and the method's options dataclass.
    """
    from .methods import get_method
    from .methods.base import Settings
    from .spec import load_config

    expanded: list[Layer] = []
    for source, data in layers:
        if data.get("config") is not None:
            cfg = str(data["config"])
            expanded.append((f"--config {cfg}", load_config(cfg)))
        expanded.append((source, data))

    def last(key: str, default: Any = None) -> Any:
        for _source, data in reversed(expanded):
            for k in (key, key.replace("_", "-")):
                if data.get(k) is not None:
                    return data[k]
        return default

    out = Path(str(last("out", Settings.out)))
    resume = bool(coerce_setting("resume", last("resume", False), "resume"))
    saved: dict[str, Any] = {}
    saved_path = out / "config.json"
    method_name = last("method")
    if resume and saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--resume: cannot read the saved settings {saved_path}: {exc}") from exc
        method_name = method_name or saved.get("method")
    method_name = str(method_name or Settings.method)
    info = get_method(method_name)
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    all_layers: list[Layer] = [("method defaults", dict(info.defaults))]
    if saved:
        all_layers.append((str(saved_path), saved))
    all_layers += expanded
    for source, data in all_layers:
        sets, opts = _split(source, data, method_name)
        merged.update(sets)
        options.update(opts)
    merged.pop("options", None)
    merged.update(method=method_name, resume=resume)
    settings = Settings(**merged)
    opts_obj = info.make_options(options)
    settings.options = dataclasses.asdict(opts_obj)
    settings.validate()
    info.check_bits(settings.bits)
    return settings, info, opts_obj


def check_run_dir(settings: Any) -> None:
    """Refuse to start a new run in a directory that holds one (unless resuming)."""
    out = Path(settings.out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if settings.resume:
        return
    from .train import list_checkpoints

    ckpts = list_checkpoints(out / "checkpoints")
    started = ckpts or (out / "stages").exists() or (out / "summary.json").exists()
    if started:
        at = f" (checkpoint at step {ckpts[-1][0]})" if ckpts else ""
        raise ConfigError(f"--out {out} already holds a run{at}: pass --resume to continue it, or choose another "
                          f"--out directory")


# --------------------------------------------------------------------------------------------- running

@contextlib.contextmanager
def run_logging(run_dir: Path, quiet: bool) -> Iterator[None]:
    """Console + ``run_dir/compress.log`` handlers on the ``gcompiler`` logger for the duration of a run."""
    root = logging.getLogger("gcompiler")
    handlers: list[logging.Handler] = []
    if not any(getattr(h, "_gcompiler_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        # errors end the run as exceptions, which the command line prints once
        console.addFilter(lambda record: record.levelno < logging.ERROR)
        console._gcompiler_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
        handlers.append(console)
    from .train.distributed import dist_info

    main = dist_info().is_main  # under torchrun only rank 0 logs progress and writes compress.log
    for h in root.handlers:
        if getattr(h, "_gcompiler_console", False):
            h.setLevel(logging.WARNING if quiet or not main else logging.INFO)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "compress.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.INFO)
        root.addHandler(fh)
        handlers.append(fh)
    level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(level)


def run_job(settings: Any, info: Any, options: Any, *, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Run ``info`` (a registered method) with resolved ``settings`` / ``options``; ``{"summary", "report"}``.

    On the CPU, torch uses ``settings.compute_threads()`` threads during the run (restored afterwards).
    ``teacher``: a module to compress instead of building ``settings.teacher``.
    """
    from .methods.base import CompressJob
    from .methods.dist import agree

    info_d = start_distributed(settings)
    run_dir = Path(settings.out)
    if info_d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", settings.to_json())
    threads = torch.get_num_threads()
    if settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(settings.compute_threads())
    try:
        torch.manual_seed(settings.seed)  # a teacher built without weights and the discriminator start the same
        job = agree(lambda: CompressJob.create(settings, teacher=teacher), what="building the teacher and the data")
        log.info(f"compress: method {info.name}, teacher {settings.teacher} ({job.teacher_profile.params:,} params, "
                 f"{job.teacher_profile.macs / 1e9:.3f} G MACs at input {list(job.reference_input.shape)}), "
                 f"data {settings.data}, bits {settings.bits}, {torch.get_num_threads()} thread(s) + "
                 f"{settings.data_workers()} data worker(s)"
                 + (f", target {job.target_macs / 1e9:.3f} G MACs" if job.target_macs else "")
                 + (f", {info_d.world_size} processes (global batch {settings.batch_size}, "
                    f"{settings.batch_size // info_d.world_size} per process)" if info_d.enabled else "")
                 + f"; run dir {run_dir}")
        result = info.run(job, options)
        if not isinstance(result, Mapping) or "summary" not in result:
            raise ConfigError(f"method {info.name!r} returned {type(result).__name__}; a method's run(job, opts) "
                              f"returns {{'summary': ..., 'report': ...}} (see docs/methods.md)")
        result = dict(result)
        from .methods.base import REFERENCE_KEYS, SUMMARY_KEYS

        summary = dict(result["summary"])
        if any(k not in summary for k in REFERENCE_KEYS):
            summary.update({k: v for k, v in job.reference_scores().items() if k not in summary})
        result["summary"] = {**{k: summary[k] for k in SUMMARY_KEYS if k in summary}, **summary}
        report = dict(result.get("report") or {})
        report.setdefault("pass_log", job.pass_log_rows())
        result["report"] = report
        return result
    finally:
        torch.set_num_threads(threads)


def start_distributed(settings: Any) -> Any:
    """Join the ``torchrun`` process group (if ``WORLD_SIZE`` > 1) and check that this run can be split
    across its processes: ``--batch-size`` (the global batch) divisible by the world size, and a resumed run
    on the number of processes it was started on. Returns the :class:`~gcompiler.train.DistInfo`."""
    from .errors import DistributedError
    from .train.distributed import init_distributed

    info, _ = init_distributed(settings.device)
    if not info.enabled:
        return info
    if settings.batch_size % info.world_size:
        raise DistributedError(f"--batch-size {settings.batch_size} is the global batch and must split evenly "
                               f"across the {info.world_size} processes: use a multiple of {info.world_size}")
    return info


def check_world_size(settings: Any) -> None:
    """A resumed run must use the number of processes it was started with (its checkpoints hold the data
    position and RNG of every rank, and the per-process batch depends on it)."""
    from .errors import DistributedError
    from .train.distributed import dist_info

    state_path = Path(settings.out) / "run_state.json"
    if not settings.resume or not state_path.is_file():
        return
    try:
        saved = int(json.loads(state_path.read_text()).get("world_size", 1))
    except (OSError, ValueError, TypeError):
        return
    now = dist_info().world_size
    if saved != now:
        how = ("python -m gcompiler compress ..." if saved == 1 else
               f"torchrun --nproc_per_node={saved} -m gcompiler compress ... (or the same total over several machines)")
        raise DistributedError(f"--resume: the run in {settings.out} was started on {saved} process(es) and this "
                               f"job has {now}; an exact continuation needs the same number (every process's data "
                               f"position and RNG are in the checkpoints, and the per-process batch depends on it). "
                               f"Resume it with {how}")


def run_compress(layers: Sequence[Layer], *, teacher: nn.Module | None = None) -> CompressResult:
    """Resolve ``layers`` (:func:`resolve`), check the run directory, run the method; the shared core of
    :func:`compress` and ``gcompiler compress``."""
    from . import serialize

    from .ioutil import run_lock
    from .methods.dist import agree, rank_prefix
    from .train.distributed import dist_info

    settings, info, options = resolve(layers)
    if dist_info().enabled:
        start_distributed(settings)  # all ranks check the run directory before rank 0 writes into it
        agree(lambda: (check_run_dir(settings), check_world_size(settings)), what="checking --out")
    else:
        check_run_dir(settings)
        check_world_size(settings)
    try:
        with (run_lock(settings.out) if dist_info().is_main else contextlib.nullcontext()), \
                run_logging(Path(settings.out), settings.quiet):  # one run per --out (.lock holds its pid)
            result = run_job(settings, info, options, teacher=teacher)
    except Exception as exc:
        if dist_info().enabled:  # say which rank failed; torchrun then ends the other workers
            print(f"gcompiler compress: {rank_prefix()}failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
        raise
    run_dir = Path(settings.out)
    student = result.get("student")
    if not isinstance(student, fx.GraphModule):
        student = serialize.load(run_dir)
    return CompressResult(student=student, summary=dict(result["summary"]), run_dir=run_dir,
                          report=dict(result.get("report") or {}))


def print_result(result: CompressResult) -> None:
    """The end of a run on the terminal: the verified graph rewrites, the before/after table, where things are."""
    from .methods.base import pass_log_table
    from .train.distributed import dist_info

    if not dist_info().is_main:  # one copy of the result, from rank 0
        return
    rows = result.report.get("pass_log") or []
    if rows:
        print("graph rewrites (verified by the pass manager; report.json[\"pass_log\"]):")
        print(pass_log_table(rows) + "\n")
    print(result.table())
    out = str(result.run_dir)
    phases = result.report.get("steps_per_phase") or {}
    per = f" ({', '.join(f'{k} {v}' for k, v in phases.items())})" if phases else ""
    ev = result.report.get("evaluation")
    if isinstance(ev, dict) and ev.get("protocol"):
        print(f"evaluation: {ev['protocol']}")
    print(f"\n{result.summary['steps']} steps{per} in {result.summary['wall_s']:.0f} s; run dir {out} (summary.json, "
          f"report.json); load the student with gcompiler.load({out!r})")
    html_report = Path(out) / "report.html"
    if html_report.is_file():
        print(f"report: {html_report} (self-contained; report.md beside it)")
    loud = result.report.get("below_baseline")
    if loud:
        print(f"\n!! {loud}", file=sys.stderr)


def compress(teacher: str | nn.Module, data: str, method: str = "gs", *, target_macs: str | float | None = None,
             bits: int = 32, steps: int | None = None, out: str | os.PathLike | None = None,
             **method_options: Any) -> CompressResult:
    """Compress ``teacher`` on ``data`` with ``method``; returns a :class:`CompressResult`.

    Args:
        teacher: a spec (``"builtin:sr"``, ``"resnet_9blocks:latest_net_G.pth"``, ``"pkg.mod:Class[:ckpt]"``)
            or an ``nn.Module`` (compressed from a copy; it is not modified).
        data: a data spec (``"builtin:sr"``, a folder, ``"paired:DIR"`` ...).
        method: a registered method (``gcompiler methods`` lists them with their options).
        target_macs: MACs budget: a count (``2e9``, ``"2g"``) or a reduction factor (``"8x"``).
        bits: weight / activation bits (32: no quantization).
        steps: training steps of the method's main stage (``max_steps``; default: the method's).
        out: run directory (default ``runs/<method>-<date>-<time>``).
        **method_options: shared settings (``finetune_steps``, ``batch_size``, ``crop``, ``seed``, ``device``,
            ``threads``, ``quiet``, ``resume``, ``config`` (a settings file) ...) and the method's own options
            (``rho=0.5`` for GS ...), each converted to its declared type by the one option parser.

    Raises:
        ConfigError: an unknown option or a value of the wrong type (naming it), an unknown method, an
            ``out`` that already holds a run (pass ``resume=True``).
    """
    kwargs: dict[str, Any] = dict(method_options)
    if isinstance(teacher, nn.Module):
        module: nn.Module | None = teacher
        spec = f"python:{type(teacher).__module__}.{type(teacher).__qualname__}"
    elif isinstance(teacher, str):
        module, spec = None, teacher
    else:
        raise ConfigError(f"compress(teacher=...): expected a spec string or an nn.Module, got {type(teacher).__name__}")
    if not isinstance(data, str):
        raise ConfigError(f"compress(data=...): expected a data spec string (builtin:sr, a folder ...), got "
                          f"{type(data).__name__}")
    kwargs.update(teacher=spec, data=data, method=method, bits=bits)
    if target_macs is not None:
        kwargs["target_macs"] = target_macs
    if steps is not None:
        kwargs["max_steps"] = steps
    kwargs["out"] = str(out) if out is not None else f"runs/{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_compress([("compress() arguments", kwargs)], teacher=module)


__all__ = ["compress", "CompressResult", "print_result", "resolve", "run_compress", "run_job", "run_logging", "check_run_dir",
           "coerce_setting"]
