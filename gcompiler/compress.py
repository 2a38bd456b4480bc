"""``gcompiler compress``: distil and compress a generator with a method (GAN Slimming first).

Settings come from, in increasing priority: the method's defaults, the run directory's saved
``config.json`` (with ``--resume``), the ``--config`` file (TOML / YAML / JSON), and the flags given on the
command line. The resolved settings are written to ``OUT/config.json`` (usable as ``--config``).

A config file holds the flag names as keys (``max_steps`` or ``max-steps``) and the method's options
either at the top level or in a table named after the method::

    teacher = "builtin:sr"
    data = "builtin:sr"
    bits = 8
    max_steps = 300
    [gs]
    rho = 2.0
    gan_weight = 0.05

The run directory ``OUT`` receives ``checkpoints/`` (search stage), ``finetune/`` (fine-tuning stage,
its own checkpoints), ``stages/`` (the slim student before fine-tuning), ``scalars.csv``, ``tb/``,
``samples/``, ``train.log``, ``compress.log``, ``config.json``, ``summary.json``, ``report.json`` and the
student itself (``model.safetensors`` + ``architecture.json``: ``gcompiler.load(OUT)``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping

from .cli import _parse_kw, command
from .errors import ConfigError, GCompilerError
from .ioutil import atomic_write_json

log = logging.getLogger("gcompiler.compress")

_EPILOG = """\
examples:
  # GS-8 on the built-in x2 super-resolution task (the teacher ships with gcompiler)
  gcompiler compress --teacher builtin:sr --data builtin:sr --bits 8 --out runs/gs8

  # GS-32 (pruning only) of a CycleGAN generator to 1/8 of its MACs, on a folder of photos
  gcompiler compress --teacher resnet_9blocks:latest_net_G.pth --data photos/ --bits 32 \\
      --target-macs 8x --max-steps 2000 --crop 256 --out runs/h2z

  # your own generator class, constructor arguments, perceptual distance with VGG16 weights
  gcompiler compress --teacher mypkg.nets:Generator:g.pth --teacher-kw ngf=32 --data paired:data/ \\
      --opt vgg_weights=vgg16-397923af.pth --out runs/mine

  # continue an interrupted run to the same final step count
  gcompiler compress --out runs/gs8 --resume

  # the paper's ablations: --ablation prune-only | distill-only | ptq | no-gan

