#!/usr/bin/env python
"""Train the ``builtin:cartoon`` teacher (a ``resnet_9blocks`` generator) and its discriminator.

The task (``gcompiler/data/cartoon.py``): input a photo, target a fixed deterministic cartoon
stylization of it (TV smoothing, colour quantization, dark Canny edges), on the photos of
``gcompiler/data/photos.py`` with their fixed held-out split.

Teacher: CycleGAN's ResNet generator, ``gcompiler.models.create("resnet_9blocks", ngf=32, norm=...)``
(reflection padding, no dropout, tanh output; the zoo's key names). Discriminator: ``patchgan_d`` (70x70
PatchGAN, ``n_layers`` 3, InstanceNorm), unconditional (it sees a cartoon image in [-1, 1], real or generated).

Norm and initialization (``--norm``, ``--init``). With CycleGAN's InstanceNorm the generator cannot do this
task: the first InstanceNorm removes every feature's mean and scale per image, so ``G(a x + c) == G(x)`` for any
contrast ``a > 0`` and colour shift ``c`` (measured: 7e-5 apart), while the target keeps the photo's colours;
an InstanceNorm teacher trained here stayed 7.4 dB *below* the identity baseline with the wrong global colour.
The default is therefore pix2pix's own norm, BatchNorm (same layout and keys otherwise), and ``--init identity``
(:func:`identity_init`): the generator starts as the identity map (44 dB to its input) with its BatchNorm
layers kept as fixed affine maps (eval mode, running mean 0 / variance 1) during training, so it learns only
the stylization. ``--init pix2pix`` is N(0, 0.02) as in pix2pix, BatchNorm then uses batch statistics.

Training is pix2pix-style: ``L_G = 100 * L1(G(x), y) + LSGAN(D(G(x)) -> 1)``,
``L_D = 0.5 * (LSGAN(D(y) -> 1) + LSGAN(D(G(x)) -> 0))``, one D step per G step, Adam betas (0.5, 0.999),
random crops with horizontal flips, a cosine learning-rate decay over ``--steps`` or ``--time-budget``
seconds of wall time (``scripts/teacher_common.py``). Checkpoints are written atomically every
``--ckpt-every`` steps (``--resume``, ``--export-only``). Held-out PSNR during training
(``--eval-every``) is only logged, never used to pick weights.

At the end both networks are written as fp16 ``.safetensors`` package assets with a JSON record each;
the teacher's record holds the held-out PSNR/SSIM measured after loading the fp16 file back into a
float32 model, the exact command, seed, steps and wall time.

Examples::

    python scripts/train_cartoon.py --time-budget 3600 --crop 128 --lr 3e-4 --warmup 30   # the shipped one
    python scripts/train_cartoon.py --steps 4 --out /tmp/c.safetensors                       # smoke run
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_common import (TimeSchedule, comma_list, ema_update, export_model, load_ckpt,  # noqa: E402
                            save_ckpt, train_mode)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gcompiler.data.tasks import CARTOON_TEACHER

    p = argparse.ArgumentParser(prog="train_cartoon.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("architecture")
    g.add_argument("--ngf", type=int, default=32, help="generator base width (resnet_9blocks)")
    g.add_argument("--ndf", type=int, default=32, help="discriminator base width (patchgan_d, 3 layers)")
    g.add_argument("--init", choices=("pix2pix", "identity"), default="identity",
                   help="pix2pix: N(0, 0.02) weights; identity: the generator starts as the identity map "
                        "(identity_init; needs --norm batch), and its BatchNorm layers stay frozen affine maps "
                        "(eval mode) while training, so the training and the shipped network compute the same")
    g.add_argument("--norm", choices=("batch", "instance"), default="batch",
                   help="generator norm layers. pix2pix's own default is batch; instance (CycleGAN's) "
                        "normalizes the first conv's output per image, which makes the generator blind to "
                        "an image's mean colour and contrast (G(a*x + c) == G(x)), so it cannot reproduce "
                        "a target that keeps the photo's colours (see the module docstring)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=4000, help="G/D steps (ignored with --time-budget)")
    g.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of training; cosine decay over wall time, stop when spent (0: --steps)")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--crop", type=int, default=96, help="training crop side (pixels of the 256-short-side photos)")
    g.add_argument("--lr", type=float, default=4e-4, help="peak generator learning rate")
    g.add_argument("--d-lr", type=float, default=2e-4, help="peak discriminator learning rate")
    g.add_argument("--l1-weight", type=float, default=100.0, help="weight of the L1 term (pix2pix: 100)")
    g.add_argument("--mse-weight", type=float, default=0.0,
                   help="weight of an added squared-error term. PSNR is a squared-error metric: where the "
                        "target is uncertain (an edge pixel or a colour level near a rounding boundary), L1 "
                        "picks one side (the median) and squared error their mean, which scores higher "
                        "(pix2pix: 0)")
    g.add_argument("--gan-weight", type=float, default=1.0, help="weight of the LSGAN term (pix2pix: 1)")
    g.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of G's weights with this decay (e.g. 0.999) and "
                        "evaluate and ship it: under the GAN term G's held-out PSNR swings by up to ~2 dB within "
                        "a few hundred steps (0: off)")
    g.add_argument("--warmup", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--bf16", action="store_true",
                   help="mixed precision: forward passes under bfloat16 autocast with channels-last tensors (weights, "
                        "optimizer and evaluation stay float32); ~2x faster steps on CPUs with AVX512-BF16 or AMX")
    g.add_argument("--short-sides", default=(256,),
                   type=comma_list(int, lambda v: v >= 32, "--short-sides", "sizes must be >= 32 pixels"),
                   help="comma-separated working sizes (short side, pixels) at which every training photo is "
                        "used, each stylized at its size, e.g. 256,320,384 (three times the sources; held-out "
                        "photos stay at 256; default: 256)")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.add_argument("--eval-every", type=int, default=200, help="log held-out PSNR every N steps")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--ckpt-dir", type=Path, default=None, help="default: <out>.ckpt/")
    g.add_argument("--ckpt-every", type=int, default=50)
    g.add_argument("--resume", action="store_true")
    g.add_argument("--init-from", type=Path, default=None,
                   help="warm start: take G and D weights (not optimizer state, step or time) from a "
                        "checkpoint of an earlier run (e.g. one on an earlier stylization)")
    g.add_argument("--export-only", action="store_true")
    g.add_argument("--out", type=Path, default=CARTOON_TEACHER,
                   help="teacher weights (.safetensors); the discriminator goes to <stem>_discriminator")
    g.add_argument("--fp32", action="store_true", help="store float32 weights (default fp16)")
    args = p.parse_args(argv)
    for name in ("ngf", "ndf", "steps", "batch_size", "crop", "threads", "ckpt_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.out.suffix != ".safetensors":
        p.error("--out must end in .safetensors")
    if args.ckpt_dir is None:
        args.ckpt_dir = args.out.with_suffix(".ckpt")
    if args.init == "identity" and args.norm != "batch":
        p.error("--init identity needs --norm batch")
    return args


@torch.no_grad()
def pix2pix_init(model: torch.nn.Module) -> None:
    """Conv weights ~ N(0, 0.02), biases 0 (pix2pix's ``init_weights('normal')``)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


# knots of the piecewise-linear atanh that undoes the final tanh (u = |x|, capped at atanh(0.995) at u = 1)
KNOTS = (0.5, 0.75, 0.9, 0.97)
_CAP = math.atanh(0.995)


def _pl_atanh_slopes() -> list[float]:
    pts = [0.0, *KNOTS, 1.0]
    vals = [math.atanh(u) for u in pts[:-1]] + [_CAP]
    seg = [(vals[i + 1] - vals[i]) / (pts[i + 1] - pts[i]) for i in range(len(pts) - 1)]
    return [seg[0]] + [seg[i] - seg[i - 1] for i in range(1, len(seg))]


@torch.no_grad()
def identity_init(G: nn.Module) -> None:
    """Make a ``resnet_9blocks`` (``norm='batch'``, ngf >= 30) compute the identity, to 44 dB, with BatchNorm in
    eval mode (running mean 0, variance 1: each BN is the affine map ``gamma x + beta``).

    The photo's channels go through as ``relu(x_c)`` and ``relu(-x_c)`` (6 channels); each stride-2 conv
    stacks 2x2 neighbourhoods into channels (space to depth: 24, then 96 channels), each residual block
    starts with its last BN at 0 (adds nothing), each transposed conv undoes one stacking (depth to space),
    and the last stage adds copies ``relu(|x| - t)`` at the :data:`KNOTS` so that the last conv can apply a
    piecewise-linear ``atanh`` that the final ``tanh`` undoes. Weights of the identity channels are set;
    every other weight keeps its random initialization, and the last conv reads only the identity channels,
    so the other channels start without effect and are learned.
    """
    m = G.model
    ngf = m[1].out_channels
    T = len(KNOTS)
    if m[4].out_channels < 24 or m[7].out_channels < 96 or ngf < 6 + 6 * T:
        raise SystemExit(f"identity init needs ngf >= {6 + 6 * T}")
    bns = [mod for mod in G.modules() if isinstance(mod, nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean.zero_(); bn.running_var.fill_(1.0 - bn.eps)  # eval-mode BN = gamma * x + beta exactly
    # stage 0: channel 2c + s = relu((+/-) x_c)
    w = m[1].weight
    for k in range(6):
        w[k].zero_()
        w[k, k // 2, 3, 3] = 1.0 if k % 2 == 0 else -1.0
        m[2].weight[k] = 1.0; m[2].bias[k] = 0.0
    # stage 1 and 2: space to depth, channel 4k + 2a + b <- channel k at (2i + a, 2j + b)
    for conv, bn, n_in in ((m[4], m[5], 6), (m[7], m[8], 24)):
        for k in range(n_in):
            for a in range(2):
                for b in range(2):
                    o = 4 * k + 2 * a + b
                    conv.weight[o].zero_()
                    conv.weight[o, k, 1 + a, 1 + b] = 1.0
                    bn.weight[o] = 1.0; bn.bias[o] = 0.0
    # residual blocks: the last BN's scale and shift at 0, so each block adds nothing
    for blk in m[10:19]:
        blk.conv_block[6].weight.zero_(); blk.conv_block[6].bias.zero_()
    # up 1: depth to space, channel k (of 24) <- channels 4k + 2a + b
    up1, bn1 = m[19], m[20]
    for k in range(24):
        up1.weight[:, k].zero_()
        for a in range(2):
            for b in range(2):
                up1.weight[4 * k + 2 * a + b, k, 1 + a, 1 + b] = 1.0
        bn1.weight[k] = 1.0; bn1.bias[k] = 0.0
    # up 2: channel k (of 6) <- channels 4k + 2a + b; and T shifted copies relu(u - t)
    up2, bn2 = m[22], m[23]
    for t in range(T + 1):
        for k in range(6):
            o = 6 * t + k
            up2.weight[:, o].zero_()
            for a in range(2):
                for b in range(2):
                    up2.weight[4 * k + 2 * a + b, o, 1 + a, 1 + b] = 1.0
            bn2.weight[o] = 1.0
            bn2.bias[o] = 0.0 if t == 0 else -KNOTS[t - 1]
    # last conv: pre-tanh = f(relu(x)) - f(relu(-x)) with f the piecewise-linear atanh
    last = m[26]
    last.weight.zero_(); last.bias.zero_()
    slopes = _pl_atanh_slopes()
    for c in range(3):
        for t in range(T + 1):
            last.weight[c, 6 * t + 2 * c, 3, 3] = slopes[t]
            last.weight[c, 6 * t + 2 * c + 1, 3, 3] = -slopes[t]


@torch.no_grad()
def d_scores(disc: torch.nn.Module, teacher: torch.nn.Module) -> dict[str, float]:
    from gcompiler.data.cartoon import heldout_pairs

    real, fake = [], []
    for _, x, y in heldout_pairs():
        real.append(disc(y).mean().item())
        fake.append(disc(teacher(x)).mean().item())
    return {"heldout_real": sum(real) / len(real), "heldout_teacher": sum(fake) / len(fake)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from gcompiler import models
    from gcompiler.data import make_loader, open_dataset
    from gcompiler.data.cartoon import HELDOUT_IMAGES, TRAIN_IMAGES, evaluate_cartoon
    from gcompiler.data.tasks import discriminator_path, load_asset_model

    command = "python scripts/train_cartoon.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    gkw = {"ngf": args.ngf, "n_blocks": 9, "norm": args.norm, "dropout": False, "padding_type": "reflect"}
    dkw = {"input_nc": 3, "ndf": args.ndf, "n_layers": 3, "norm": "instance"}
    fmt = torch.channels_last if args.bf16 else torch.contiguous_format
    G = models.create("resnet_9blocks", **gkw).to(args.device, memory_format=fmt)
    D = models.create("patchgan_d", **dkw).to(args.device, memory_format=fmt)
    amp = functools.partial(torch.autocast, torch.device(args.device).type, dtype=torch.bfloat16,
                            enabled=args.bf16)
    pix2pix_init(G)
    pix2pix_init(D)
    frozen_bn = args.init == "identity"
    if frozen_bn:
        identity_init(G)
    if args.init_from is not None:
        ck0 = load_ckpt(args.init_from)
        G.load_state_dict(ck0["G"])
        D.load_state_dict(ck0["D"])
        print(f"warm start from {args.init_from} (step {ck0['step']} of that run)", flush=True)
    n_params = sum(p.numel() for p in G.parameters())
    gopt = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    dopt = torch.optim.Adam(D.parameters(), lr=args.d_lr, betas=(0.5, 0.999))
    sched = TimeSchedule(steps=args.steps, warmup=args.warmup, budget_s=args.time_budget)
    if not 0.0 <= args.ema < 1.0:
        print(f"--ema must be in [0, 1), got {args.ema}", file=sys.stderr)
        return 2
    G_ema = copy.deepcopy(G).eval() if args.ema else None
    ckpt_path = args.ckpt_dir / "latest.pt"
    step, log, history = 0, [], []
    if args.init_from is not None:
        history = [c if "(warm-start source" in c else f"{c}  (warm-start source)"
                   for c in json.loads(ck0.get("history", "[]"))]  # each run marked once
    if args.resume or args.export_only:
        if not ckpt_path.is_file():
            print(f"no checkpoint {ckpt_path} to resume/export", file=sys.stderr)
            return 2
        ck = load_ckpt(ckpt_path)
        G.load_state_dict(ck["G"])
        D.load_state_dict(ck["D"])
        gopt.load_state_dict(ck["gopt"])
        if G_ema is not None:
            G_ema.load_state_dict(ck.get("G_ema", ck["G"]))
        dopt.load_state_dict(ck["dopt"])
        step, log = ck["step"], json.loads(ck["log"])
        history = json.loads(ck.get("history", '["(first run: command not recorded in its checkpoint)"]'))
        sched.elapsed_before = ck["elapsed"]
        print(f"resumed {ckpt_path}: step {step}, {ck['elapsed']:.0f} s done", flush=True)

    history.append(f"{command}  # from step {step}")

    def checkpoint() -> None:
        save_ckpt(ckpt_path, {"G": G.state_dict(), "D": D.state_dict(), "gopt": gopt.state_dict(),
                              **({"G_ema": G_ema.state_dict()} if G_ema is not None else {}),
                              "dopt": dopt.state_dict(), "step": step, "elapsed": sched.elapsed(),
                              "log": json.dumps(log), "history": json.dumps(history)})

    data = open_dataset("builtin:cartoon", crop_size=args.crop, patches_per_epoch=10000 * args.batch_size,
                        seed=args.seed + step, short_sides=args.short_sides)
    loader = make_loader(data, batch_size=args.batch_size, seed=args.seed + step, num_workers=0)
    stream = loader.batches()
    print(f"resnet_9blocks {gkw}: {n_params:,} parameters; patchgan_d {dkw}; "
          + (f"{args.time_budget:.0f} s budget" if args.time_budget > 0 else f"{args.steps} steps")
          + f" of {args.batch_size} {args.crop}x{args.crop} crops ({args.threads} thread(s)); photos: "
          + ", ".join(TRAIN_IMAGES), flush=True)
    t_start = time.time()

    train_mode(G, freeze_bn=frozen_bn)
    D.train()
    ema = None
    mse = torch.nn.functional.mse_loss
    while not args.export_only and not sched.done(step):
        f = sched.factor(step)
        for gr in gopt.param_groups:
            gr["lr"] = args.lr * f
        for gr in dopt.param_groups:
            gr["lr"] = args.d_lr * f
        batch = next(stream)
        x = batch["input"].to(args.device, memory_format=fmt)
        y = batch["target"].to(args.device, memory_format=fmt)
        with amp():
            fake = G(x).float()
            # D step
            pr, pf = D(y).float(), D(fake.detach()).float()
        d_loss = 0.5 * (mse(pr, torch.ones_like(pr)) + mse(pf, torch.zeros_like(pf)))
        dopt.zero_grad(set_to_none=True)
        d_loss.backward()
        dopt.step()
        # G step
        with amp():
            pg = D(fake).float()
        l1 = torch.nn.functional.l1_loss(fake, y)
        g_loss = args.l1_weight * l1 + args.gan_weight * mse(pg, torch.ones_like(pg))
        if args.mse_weight:
            g_loss = g_loss + args.mse_weight * mse(fake, y)
        gopt.zero_grad(set_to_none=True)
        g_loss.backward()
        gopt.step()
        if G_ema is not None:
            ema_update(G_ema, G, args.ema)
        step += 1
        if not math.isfinite(g_loss.item()):
            print(f"G loss is {g_loss.item()} at step {step}: stopping", file=sys.stderr)
            return 1
        cur = (l1.item(), d_loss.item())
        ema = cur if ema is None else tuple(0.98 * a + 0.02 * b for a, b in zip(ema, cur))
        if step % 25 == 0:
            print(f"step {step} l1 {ema[0]:.4f} d {ema[1]:.4f} lr {gopt.param_groups[0]['lr']:.2e} "
                  f"({sched.elapsed():.0f}s)", flush=True)
        if args.eval_every and step % args.eval_every == 0:
            G.eval()
            m = evaluate_cartoon(G if G_ema is None else G_ema, device=args.device)["mean"]
            train_mode(G, freeze_bn=frozen_bn)
            log.append({"step": step, "elapsed_s": round(sched.elapsed(), 1), "psnr": m["model"]["psnr"],
                        "identity_psnr": m["identity"]["psnr"]})
            print(f"step {step}: held-out PSNR {m['model']['psnr']:.3f} dB / SSIM {m['model']['ssim']:.4f} "
                  f"(identity {m['identity']['psnr']:.3f}, gain {m['model']['psnr'] - m['identity']['psnr']:+.3f})",
                  flush=True)
        if step % args.ckpt_every == 0:
            checkpoint()
    wall = sched.elapsed()
    if not args.export_only:
        checkpoint()
    G.eval()
    D.eval()
    if G_ema is not None:  # ship the average
        G = G_ema

    fp16 = not args.fp32
    dout = discriminator_path(args.out)
    export_model(G, args.out, arch="resnet_9blocks", kwargs=gkw, fp16=fp16)
    loaded = load_asset_model(args.out)
    res = evaluate_cartoon(loaded)
    mean = res["mean"]
    print(f"held-out ({', '.join(HELDOUT_IMAGES)}), as loaded: teacher PSNR {mean['model']['psnr']:.3f} dB / "
          f"SSIM {mean['model']['ssim']:.4f}; identity {mean['identity']['psnr']:.3f} dB / "
          f"{mean['identity']['ssim']:.4f}; gain {mean['model']['psnr'] - mean['identity']['psnr']:+.3f} dB",
          flush=True)
    export_model(D, dout, arch="patchgan_d", kwargs=dkw, fp16=fp16, extra={
        "task": "builtin:cartoon", "role": "discriminator",
        "input": "a cartoon RGB image in [-1, 1] (real target or generated), unconditional",
        "loss": "LSGAN (real -> 1, generated -> 0), trained jointly with the teacher (pix2pix-style)",
        "steps": step, "scores": d_scores(D, loaded), "command": command, "seed": args.seed})
    meta = {
        "task": "builtin:cartoon", "role": "teacher", "params": n_params, "command": command,
        "commands": history,
        "seed": args.seed, "steps": step, "time_budget_s": args.time_budget, "batch_size": args.batch_size,
        "crop": args.crop, "lr": args.lr, "d_lr": args.d_lr, "l1_weight": args.l1_weight, "ema": args.ema,
        "mse_weight": args.mse_weight, "gan_weight": args.gan_weight,
        "warmup": args.warmup,
        "init": f"warm start from {args.init_from}" if args.init_from else (
            "identity_init (BatchNorm frozen as affine maps)" if frozen_bn else "N(0, 0.02) (pix2pix)"),
        "norm": args.norm,
        "loss": f"{args.l1_weight:g} * L1 + "
                + (f"{args.mse_weight:g} * squared error + " if args.mse_weight else "")
                + f"{args.gan_weight:g} * LSGAN against the unconditional PatchGAN",
        "optimizer": "Adam(0.5, 0.999) for G and D; cosine to 1% over "
                     + ("wall time (--time-budget)" if args.time_budget > 0 else "steps"),
        "augment": "random crop + horizontal flip", "threads": args.threads, "bf16_autocast": args.bf16,
        "device": str(args.device),
        "torch": torch.__version__, "train_wall_s": round(wall, 1),
        "session_wall_s": round(time.time() - t_start, 1),
        "train_images": list(TRAIN_IMAGES), "train_short_sides": list(args.short_sides),
        "heldout_images": list(HELDOUT_IMAGES),
        "eval_protocol": "whole held-out photos (short side 256), outputs mapped to [0, 1] and rounded to "
                         "8 bits, RGB PSNR/SSIM against the stylized target; measured after loading the "
                         "stored weights",
        "heldout_log": log, "heldout": res, "discriminator": dout.name,
    }
    export_model(G, args.out, arch="resnet_9blocks", kwargs=gkw, fp16=fp16, extra=meta)
    size = args.out.stat().st_size + dout.stat().st_size
    print(f"wrote {args.out} and {dout} ({size / 1e6:.2f} MB) with their .json; trained {step} steps in "
          f"{wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
