#!/usr/bin/env python
"""Train the x2 super-resolution teacher shipped for ``builtin:sr``.

The teacher is a small SRResNet (``gcompiler.models.create("srresnet", nf=..., nb=..., scale=2)``,
BatchNorm kept so its normalization scales can serve as GAN-Slimming channel masks). It is trained
with an L1 pixel loss and Adam on random LR/HR patch pairs cut from the training photos of
``builtin:sr`` (see ``gcompiler/data/sr.py`` for the photos, the fixed held-out split and how LR
images are made), with a cosine learning-rate decay, on the CPU.

At the end it measures PSNR/SSIM on the held-out photos (and bicubic's, for comparison) and writes

  * ``--out`` (default ``gcompiler/assets/sr_teacher_x2.safetensors``): the weights;
  * the same path with ``.json``: architecture and keyword arguments (what ``load_teacher`` builds),
    the exact command, seed, steps, hyper-parameters, wall time and the held-out numbers.

Everything is seeded; with the same torch version, thread count and arguments a rerun gives the same
weights. The defaults take about 20 minutes on one CPU core.

Examples::

    python scripts/train_teacher.py                      # the shipped teacher
    python scripts/train_teacher.py --steps 200 --out /tmp/t.safetensors   # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gcompiler.data.sr import HELDOUT_IMAGES, TEACHER_WEIGHTS, TRAIN_IMAGES

    p = argparse.ArgumentParser(
        prog="train_teacher.py",
        description=__doc__.split("\n\n")[0] + " Trains on " + ", ".join(TRAIN_IMAGES)
        + "; evaluates on the held-out " + ", ".join(HELDOUT_IMAGES) + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Held-out PSNR/SSIM are on the Y channel with a 2-pixel border crop, outputs rounded to "
               "8 bits. Use scripts/eval_sr.py to re-measure a saved teacher.")
    g = p.add_argument_group("architecture (srresnet)")
    g.add_argument("--nf", type=int, default=32, help="feature channels of the trunk")
    g.add_argument("--nb", type=int, default=6, help="residual blocks")
    g.add_argument("--no-bn", action="store_true",
                   help="drop the BatchNorm layers (smaller and cleaner for SR, but GS then has no norm "
                        "scales to use as channel masks)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=16, help="patch pairs per step")
    g.add_argument("--patch", type=int, default=40, help="LR patch side in pixels (HR patch is twice that)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (cosine decay to 1%% of it)")
    g.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=0, help="seed for weights init and data order/augmentation")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 keeps the machine usable by others and results reproducible)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--random-init", action="store_true",
                   help="plain random initialization instead of starting from bicubic upsampling "
                        "(needs many more steps)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="also evaluate on the held-out photos every N steps (0: only at the end)")
    p.add_argument("--out", type=Path, default=TEACHER_WEIGHTS,
                   help="where to write the weights (.safetensors); the .json goes next to it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. for log files)")
    args = p.parse_args(argv)
    for name in ("nf", "nb", "steps", "batch_size", "patch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.out.suffix != ".safetensors":
        p.error("--out must end in .safetensors")
    return args


def _cubic(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (torch's bicubic upsampling uses a = -0.75)."""
    d = abs(d)
    if d < 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