data: a folder (single / paired A,B / unpaired), aligned:DIR (side-by-side A|B), or builtin:sr.
teacher: zoo_name[:ckpt] (see `gcompiler zoo`), pkg.module:Class[:ckpt], or builtin:sr.
target MACs: an absolute count (2e9, 2g) or a reduction factor (8x), counted at the reference input
  (the zoo's reference input for zoo teachers and builtin:sr, else one training crop).
"""


def _method_help() -> str:
    from .methods import available_methods, get_method

    parts = []
    for name in available_methods():
        info = get_method(name)
        d = ", ".join(f"{k} {v}" for k, v in info.defaults.items())
        parts.append(f"method {name}: {info.summary}" + (f" (defaults: {d})" if d else "")
                     + f"\n{name} options (--opt KEY=VALUE, or a [{name}] table in --config):\n" + info.option_help())
    return "\n\n".join(parts)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=110)


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _Formatter
    p.description = ("Distil a small (pruned, quantized) student from a teacher generator and export it. "
                     "The student is the teacher's own graph with learnable channel masks and fake "
                     "quantization; it is trained against the teacher, its dead channels are removed "
                     "exactly, it is fine-tuned and saved with a before/after summary.")
    try:
        p.epilog = _EPILOG + "\n" + _method_help()
    except GCompilerError:
        p.epilog = _EPILOG
    S = argparse.SUPPRESS
    g = p.add_argument_group("what to compress")
    g.add_argument("--teacher", metavar="SPEC", default=S,
                   help="teacher: zoo_name[:ckpt], pkg.module:Class[:ckpt] or builtin:sr (default builtin:sr)")
    g.add_argument("--teacher-kw", action="append", metavar="KEY=VALUE", default=S,
                   help="constructor argument of the teacher, repeatable (e.g. --teacher-kw ngf=32)")
    g.add_argument("--data", metavar="SPEC", default=S,
                   help="training data: folder, single:/paired:/unpaired:/aligned:DIR or builtin:sr "
                        "(default builtin:sr)")
    g.add_argument("--method", default=S, help="compression method (default gs; see below)")
    g.add_argument("--config", metavar="FILE", default=S, help="TOML / YAML / JSON settings; flags override them")
    g = p.add_argument_group("targets")
    g.add_argument("--bits", type=int, default=S, help="weight and activation bits: 8 (GS-8, default), 4, ... or 32 "
                                                       "(no quantization, GS-32)")
    g.add_argument("--target-macs", metavar="N|Kx", default=S,
                   help="MACs budget: absolute (2e9) or reduction factor (8x); masks of smallest magnitude are "
                        "zeroed after the search until it is met")
    g.add_argument("--rho", type=float, default=S, help="L1 weight on the channel masks (sparsity pressure)")
    g.add_argument("--ablation", default=S, choices=["none", "prune-only", "distill-only", "ptq", "no-gan"],
                   help="run one of the paper's ablations (method option 'ablation')")
    g.add_argument("--opt", action="append", metavar="KEY=VALUE", default=S,
                   help="method option, repeatable (listed below)")
    g = p.add_argument_group("schedule")
    g.add_argument("--max-steps", type=int, default=S, help="training steps of the search stage")
    g.add_argument("--finetune-steps", type=int, default=S, help="fine-tuning steps of the slim student (0: none)")
    g.add_argument("--batch-size", type=int, default=S, help="images per step (default 8)")
    g.add_argument("--crop", type=int, default=S,
                   help="random crop size in input pixels (default 48 for builtin:sr, 128 for folders)")
    g.add_argument("--seed", type=int, default=S, help="seed of initialisation, data order and augmentation")
    g.add_argument("--macs-size", type=int, default=S, metavar="N",
                   help="count MACs (and trace the student) at an N x N input (default: the zoo's reference size "
                        "for zoo teachers and builtin:sr, else --crop)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", default=S, help="run directory (default runs/compress)")
    g.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --out from its newest checkpoint (same final step count)")
    g.add_argument("--save-every", type=int, default=S, help="checkpoint every N steps (default 50; 0: at the end)")
    g.add_argument("--sample-every", type=int, default=S, help="write an input|teacher|student grid every N steps")
    g.add_argument("--log-every", type=int, default=S, help="log scalars every N steps")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:1 ...")
    g.add_argument("--workers", type=int, default=S,
                   help="data loading worker processes (default: 0 for builtin:sr, else CPUs - 1, max 4)")
    g.add_argument("--threads", type=int, default=S,
                   help="torch CPU threads (default: half the CPUs not used by data workers, at least 1)")
    g.add_argument("--eval-images", type=int, default=S, help="held-out images for the final PSNR (folders)")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress bar; warnings only")


_FLAG_TO_SETTING = {k: k for k in (
    "teacher", "data", "method", "bits", "target_macs", "max_steps", "finetune_steps", "batch_size", "crop",
    "macs_size", "seed", "out", "resume", "save_every", "sample_every", "log_every", "device", "workers", "threads",
    "eval_images", "quiet")}


def _settings_fields() -> dict[str, Any]:
    from .methods.base import Settings

    return {f.name: f for f in dataclasses.fields(Settings)}


def _coerce_setting(name: str, value: Any, source: str) -> Any:
    from .methods import coerce_option
    from .methods.base import Settings

    if name == "teacher_kw":
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, list):
            return _parse_kw([str(v) for v in value])
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


def resolve_settings(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Merge method defaults, the saved config (``--resume``), ``--config`` and flags.

    Returns ``(settings, method_info, options)``.
    """
    from .methods import get_method
    from .methods.base import Settings
    from .spec import load_config

    given = vars(args)
    fields = _settings_fields()
    layers: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (source, settings, options)

    def split(source: str, data: Mapping[str, Any], method_hint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        sets: dict[str, Any] = {}
        opts: dict[str, Any] = {}
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key in ("config",):
                continue
            if key == "options":
                opts.update(dict(v or {}))
            elif key in fields:
                sets[key] = _coerce_setting(key, v, source)
            elif isinstance(v, Mapping):
                from .methods import available_methods

                if key == method_hint:
                    opts.update({str(a).replace("-", "_"): b for a, b in v.items()})
                elif key not in available_methods():  # tables of other methods are ignored
                    raise ConfigError(f"{source}: unknown table [{key}]; tables name a method "
                                      f"({', '.join(available_methods())})")
            else:
                opts[key] = v  # a method option at the top level; checked against the method below
        return sets, opts

    cfg_data: dict[str, Any] = {}
    if "config" in given:
        cfg_data = load_config(given["config"])
    flag_sets = {_FLAG_TO_SETTING[k]: v for k, v in given.items() if k in _FLAG_TO_SETTING}
    out = Path(flag_sets.get("out") or cfg_data.get("out") or Settings.out)
    resume = bool(flag_sets.get("resume", cfg_data.get("resume", False)))
    saved_path = out / "config.json"
    method_name = flag_sets.get("method") or cfg_data.get("method")
    saved: dict[str, Any] = {}
    if resume and saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--resume: cannot read the saved settings {saved_path}: {exc}") from exc
        method_name = method_name or saved.get("method")
    method_name = method_name or Settings.method
    info = get_method(str(method_name))

    layers.append(("method defaults", dict(info.defaults), {}))
    if saved:
        layers.append((str(saved_path), *split(str(saved_path), saved, str(method_name))))
    if cfg_data:
        layers.append((f"--config {given['config']}", *split(f"--config {given['config']}", cfg_data,
                                                                str(method_name))))
    flag_opts: dict[str, Any] = {}
    if "opt" in given:
        for item in given["opt"]:
            if "=" not in item:
                raise ConfigError(f"--opt {item!r}: expected KEY=VALUE, e.g. --opt gan_weight=0.1")
            k, v = item.split("=", 1)
            flag_opts[k.strip().replace("-", "_")] = v.strip()
    for name in ("rho", "ablation"):
        if name in given:
            flag_opts[name] = given[name]
    if "teacher_kw" in given:
        flag_sets["teacher_kw"] = _parse_kw(given["teacher_kw"])
    layers.append(("flags", flag_sets, flag_opts))

    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for _source, sets, opts in layers:
        merged.update(sets)
        options.update(opts)
    merged["method"] = str(method_name)
    merged["resume"] = resume
    merged.pop("options", None)
    settings = Settings(**merged)
    opts_obj = info.make_options(options)
    settings.options = dataclasses.asdict(opts_obj)
    settings.validate()
    return settings, info, opts_obj


def _check_run_dir(settings: Any) -> None:
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


@contextlib.contextmanager
def run_logging(run_dir: Path, quiet: bool) -> Iterator[None]:
    """Console + ``run_dir/compress.log`` handlers on the ``gcompiler`` logger for the duration of a run."""
    handlers = _setup_logging(run_dir, quiet)
    try:
        yield
    finally:
        root = logging.getLogger("gcompiler")
        for h in handlers:
            root.removeHandler(h)
            h.close()


def _setup_logging(run_dir: Path, quiet: bool) -> list[logging.Handler]:
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
    for h in root.handlers:
        if getattr(h, "_gcompiler_console", False):
            h.setLevel(logging.WARNING if quiet else logging.INFO)
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run_dir / "compress.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(logging.INFO)
    root.addHandler(fh)
    handlers.append(fh)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handlers


def compress(settings: Any, info: Any, options: Any) -> dict[str, Any]:
    """Run ``info`` (a registered method) with ``settings`` / ``options``; returns ``{"summary", "report"}``.

    On the CPU, torch uses ``settings.compute_threads()`` threads during the run (restored afterwards).
    """
    import os

    import torch

    from .methods.base import CompressJob

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("gcompiler compress runs in a single process (its pruning and export stages are not "
                          "distributed); start it without torchrun, or drive gcompiler.train.Trainer under torchrun")
    run_dir = Path(settings.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", settings.to_json())
    threads = torch.get_num_threads()
    if settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(settings.compute_threads())
    try:
        torch.manual_seed(settings.seed)  # a teacher built without weights and the discriminator start the same
        job = CompressJob.create(settings)
        log.info(f"compress: method {info.name}, teacher {settings.teacher} ({job.teacher_profile.params:,} params, "
                 f"{job.teacher_profile.macs / 1e9:.3f} G MACs at input {list(job.reference_input.shape)}), "
                 f"data {settings.data}, bits {settings.bits}, {torch.get_num_threads()} thread(s) + "
                 f"{settings.data_workers()} data worker(s)"
                 + (f", target {job.target_macs / 1e9:.3f} G MACs" if job.target_macs else "")
                 + f"; run dir {run_dir}")
        result = info.run(job, options)
        if isinstance(result, dict) and isinstance(result.get("report"), dict):
            result["report"].setdefault("pass_log", job.pass_log_rows())
        return result
    finally:
        torch.set_num_threads(threads)


def cmd_compress(args: argparse.Namespace) -> int:
    from .methods.base import pass_log_table, summary_table

    settings, info, options = resolve_settings(args)
    _check_run_dir(settings)
    with run_logging(Path(settings.out), settings.quiet):
        result = compress(settings, info, options)
    summary = result["summary"]
    rows = result.get("report", {}).get("pass_log") or []
    if rows:
        print("graph rewrites (verified by the pass manager; report.json[\"pass_log\"]):")
        print(pass_log_table(rows) + "\n")
    print(summary_table(summary))
    print(f"\n{summary['steps']} steps in {summary['wall_s']:.0f} s; run dir {settings.out} "
          f"(summary.json, report.json); load the student with gcompiler.load({str(settings.out)!r})")
    return 0


cmd_compress.configure = configure  # type: ignore[attr-defined]
command("compress", "distil and compress a generator (GAN Slimming: prune + quantize + distill) and export it")(
    cmd_compress)
