"""The ``gcompiler`` command line (also ``python -m gcompiler``).

Sub-commands register themselves in :data:`COMMANDS` through :func:`command`; each gets its own
argparse sub-parser with a description that teaches its use.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch

from .errors import ConfigError, GCompilerError
from .spec import int_flag as _positive

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``fn(args) -> exit code`` as sub-command ``name``; its ``configure`` attribute adds flags."""

    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        configure = getattr(fn, "configure", lambda p: None)
        COMMANDS[name] = (configure, fn, help)
        return fn

    return deco


def _parse_kw(items: list[str]) -> dict[str, object]:
    """``--kw key=value`` constructor arguments (no declared types: :func:`~gcompiler.methods.options.guess_value`)."""
    from .methods.options import guess_value, parse_key_values

    return {k: guess_value(v) for k, v in parse_key_values(items, flag="--kw", example="ngf=32").items()}


_PROFILE_EPILOG = """\
examples:
  gcompiler profile resnet_9blocks                      # a zoo model at its reference input
  gcompiler profile resnet_9blocks --size 128 --kw ngf=32
  gcompiler profile builtin:cartoon                     # the built-in teacher
  gcompiler profile mynets.py:TinyGen --teacher-kw ch=16 --size 64   # your own class in a file
  gcompiler profile runs/demo                           # a saved student (gcompiler.save / a run directory)
"""




