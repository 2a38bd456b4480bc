"""``gcompiler demo``: the main job on the built-in default (the target of ``make demo``).

GS-8 (GAN Slimming with 8-bit quantization) of the shipped x2 super-resolution teacher on ``builtin:sr``
with a short schedule that finishes in a few minutes on two CPU cores, then the verified graph rewrites, a
before/after table (MACs, parameters, size, PSNR to the teacher and to the ground truth on the held-out
photos) and the run directory. It is one call of the Python entry :func:`gcompiler.compress`; the zoo's
profile table is ``gcompiler zoo``. (The command itself is registered in :mod:`gcompiler.cli`.)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

#: The demo's schedule (also what BENCHMARKS.md quotes as the GS-8 demo run).
DEMO_SETTINGS: dict[str, Any] = dict(teacher="builtin:sr", data="builtin:sr", method="gs", bits=8, max_steps=200,
                                     finetune_steps=100, batch_size=4, crop=32, save_every=100, sample_every=100,
                                     target_macs="3x")


def configure(p: argparse.ArgumentParser) -> None:
    """The ``gcompiler demo`` flags."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("The same run as a compress command:\n  gcompiler compress " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in DEMO_SETTINGS.items() if k != "method") + " --out DIR\n\n"
        "or from Python:\n  gcompiler.compress('builtin:sr', 'builtin:sr', 'gs', bits=8, target_macs='3x', "
        "steps=200,\n                     finetune_steps=100, batch_size=4, crop=32, out=DIR)\n\n"
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


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the parsed flags of :func:`configure`; prints the result."""
    from .compression import compress, print_result

    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    values = dict(DEMO_SETTINGS)
    if args.max_steps is not None:
        values["max_steps"] = args.max_steps
    if args.finetune_steps is not None:
        values["finetune_steps"] = args.finetune_steps
    # an interrupted or finished demo in the same directory continues
    resume = (Path(out) / "summary.json").exists() or (Path(out) / "checkpoints").exists()
    print(f"gcompiler demo: GS-8 of the built-in x2 SR teacher on builtin:sr ({values['max_steps']} search + "
          f"{values['finetune_steps']} fine-tuning steps, target {values['target_macs']} fewer MACs); run dir {out}\n")
    teacher, data, method, bits = (values.pop(k) for k in ("teacher", "data", "method", "bits"))
    result = compress(teacher, data, method, bits=bits, steps=values.pop("max_steps"), out=out, device=args.device,
                      quiet=args.quiet, threads=args.threads, resume=resume, **values)
    print()
    print_result(result)
    s = result.summary
    print(f"MACs at input {'x'.join(map(str, s['input_shape']))}; PSNR on the held-out photos (Y channel).")
    print("the model zoo's profile table: gcompiler zoo")
    return 0
