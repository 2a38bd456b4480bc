"""The ``gcompiler`` command line (also ``python -m gcompiler``).

Sub-commands register themselves in :data:`COMMANDS` through :func:`command`; each gets its own
argparse sub-parser with a description that teaches its use.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import GCompilerError

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


def _configure_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="zoo model name (see `gcompiler zoo`)")
    p.add_argument("--size", type=int, default=None, help="spatial input size (default: the model's reference size)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input (default 1)")
    p.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument for the model, repeatable (e.g. --kw ngf=32 --kw n_blocks=6)")
    p.add_argument("--all-nodes", action="store_true", help="list every node, not only those with MACs or params")
    p.add_argument("--json", action="store_true", help="print the profile as JSON instead of a table")


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    from . import models
    from .profiler import profile

    kw = _parse_kw(args.kw)
    model = models.create(args.name, **kw)
    inputs = models.spec(args.name).example_inputs(batch=args.batch, size=args.size, **kw)
    prof = profile(model, *inputs)
    print(json.dumps(prof.to_dict(), indent=1) if args.json else prof.table(all_nodes=args.all_nodes))
    return 0


cmd_profile.configure = _configure_profile  # type: ignore[attr-defined]
command("profile", "count MACs, parameters and size of a zoo model, per node")(cmd_profile)


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
    p.add_argument("--size", type=int, default=None, help="override every model's spatial input size")


def cmd_zoo(args: argparse.Namespace) -> int:
    print(zoo_table(args.size))
    return 0


cmd_zoo.configure = _configure_zoo  # type: ignore[attr-defined]
command("zoo", "list the model zoo with params, MACs and sizes at each model's reference input")(cmd_zoo)


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes import pass_infos

    for info in pass_infos():
        opts = ", ".join(f"{o.name}={o.default!r}" for o in info.options.values())
        print(f"{info.name}  [{info.contract_text()}]\n    {info.description}")
        if opts:
            print(f"    options: {opts}")
    return 0


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

  # continue an interrupted run to the same final step count
  gcompiler compress --out runs/gs8 --resume

  # the paper's ablations (a gs option): --opt ablation=prune-only | distill-only | ptq | no-gan

data: a folder (single / paired A,B / unpaired), aligned:DIR (side-by-side A|B), or builtin:sr.
teacher: zoo_name[:ckpt] (see `gcompiler zoo`), pkg.module:Class[:ckpt], or builtin:sr.
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
command("demo", "run the main job on the built-in default: GS-8 of the built-in SR teacher, before/after table")(
    cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcompiler",
        description="Make GAN generators small and fast: trace a generator to a torch.fx graph, rewrite it with "
                    "compiler passes (channel pruning, quantization), distill it from its teacher, and run it "
                    "with int8 kernels.",
        epilog="Run `gcompiler COMMAND --help` for the flags of a command. Start with `gcompiler zoo`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _load_commands()
    for name, (configure, fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        configure(p)
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
