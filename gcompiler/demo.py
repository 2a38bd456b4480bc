"""``gcompiler demo``: the main job on a built-in task (the target of ``make demo``).

GS-8 (GAN Slimming: channel pruning + 8-bit quantization + distillation) of a shipped teacher to at least
8x fewer MACs, with a schedule sized to finish within 10 minutes on two CPU cores, then the verified graph
rewrites, the before/after table (MACs, parameters, size, PSNR to the teacher and to the ground truth beside
the task's baseline and the teacher) and the run's report (``report.html``, self-contained, and
``report.md``). It is one call of the Python entry :func:`gcompiler.compress`.

Tasks (``--task``):

* ``cartoon`` (default): the photo -> cartoon translation teacher (CycleGAN's ``resnet_9blocks``, ngf 32, 14.5 G
  MACs at 256x256) on ``builtin:cartoon``, baseline identity (the input photo). A CycleGAN-class generator is
  what GAN compression is about, and its 8x GS-8 student ends above the identity baseline (BENCHMARKS.md).
* ``sr``: the x2 super-resolution teacher (SRResNet, 3.5 G MACs at 64x64 LR) on ``builtin:sr``, baseline
  bicubic. At 8x fewer MACs its student is close to bicubic: the upsampling tail alone (0.6 G MACs) is over
  the budget, so the residual body that makes the teacher's +1.4 dB is cut away.

The command itself is registered in :mod:`gcompiler.cli`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .spec import int_flag as _steps

#: The demo's schedule per task (also what BENCHMARKS.md quotes as the GS-8 demo runs).
DEMO_TASKS: dict[str, dict[str, Any]] = {
    "cartoon": dict(teacher="builtin:cartoon", data="builtin:cartoon", method="gs", bits=8, max_steps=1000,
                    finetune_steps=2000, batch_size=2, crop=48, save_every=500, sample_every=0, target_macs="8x"),
    "sr": dict(teacher="builtin:sr", data="builtin:sr", method="gs", bits=8, max_steps=300, finetune_steps=200,
               batch_size=8, crop=32, save_every=100, sample_every=100, target_macs="8x"),
}
DEFAULT_TASK = "cartoon"
#: The default task's schedule.
DEMO_SETTINGS: dict[str, Any] = DEMO_TASKS[DEFAULT_TASK]


def _threads(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--threads must be >= 1 (torch CPU threads), got {v}")
    return v




def configure(p: argparse.ArgumentParser) -> None:
    """The ``gcompiler demo`` flags."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    s = DEMO_SETTINGS
    p.epilog = ("examples:\n  gcompiler demo                      # GS-8 of the built-in cartoon teacher, 8x fewer MACs\n"
                "  gcompiler demo --task sr            # the x2 super-resolution teacher instead\n"
                "  gcompiler demo --out runs/demo --threads 2\n\n"
                "The same run as a compress command:\n  gcompiler compress " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in s.items() if k != "method") + " --out DIR\n\n"
                "or from Python:\n  gcompiler.compress('builtin:cartoon', 'builtin:cartoon', 'gs', bits=8, target_macs='8x', "
                f"steps={s['max_steps']},\n                     finetune_steps={s['finetune_steps']}, "
                f"batch_size={s['batch_size']}, crop={s['crop']}, out=DIR)\n\n"
                "Afterwards: open DIR/report.html; `gcompiler export DIR --format onnx --int8`.")
    p.add_argument("--task", choices=sorted(DEMO_TASKS), default=DEFAULT_TASK,
                   help=f"built-in task (default {DEFAULT_TASK}; `gcompiler tasks` shows the teachers and baselines)")
    p.add_argument("--out", metavar="DIR", default=None, help="run directory (default: runs/demo-<date>-<time>)")
    p.add_argument("--max-steps", type=_steps("--max-steps", 1), default=None, help="search steps")
    p.add_argument("--finetune-steps", type=_steps("--finetune-steps", 0), default=None, help="fine-tuning steps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=_threads, default=1,
                   help="torch CPU threads (default 1: the demo's steps are small, and one thread stays fast on a "
                        "busy machine; 2 is about 1.5x faster on an idle 2-core machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the parsed flags of :func:`configure`; prints the result."""
    from .compression import compress, print_result

    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    task = getattr(args, "task", DEFAULT_TASK)
    values = dict(DEMO_TASKS[task])
    if args.max_steps is not None:
        values["max_steps"] = args.max_steps
    if args.finetune_steps is not None:
        values["finetune_steps"] = args.finetune_steps
    # an interrupted or finished demo in the same directory continues
    resume = (Path(out) / "summary.json").exists() or (Path(out) / "checkpoints").exists()
    print(f"gcompiler demo: GS-8 of the built-in {task} teacher on {values['data']} ({values['max_steps']} search + "
          f"{values['finetune_steps']} fine-tuning steps, target {values['target_macs']} fewer MACs); run dir {out}\n")
    teacher, data, method, bits = (values.pop(k) for k in ("teacher", "data", "method", "bits"))
    t0 = time.perf_counter()
    result = compress(teacher, data, method, bits=bits, steps=values.pop("max_steps"), out=out, device=args.device,
                      quiet=args.quiet, threads=args.threads, resume=resume, **values)
    print()
    print_result(result)
    s = result.summary
    print(f"MACs at input {'x'.join(map(str, s['input_shape']))}; demo wall time {time.perf_counter() - t0:.0f} s.")
    print(f"next: open {Path(out) / 'report.html'}; gcompiler export {out} --format onnx --int8; gcompiler zoo")
    return 0
