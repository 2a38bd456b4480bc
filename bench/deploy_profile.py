#!/usr/bin/env python
"""Where the time goes in a deployed slim generator: per-op CPU profiles of the deploy candidates.

For ``resnet_9blocks`` with ``--cut`` of every group removed (as in ``bench/deploy_speed.py``) at 256x256,
batch 1, this prints

* the PyTorch profiler's per-op self CPU time of the eager graph and of the ``fused`` graph
  (``gcompiler.deploy.rewrite.fuse_for_inference``), so the share of convolutions vs InstanceNorm,
  reflection padding, activations and additions is visible;
* ONNX Runtime's per-node-type time for the exported graph (ORT's own profiler), fp32 and int8.

Run from the repository root: ``python bench/deploy_profile.py [--cut 0.75] [--runs 5]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from deploy_speed import slim_resnet  # noqa: E402
from gcompiler.deploy.backends import Context, integer_graph  # noqa: E402
from gcompiler.deploy.rewrite import fuse_for_inference  # noqa: E402
from gcompiler.quant.onnx_export import export_onnx, ort_session, run_onnx  # noqa: E402


def torch_profile(label: str, fn, runs: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn()
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\n== {label}: {total / runs / 1e3:.1f} ms per run (profiler self CPU time)")
    for e in sorted(rows, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key:<40} {e.self_cpu_time_total / runs / 1e3:8.2f} ms  {100 * e.self_cpu_time_total / total:5.1f} %"
              f"  x{e.count // runs}")


def ort_profile(label: str, proto, x: torch.Tensor, threads: int, runs: int) -> dict[str, float]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        run_onnx(sess, x)
        for _ in range(runs):
            run_onnx(sess, x)
        path = sess.end_profiling()
        events = json.load(open(path))
    by_op: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] += ev["dur"]
            count[op] += 1
    by_node: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            by_node[ev["name"][:-len("_kernel_time")]] += ev["dur"]
    total = sum(by_op.values())
    print(f"\n== {label}: {total / (runs + 1) / 1e3:.1f} ms per run (ORT node kernel time)")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {op:<28} {us / (runs + 1) / 1e3:8.2f} ms  {100 * us / total:5.1f} %  x{count[op] // (runs + 1)}")
    print("  slowest nodes: " + ", ".join(f"{n} {us / (runs + 1) / 1e3:.1f} ms"
                                        for n, us in sorted(by_node.items(), key=lambda kv: -kv[1])[:6]))
    return {op: us / (runs + 1) / 1e3 for op, us in by_op.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cut", type=float, default=0.75)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true", help="also profile the ORT int8 graph")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    gm = slim_resnet(args.cut, False, x)
    fused, notes = fuse_for_inference(gm)
    print(f"resnet_9blocks, {args.cut * 100:g} % cut, {args.size}x{args.size}, {args.threads} thread(s); fused: "
          f"{'; '.join(notes)}")
    torch_profile("eager graph", lambda: gm(x), args.runs)
    torch_profile("fused graph", lambda: fused(x), args.runs)
    cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    torch_profile("fused graph, channels-last", lambda: cl(xcl), args.runs)
    from gcompiler.deploy.rewrite import split_phases
    from gcompiler.models import create
    import gcompiler

    slim_opt, _ = split_phases(gm, x)
    torch.manual_seed(0)
    dense = gcompiler.trace(create("resnet_9blocks").eval(), x)
    dense_opt, _ = split_phases(dense, x)
    summary = []
    torch.manual_seed(0)
    sub = gcompiler.trace(create("sub_mobile_resnet_9blocks", config="16_16_32_16_32_32_16_16").eval(), x)
    sub_opt, _ = split_phases(sub, x)
    for label, g in (("dense, onnxruntime-opt", dense_opt), (f"{args.cut * 100:g} % cut, onnxruntime-opt", slim_opt),
                     ("sub_mobile 16_16_32_16_32_32_16_16, onnxruntime-opt", sub_opt)):
        ops = ort_profile(label, export_onnx(copy.deepcopy(g), x), x, args.threads, args.runs)
        conv = sum(v for k, v in ops.items() if "Conv" in k)
        total = sum(ops.values())
        macs = gcompiler.profile(g, x).macs
        summary.append(f"  {label}: {total:.0f} ms, convs {conv:.0f} ms ({100 * conv / total:.0f} %), other ops "
                       f"{total - conv:.0f} ms; {macs / 1e9:.2f} G MACs -> {macs / conv / 1e6:.1f} G MAC/s in convs, "
                       f"{macs / total / 1e6:.1f} G MAC/s overall")
    print("\n== MAC throughput (ORT kernel time)\n" + "\n".join(summary))
    if args.int8:
        ctx = Context(model=gm, gm=gm, trace_error="", inputs=(x,), threads=args.threads, pad_multiple=8,
                      inductor_timeout_s=0, quant_options={}, calibration=[(x,)])
        gi = integer_graph(ctx)
        ort_profile("onnxruntime int8", export_onnx(copy.deepcopy(gi), x, requantize_outputs=True,
                                                    calibration=[(x,)]), x, args.threads, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
