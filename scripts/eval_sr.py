#!/usr/bin/env python
"""Print held-out PSNR/SSIM of the builtin:sr teacher (or any x2 SR weights) and of bicubic upsampling.

Protocol (see gcompiler/data/sr.py): each whole held-out photo is upscaled, the result clamped to
[0, 1] and rounded to 8 bits, and compared with the original on the Y channel (BT.601) after cutting a
2-pixel border; RGB PSNR is shown too.

Examples::

    python scripts/eval_sr.py                       # the shipped teacher
    python scripts/eval_sr.py --weights /tmp/t.safetensors --markdown
    python scripts/eval_sr.py --images chelsea rocket astronaut   # training photos too (not held out!)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from gcompiler.data.sr import HELDOUT_IMAGES, TEACHER_WEIGHTS, TRAIN_IMAGES, evaluate_sr, load_teacher
    from gcompiler.errors import GCompilerError

    p = argparse.ArgumentParser(prog="eval_sr.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=TEACHER_WEIGHTS,
                   help="SR weights (.safetensors with a .json next to it naming the architecture)")
    p.add_argument("--images", nargs="+", default=list(HELDOUT_IMAGES), choices=list(HELDOUT_IMAGES + TRAIN_IMAGES),
                   metavar="NAME", help=f"photos to score; held out: {' '.join(HELDOUT_IMAGES)}")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of plain text")
    p.add_argument("--json", type=Path, default=None, help="also write the full results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        model = load_teacher(args.device, weights=args.weights)
    except GCompilerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    res = evaluate_sr(model, images=args.images, device=args.device)
    wall = time.time() - t0
    rows = [(name, k, m) for name, per in res["per_image"].items() for k, m in per.items()]
    rows += [("mean", k, m) for k, m in res["mean"].items()]
    if args.markdown:
        print("| image | method | PSNR-Y (dB) | SSIM-Y | PSNR-RGB (dB) |")
        print("|---|---|---:|---:|---:|")
        for name, k, m in rows:
            print(f"| {name} | {k} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {m['psnr_rgb']:.2f} |")
    else:
        print(f"{'image':<12} {'method':<8} {'PSNR-Y':>8} {'SSIM-Y':>8} {'PSNR-RGB':>9}")
        for name, k, m in rows:
            print(f"{name:<12} {k:<8} {m['psnr_y']:8.3f} {m['ssim_y']:8.4f} {m['psnr_rgb']:9.3f}")
    gain = res["mean"]["model"]["psnr_y"] - res["mean"]["bicubic"]["psnr_y"]
    print(f"teacher - bicubic: {gain:+.3f} dB PSNR-Y (evaluated in {wall:.1f}s)")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
