"""``gcompiler demo``: the main job on the built-in default (the target of ``make demo``).

GS-8 (GAN Slimming with 8-bit quantization) of the shipped x2 super-resolution teacher on ``builtin:sr``
with a short schedule that finishes in a few minutes on two CPU cores, then a before/after table (MACs,
parameters, size, PSNR to the teacher and to the ground truth on the held-out photos) and the run
directory. The zoo's profile table is ``gcompiler zoo``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import command

#: The demo's schedule (also what BENCHMARKS.md quotes as the GS-8 demo run).
DEMO_SETTINGS = dict(teacher="builtin:sr", data="builtin:sr", method="gs", bits=8, max_steps=200, finetune_steps=100,
                     batch_size=4, crop=32, save_every=100, sample_every=100, target_macs="3x")


def _configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("The same run as a compress command:\n  gcompiler compress " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in DEMO_SETTINGS.items() if k != "method") + " --out DIR\n\n"
        "`gcompiler zoo` prints the model zoo's profile table.")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default: runs/demo-<date>-<time>)")
    p.add_argument("--max-steps", type=int, default=None, help=f"search steps (default {DEMO_SETTINGS['max_steps']})")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help=f"fine-tuning steps (default {DEMO_SETTINGS['finetune_steps']})")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the demo's steps are small, and one thread stays fast on a "
                        "busy machine; 2 is about 1.5x faster on an idle 2-core machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    from .compress import compress, run_logging
    from .methods import get_method
    from .methods.base import Settings, summary_table

    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    values = dict(DEMO_SETTINGS)
    if args.max_steps is not None:
        values["max_steps"] = args.max_steps
    if args.finetune_steps is not None:
        values["finetune_steps"] = args.finetune_steps
    settings = Settings(**values, out=out, device=args.device, quiet=args.quiet, threads=args.threads)
    info = get_method("gs")
    options = info.make_options({})
    import dataclasses

    settings.options = dataclasses.asdict(options)
    if (Path(out) / "summary.json").exists() or (Path(out) / "checkpoints").exists():
        settings.resume = True  # an interrupted or finished demo in the same directory continues
    print(f"gcompiler demo: GS-8 of the built-in x2 SR teacher on builtin:sr ({values['max_steps']} search + "
          f"{values['finetune_steps']} fine-tuning steps, target {values['target_macs']} fewer MACs); run dir {out}\n")
    with run_logging(Path(out), args.quiet):
        result = compress(settings, info, options)
    s = result["summary"]
    print()
    print(summary_table(s))
    print(f"\nMACs at input {'x'.join(map(str, s['input_shape']))}; PSNR on the held-out photos (Y channel). "
          f"{s['steps']} steps in {s['wall_s']:.0f} s.")
    print(f"run dir: {out}  (summary.json, report.json, samples/, train.log; the student: gcompiler.load({out!r}))")
    print("the model zoo's profile table: gcompiler zoo")
    return 0


cmd_demo.configure = _configure  # type: ignore[attr-defined]
command("demo", "run the main job on the built-in default: GS-8 of the built-in SR teacher, before/after table")(
    cmd_demo)
