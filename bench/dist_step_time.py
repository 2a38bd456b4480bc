"""Step time of a short GS search on 1 process vs N processes under torchrun (same global batch).

    OMP_NUM_THREADS=1 .venv/bin/python bench/dist_step_time.py [--nproc 2] [--steps 30] [--batch-size 8] [--same-cores]

Runs ``gcompiler compress --method gs`` on ``builtin:sr`` (the shipped teacher) for ``--steps`` search steps
without fine-tuning, once plainly and once with ``python -m torch.distributed.run --standalone
--nproc_per_node=N``, and reads the engine's own ``time/step_s`` scalars from ``scalars.csv`` (the first
logged interval, which includes warm-up, is dropped). Prints the median seconds per step, the throughput in
images per second, and whether the two students are equal. Each process uses ``--threads`` torch threads.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def step_times(run: Path) -> list[float]:
    with open(run / "scalars.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["tag"] == "time/step_s"]
    return [float(r["value"]) for r in rows[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--same-cores", action="store_true",
                    help="also time one process with nproc x threads torch threads (the same cores, no DDP)")
    a = ap.parse_args()
    base = ["compress", "--teacher", "builtin:sr", "--data", "builtin:sr", "--method", "gs", "--bits", "32",
            "--max-steps", str(a.steps), "--finetune-steps", "0", "--batch-size", str(a.batch_size), "--log-every", "5",
            "--save-every", "0", "--sample-every", "0", "--workers", "0", "--quiet", "--device", a.device]
    from safetensors.torch import load_file

    results = {}
    # (processes, torch threads per process): 1 x threads, 1 x (nproc * threads) -- the same cores in one
    # process -- and nproc x threads under torchrun
    configs = [(1, a.threads)] + ([(1, a.nproc * a.threads)] if a.same_cores else []) + [(a.nproc, a.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        for n, th in configs:
            out = Path(tmp) / f"p{n}t{th}"
            launch = [sys.executable, "-m", "gcompiler"] if n == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "gcompiler"]
            env = dict(os.environ, OMP_NUM_THREADS=str(th))
            t0 = time.perf_counter()
            subprocess.run([*launch, *base, "--threads", str(th), "--out", str(out)], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            st = statistics.median(step_times(out))
            results[(n, th)] = (st, load_file(str(out / "model.safetensors")))
            print(f"{n} process(es) x {th} thread(s): {st * 1000:.1f} ms/step (median), {a.batch_size / st:.1f} "
                  f"images/s, whole command {wall:.1f} s", flush=True)
    ref = results[configs[0]]
    for key in configs[1:]:
        st, w = results[key]
        diff = max(float((w[k].double() - ref[1][k].double()).abs().max()) for k in w) if w.keys() == ref[1].keys() \
            else float("nan")
        print(f"{key[0]} x {key[1]}: speed-up {ref[0] / st:.2f}x over 1 x {configs[0][1]}; largest weight "
              f"difference of the student {diff:.2e}")


if __name__ == "__main__":
    main()
