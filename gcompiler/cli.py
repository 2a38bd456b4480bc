"""The ``gcompiler`` command line (also ``python -m gcompiler``).

Sub-commands register themselves in :data:`COMMANDS` through :func:`command`; each gets its own
argparse sub-parser with a description that teaches its use.
"""
from __future__ import annotations

import argparse
import re
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
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise GCompilerError(f"--kw {item!r}: expected key=value, e.g. --kw ngf=32")
        k, v = item.split("=", 1)
        if re.fullmatch(r"[+-]?\d+", v):  # int() would also accept "16_16_32", a channel config string
            out[k] = int(v)
        elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", v):
            out[k] = float(v)
        else:
            out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out


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
        print(f"{info.name}  [{info.contract}]\n    {info.description}")
        if opts:
            print(f"    options: {opts}")
    return 0


command("passes", "list the registered compiler passes, their options and contracts")(cmd_passes)


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

    for mod in ("gcompiler.demo", "gcompiler.train.cli", "gcompiler.compress"):
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
