#!/usr/bin/env python
"""Per-layer GPU benchmark of the int8 Triton kernels against cuDNN fp16 (channels-last) and torch.compile.

Layers are those of CycleGAN's ``resnet_9blocks`` (ngf 64) at a given input resolution (default 256), plus
the layer shapes of slim GS-8 and mobile (depthwise-separable) generators. Every variant computes the same
layer in its natural deployment form:

* ``int8``: :func:`gcompiler.kernels.conv2d_int8` (or the depthwise / transposed kernel) on a uint8 NHWC
  input, fused epilogue ``scale, bias, ReLU, requantize to uint8`` (for layers followed by InstanceNorm:
  float output plus the fused statistics instead);
* ``cudnn``: ``F.conv2d`` / ``F.conv_transpose2d`` in fp16 on channels-last tensors with ``F.pad`` for
  reflect padding and a separate ReLU (eager PyTorch, ``cudnn.benchmark`` on);
* ``compile``: the same fp16 function through ``torch.compile(mode="max-autotune-no-cudagraphs")``.

Each is timed with CUDA graphs (``triton.testing.do_bench_cudagraph``) so Python launch overhead is excluded
for all three alike. Throughput counts useful multiply-adds x 2 (transposed convs at *input* resolution,
i.e. the MACs actually needed, not the output-resolution convention of the papers' tables); "% peak" is
relative to the device's dense int8 tensor-core peak (fp16 peak for the fp16 columns). Before timing, the
int8 kernel's int32 accumulator is checked against the exact reference on the GPU.

End to end (``--e2e``, on by default): ``resnet_9blocks`` dense and a slim GS-8-style generator (the
widths inside the residual blocks, the stem and the upsampling layers cut to ``--slim-keep`` of the dense
ones, the 256-channel trunk kept whole, as the public GS CycleGAN model prunes), 8-bit weights and unsigned
8-bit activations (clip 4), lowered by ``lower-to-triton`` (int8 Triton kernels, 16-bit cuDNN for the RGB
layers), against the float generator in fp16 channels-last (cuDNN) and through ``torch.compile``; each
eager (Python dispatch included) and CUDA-graphed. Weights are random (speed does not depend on them).

Usage: ``python bench/gpu_kernels.py [--batch 1 8] [--res 256] [--layers trunk,up1] [--no-layers]
[--no-e2e] [--no-compile] [--json out.json] [--markdown]``. Without CUDA it exits with status 2 and says so;
``--cpu-check`` instead builds the end-to-end generators at a tiny resolution on CPU and checks the lowered
graphs against their integer reference graphs (no timing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# Dense (no sparsity) tensor-core peaks in tera-ops/s from the vendors' data sheets: (int8, fp16).
PEAKS = {
    "H100 SXM": (1979.0, 989.4),
    "H100 NVL": (1671.0, 835.5),
    "H100 PCIe": (1513.0, 756.5),
    "H100": (1979.0, 989.4),  # unspecified H100: assume SXM
    "H200": (1979.0, 989.4),
    "GH200": (1979.0, 989.4),
    "A100": (624.0, 312.0),
    "L40S": (733.0, 366.0),
    "L4": (242.0, 121.0),
    "A10": (250.0, 125.0),
}


def device_peaks(name: str) -> tuple[Optional[float], Optional[float]]:
    """(int8 TOPS, fp16 TFLOPS) for a CUDA device name, longest matching key first; (None, None) if unknown."""
    tokens = set(re.split(r"[\s\-_]+", name.upper()))
    for key in sorted(PEAKS, key=len, reverse=True):
        if all(part in tokens for part in key.upper().split()):
            return PEAKS[key]
    return None, None


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv", "convT", "dw"
    cin: int
    cout: int
    k: int
    stride: int
    pad: int
    pad_mode: str
    hw: int  # input spatial size
    norm_after: bool  # followed by InstanceNorm: int8 variant emits float + stats instead of requantizing
    output_padding: int = 0

    def out_hw(self) -> int:
        if self.kind == "convT":
            return (self.hw - 1) * self.stride - 2 * self.pad + self.k + self.output_padding
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1

    def useful_macs(self, batch: int) -> int:
        if self.kind == "convT":  # every input pixel meets every tap once
            return batch * self.hw * self.hw * self.cin * self.cout * self.k * self.k
        per_out = self.k * self.k * (1 if self.kind == "dw" else self.cin)
        return batch * self.out_hw() ** 2 * self.cout * per_out


def layers(res: int) -> list[Layer]:
    r, r2, r4 = res, res // 2, res // 4
    return [
        Layer("stem7x7 3->64", "conv", 3, 64, 7, 1, 3, "reflect", r, True),
        Layer("down1 64->128 s2", "conv", 64, 128, 3, 2, 1, "zeros", r, True),
        Layer("down2 128->256 s2", "conv", 128, 256, 3, 2, 1, "zeros", r2, True),
        Layer("trunk 256->256", "conv", 256, 256, 3, 1, 1, "reflect", r4, True),
        Layer("trunk 256->256 fused-requant", "conv", 256, 256, 3, 1, 1, "reflect", r4, False),
        Layer("up1 convT 256->128", "convT", 256, 128, 3, 2, 1, "zeros", r4, True, 1),
        Layer("up2 convT 128->64", "convT", 128, 64, 3, 2, 1, "zeros", r2, True, 1),
        Layer("head7x7 64->3", "conv", 64, 3, 7, 1, 3, "reflect", r, False),
        Layer("slim GS-8 block 256->32", "conv", 256, 32, 3, 1, 1, "reflect", r4, True),
        Layer("slim GS-8 block 32->256", "conv", 32, 256, 3, 1, 1, "reflect", r4, True),
        Layer("mobile dw3x3 256", "dw", 256, 256, 3, 1, 1, "reflect", r4, True),
        Layer("mobile pw1x1 256->256", "conv", 256, 256, 1, 1, 0, "zeros", r4, True),
    ]


def _int8_call(layer: Layer, batch: int, dev: torch.device) -> tuple[Callable, Callable]:
    """(timed function, accumulator check) for the int8 Triton kernel."""
    from gcompiler.kernels import (conv2d_int8, conv2d_int8_ref, conv_transpose2d_int8, conv_transpose2d_int8_ref,
                                   depthwise_conv2d_int8, depthwise_conv2d_int8_ref)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (batch, layer.hw, layer.hw, layer.cin), device=dev, dtype=torch.uint8, generator=g)
    wshape = (layer.cout, layer.k, layer.k, 1 if layer.kind == "dw" else layer.cin)
    w = torch.randint(-127, 128, wshape, device=dev, dtype=torch.int8, generator=g)
    scale = torch.full((layer.cout,), 1e-5, device=dev)
    bias = torch.zeros(layer.cout, device=dev)
    if layer.norm_after:
        epi = dict(scale=scale, bias=bias, out_dtype=torch.float32, return_stats=True)
    else:
        epi = dict(scale=scale, bias=bias, activation="relu", out_scale=4 / 255, out_dtype=torch.uint8)
    if layer.kind == "conv":
        geo = dict(stride=layer.stride, padding=layer.pad, pad_mode=layer.pad_mode)
        wsum = w.to(torch.int32).sum((1, 2, 3), dtype=torch.int32)

        def fn():
            return conv2d_int8(x, w, **geo, **epi, weight_sums=wsum, backend="triton")

        def check():
            a = conv2d_int8(x[:1], w, **geo, scale=scale, return_acc=True, backend="triton").acc
            return torch.equal(a, conv2d_int8_ref(x[:1], w, **geo, scale=scale, return_acc=True).acc)
    elif layer.kind == "dw":
        geo = dict(stride=layer.stride, padding=layer.pad, pad_mode=layer.pad_mode)

        def fn():
            return depthwise_conv2d_int8(x, w, **geo, **epi, backend="triton")

        def check():
            a = depthwise_conv2d_int8(x[:1], w, **geo, scale=scale, return_acc=True, backend="triton").acc
            return torch.equal(a, depthwise_conv2d_int8_ref(x[:1], w, **geo, scale=scale, return_acc=True).acc)
    else:
        geo = dict(stride=layer.stride, padding=layer.pad, output_padding=layer.output_padding)

        def fn():
            return conv_transpose2d_int8(x, w, **geo, **epi, backend="triton")

        def check():
            a = conv_transpose2d_int8(x[:1], w, **geo, scale=scale, return_acc=True, backend="triton").acc
            return torch.equal(a, conv_transpose2d_int8_ref(x[:1], w, **geo, scale=scale, return_acc=True).acc)
    return fn, check


def _fp16_fn(layer: Layer, batch: int, dev: torch.device) -> Callable:
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, layer.cin, layer.hw, layer.hw, device=dev, generator=g).half() \
        .to(memory_format=torch.channels_last)
    if layer.kind == "convT":
        w = torch.randn(layer.cin, layer.cout, layer.k, layer.k, device=dev, generator=g).half()
    else:
        w = torch.randn(layer.cout, 1 if layer.kind == "dw" else layer.cin, layer.k, layer.k, device=dev,
                        generator=g).half()
    w = (w * 0.01).to(memory_format=torch.channels_last)
    b = torch.zeros(layer.cout, device=dev).half()
    groups = layer.cin if layer.kind == "dw" else 1
    p = layer.pad

    if layer.kind == "convT":
        def fn(x=x):
            return F.relu(F.conv_transpose2d(x, w, b, layer.stride, p, layer.output_padding))
    elif layer.pad_mode == "reflect":
        def fn(x=x):
            return F.relu(F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), w, b, layer.stride, 0, 1, groups))
    else:
        def fn(x=x):
            return F.relu(F.conv2d(x, w, b, layer.stride, p, 1, groups))
    return fn


def _time_ms(fn: Callable, reps: int, graph: bool = True) -> float:
    import triton.testing
    fn()
    torch.cuda.synchronize()
    if graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=reps))
    return float(triton.testing.do_bench(fn, rep=reps))


# ------------------------------------------------------------------------------------------ end to end

def slim_gs_generator(res: int, keep: float, batch: int = 1) -> torch.nn.Module:
    """A GS-8-style slim ``resnet_9blocks``: every prunable channel group except the residual trunk keeps the
    first ``keep`` of its channels (rounded up to a multiple of 8), the trunk stays whole; returned as the
    pruned float graph (``insert-masks`` -> zero masks -> ``eliminate-dead-channels``)."""
    import math

    from gcompiler import models
    from gcompiler.fx.trace import trace
    from gcompiler.passes.manager import run_pipeline
    from gcompiler.passes.masks import masks

    torch.manual_seed(0)
    m = models.create("resnet_9blocks").eval()
    x = torch.randn(batch, 3, res, res)
    gm = trace(m, x)
    gm, _ = run_pipeline(gm, "insert-masks", verify="lint")
    record = gm.meta["masks"]["groups"]
    with torch.no_grad():
        for name, t in masks(gm).items():
            if len(record[name]["modules"]) > 1:  # shared by several producers: the residual trunk
                continue
            k = min(t.numel(), max(8, 8 * math.ceil(keep * t.numel() / 8)))
            t[k:] = 0
    gm, _ = run_pipeline(gm, "eliminate-dead-channels", verify="lint")
    return gm


def quantized_pair(model: torch.nn.Module, x: torch.Tensor, backend: str):
    """(integer reference graph, lowered graph) of ``model`` at GS-8 (8-bit weights, unsigned 8-bit inputs)."""
    import copy

    from gcompiler.kernels.lower import lower_to_triton
    from gcompiler.passes.manager import compile as gcompile

    int_gm = gcompile(model, "fold-norms,insert-fake-quant{weight_bits=8,act_bits=8,act_clip=4.0},convert-to-int",
                      x, verify="lint")
    lowered = lower_to_triton(copy.deepcopy(int_gm), backend=backend)
    return int_gm, lowered


def e2e_models(res: int, keep: float, batch: int) -> dict:
    from gcompiler import models
    torch.manual_seed(0)
    return {"resnet_9blocks dense": models.create("resnet_9blocks").eval(),
            f"slim GS-8 (keep {keep:g})": slim_gs_generator(res, keep, batch)}


def run_e2e(args, dev: torch.device, name: str, peak_i8: Optional[float]) -> list[dict]:
    import copy

    from gcompiler.profiler import profile
    rows = []
    for batch in args.batch:
        for label, model in e2e_models(args.res, args.slim_keep, batch).items():
            x_cpu = torch.randn(batch, 3, args.res, args.res)
            macs = profile(model, x_cpu).macs
            int_gm, lowered = quantized_pair(model, x_cpu, backend="triton")
            lowered = lowered.to(dev)
            x = x_cpu.to(dev)
            with torch.no_grad():
                lowered(x)  # autotunes every kernel
                f16 = copy.deepcopy(model).to(dev).half().to(memory_format=torch.channels_last)
                xh = x.half().contiguous(memory_format=torch.channels_last)

                def run_int8():
                    return lowered(x)

                def run_f16():
                    return f16(xh)
                t = {"int8 graph": _time_ms(run_int8, args.rep), "int8 eager": _time_ms(run_int8, args.rep, False),
                     "fp16 graph": _time_ms(run_f16, args.rep), "fp16 eager": _time_ms(run_f16, args.rep, False)}
                if not args.no_compile:
                    comp = torch.compile(f16, mode="max-autotune-no-cudagraphs", dynamic=False)
                    t["compile graph"] = _time_ms(lambda: comp(xh), args.rep)
                # agreement with the integer reference graph (exact float64 accumulation, on the GPU)
                ref = int_gm.to(dev)(x)
                err = float((lowered(x).float() - ref).abs().max() / ref.abs().max())
            paths = [r["path"] for r in lowered.meta["lower_to_triton"]]
            row = dict(device=name, model=label, batch=batch, res=args.res, gmacs=macs / 1e9, rel_err_vs_int=err,
                       int8_layers=paths.count("int8"), fp16_layers=paths.count("fp16"),
                       **{f"{k} ms": v for k, v in t.items()},
                       speedup_graph=t["fp16 graph"] / t["int8 graph"],
                       speedup_vs_compile=(t["compile graph"] / t["int8 graph"]) if "compile graph" in t else None)
            rows.append(row)
            times = " | ".join(f"{k} {v:.3f} ms" for k, v in t.items())
            print(f"E2E {label:<26} b{batch:<2} {macs / 1e9:7.2f} GMAC | {times} | x{row['speedup_graph']:.2f} "
                  f"vs cuDNN fp16 (graphs) | int8 layers {row['int8_layers']}, fp16 {row['fp16_layers']} | "
                  f"rel.err vs int graph {err:.1e}", flush=True)
    return rows


def cpu_check(res: int, keep: float) -> int:
    """Build both end-to-end generators at a tiny resolution on CPU; lowered graphs vs integer graphs."""
    ok = True
    for label, model in e2e_models(res, keep, 1).items():
        x = torch.randn(1, 3, res, res)
        int_gm, lowered = quantized_pair(model, x, backend="auto")
        with torch.no_grad():
            ref, out = int_gm(x), lowered(x)
        err = float((out - ref).abs().max() / ref.abs().max())
        paths = [r["path"] for r in lowered.meta["lower_to_triton"]]
        print(f"{label}: {paths.count('int8')} int8 / {paths.count('fp16')} fp16 layers, rel.err {err:.1e}")
        ok = ok and err < 0.1  # the lower-to-triton contract (rounding flips propagate in random nets)
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Per-layer int8 Triton vs cuDNN fp16 vs torch.compile")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--res", type=int, default=256, help="generator input resolution (trunk runs at res/4)")
    parser.add_argument("--layers", default="", help="comma-separated substrings of layer names to keep")
    parser.add_argument("--rep", type=int, default=200, help="milliseconds of timed repetitions per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    parser.add_argument("--peak-tops", type=float, default=None, help="override the int8 peak (TOPS)")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for BENCHMARKS.md")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer benchmark")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end generators")
    parser.add_argument("--slim-keep", type=float, default=0.25,
                        help="fraction of the non-trunk channels the slim GS-8 generator keeps")
    parser.add_argument("--cpu-check", action="store_true",
                        help="no GPU needed: build the end-to-end graphs at --res (use e.g. 32) and check them")
    args = parser.parse_args(argv)

    if args.cpu_check:
        return cpu_check(args.res, args.slim_keep)
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py: no CUDA device (torch.cuda.is_available() is False). This benchmark needs an "
              "NVIDIA GPU; kernel correctness on CPU is covered by tests/test_kernels.py (Triton interpreter).",
              file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench/gpu_kernels.py: triton is not installed", file=sys.stderr)
        return 2

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    peak_i8, peak_f16 = device_peaks(name)
    if args.peak_tops:
        peak_i8 = args.peak_tops
    torch.backends.cudnn.benchmark = True
    keep = [s.strip() for s in args.layers.split(",") if s.strip()]
    print(f"device: {name} | int8 dense peak: {peak_i8 or 'unknown'} TOPS | fp16 dense peak: "
          f"{peak_f16 or 'unknown'} TFLOPS | torch {torch.__version__} | triton {triton.__version__}")

    rows = []
    for layer in ([] if args.no_layers else layers(args.res)):
        if keep and not any(k in layer.name for k in keep):
            continue
        for batch in args.batch:
            ops = 2 * layer.useful_macs(batch)
            int8_fn, check = _int8_call(layer, batch, dev)
            ok = bool(check())
            t_i8 = _time_ms(int8_fn, args.rep)
            f16 = _fp16_fn(layer, batch, dev)
            t_f16 = _time_ms(f16, args.rep)
            t_cmp = None
            if not args.no_compile:
                compiled = torch.compile(f16, mode="max-autotune-no-cudagraphs", dynamic=False)
                t_cmp = _time_ms(compiled, args.rep)
            row = dict(device=name, layer=layer.name, batch=batch, hw=layer.hw, gmacs=layer.useful_macs(batch) / 1e9,
                       exact=ok, int8_ms=t_i8, int8_tops=ops / t_i8 / 1e9,
                       int8_pct_peak=(100 * ops / t_i8 / 1e9 / peak_i8) if peak_i8 else None,
                       cudnn_fp16_ms=t_f16, cudnn_tflops=ops / t_f16 / 1e9,
                       cudnn_pct_fp16_peak=(100 * ops / t_f16 / 1e9 / peak_f16) if peak_f16 else None,
                       compile_fp16_ms=t_cmp, speedup_vs_cudnn=t_f16 / t_i8,
                       speedup_vs_compile=(t_cmp / t_i8) if t_cmp else None)
            rows.append(row)
            pct = f"{row['int8_pct_peak']:5.1f}%" if row["int8_pct_peak"] is not None else "  n/a"
            cmp = f"{t_cmp:8.4f}" if t_cmp else "     n/a"
            print(f"{layer.name:<30} b{batch:<2} {row['gmacs']:7.3f} GMAC | int8 {t_i8:8.4f} ms "
                  f"{row['int8_tops']:7.1f} TOPS {pct} {'exact' if ok else 'MISMATCH'} | cudnn fp16 {t_f16:8.4f} ms "
                  f"{row['cudnn_tflops']:6.1f} TFLOPS | compile {cmp} ms | x{row['speedup_vs_cudnn']:.2f} vs cudnn",
                  flush=True)
    e2e_rows = [] if args.no_e2e else run_e2e(args, dev, name, peak_i8)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layers": rows, "e2e": e2e_rows}, f, indent=1)
    if args.markdown:
        print(f"\n**{name}**, CUDA graphs, {args.res}² generator input\n")
        print("| layer | batch | GMAC | int8 ms | int8 TOPS | % int8 peak | cuDNN fp16 ms | compile fp16 ms "
              "| int8 speedup vs cuDNN |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            pct = f"{r['int8_pct_peak']:.1f}" if r["int8_pct_peak"] is not None else "n/a"
            cmp = f"{r['compile_fp16_ms']:.4f}" if r["compile_fp16_ms"] else "n/a"
            print(f"| {r['layer']} | {r['batch']} | {r['gmacs']:.3f} | {r['int8_ms']:.4f} | {r['int8_tops']:.1f} | "
                  f"{pct} | {r['cudnn_fp16_ms']:.4f} | {cmp} | {r['speedup_vs_cudnn']:.2f} |")
        if e2e_rows:
            print("\n| generator | batch | GMAC | int8 ms (graph) | int8 ms (eager) | fp16 cuDNN ms (graph) | "
                  "fp16 ms (eager) | compile ms | int8 speedup (graphs) |")
            print("|---|---|---|---|---|---|---|---|---|")
            for r in e2e_rows:
                cmp = f"{r['compile graph ms']:.3f}" if "compile graph ms" in r else "n/a"
                print(f"| {r['model']} | {r['batch']} | {r['gmacs']:.2f} | {r['int8 graph ms']:.3f} | "
                      f"{r['int8 eager ms']:.3f} | {r['fp16 graph ms']:.3f} | {r['fp16 eager ms']:.3f} | {cmp} | "
                      f"{r['speedup_graph']:.2f} |")
    ok = all(r["exact"] for r in rows) and all(r["rel_err_vs_int"] < 0.1 for r in e2e_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
