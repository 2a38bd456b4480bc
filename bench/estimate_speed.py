"""How fast gcompiler.estimate prices mask settings / width choices on resnet_9blocks (256x256, ngf=64).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/estimate_speed.py [--calls 2000] [--size 256]

Prints the one-time cost of the first call (proofs of every group, cached in gm.meta) and the steady-state
rate for random per-group width choices (what a supernet / operator search asks) and random 0/1 mask
settings (wall clock and CPU time of the process: on a shared machine the CPU rate is what one core
gives), and checks a few of them against the profile of the eliminated copy.
"""
from __future__ import annotations

import argparse
import copy
import random
import time

import torch

import gcompiler
from gcompiler.passes.dead_channels import eliminate_dead_channels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--check", type=int, default=3, help="settings checked against eliminate + profile")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks").eval()
    gm = gcompiler.compile(model, "insert-masks", torch.randn(1, 3, args.size, args.size), verify="lint")
    masks = {n: m.numel() for n, m in gcompiler.masks(gm).items()}
    t0 = time.perf_counter()
    full = gcompiler.estimate(gm)
    first = time.perf_counter() - t0
    rng = random.Random(0)
    widths = [{n: rng.randint(1, u) for n, u in masks.items()} for _ in range(args.calls)]
    gcompiler.estimate(gm, widths=widths[0])  # the all-dead proofs of every group (one-time)
    t0, c0 = time.perf_counter(), time.process_time()
    for w in widths:
        gcompiler.estimate(gm, widths=w)
    dt_w, cpu_w = time.perf_counter() - t0, time.process_time() - c0
    g = torch.Generator().manual_seed(1)
    settings = [{n: (torch.rand(u, generator=g) > 0.5).float() for n, u in masks.items()}
                for _ in range(min(args.calls, 500))]
    t0, c0 = time.perf_counter(), time.process_time()
    for s in settings:
        gcompiler.estimate(gm, masks=s)
    dt_m, cpu_m = time.perf_counter() - t0, time.process_time() - c0
    print(f"resnet_9blocks {args.size}x{args.size}: {len(masks)} masked groups, {sum(masks.values())} units; "
          f"dense {full.macs / 1e9:.2f} GMACs")
    print(f"first call (proofs, cached): {first:.2f} s")
    # wall clock, and CPU time of this process (what one core gives when the machine is shared)
    print(f"widths: {len(widths) / dt_w:,.0f} estimates/s wall, {len(widths) / cpu_w:,.0f}/s per CPU-second "
          f"({cpu_w / len(widths) * 1e3:.3f} ms CPU each)")
    print(f"masks:  {len(settings) / dt_m:,.0f} estimates/s wall, {len(settings) / cpu_m:,.0f}/s per CPU-second "
          f"({cpu_m / len(settings) * 1e3:.3f} ms CPU each)")
    for s in settings[:args.check]:
        e = gcompiler.estimate(gm, masks=s)
        c = copy.deepcopy(gm)
        with torch.no_grad():
            for n, m in gcompiler.masks(c).items():
                m[s[n] == 0] = 0
        p = gcompiler.profile(eliminate_dead_channels(c))
        assert (e.macs, e.params) == (p.macs, p.params), ((e.macs, e.params), (p.macs, p.params))
    print(f"checked {args.check} settings against profile(eliminate(copy)): exact")


if __name__ == "__main__":
    main()