@torch.no_grad()
def init_as_upsampler(model: torch.nn.Module) -> None:
    """Start the SRResNet from (almost) bicubic x2 upsampling, so training learns only the correction.

    An SRResNet trained from random weights spends thousands of steps learning to reproduce its
    input; on one CPU core there is no time for that. Here, for image channel c (0..2):

    * ``conv_first`` copies channel c to feature c (centre tap 1; inputs in [0, 1] pass the PReLU);
    * ``bn_body``'s scale starts at 0 ("zero-init residual"), so the body adds nothing at first;
    * ``upsample.0.conv`` writes, for each of the 4 sub-pixel phases of feature c, bicubic weights
      truncated to its 3x3 window and renormalized (the dropped tap is 3.5 % of the kernel), so after
      PixelShuffle feature c is the near-bicubic x2 upsampling of the input channel;
    * ``conv_last`` copies feature c to output c.

    All other weights keep their random initialization; the other features reach the output only
    through weights that start at 0 and are learned.
    """
    up = model.upsample
    if len(up) != 1:
        raise SystemExit("init_as_upsampler handles scale 2 (one upsampling stage) only")
    nf = model.conv_first.out_channels
    k1, kl = model.conv_first.kernel_size[0] // 2, model.conv_last.kernel_size[0] // 2
    # 1-D phase weights over LR offsets (-1, 0, +1): output 2i samples i - 1/4, output 2i+1 samples i + 1/4.
    ph = []
    for shift in (-0.25, 0.25):
        w = [_cubic(off - shift) for off in (-1, 0, 1)]
        ph.append([v / sum(w) for v in w])
    conv = up[0].conv
    for c in range(3):
        model.conv_first.weight[c].zero_()
        model.conv_first.weight[c, c, k1, k1] = 1.0
        model.conv_first.bias[c] = 0.0
        for dy in (0, 1):
            for dx in (0, 1):
                o = 4 * c + 2 * dy + dx  # PixelShuffle(2): channel 4c + 2dy + dx -> pixel (2i+dy, 2j+dx)
                conv.weight[o].zero_()
                conv.weight[o, c] = torch.outer(torch.tensor(ph[dy]), torch.tensor(ph[dx]))
                conv.bias[o] = 0.0
        model.conv_last.weight[c].zero_()
        model.conv_last.weight[c, c, kl, kl] = 1.0
        model.conv_last.bias[c] = 0.0
    if isinstance(model.bn_body, torch.nn.BatchNorm2d):
        model.bn_body.weight.zero_()
    else:
        model.conv_body.weight.zero_()
    assert nf >= 3


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay from 1 to 0.01."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from gcompiler import models
    from gcompiler.data import make_loader, open_dataset
    from gcompiler.data.sr import HELDOUT_IMAGES, TRAIN_IMAGES, evaluate_sr

    kwargs = {"nf": args.nf, "nb": args.nb, "scale": 2, "bn": not args.no_bn}
    model = models.create("srresnet", **kwargs)
    if not args.random_init:
        init_as_upsampler(model)
    model = model.to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    data = open_dataset("builtin:sr", crop_size=args.patch, augment="dihedral",
                        patches_per_epoch=args.steps * args.batch_size, seed=args.seed)
    loader = make_loader(data, batch_size=args.batch_size, seed=args.seed, num_workers=0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.steps, args.warmup))

    print(f"srresnet {kwargs}: {n_params:,} parameters; {args.steps} steps of {args.batch_size} "
          f"{args.patch}x{args.patch} LR patches on {args.device} ({args.threads} thread(s))", flush=True)
    t0 = time.time()
    model.train()
    stream = loader.batches()
    bar = tqdm(range(args.steps), disable=args.no_progress, desc="teacher", dynamic_ncols=True)
    ema = None
    for step in bar:
        batch = next(stream)
        lr_img, hr_img = batch["input"].to(args.device), batch["target"].to(args.device)
        loss = torch.nn.functional.l1_loss(model(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            print(f"loss is {loss.item()} at step {step}: stopping (try a lower --lr)", file=sys.stderr)
            return 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(l1=f"{ema:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        if args.no_progress and (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} l1 {ema:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            m = evaluate_sr(model, device=args.device)["mean"]
            model.train()
            print(f"step {step + 1}: held-out PSNR-Y {m['model']['psnr_y']:.3f} dB "
                  f"(bicubic {m['bicubic']['psnr_y']:.3f})", flush=True)
    wall = time.time() - t0

    model.eval()
    res = evaluate_sr(model, device=args.device)
    mean = res["mean"]
    gain = mean["model"]["psnr_y"] - mean["bicubic"]["psnr_y"]
    print(f"held-out ({', '.join(HELDOUT_IMAGES)}): teacher PSNR-Y {mean['model']['psnr_y']:.3f} dB / "
          f"SSIM-Y {mean['model']['ssim_y']:.4f}; bicubic {mean['bicubic']['psnr_y']:.3f} dB / "
          f"{mean['bicubic']['ssim_y']:.4f}; gain {gain:+.3f} dB", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = args.out.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"arch": "srresnet", "kwargs": json.dumps(kwargs)})
    tmp.chmod(0o644)  # a package asset, readable by everyone
    tmp.replace(args.out)
    meta = {
        "arch": "srresnet",
        "kwargs": kwargs,
        "params": n_params,
        "command": "python scripts/train_teacher.py " + " ".join(shlex.quote(a) for a in
                                                              (sys.argv[1:] if argv is None else argv)),
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "patch_lr": args.patch,
        "init": "random" if args.random_init else "bicubic-like (init_as_upsampler)",
        "lr": args.lr, "warmup": args.warmup, "loss": "L1", "optimizer": "Adam(0.9, 0.999), cosine to 1%",
        "augment": "random crop + dihedral (flips/transposes)", "threads": args.threads,
        "device": str(args.device), "torch": torch.__version__, "train_wall_s": round(wall, 1),
        "train_images": list(TRAIN_IMAGES), "heldout_images": list(HELDOUT_IMAGES),
        "eval_protocol": "whole held-out images, output clamped and rounded to 8 bits, Y channel (BT.601), "
                         "2-pixel border cropped",
        "heldout": res,
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {args.out.with_suffix('.json')}; "
          f"trained in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
