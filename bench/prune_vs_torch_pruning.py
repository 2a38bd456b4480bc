"""gcompiler's exact dead-channel elimination vs Torch-Pruning at equal channel counts.

For each model: random BatchNorm statistics and affine parameters (beta != 0), then half of the units of
every prunable channel group (gcompiler's channel analysis) are killed by zeroing their producers' weights:
each such channel still carries a constant (bias, then BN's beta, then the activation), as a GS-pruned
channel does. That model is the reference. Both tools then physically remove exactly those channels:

* gcompiler: ``eliminate-dead-channels`` (constants folded into the next layer's bias);
* Torch-Pruning: ``DependencyGraph.get_pruning_group(first producer conv, prune_conv_out_channels, idxs)``
  for every group, then ``group.prune()``.

Reported: whether each tool ran, the max |y - y_masked| / max|y_masked| of its output, and its MACs.

Usage: ``python bench/prune_vs_torch_pruning.py`` (needs ``pip install torch-pruning``).
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gcompiler  # noqa: E402
from gcompiler.deploy.measure import rel_error  # noqa: E402


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def run(name: str, model: nn.Module, x: torch.Tensor) -> dict:
    """Kill half of every prunable group by zeroing its producers' weights for those channels (each dead
    channel then carries its bias, through BN beta and the activation: a constant), then remove them."""
    model.eval()
    gm = gcompiler.trace(model, x)
    plan = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    for g in gcompiler.channel_groups(gm):
        if not g.prunable or not g.producers:
            continue
        dead = list(range(0, g.channels, 2))
        for prod in g.producers:
            target = str(nodes[prod].target)
            conv = model.get_submodule(target)
            chans = sorted(c for u in dead for c in g.index[prod][u])
            with torch.no_grad():
                if isinstance(conv, nn.ConvTranspose2d):
                    conv.weight[:, chans] = 0
                else:
                    conv.weight[chans] = 0
            plan.setdefault(g.name, (target, chans))
    with torch.no_grad():
        ref = model(x)
    row = {"model": name, "groups": len(plan), "macs_dense": gcompiler.profile(model, x).macs}
    try:
        slim = gcompiler.compile(model, "eliminate-dead-channels", x, verify="shapes")
        with torch.no_grad():
            row["gc_err"] = rel_error(ref, slim(x))
        row["gc_macs"] = gcompiler.profile(slim).macs
    except Exception as exc:  # report, do not hide
        row["gc_err"], row["gc_macs"] = f"failed: {type(exc).__name__}: {str(exc)[:60]}", None
    try:
        import torch_pruning as tp

        eager = copy.deepcopy(model)
        dg = tp.DependencyGraph().build_dependency(eager, example_inputs=x, verbose=False)
        for gname, (target, chans) in plan.items():
            conv = eager.get_submodule(target)
            # Torch-Pruning's conv pruner handles transposed convs too (their out channels are dim 1)
            dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=chans).prune()
        with torch.no_grad():
            row["tp_err"] = rel_error(ref, eager(x))
        macs = gcompiler.profile(eager, x).macs
        row["tp_macs"] = macs if macs >= 0 else "inconsistent widths"
    except Exception as exc:
        row["tp_err"], row["tp_macs"] = f"failed: {type(exc).__name__}: {str(exc)[:60]}", None
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="input size of the ResNet (SR input is size/2)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    resnet = gcompiler.models.create("resnet_9blocks", ngf=16, norm="batch")
    _randomize_bn(resnet, 0)
    sr = gcompiler.models.create("srresnet", nf=16, nb=4, scale=4)
    _randomize_bn(sr, 1)
    rows = [run("resnet_9blocks (ngf 16, BN)", resnet, torch.randn(1, 3, args.size, args.size)),
            run("srresnet x4 (nf 16, pixel shuffle)", sr, torch.randn(1, 3, args.size // 2, args.size // 2))]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| model | groups halved | dense MACs | gcompiler err | gcompiler MACs | Torch-Pruning err | "
          "Torch-Pruning MACs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa
        print(f"| {r['model']} | {r['groups']} | {r['macs_dense']:,} | {fmt(r['gc_err'])} | {fmt(r['gc_macs'])} | "
              f"{fmt(r['tp_err'])} | {fmt(r['tp_macs'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
