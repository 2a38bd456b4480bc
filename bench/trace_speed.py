"""Time gcompiler.trace (+ channel_groups) on zoo generators at their usual resolution.

    OMP_NUM_THREADS=1 python bench/trace_speed.py [--models resnet_9blocks,unet_256] [--size 256] [--repeat 3]

Prints the best of ``--repeat`` warm runs (the first, cold run is reported separately: it includes one-time
imports and, when fake tensors are used, the ~4 s start-up of the first FakeTensorMode of the process).
"""
from __future__ import annotations

import argparse
import time

import torch

import gcompiler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet_9blocks")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    for name in args.models.split(","):
        m = gcompiler.models.create(name).eval()
        x = torch.randn(1, 3, args.size, args.size)
        t = time.perf_counter()
        gcompiler.trace(m, x)
        cold = time.perf_counter() - t
        best_trace, best_groups = float("inf"), float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            gm = gcompiler.trace(m, x)
            t1 = time.perf_counter()
            gcompiler.analysis.channels.channel_groups(gm)  # uncached
            t2 = time.perf_counter()
            best_trace, best_groups = min(best_trace, t1 - t), min(best_groups, t2 - t1)
        with torch.no_grad():
            t = time.perf_counter()
            m(x)
            eager = time.perf_counter() - t
        print(f"{name} @ {args.size}^2: trace {best_trace:.3f} s (cold {cold:.2f} s), channel_groups {best_groups:.3f} s, "
              f"one eager forward {eager:.3f} s", flush=True)


if __name__ == "__main__":
    main()
