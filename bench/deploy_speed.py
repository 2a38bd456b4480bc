#!/usr/bin/env python
"""Realized speed of slim generators through ``gcompiler.deploy`` (CPU), int8 vs fp32, compile time, training cost.

Sections (each ratio measured side by side in this one process, candidates interleaved round robin):

* ``realized``: ``resnet_9blocks`` (random weights, 256x256, batch 1) dense and with 50 / 75 / 87.5 % of
  every prunable group's channels removed (odd-width variants keep one channel fewer: 31/63/127 or 15/31/63),
  built as GS builds them (trace, ``insert-masks``, masks zeroed, ``eliminate-dead-channels``), and GAN
  Compression's ``sub_mobile_resnet_9blocks`` ``16_16_32_16_32_32_16_16``. Every net goes through
  ``deploy`` (its own measured choice); then every chosen back end and the dense model's eager run are timed
  together, round robin. realized = t(dense, deploy) / t(net, deploy); ideal = MACs(dense) / MACs(net);
  the target is realized / ideal >= 0.85 down to 25x fewer MACs, and deploy(dense) <= eager(dense).
* ``int8``: ``deploy(precision="int8")`` vs ``deploy(precision="fp32")`` on the 75 % slim net (target >= 2x).
* ``compile``: trace + ``channel_groups`` + ``insert-masks`` + ``eliminate-dead-channels`` (half of every
  group's mask zeroed) on ``resnet_9blocks`` at 256x256 (target <= 2 s) and, for growth, on a narrow
  (ngf 16, 64x64) generator with 9, 90 and 900 residual blocks (target: time per block grows <= 1.2x).
* ``train``: one distillation step (student forward + backward + Adam) of a plain student vs the same student
  with ``insert-masks,insert-fake-quant`` and the proximal L1 step on the masks (target <= 1.5x).

Run from the repository root: ``python bench/deploy_speed.py`` (all sections; ``--sections`` picks some,
``--quick`` shrinks sizes for a smoke test). Writes a markdown summary to ``--out`` when given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402

import gcompiler  # noqa: E402
from gcompiler.deploy import deploy  # noqa: E402
from gcompiler.deploy.measure import round_robin  # noqa: E402
from gcompiler.models import create  # noqa: E402

SUB_MOBILE = "16_16_32_16_32_32_16_16"


def slim_resnet(cut: float, odd: bool, x: torch.Tensor, ngf: int = 64, n_blocks: int = 9) -> torch.fx.GraphModule:
    """``resnet_9blocks`` with ``cut`` of every prunable group's units removed (one more when ``odd``)."""
    torch.manual_seed(0)
    model = create("resnet_9blocks", ngf=ngf, n_blocks=n_blocks).eval()
    gm = gcompiler.compile(model, "insert-masks", x)
    with torch.no_grad():
        for v in gcompiler.masks(gm).values():
            n = v.numel()
            keep = max(1, n - int(n * cut) - (1 if odd else 0))
            v[keep:] = 0
    gm, _ = gcompiler.run_pipeline(gm, "eliminate-dead-channels")
    return gm


def macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    return gcompiler.profile(model, x).macs


def widths(gm: torch.fx.GraphModule) -> str:
    from gcompiler.analysis import channel_groups
    gs = [g for g in channel_groups(gm) if g.prunable]
    return "/".join(str(g.channels) for g in gs[:3]) + ("/..." if len(gs) > 3 else "")


