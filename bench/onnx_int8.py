#!/usr/bin/env python
"""CPU inference: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 on CycleGAN generators.

For each model (batch 1, 256x256, ``--threads`` intra-op threads, median of ``--runs`` timed runs after
``--warmup`` untimed ones):

* **torch fp32**: the eager model, ``torch.no_grad()``;
* **ORT fp32**: the traced float graph exported with :func:`gcompiler.quant.onnx_export.export_onnx`;
* **int graph (reference)**: ``fold-norms,insert-fake-quant,convert-to-int`` with GS-8 settings (8-bit weights
  per tensor, 8-bit unsigned activations clipped to [0, 4], the image input of the first conv in float), run
  by gcompiler's reference executor once to give the outputs the ONNX models are compared with;
* **ORT QDQ (reference semantics)**: the integer graph as QDQ with float conv outputs (exact semantics, no
  int8 kernels: ORT runs DequantizeLinear + float Conv);
* **ORT int8**: the same with uint8-requantized conv outputs (``requantize_outputs=True``, ranges calibrated
  on ``--calib`` random images), which ORT fuses into ``QLinearConv``; the script counts the fused
  ``QLinearConv`` nodes in ORT's optimized graph. torch fp32, ORT fp32 and ORT int8 are timed round-robin in
  one loop so that load changes on a shared machine affect them alike.

Models: ``resnet_9blocks`` (ngf 64, 11.4 M params) and a slim GS-8-style stand-in. GAN Slimming prunes the
widths inside the residual blocks and the up/down-sampling layers of that generator; with no trained, pruned
checkpoint at hand the stand-in is ``resnet_9blocks`` with ngf 32 (a uniform 2x width cut, 4x fewer MACs),
which has the same layer types and a similar MAC count to the published GS-8 horse2zebra net (11 G).
Weights are random (seeded): timings do not depend on them; the agreement numbers compare ORT with our
reference executor, not image quality.

Writes a markdown report (``--out``, default ``/work/helpers/onnx_numbers.md`` when that folder exists) with
the CPU model (lscpu), load average and settings. Run from the repository root::

    python bench/onnx_int8.py                   # both models, 10 runs each
    python bench/onnx_int8.py --runs 3 --size 128 --models resnet_9blocks   # quick look
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402

import gcompiler  # noqa: E402
from gcompiler.models import create  # noqa: E402
from gcompiler.passes.manager import run_pipeline  # noqa: E402
from gcompiler.quant.onnx_export import (export_onnx, layerwise_onnx_check, op_counts, ort_session,  # noqa: E402
                                         run_onnx)

MODELS = {
    "resnet_9blocks": ("resnet_9blocks", {}),
    "gs8_standin_ngf32": ("resnet_9blocks", {"ngf": 32}),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
        return " ".join(f for f in wanted if f" {f}" in flags)
    except (OSError, IndexError):
        return ""


def median_time(fn, runs: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


def _quantized_activations(gm: torch.fx.GraphModule, x: torch.Tensor) -> list[torch.Tensor]:
    from gcompiler.quant.int_ops import QuantizeActivation

    values: dict[str, torch.Tensor] = {}

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_module" and isinstance(self.module.get_submodule(str(n.target)), QuantizeActivation):
                values[n.name] = out
            return out

    _Rec(gm).run(x)
    return list(values.values())


def bench_model(label: str, name: str, kw: dict, args: argparse.Namespace, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = create(name, **kw).eval()
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    row: dict = {"model": label, "params": sum(p.numel() for p in model.parameters())}
    gm = gcompiler.trace(model, x, verify=False)
    row["gmacs"] = gcompiler.profile(gm).macs / 1e9
    print(f"[{label}] {row['params']:,} params, {row['gmacs']:.2f} G MACs at {args.size}^2", flush=True)

    m_fp32 = export_onnx(gm, x)
    sess_fp32 = ort_session(m_fp32, threads=args.threads)
    sess_fp32_spin = ort_session(m_fp32, threads=args.threads, spinning=True)
    with torch.no_grad():
        y_float = model(x)
    row["ort_fp32_err"] = float((run_onnx(sess_fp32, x)[0] - y_float).abs().max())

    gi, _ = run_pipeline(gm, "fold-norms,insert-fake-quant,convert-to-int", verify="none")
    t0 = time.perf_counter()
    with torch.no_grad():
        y_ref = gi(x)
    row["reference_s"] = time.perf_counter() - t0

    sess = ort_session(export_onnx(gi, x), threads=args.threads)
    row["ort_qdq"], _ = median_time(lambda: run_onnx(sess, x), max(1, args.runs // 2), 1)
    row["ort_qdq_err"] = float((run_onnx(sess, x)[0] - y_ref).abs().max())
    # integer activations of the QDQ-reference export vs the reference executor's
    outs = run_onnx(ort_session(export_onnx(gi, x, debug_outputs=True), threads=args.threads), x)[1:]
    with torch.no_grad():
        ref_q = _quantized_activations(gi, x)
    diffs = [(o.long() - r.long()).abs() for o, r in zip(outs, ref_q)]
    first = next((d for d in diffs if int(d.max()) > 0), None)
    row["qdq_first_dq"] = int(first.max()) if first is not None else 0
    row["qdq_max_dq"] = max(int(d.max()) for d in diffs) if diffs else 0
    row["qdq_frac"] = sum(int((d > 0).sum()) for d in diffs) / max(1, sum(d.numel() for d in diffs))
    per_layer = layerwise_onnx_check(gi, x)
    row["layer_max_dq"] = max(dq for dq, _ in per_layer.values())
    row["layer_max_err"] = max(err for dq, err in per_layer.values() if dq == 0) if per_layer else 0.0
    print(f"[{label}] ORT QDQ (reference semantics) {row['ort_qdq'] * 1e3:.0f} ms", flush=True)

    gen = torch.Generator().manual_seed(1)
    calib = [x] + [torch.rand(1, 3, args.size, args.size, generator=gen) * 2 - 1 for _ in range(args.calib - 1)]
    m8 = export_onnx(gi, x, requantize_outputs=True, calibration=calib)
    opt_path = tmp / f"{label}_int8_optimized.onnx"
    sess = ort_session(m8, threads=args.threads, optimized_model_path=opt_path)
    sess_spin = ort_session(m8, threads=args.threads, spinning=True)

    # The three main variants run round-robin so that load changes on the shared machine hit them alike.
    def torch_run():
        with torch.no_grad():
            model(x)

    fns = {"torch_fp32": torch_run, "ort_fp32": lambda: run_onnx(sess_fp32, x), "ort_int8": lambda: run_onnx(sess, x),
           "ort_fp32_spin": lambda: run_onnx(sess_fp32_spin, x), "ort_int8_spin": lambda: run_onnx(sess_spin, x)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    for _ in range(args.runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        row[k] = statistics.median(v)
    row["ratio_runs"] = [f / i for f, i in zip(times["ort_fp32"], times["ort_int8"])]
    torch.set_num_threads(1)  # torch's OpenMP pool suffers most from shared cores: show one thread too
    row["torch_fp32_1t"], _ = median_time(torch_run, max(1, args.runs // 2), 1)
    torch.set_num_threads(args.threads)
    print(f"[{label}] torch fp32 {row['torch_fp32'] * 1e3:.0f} ms ({args.threads} threads), "
          f"{row['torch_fp32_1t'] * 1e3:.0f} ms (1 thread); ORT fp32 {row['ort_fp32'] * 1e3:.0f} ms", flush=True)
    y8 = run_onnx(sess, x)[0]
    row["ort_int8_err"] = float((y8 - y_ref).abs().max())
    row["ort_int8_psnr"] = psnr(y8, y_ref)
    counts = op_counts(opt_path)
    row["qlinearconv"] = counts.get("QLinearConv", 0)
    row["convs"] = sum(1 for n in gi.graph.nodes if n.op == "call_module"
                       and type(gi.get_submodule(str(n.target))).__name__.startswith("IntConv"))
    row["float_convs_left"] = {k: v for k, v in counts.items() if k in ("Conv", "ConvTranspose", "FusedConv")}
    print(f"[{label}] ORT int8 {row['ort_int8'] * 1e3:.0f} ms (per-run fp32/int8 ratios "
          f"{', '.join(f'{r:.2f}' for r in row['ratio_runs'])}), {row['qlinearconv']}/{row['convs']} convs as "
          f"QLinearConv, float convs left {row['float_convs_left']}", flush=True)
    return row


def report(rows: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        "# ONNX Runtime int8 vs fp32 on CPU (bench/onnx_int8.py)",
        "",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs visible; flags: {cpu_flags()})",
        f"- torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
        f"batch 1, {args.size}x{args.size}, {args.threads} threads, median of {args.runs} runs "
        f"({args.warmup} warm-up); torch fp32 ({args.threads} threads), ORT fp32 and ORT int8 timed round-robin "
        f"in the same loop; torch 1-thread and ORT QDQ-reference timed separately over {max(1, args.runs // 2)} runs",
        "- ORT sessions: all graph optimizations, sequential execution, intra-op spinning off (ORT's default, on, "
        "lets idle pool threads busy-wait between ops; with other jobs on the 2 cores that costs the int8 graph, "
        "which has many small ops, up to 2x; the spinning-on column shows ORT's default)",
        f"- load average before / after: {load[0]} / {load[1]} (the 2 cores are shared with other jobs; "
        "absolute times are noisy, ratios less so)",
        "- int8 = GS-8 settings: 8-bit per-tensor weights, 8-bit unsigned activations in [0, 4], first conv's "
        "image input float; ORT int8 adds uint8 requantization of conv outputs (calibrated on "
        f"{args.calib} random images) so QDQ fuses to QLinearConv",
        "- `gs8_standin_ngf32`: resnet_9blocks with ngf 32 stands in for a pruned GS-8 generator (no trained pruned "
        "checkpoint here); weights are random, so error columns measure agreement with gcompiler's reference "
        "integer executor, not image quality",
        "",
        f"| model | params | GMACs | torch fp32 ms ({args.threads}t / 1t) | ORT fp32 ms | ORT QDQ-ref ms | ORT int8 ms "
        "| int8 / ORT fp32 | int8 / torch fp32 (best) | ORT spinning on: fp32 / int8 ms (ratio) | QLinearConv "
        "| max err QDQ-ref | max err int8 (PSNR dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | {r['torch_fp32'] * 1e3:.0f} / "
            f"{r['torch_fp32_1t'] * 1e3:.0f} | "
            f"{r['ort_fp32'] * 1e3:.0f} | {r['ort_qdq'] * 1e3:.0f} | {r['ort_int8'] * 1e3:.0f} | "
            f"{r['ort_fp32'] / r['ort_int8']:.2f}x | "
            f"{min(r['torch_fp32'], r['torch_fp32_1t']) / r['ort_int8']:.2f}x | "
            f"{r['ort_fp32_spin'] * 1e3:.0f} / {r['ort_int8_spin'] * 1e3:.0f} "
            f"({r['ort_fp32_spin'] / r['ort_int8_spin']:.2f}x) | "
            f"{r['qlinearconv']}/{r['convs']} | {r['ort_qdq_err']:.2e} | {r['ort_int8_err']:.3f} "
            f"({r['ort_int8_psnr']:.1f}) |")
    lines += [
        "",
        "Columns: speed-ups are time ratios (higher is faster int8). `QLinearConv` counts convs ORT fused to int8 "
        "kernels out of the integer graph's convs: the first conv is weight-only on the float image and the 3-channel "
        "head has too few output channels for int8 kernels to win (both run as float convs with the exactly "
        "dequantized weights); the two transposed convs are exported as stride-1 convs + DepthToSpace so they fuse "
        "too. Errors are max |ORT - reference| on the [-1, 1] output; `QDQ-ref` is the exact-semantics export, which "
        "matches the reference up to float rounding but runs float kernels.",
        "",
        "Integer activations of the QDQ-reference export vs the reference executor (same 8-bit codes expected up "
        "to rounding ties): the first quantizer where any code differs differs by at most the value below, and "
        "later layers amplify such one-step differences (random weights, InstanceNorm):",
        "",
    ]
    for r in rows:
        lines.append(f"- {r['model']}: first differing layer max |dq| = {r['qdq_first_dq']}, max |dq| over all "
                     f"layers = {r['qdq_max_dq']}, codes differing: {100 * r['qdq_frac']:.2f} %; teacher-forced "
                     f"per layer (each conv fed the reference's input): max |dq| = {r['layer_max_dq']}, max relative "
                     f"output error where codes agree = {r['layer_max_err']:.1e}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--calib", type=int, default=4, help="random images for the int8 output ranges")
    default_out = "/work/helpers/onnx_numbers.md" if Path("/work/helpers").is_dir() else ""
    p.add_argument("--out", default=default_out, help="markdown report path ('' to skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in names:
            name, kw = MODELS[label]
            rows.append(bench_model(label, name, kw, args, Path(tmp)))
    load1 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = report(rows, args, (load0, load1))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