def _configure_profile(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _PROFILE_EPILOG
    p.add_argument("name", metavar="SPEC",
                   help="zoo model (see `gcompiler zoo`), builtin:sr / builtin:cartoon, pkg.module:Class[:ckpt], "
                        "path/to/file.py:Class[:ckpt], or a saved model / run directory")
    p.add_argument("--size", type=_positive("--size"), default=None,
                   help="spatial input size (default: the model's reference size; 256 for your own classes)")
    p.add_argument("--batch", type=_positive("--batch"), default=1, help="batch size of the example input (default 1)")
    p.add_argument("--kw", "--teacher-kw", dest="kw", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument for the model, repeatable (e.g. --kw ngf=32 --kw n_blocks=6)")
    p.add_argument("--all-nodes", action="store_true", help="list every node, not only those with MACs or params")
    p.add_argument("--json", action="store_true", help="print the profile as JSON instead of a table")


def model_and_input(spec_text: str, kw: dict[str, object], size: int | None, batch: int = 1,
                    flag: str = "SPEC") -> tuple[torch.nn.Module, torch.Tensor]:
    """Build the model a spec names (zoo, builtin, class, file, saved directory) and its example input.

    ``size`` is checked by running the model once: an input size the network cannot take (a size that is not
    a multiple of its downsampling factor) is a :class:`ConfigError` naming ``--size``, with a size that works.
    """
    from pathlib import Path

    from . import models
    from .spec import build_teacher, parse_teacher

    if Path(spec_text).is_dir():
        from . import serialize

        model = serialize.load(spec_text)
        ph = next(n for n in model.graph.nodes if n.op == "placeholder")
        shape = list(ph.meta["tensor_meta"].shape)
        if size is not None:
            shape[-2:] = [size, size]
        shape[0] = batch
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return model.eval(), _check_size(model, x, size)
    tspec = parse_teacher(spec_text)
    model = build_teacher(tspec, **kw)
    arch, akw = (tspec.name, kw) if tspec.kind == "zoo" else (None, {})
    if tspec.kind == "builtin":
        from .data.tasks import teacher_meta

        meta = teacher_meta(tspec.name.split(":")[0])
        arch, akw = meta.get("arch"), dict(meta.get("kwargs", {}))
    if arch and arch in models.available():
        (x, *_r) = models.spec(arch).example_inputs(batch=batch, size=size, **akw)
    else:
        in_ch = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
        s = size or 256
        x = torch.rand((batch, in_ch, s, s), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model, _check_size(model, x, size)


def _size_problem(model: torch.nn.Module, inp: torch.Tensor) -> str | None:
    """Why ``model`` cannot take ``inp`` as an image-to-image input (``None`` when it can)."""
    try:
        with torch.no_grad():
            y = model(inp)
    except Exception as exc:  # noqa: BLE001 - reported to the user, with its first line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"it fails ({type(exc).__name__}: {first})"
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        return None  # not an image-to-image model: any size that runs is fine
    h, oh = inp.shape[-1], y.shape[-1]
    if oh % h == 0 or h % oh == 0:
        return None
    return f"its output is {oh} pixels wide, not a whole multiple or fraction of {h}"


def _check_size(model: torch.nn.Module, x: torch.Tensor, size: int | None) -> torch.Tensor:
    problem = _size_problem(model, x)
    if problem is None:
        return x
    what = f"--size {size}" if size is not None else f"the input {tuple(x.shape)}"
    h = int(x.shape[-1])
    hint = ""
    for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):  # the smallest step that works twice in a row
        start = max(m, -(-h // m) * m)
        for s in range(start, min(start + 6 * m, 4096) + 1, m):
            if all(_size_problem(model, torch.zeros(*x.shape[:-2], t, t)) is None for t in (s, s + m)):
                hint = (f"; it takes multiples of {m} from {s} pixels, e.g. --size {s}" if m > 1
                        else f"; it takes sizes from {s} pixels, e.g. --size {s}")
                break
        if hint:
            break
    raise ConfigError(f"{what}: the model cannot map a {x.shape[-2]}x{x.shape[-1]} input to an image: "
                      f"{problem}{hint}")


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    from .profiler import profile

    model, x = model_and_input(args.name, _parse_kw(args.kw), args.size, args.batch)
    prof = profile(model, x)
    print(json.dumps(prof.to_dict(), indent=1) if args.json else prof.table(all_nodes=args.all_nodes))
    return 0


cmd_profile.configure = _configure_profile  # type: ignore[attr-defined]
command("profile", "count MACs, parameters and size of a model (zoo, built-in, your own class or file, or a "
                   "saved one), per node")(cmd_profile)


def zoo_table(size: int | None = None) -> str:
    """One line per zoo model: family, kind, reference input, params, MACs, fp32 and int8 size."""
    from . import models
    from .profiler import profile

    head = ("model", "family", "kind", "input", "params", "G MACs", "MiB fp32", "MiB int8")
    rows = []
    for name in models.available():
        spec = models.spec(name)
        try:
            model = models.create(name)
            inputs = spec.example_inputs(size=size if spec.has_spatial_input else None)
        except GCompilerError as exc:  # e.g. a feature extractor whose weights need a file
            rows.append((name, spec.family, spec.kind, "-", "-", "-", "-", f"({exc.__class__.__name__})"))
            continue
        prof = profile(model, *inputs)
        shape = "x".join(map(str, inputs[0].shape))
        rows.append((name, spec.family, spec.kind, shape, f"{prof.params:,}", f"{prof.macs / 1e9:.2f}",
                     f"{prof.size_mib(32):.2f}", f"{prof.size_mib(8):.2f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _configure_zoo(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n  gcompiler zoo\n  gcompiler zoo --size 128     # every image model at 128 x 128\n"
    p.add_argument("--size", type=_positive("--size", 8), default=None,
                   help="override every model's spatial input size (>= 8)")


def cmd_zoo(args: argparse.Namespace) -> int:
    print(zoo_table(args.size))
    return 0


cmd_zoo.configure = _configure_zoo  # type: ignore[attr-defined]
command("zoo", "list the model zoo with params, MACs and sizes at each model's reference input")(cmd_zoo)


_PIPELINE_SYNTAX = """\
pipeline syntax: pass names separated by commas, options in braces:
  insert-masks{round_to=8},prune-by-ratio{ratio=0.5},eliminate-dead-channels
run one on a model:   gcompiler compile SPEC "PIPELINE" --out DIR
from Python:          gm = gcompiler.compile(model, "PIPELINE", example_input)
"""


def plain_text(text: str) -> str:
    """Docstring text without reST markup: ``:func:`x``` -> x, ````x```` -> x, ``*x*`` -> x."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", lambda m: m.group(1).split(".")[-1]
                  if m.group(0).startswith(":func:`~") or m.group(0).startswith(":class:`~") else m.group(1), text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"(?<![\w*])\*\*?([^*\n]+?)\*\*?(?![\w*])", r"\1", text)
    return text


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes import pass_infos

    print(_PIPELINE_SYNTAX)
    for info in pass_infos():
        opts = ", ".join(f"{o.name}={o.default!r}" for o in info.options.values())
        print(f"{info.name}  [{plain_text(info.contract_text())}]\n    {plain_text(info.description)}")
        if opts:
            print(f"    options: {opts}")
    return 0


def _configure_passes(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n  gcompiler passes\n  gcompiler passes | grep -A3 eliminate-dead-channels\n\n" + _PIPELINE_SYNTAX


cmd_passes.configure = _configure_passes  # type: ignore[attr-defined]
command("passes", "list the registered compiler passes, their options and contracts")(cmd_passes)


# --------------------------------------------------------------------------------------------- compress

_COMPRESS_EPILOG = """\
examples:
  # GS-8 on the built-in x2 super-resolution task (the teacher ships with gcompiler)
  gcompiler compress --teacher builtin:sr --data builtin:sr --bits 8 --out runs/gs8

  # GS-32 (pruning only) of a CycleGAN generator to 1/8 of its MACs, on a folder of photos
  gcompiler compress --teacher resnet_9blocks:latest_net_G.pth --data photos/ --bits 32 \\
      --target-macs 8x --max-steps 2000 --crop 256 --out runs/h2z

  # your own generator class, constructor arguments, perceptual distance with VGG16 weights
  gcompiler compress --teacher mypkg.nets:Generator:g.pth --teacher-kw ngf=32 --data paired:data/ \\
      --opt vgg_weights=vgg16-397923af.pth --out runs/mine

  # a generator class in a plain file, held-out images in another folder
  gcompiler compress --teacher nets.py:MyGen:weights.pth --data photos/ --eval-data photos_val/ --out runs/own

  # post-training quantization only (no training), with magnitude slimming to 1/2 of the MACs
  gcompiler compress --method ptq --teacher builtin:sr --data builtin:sr --bits 8 --target-macs 2x --out runs/ptq

  # continue an interrupted run to the same final step count
  gcompiler compress --out runs/gs8 --resume

  # the paper's ablations (a gs option): --opt ablation=prune-only | distill-only | ptq | no-gan

  # several GPUs on one machine (--batch-size is the global batch, split across the processes)
  torchrun --standalone --nproc_per_node=4 -m gcompiler compress --teacher builtin:sr --data builtin:sr \\
      --batch-size 32 --out runs/gs-4gpu

  # two machines x 8 GPUs: run on each (--node_rank=1 on the second); --out on a shared file system
  torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \\
      -m gcompiler compress --teacher resnet_9blocks:g.pth --data photos/ --batch-size 64 --out /shared/runs/h2z
  (resume: the same command with --resume and the same total number of processes; rank 0 writes --out,
  searches and evaluates; a failed process stops the job; GCOMPILER_DIST_TIMEOUT=seconds, default 1800)

data: a folder (single / paired A,B / unpaired), aligned:DIR (side-by-side A|B), or builtin:sr.
teacher: zoo_name[:ckpt] (see `gcompiler zoo`), pkg.module:Class[:ckpt] (the current directory is importable),
  path/to/file.py:Class[:ckpt], builtin:sr or builtin:cartoon. A teacher without weights is random: a warning.
target MACs: an absolute count (2e9, 2g) or a reduction factor (8x), counted at the reference input
  (the zoo's reference input for zoo teachers and builtin:sr, else one training crop).
settings: method defaults < the saved config.json (--resume) < --config FILE < flags. Python:
  gcompiler.compress(teacher, data, method, target_macs=..., bits=..., steps=..., out=..., **options).
"""


def method_help(name: str | None = None) -> str:
    """Each registered method (or ``name``): summary, defaults and typed options, as ``--help`` shows them."""
    from .methods import available_methods, get_method

    parts = []
    for n in ([name] if name else available_methods()):
        info = get_method(n)
        d = ", ".join(f"{k} {v}" for k, v in info.defaults.items())
        parts.append(f"method {n}: {info.summary}" + (f" (defaults: {d})" if d else "")
                     + f"\n{n} options (--opt KEY=VALUE, a [{n}] table in --config, or keyword arguments of "
                       f"gcompiler.compress):\n" + info.option_help())
    return "\n\n".join(parts)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=110)


class _MovedToOption(argparse.Action):
    """A flag that became a method option: a clear error saying how to write it now."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                  option_string: str | None = None) -> None:
        key = (option_string or "").lstrip("-").replace("-", "_")
        parser.error(f"{option_string} is an option of the gs method now: write --opt {key}={values}")


def _configure_compress(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _Formatter
    p.description = ("Distil a small (pruned, quantized) student from a teacher generator with a compression "
                     "method and export it with a before/after summary. Generic flags are listed here; each "
                     "method's own options (--opt KEY=VALUE) are listed below and by `gcompiler methods`.")
    try:
        p.epilog = _COMPRESS_EPILOG + "\n" + method_help()
    except GCompilerError:
        p.epilog = _COMPRESS_EPILOG
    S = argparse.SUPPRESS
    g = p.add_argument_group("what to compress")
    g.add_argument("--teacher", metavar="SPEC", default=S,
                   help="teacher: zoo_name[:ckpt], pkg.module:Class[:ckpt] or builtin:sr (default builtin:sr)")
    g.add_argument("--teacher-kw", action="append", metavar="KEY=VALUE", default=S,
                   help="constructor argument of the teacher, repeatable (e.g. --teacher-kw ngf=32)")
    g.add_argument("--data", metavar="SPEC", default=S,
                   help="training data: folder, single:/paired:/unpaired:/aligned:DIR or builtin:sr "
                        "(default builtin:sr)")
    g.add_argument("--discriminator", metavar="SPEC", default=S,
                   help="pretrained discriminator for methods with a GAN loss (same forms as --teacher; default "
                        "builtin:NAME:discriminator for a builtin:NAME teacher)")
    g.add_argument("--method", default=S, help="compression method (default gs; see below / `gcompiler methods`)")
    g.add_argument("--config", metavar="FILE", default=S, help="TOML / YAML / JSON settings; flags override them")
    g = p.add_argument_group("targets")
    g.add_argument("--bits", type=int, default=S, help="weight and activation bits: 8 (default), 4, ... or 32 "
                                                       "(no quantization)")
    g.add_argument("--target-macs", metavar="N|Kx", default=S,
                   help="MACs budget: absolute (2e9) or reduction factor (8x)")
    g.add_argument("--opt", action="append", metavar="KEY=VALUE", default=S,
                   help="method option, repeatable (listed below)")
    for moved in ("--rho", "--ablation"):
        g.add_argument(moved, action=_MovedToOption, default=S, help=S)
    g = p.add_argument_group("schedule")
    g.add_argument("--max-steps", type=int, default=S, help="training steps of the method's main stage")
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
    g.add_argument("--eval-data", metavar="FOLDER", default=S,
                   help="held-out evaluation data (same forms as --data); without it every k-th image of a folder "
                        "--data is held out of training (said in the summary)")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress bar; warnings only")


def cmd_compress(args: argparse.Namespace) -> int:
    from .compression import print_result, run_compress
    from .methods.options import parse_key_values

    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    layer: dict[str, object] = {k: v for k, v in given.items() if k not in ("opt",)}
    if "opt" in given:
        layer["options"] = parse_key_values(given["opt"])
    print_result(run_compress([("flags", layer)]))
    return 0


cmd_compress.configure = _configure_compress  # type: ignore[attr-defined]
command("compress", "distil and compress a generator with a method (GAN Slimming: prune + quantize + distill) "
                    "and export it")(cmd_compress)


def _configure_methods(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n  gcompiler methods\n  gcompiler methods gs\n  gcompiler methods ptq\n"
    p.add_argument("name", nargs="?", default=None, help="one method (default: all)")


def cmd_methods(args: argparse.Namespace) -> int:
    print(method_help(args.name))
    return 0


cmd_methods.configure = _configure_methods  # type: ignore[attr-defined]
command("methods", "list the compression methods with their typed options and defaults")(cmd_methods)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _configure_demo(p: argparse.ArgumentParser) -> None:
    from .demo import configure

    configure(p)


cmd_demo.configure = _configure_demo  # type: ignore[attr-defined]
command("demo", "run the main job on a built-in task: GS-8 compression of a built-in teacher, table and report")(
    cmd_demo)


# --------------------------------------------------------------------------------------------- export / report

def _configure_export(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n  gcompiler export runs/demo --format safetensors   # gcompiler.load(runs/demo/export/"
                "safetensors)\n  gcompiler export runs/demo --format pt2           # torch.export program\n"
                "  gcompiler export runs/demo --format onnx --int8    # ONNX fp32 and int8 QDQ (onnxruntime)\n"
                "  gcompiler export runs/demo --format onnx --int8 --latency   # ... and the fastest back end's ms\n\n"
                "Each file is written atomically, then loaded, run and compared with the PyTorch student; the "
                "maximum error is printed.")
    p.add_argument("run", metavar="RUN", help="a finished run directory (or any gcompiler.save directory)")
    p.add_argument("--format", required=True, choices=["safetensors", "pt2", "onnx"], help="what to write")
    p.add_argument("--int8", action="store_true", help="with --format onnx: also an int8 QDQ model")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write (default RUN/export)")
    p.add_argument("--threads", type=_positive("--threads"), default=1,
                   help="ONNX Runtime (and, with --latency, torch) threads for the check")
    p.add_argument("--latency", action="store_true",
                   help="also time the student through gcompiler.deploy at its example input: fp32, and int8 with "
                        "--int8 or for a quantized student (each on the back end deploy measures fastest)")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_latency, export_run, print_latency, print_rows

    print_rows(export_run(args.run, args.format, int8=args.int8, out=args.out, threads=args.threads))
    if args.latency:
        import torch

        torch.set_num_threads(args.threads)
        print_latency(export_latency(args.run, int8=args.int8))
    return 0


cmd_export.configure = _configure_export  # type: ignore[attr-defined]
command("export", "write a run's student as safetensors, a torch.export program or ONNX (fp32 / int8), verified")(
    cmd_export)


def _configure_report(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n  gcompiler report runs/demo      # rewrites runs/demo/report.html and report.md\n"
    p.add_argument("run", metavar="RUN", help="a finished run directory")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render

    html_path, md_path = render(args.run)
    print(f"report: {html_path}\n        {md_path}")
    return 0


cmd_report.configure = _configure_report  # type: ignore[attr-defined]
command("report", "re-render a finished run's report.html / report.md from its files")(cmd_report)


# --------------------------------------------------------------------------------------------- compile

def _configure_compile(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n"
                "  gcompiler compile resnet_9blocks \"insert-masks,prune-by-ratio{ratio=0.5},eliminate-dead-channels\" "
                "--size 128 --out slim/\n"
                "  gcompiler compile nets.py:MyGen:g.pth \"fold-norms\" --out folded/\n"
                "  gcompiler compile builtin:sr \"fold-norms,insert-fake-quant,calibrate-activations\" --out sr8/\n\n"
                "The result is saved with gcompiler.save (load it with gcompiler.load(DIR)); `gcompiler passes` "
                "lists the passes and their options.")
    p.add_argument("spec", metavar="SPEC", help="model: the forms of `gcompiler profile`")
    p.add_argument("pipeline", metavar="PIPELINE", help="pass pipeline, e.g. \"fold-norms,eliminate-dead-channels\"")
    p.add_argument("--out", metavar="DIR", required=True, help="where to save the compiled model (must not exist)")
    p.add_argument("--size", type=_positive("--size"), default=None, help="spatial size of the example input")
    p.add_argument("--kw", "--teacher-kw", dest="kw", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument, repeatable")


def cmd_compile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import serialize
    from .passes.manager import run_pipeline
    from .profiler import profile

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out} exists; choose a new directory")
    model, x = model_and_input(args.spec, _parse_kw(args.kw), args.size)
    from . import trace

    gm = model if isinstance(model, torch.fx.GraphModule) else trace(model, x)
    before = profile(gm, x)
    gm, plog = run_pipeline(gm, args.pipeline)
    after = profile(gm, x)
    from .methods.evaluation import pass_log_table

    rows = [{"stage": "compile", "pass": r.name, "options": dict(r.options), "seconds": r.seconds,
             "nodes": list(r.nodes), "params": list(r.params), "macs": list(r.macs), "error": r.error,
             "contract": r.contract} for r in plog.records]
    print(pass_log_table(rows))
    serialize.save(gm, out)
    print(f"\nMACs {before.macs / 1e9:.3f} G -> {after.macs / 1e9:.3f} G, params {before.params:,} -> "
          f"{after.params:,} at input {list(x.shape)}; saved to {out} (gcompiler.load({str(out)!r}))")
    return 0


cmd_compile.configure = _configure_compile  # type: ignore[attr-defined]
command("compile", "run a pass pipeline on a model and save the result")(cmd_compile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcompiler",
        description="Make GAN generators small and fast: trace a generator to a torch.fx graph, rewrite it with "
                    "compiler passes (channel pruning, quantization), distill it from its teacher, and run it "
                    "with int8 kernels.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gcompiler COMMAND --help` for the flags and examples of a command.\n"
               "Start with `gcompiler demo` (then open the run's report.html), `gcompiler zoo`, `gcompiler passes`.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gcompiler {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _load_commands()
    for name, (configure, fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        configure(p)
        if not p.epilog:
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            p.epilog = f"example:\n  gcompiler {name}" + (" --help" if name not in ("zoo", "tasks", "methods") else "")
        p.set_defaults(_fn=fn)
    return parser


def _load_commands() -> None:
    # Commands defined in other modules register on import.
    import importlib

    for mod in ("gcompiler.train.cli", "gcompiler.tasks"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    try:
        return int(args._fn(args) or 0)
    except GCompilerError as exc:
        print(f"gcompiler {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gcompiler {args.command}: interrupted", file=sys.stderr)
        return 130