def section_realized(args, out: list[str]) -> None:
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    torch.manual_seed(0)
    dense = create("resnet_9blocks").eval()
    nets: dict[str, torch.nn.Module] = {"dense": dense}
    cuts = [(0.5, False), (0.5, True), (0.75, False), (0.75, True), (0.875, False)]
    if args.quick:
        cuts = [(0.75, False)]
    wanted = [n.strip() for n in args.nets.split(",")] if args.nets else None
    for cut, odd in cuts:
        name = f"cut {cut * 100:g} %{' odd' if odd else ''}"
        if wanted is None or name in wanted:
            nets[name] = slim_resnet(cut, odd, x)
    torch.manual_seed(0)
    if wanted is None or "sub_mobile" in wanted:
        nets[f"sub_mobile {SUB_MOBILE}"] = create("sub_mobile_resnet_9blocks", config=SUB_MOBILE).eval()
    deployed = {}
    exclude = [] if args.inductor_timeout > 0 else ["inductor"]
    for name, net in nets.items():
        t0 = time.perf_counter()
        d = deploy(net, x, rounds=args.deploy_rounds, inductor_timeout_s=args.inductor_timeout, exclude=exclude,
                   stat=args.stat)
        deployed[name] = d
        print(f"[realized] {name}: {time.perf_counter() - t0:.0f} s to deploy\n{d.report}", flush=True)
    runners = {"dense eager": lambda: dense(x)}
    runners.update({name: (lambda d=d: d(x)) for name, d in deployed.items()})
    with torch.no_grad():
        for fn in runners.values():
            fn()
    cpu: dict[str, list[float]] = {}
    times = round_robin(runners, rounds=args.runs, cpu=cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cbest = {k: min(v) for k, v in cpu.items()}
    m_dense = macs(dense, x)
    out += ["", f"### Realized speed-up through deploy ({args.size}x{args.size}, batch 1, {args.threads} thread(s), "
            f"median of {args.runs} interleaved runs)", "",
            "| net | widths (first groups) | G MACs | MACs cut | backend chosen | wall ms (median / min) | CPU ms (min) "
            "| realized speed-up (median) | realized / ideal: median | min | CPU |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, d in deployed.items():
        net = nets[name]
        m = macs(net, x)
        ideal = m_dense / m
        realized = med["dense"] / med[name]
        w = widths(net if isinstance(net, torch.fx.GraphModule) else gcompiler.trace(net, x, verify=False))
        r_min = best["dense"] / best[name]
        r_cpu = cbest["dense"] / cbest[name]
        out.append(f"| {name} | {w} | {m / 1e9:.2f} | {ideal:.1f}x | {d.backend} | {med[name] * 1e3:.0f} / "
                   f"{best[name] * 1e3:.0f} | {cbest[name] * 1e3:.0f} | {realized:.2f}x | **{realized / ideal:.2f}** | "
                   f"{r_min / ideal:.2f} | {r_cpu / ideal:.2f} |")
    out += ["", f"deploy(dense) = {med['dense'] * 1e3:.0f} ms ({deployed['dense'].backend}) vs eager(dense) = "
            f"{med['dense eager'] * 1e3:.0f} ms: deploy / eager = {med['dense'] / med['dense eager']:.2f} "
            f"(min: {best['dense'] / best['dense eager']:.2f}, CPU: {cbest['dense'] / cbest['dense eager']:.2f})", ""]
    per_round = {name: [a / b for a, b in zip(times["dense"], times[name])] for name in deployed if name != "dense"}
    out += ["Per-round realized speed-ups (dense / net, same round): " + "; ".join(
        f"{k}: {min(v):.1f}-{max(v):.1f}" for k, v in per_round.items()), ""]
    print("\n".join(out[-12:]), flush=True)


def section_int8(args, out: list[str]) -> None:
    """int8 vs fp32 through deploy on the 75 % slim net (random weights) and on the trained builtin:sr teacher."""
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    cases = [("75 % slim resnet_9blocks (random weights)", slim_resnet(0.75, False, x), x)]
    try:
        from gcompiler.spec import build_teacher, parse_teacher
        xs = torch.rand(1, 3, args.size // 2, args.size // 2)
        cases.append((f"builtin:sr teacher (trained SRResNet x2, {args.size // 2}x{args.size // 2} input)",
                      build_teacher(parse_teacher("builtin:sr")).eval(), xs))
    except Exception as exc:  # noqa: BLE001 - the SR asset is optional for this section
        print(f"[int8] builtin:sr teacher unavailable: {exc}")
    for run in args.student:  # trained students (e.g. the demo's GS-8): the float network and its own int8 graph
        from gcompiler.export import example_input
        from gcompiler.quant import float_copy

        st = gcompiler.load(run).eval()
        meta = json.loads((Path(run) / "summary.json").read_text()) if (Path(run) / "summary.json").is_file() else {}
        xr = example_input(st, meta)
        cases.append((f"student of {run} ({tuple(xr.shape)})", (float_copy(st), st), xr))
    out += ["", "### int8 vs fp32 through deploy", "",
            "| model | fp32: backend, ms (min) | int8 (contract 0.1): backend, ms (min), error | int8 / fp32 speed-up "
            "| QLinearConv path alone: ms (min), error vs integer graph | its speed-up |",
            "|---|---|---|---:|---|---:|"]
    for label, net, xin in cases:
        net32, net8 = net if isinstance(net, tuple) else (net, net)  # a quantized student: (float, its own int8)
        d32 = deploy(net32, xin, rounds=args.deploy_rounds, exclude=["inductor"], stat=args.stat)
        d8 = deploy(net8, xin, precision="int8", rounds=args.deploy_rounds, stat=args.stat)
        fast = deploy(net8, xin, precision="int8", backends=["onnxruntime-int8", "onnxruntime-int8-clipped"],
                      rounds=args.deploy_rounds, tolerance=1.0, stat=args.stat)
        print(d32.report, "\n", d8.report, "\n", fast.report, flush=True)
        cpu: dict[str, list[float]] = {}
        times = round_robin({"fp32": lambda: d32(xin), "int8": lambda: d8(xin), "qlinear": lambda: fast(xin)},
                            rounds=args.runs, cpu=cpu)
        best = {k: min(v) for k, v in times.items()}
        cb = {k: min(v) for k, v in cpu.items()}
        out.append(f"| {label} | {d32.backend}, {best['fp32'] * 1e3:.0f} ms | {d8.backend}, {best['int8'] * 1e3:.0f} ms, "
                   f"{d8.report['final_error']:.3f} | **{best['fp32'] / best['int8']:.2f}x** | "
                   f"{best['qlinear'] * 1e3:.0f} ms, {fast.report['final_error']:.3f} | "
                   f"{best['fp32'] / best['qlinear']:.2f}x (CPU time: int8 {cb['fp32'] / cb['int8']:.2f}x, "
                   f"QLinearConv {cb['fp32'] / cb['qlinear']:.2f}x) |")
        print(out[-1], flush=True)
    out += ["", "Errors are max|y - y_ref| / max|y_ref| against the integer graph (convert-to-int, reference "
            "executor); deploy(precision='int8') only returns a back end within 0.1. The QLinearConv column is "
            "deploy(precision='int8', backends=['onnxruntime-int8', 'onnxruntime-int8-clipped'], tolerance=1.0), "
            "i.e. the contract switched off to show that path's speed and error.", ""]


def compile_time(n_blocks: int, ngf: int, size: int) -> dict[str, float]:
    from gcompiler.analysis import channel_groups

    torch.manual_seed(0)
    model = create("resnet_9blocks", n_blocks=n_blocks, ngf=ngf).eval()
    x = torch.rand(1, 3, size, size)
    t = {}
    c_start = time.process_time()
    t0 = time.perf_counter()
    gm = gcompiler.trace(model, x)
    t["trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    channel_groups(gm)
    t["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gcompiler.run_pipeline(gm, "insert-masks")
    t["insert-masks"] = time.perf_counter() - t0
    with torch.no_grad():
        for v in gcompiler.masks(gm).values():
            v[v.numel() // 2:] = 0
    t0 = time.perf_counter()
    gcompiler.run_pipeline(gm, "eliminate-dead-channels")
    t["eliminate-dead-channels"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["cpu"] = time.process_time() - c_start
    return t


def section_compile(args, out: list[str]) -> None:
    compile_time(2, 8, 32)  # warm imports and first-call caches
    full = compile_time(9, 64, args.size)
    out += ["", "### Compile time (trace + analysis + insert-masks + eliminate-dead-channels)", "",
            "| generator | trace s | analysis s | insert-masks s | eliminate-dead-channels s | total s (wall) | "
            "total CPU s | CPU / block |", "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| resnet_9blocks (ngf 64, {args.size}x{args.size}) | " + " | ".join(
                f"{full[k]:.2f}" for k in ("trace", "analysis", "insert-masks", "eliminate-dead-channels", "total", "cpu"))
            + " | |"]
    blocks = [9, 90] if args.quick else [9, 90, 900]
    rows = {}
    for nb in blocks:
        rows[nb] = compile_time(nb, 16, 64)
        out.append(f"| {nb} blocks (ngf 16, 64x64) | " + " | ".join(
            f"{rows[nb][k]:.2f}" for k in ("trace", "analysis", "insert-masks", "eliminate-dead-channels", "total", "cpu"))
            + f" | {rows[nb]['cpu'] / nb * 1e3:.1f} ms |")
        print(out[-1], flush=True)
    base = rows[blocks[0]]["total"] / blocks[0]
    cbase = rows[blocks[0]]["cpu"] / blocks[0]
    out += ["", "Growth of time per block vs 9 blocks: " + ", ".join(
        f"{nb} blocks {rows[nb]['total'] / nb / base:.2f}x wall, {rows[nb]['cpu'] / nb / cbase:.2f}x CPU"
        for nb in blocks[1:]) + " (target <= 1.2x)", ""]
    print("\n".join(out[-10:]), flush=True)


def section_train(args, out: list[str]) -> None:
    from gcompiler.passes.sparsity import proximal_l1

    size = 64 if not args.quick else 32
    torch.manual_seed(0)
    teacher = create("resnet_9blocks", ngf=32).eval()
    x = torch.rand(4, 3, size, size) * 2 - 1
    with torch.no_grad():
        target = teacher(x)
    plain = gcompiler.trace(create("resnet_9blocks", ngf=16), x[:1])
    gs = gcompiler.compile(plain, "insert-masks,insert-fake-quant", x[:1])
    mask_params = [p for p in gcompiler.masks(gs).values()]
    mask_ids = {id(p) for p in mask_params}
    setups = {}
    for name, student in (("plain distillation", plain), ("masks + fake quant + proximal L1", gs)):
        student.train()
        params = [p for p in student.parameters() if id(p) not in mask_ids]
        opt = torch.optim.Adam(params, lr=1e-4)
        mopt = torch.optim.SGD(mask_params, lr=0.1, momentum=0.5) if name.startswith("masks") else None
        hook = proximal_l1(0.01)

        def step(student=student, opt=opt, mopt=mopt, hook=hook):
            with torch.enable_grad():
                loss = torch.nn.functional.mse_loss(student(x), target)
                opt.zero_grad(set_to_none=True)
                if mopt is not None:
                    mopt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if mopt is not None:
                    mopt.step()
                    hook(mask_params, 0.1)
        setups[name] = step
    for fn in setups.values():
        fn()
    cpu: dict[str, list[float]] = {}
    times = round_robin(setups, rounds=args.runs, cpu=cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = med["plain distillation"], med["masks + fake quant + proximal L1"]
    ca, cb = min(cpu["plain distillation"]), min(cpu["masks + fake quant + proximal L1"])
    out += ["", f"### Training-step cost (student resnet_9blocks ngf 16, batch 4, {size}x{size}, MSE to a ngf-32 "
            "teacher's outputs, Adam; GS adds masks, 8-bit fake quantization, the mask SGD step and proximal L1)", "",
            "| step | ms |", "|---|---:|", f"| plain distillation | {a * 1e3:.1f} |",
            f"| masks + fake quant + proximal L1 | {b * 1e3:.1f} |", "",
            f"ratio: **{b / a:.2f}x** wall (median), {ca and cb / ca:.2f}x CPU time (min) (target <= 1.5x)", ""]
    print("\n".join(out[-8:]), flush=True)


def section_inductor(args, out: list[str]) -> None:
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    net = slim_resnet(0.75, False, x)
    t0 = time.perf_counter()
    d = deploy(net, x, backends=["eager", "fused", "onnxruntime", "inductor"], rounds=args.runs,
               inductor_timeout_s=max(args.inductor_timeout, 600.0))
    print(d.report, flush=True)
    r = d.report
    out += ["", "### torch.compile (Inductor, freezing) as a deploy candidate (75 % slim resnet_9blocks)", "",
            "| candidate | median ms | build s |", "|---|---:|---:|"]
    out += [f"| {k} | {v:.0f} | {r['build_s'].get(k, float('nan')):.1f} |" for k, v in sorted(r["timings_ms"].items(),
                                                                                            key=lambda kv: kv[1])]
    out += [f"| {k} | skipped: {v} | |" for k, v in r["skipped"].items()]
    out += ["", f"chosen: {d.backend}; deploy took {time.perf_counter() - t0:.0f} s", ""]
    print("\n".join(out[-10:]), flush=True)


SECTIONS = {"realized": section_realized, "int8": section_int8, "compile": section_compile, "train": section_train,
            "inductor": section_inductor}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=7, help="interleaved timed rounds of the side-by-side loops")
    p.add_argument("--deploy-rounds", type=int, default=3, help="rounds deploy uses to choose")
    p.add_argument("--inductor-timeout", type=float, default=0.0,
                   help="seconds for deploy's torch.compile candidate (0: leave it out; it takes minutes here)")
    p.add_argument("--nets", default="", help="realized: comma list of nets besides dense, e.g. "
                   "'cut 75 %%,sub_mobile' (default: all)")
    p.add_argument("--stat", default="cpu", choices=["cpu", "min", "median"],
                   help="how deploy chooses (cpu: min process CPU time; right at 1 thread on a shared machine)")
    p.add_argument("--student", action="append", default=[], metavar="RUN",
                   help="int8: also a trained run's student (its float network vs its own int8 graph), repeatable")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer nets (smoke test)")
    p.add_argument("--out", default="", help="append the markdown tables to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.deploy_rounds = 64, 3, 1
    torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    out: list[str] = [f"torch {torch.__version__}, {args.threads} thread(s), load average at start {load0}"]
    for s in names:
        t0 = time.perf_counter()
        SECTIONS[s](args, out)
        print(f"[{s}] {time.perf_counter() - t0:.0f} s", flush=True)
    out.append(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
