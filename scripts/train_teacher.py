#!/usr/bin/env python
"""Train the x2 super-resolution teacher shipped for ``builtin:sr``, and its discriminator.

The teacher is an SRResNet (``gcompiler.models.create("srresnet", nf=..., nb=..., scale=2)``, BatchNorm
kept so its normalization scales can serve as GAN-Slimming channel masks), started from (almost)
bicubic upsampling (:func:`init_as_upsampler`) or warm-started from an earlier teacher (``--init-from``),
and trained with a pixel loss (``--loss``: L1, or squared error for fine-tuning) and Adam on random
LR/HR patch pairs cut from the training photos of ``builtin:sr`` (see ``gcompiler/data/sr.py`` and
``gcompiler/data/photos.py`` for the photos, the fixed held-out split and how LR images are made;
``--photos`` and ``--photo-weight`` choose them and how often each is drawn), with a cosine
learning-rate decay over ``--steps`` steps or over ``--time-budget`` seconds of wall time
(``scripts/teacher_common.py``), on the CPU. ``--ema`` ships an average of the weights; ``--freeze-bn``
trains with fixed BatchNorm statistics and ``--bn-batches`` re-estimates them over many batches.

Then (``--d-steps``) a PatchGAN discriminator (``patchgan_d``, input: an HR image in [0, 1]) is trained
against the finished teacher's outputs with the LSGAN loss (real HR patches -> 1, teacher outputs -> 0):
the teacher was trained without one, so this is the discriminator "it was trained against" for methods
that need a D0 or want to start D warm.

Checkpoints are written atomically to ``--ckpt-dir`` every ``--ckpt-every`` steps (``--resume`` goes on
from the latest; ``--export-only`` exports it). At the end both networks are written as fp16
``.safetensors`` package assets with a JSON record each; the teacher's record holds the held-out
PSNR/SSIM measured *after* loading the fp16 file back into a float32 model (what users get), plus the
exact command, seed, steps, hyper-parameters and wall time.

Held-out PSNR during training (``--eval-every``) is only logged; it never selects a checkpoint.

Examples::

    python scripts/train_teacher.py --time-budget 3900 --ckpt-dir /work/team/train/sr   # a first teacher
    python scripts/train_teacher.py --steps 20 --d-steps 5 --out /tmp/t.safetensors       # a smoke run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_common import (TimeSchedule, blend_state, comma_list, cutmix_pairs, ema_update,  # noqa: E402
                            export_model, load_ckpt, name_weights, recalibrate_bn, save_ckpt, train_mode)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gcompiler.data.sr import HELDOUT_IMAGES, KNOWN_IMAGES, TEACHER_WEIGHTS, TRAIN_IMAGES

    p = argparse.ArgumentParser(
        prog="train_teacher.py",
        description=__doc__.split("\n\n")[0] + " Trains on " + ", ".join(TRAIN_IMAGES)
        + "; evaluates on the held-out " + ", ".join(HELDOUT_IMAGES) + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Held-out PSNR/SSIM are on the Y channel with a 2-pixel border crop, outputs rounded to "
               "8 bits. Use scripts/eval_sr.py to re-measure a saved teacher.")
    g = p.add_argument_group("architecture (srresnet)")
    g.add_argument("--nf", type=int, default=argparse.SUPPRESS,
                   help="feature channels of the trunk (default: the --init-from teacher's, else 64)")
    g.add_argument("--nb", type=int, default=argparse.SUPPRESS,
                   help="residual blocks (default: the --init-from teacher's, else 16, the shipped layout); "
                        "more than the --init-from teacher's deepens it (the new blocks start as identities)")
    g.add_argument("--no-bn", action="store_true",
                   help="drop the BatchNorm layers (GS then has no norm scales to use as channel masks)")
    g.add_argument("--ndf", type=int, default=32, help="discriminator base width (patchgan_d, 3 layers)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=3000, help="optimizer steps (ignored with --time-budget)")
    g.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of teacher training; the cosine decay runs over wall time and training "
                        "stops when it is spent (0: run --steps steps)")
    g.add_argument("--batch-size", type=int, default=16, help="patch pairs per step")
    g.add_argument("--patch", type=int, default=32, help="LR patch side in pixels (HR patch is twice that)")
    g.add_argument("--lr", type=float, default=5e-4, help="peak Adam learning rate (cosine decay to 1%% of it)")
    g.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    g.add_argument("--d-steps", type=int, default=400, help="discriminator steps after the teacher")
    g.add_argument("--seed", type=int, default=0, help="seed for weights init and data order/augmentation")
    g.add_argument("--bf16", action="store_true",
                   help="mixed precision: forward passes under bfloat16 autocast with channels-last tensors (weights, "
                        "optimizer and evaluation stay float32); ~2x faster steps on CPUs with AVX512-BF16 or AMX")
    g.add_argument("--scales", default=(1.0,),
                   type=comma_list(float, lambda v: 0.0 < v <= 1.0, "--scales", "factors must be in (0, 1]"),
                   help="comma-separated factors: each training photo is also used shrunk by them, e.g. "
                        "1,0.75,0.5 (sharper HR images, three times the sources; default: 1)")
    g.add_argument("--photos", default=TRAIN_IMAGES,
                   type=comma_list(str, lambda v: v in KNOWN_IMAGES and v not in HELDOUT_IMAGES, "--photos",
                                   "each must be a training photo: " + ", ".join(n for n in KNOWN_IMAGES
                                                                                 if n not in HELDOUT_IMAGES)),
                   help="comma-separated training photos (default: the task's training set); e.g. add the "
                        "opt-in photos grace_hopper (matplotlib), china and flower (scikit-learn), coins, aero and "
                        "ascent (PyWavelets), luispedro (mahotas), quokka (imgaug)")
    g.add_argument("--channel-shuffle", action="store_true",
                   help="also put each patch's RGB channels in a random order (new colours, same structure)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="P",
                   help="CutMix: with probability P per patch, a random box (1/4 to 1/2 of each side) is "
                        "taken, in LR and HR alike, from the next patch of the batch (0: off)")
    g.add_argument("--photo-weight", action="append", default=[], type=name_weights, metavar="NAME=W",
                   help="draw photo NAME W times as often as a photo of weight 1 (repeatable), e.g. "
                        "--photo-weight retina=0.5 --photo-weight coffee=2")
    g.add_argument("--loss", choices=("l1", "mse", "mse-y"), default="l1",
                   help="pixel loss: l1; mse (squared error, what PSNR measures; for fine-tuning); mse-y (squared "
                        "error of the BT.601 luma, what PSNR-Y measures, plus --rgb-weight times the RGB "
                        "squared error so colour keeps training)")
    g.add_argument("--rgb-weight", type=float, default=0.1,
                   help="weight of the RGB squared error in --loss mse-y (must be > 0)")
    g.add_argument("--blend-init", type=float, default=0.0, metavar="W",
                   help="ship (1 - W) x the trained weights + W x the --init-from weights (a weight-space "
                        "ensemble of the fine-tuned network and its warm start, as WiSE-FT does; BatchNorm "
                        "statistics too); needs --init-from; 0: off")
    g.add_argument("--ema", type=float, default=0.0,
                   help="ship an exponential moving average of the weights with this decay, e.g. 0.999 "
                        "(0: ship the trained weights); held-out logs measure the average")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm layers normalize with fixed running statistics while training (an affine "
                        "map whose scale and shift train): the network that trains is the one that ships")
    g.add_argument("--bn-batches", type=int, default=0,
                   help="re-estimate the BatchNorm running statistics as the average over this many training "
                        "batches: before training with --freeze-bn (for the warm start's weights), after "
                        "training otherwise (for the shipped, e.g. averaged, weights); 0: keep them")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 keeps the machine usable by others and results reproducible)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--init-from", type=Path, default=None,
                   help="warm start: embed a smaller trained srresnet (.safetensors + .json, e.g. an earlier "
                        "teacher) into the new one so it starts computing exactly that network "
                        "(see widen_from)")
    g.add_argument("--random-init", action="store_true",
                   help="plain random initialization instead of starting from bicubic upsampling")
    g.add_argument("--eval-every", type=int, default=300,
                   help="log held-out PSNR every N steps (0: only at the end); never used to pick weights")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--ckpt-dir", type=Path, default=None,
                   help="where training checkpoints go (default: next to --out, in <out>.ckpt/)")
    g.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    g.add_argument("--export-only", action="store_true",
                   help="export the latest checkpoint (teacher, and D if trained) without training more")
    g.add_argument("--out", type=Path, default=TEACHER_WEIGHTS,
                   help="where to write the teacher (.safetensors); the .json goes next to it, the "
                        "discriminator to the same name with _discriminator")
    g.add_argument("--fp32", action="store_true", help="store float32 weights (default: fp16 storage)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. for log files)")
    args = p.parse_args(argv)
    args.nf, args.nb = getattr(args, "nf", None), getattr(args, "nb", None)  # None: decided in main()
    for name in ("nf", "nb", "steps", "batch_size", "patch", "threads", "ndf", "ckpt_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.d_steps < 0:
        p.error("--d-steps must be >= 0")
    if args.bn_batches < 0:
        p.error("--bn-batches must be >= 0")
    if args.freeze_bn and args.no_bn:
        p.error("--freeze-bn needs BatchNorm layers; drop --no-bn")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema must be in [0, 1), got {args.ema}")
    if not 0.0 <= args.blend_init < 1.0:
        p.error(f"--blend-init must be in [0, 1), got {args.blend_init}")
    if args.blend_init and args.init_from is None:
        p.error("--blend-init blends with the warm start: it needs --init-from")
    if not 0.0 <= args.cutmix <= 1.0:
        p.error(f"--cutmix must be a probability in [0, 1], got {args.cutmix}")
    if not (math.isfinite(args.rgb_weight) and args.rgb_weight > 0):
        p.error(f"--rgb-weight must be a finite number > 0, got {args.rgb_weight}")
    if len(set(args.photos)) != len(args.photos):
        p.error(f"--photos names a photo twice: {','.join(args.photos)}")
    args.photo_weights = dict(args.photo_weight)
    unknown = sorted(set(args.photo_weights) - set(args.photos))
    if unknown:
        p.error(f"--photo-weight names {', '.join(unknown)}, not among --photos")
    if args.out.suffix != ".safetensors":
        p.error("--out must end in .safetensors")
    if args.ckpt_dir is None:
        args.ckpt_dir = args.out.with_suffix(".ckpt")
    return args


def make_pixel_loss(kind: str, rgb_weight: float = 0.1):
    """The teacher's pixel loss ``(output, target) -> scalar`` on (N, 3, H, W) images in [0, 1].

    ``l1`` and ``mse`` compare RGB; ``mse-y`` is the squared error of the BT.601 luma
    (:func:`gcompiler.metrics.rgb_to_y`, the channel PSNR-Y is measured on) plus ``rgb_weight`` times the RGB
    squared error, which keeps the colour (chroma) trained.
    """
    if kind == "l1":
        return torch.nn.functional.l1_loss
    if kind == "mse":
        return torch.nn.functional.mse_loss
    if kind == "mse-y":
        from gcompiler.metrics import rgb_to_y

        def mse_y(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            luma = torch.nn.functional.mse_loss(rgb_to_y(out), rgb_to_y(target))
            return luma + rgb_weight * torch.nn.functional.mse_loss(out, target)
        return mse_y
    raise ValueError(f"unknown pixel loss {kind!r}: l1, mse or mse-y")


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


def discriminator_path(out: Path) -> Path:
    """``sr_teacher_x2.safetensors`` -> ``sr_teacher_x2_discriminator.safetensors``."""
    return out.with_name(out.stem + "_discriminator.safetensors")


@torch.no_grad()
def d_scores(disc: torch.nn.Module, teacher: torch.nn.Module) -> dict[str, float]:
    """Mean LSGAN outputs of ``disc`` on the held-out HR photos and on the teacher's outputs."""
    from gcompiler.data.sr import heldout_pairs

    real, fake = [], []
    for _, lr_img, hr_img in heldout_pairs():
        real.append(disc(hr_img).mean().item())
        fake.append(disc(teacher(lr_img).clamp(0, 1)).mean().item())
    return {"heldout_real": sum(real) / len(real), "heldout_teacher": sum(fake) / len(fake)}


@torch.no_grad()
def widen_from(model: torch.nn.Module, small: torch.nn.Module) -> None:
    """Make the wider/deeper SRResNet ``model`` compute exactly what the trained ``small`` one computes.

    Function-preserving widening (Net2Net-style, with zeros instead of copies): the first ``nf_s``
    trunk channels and the first ``nb_s`` blocks take ``small``'s weights; every weight that *reads* a
    new channel is 0 (so new channels change nothing at first but get gradients, since they carry
    non-zero values), new output channels of a conv keep their random initialization, the new blocks'
    last BatchNorm scale and shift are 0 (the block adds nothing), and BatchNorm statistics of the old
    channels are copied. The PixelShuffle layout (channel ``4c + phase``) is respected in the
    upsampling conv. Both must be ``srresnet`` with BatchNorm, the same scale, and ``model`` at least
    as wide and deep.
    """
    nf_s, nf = small.conv_first.out_channels, model.conv_first.out_channels
    nb_s, nb = len(small.body), len(model.body)
    if nf_s > nf or nb_s > nb or len(small.upsample) != len(model.upsample):
        raise SystemExit(f"--init-from: cannot embed srresnet nf {nf_s} nb {nb_s} into nf {nf} nb {nb}")

    def conv(dst: torch.nn.Conv2d, src: torch.nn.Conv2d, out_map=None) -> None:
        o = torch.arange(src.out_channels) if out_map is None else out_map
        dst.weight[:, src.in_channels:] = 0.0
        dst.weight[o, :src.in_channels] = src.weight
        if src.bias is not None:
            dst.bias[o] = src.bias

    def bn(dst: torch.nn.BatchNorm2d, src: torch.nn.BatchNorm2d) -> None:
        n = src.num_features
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, name)[:n] = getattr(src, name)

    conv(model.conv_first, small.conv_first)
    model.prelu_first.weight.copy_(small.prelu_first.weight)
    for i in range(nb):
        d = model.body[i]
        if i < nb_s:
            s = small.body[i]
            conv(d.conv1, s.conv1)
            bn(d.bn1, s.bn1)
            d.prelu.weight.copy_(s.prelu.weight)
            conv(d.conv2, s.conv2)
            bn(d.bn2, s.bn2)
            d.bn2.weight[nf_s:] = 0.0  # new channels of the trunk: the block adds nothing there at first
            d.bn2.bias[nf_s:] = 0.0
        else:
            d.bn2.weight.zero_()
            d.bn2.bias.zero_()
        d.conv1.weight[:, nf_s:] = 0.0  # (new channels are read by nothing)
    conv(model.conv_body, small.conv_body)
    bn(model.bn_body, small.bn_body)
    model.bn_body.weight[nf_s:] = 0.0
    model.bn_body.bias[nf_s:] = 0.0
    for d, s in zip(model.upsample, small.upsample):
        c = torch.arange(nf_s)
        out_map = (4 * c[:, None] + torch.arange(4)[None, :]).reshape(-1)
        conv(d.conv, s.conv, out_map)
        d.prelu.weight.copy_(s.prelu.weight)
    conv(model.conv_last, small.conv_last)


@torch.no_grad()
def fold_bn_from(model: torch.nn.Module, bn_model: torch.nn.Module) -> None:
    """Make the BatchNorm-free SRResNet ``model`` compute exactly what ``bn_model`` (same nf/nb, with
    BatchNorm, in eval mode) computes: each eval-mode BatchNorm is an affine map per channel, folded
    into the conv before it (the ``fold-norms`` pass's own helpers). Training then goes on without
    BatchNorm: no gap between batch statistics (training) and running statistics (evaluation), and no
    BatchNorm cost per step."""
    from gcompiler.quant.fold import bn_affine, fold_channel_affine

    if len(model.body) != len(bn_model.body) or model.conv_first.out_channels != bn_model.conv_first.out_channels:
        raise SystemExit("--init-from with --no-bn: the source must be an srresnet of the same nf and nb")
    # every tensor both have (the folded convs' weights are then rescaled below; their biases start at 0)
    target = model.state_dict()
    model.load_state_dict({k: v for k, v in bn_model.state_dict().items() if k in target}, strict=False)
    folds = [(model.conv_body, bn_model.bn_body)]
    for d, s in zip(model.body, bn_model.body):
        folds += [(d.conv1, s.bn1), (d.conv2, s.bn2)]
    for conv, bn in folds:
        conv.bias.zero_()
        fold_channel_affine(conv, *bn_affine(bn))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from tqdm.auto import tqdm

    from gcompiler import models
    from gcompiler.data import make_loader, open_dataset
    from gcompiler.data.sr import HELDOUT_IMAGES, evaluate_sr, load_teacher

    command = "python scripts/train_teacher.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    small = None
    if args.init_from is not None:
        from gcompiler.data.tasks import load_asset_model
        from gcompiler.models.srresnet import SRResNet

        small = load_asset_model(args.init_from).eval()
        if not isinstance(small, SRResNet):
            raise SystemExit(f"--init-from {args.init_from}: a {type(small).__name__}, not an srresnet teacher")
    nf = args.nf or (small.conv_first.out_channels if small is not None else 64)
    nb = args.nb or (len(small.body) if small is not None else 16)
    kwargs = {"nf": nf, "nb": nb, "scale": 2, "bn": not args.no_bn}
    dkwargs = {"input_nc": 3, "ndf": args.ndf, "n_layers": 3, "norm": "instance"}
    model = models.create("srresnet", **kwargs)
    if small is not None:
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in small.modules())
        if args.no_bn and has_bn:
            fold_bn_from(model, small)
        else:
            widen_from(model, small)
        print(f"warm start from {args.init_from} ({sum(p.numel() for p in small.parameters()):,} params)",
              flush=True)
        if args.blend_init:  # the warm start's weights, kept for the blend at the end
            init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif not args.random_init:
        init_as_upsampler(model)
    fmt = torch.channels_last if args.bf16 else torch.contiguous_format
    model = model.to(args.device, memory_format=fmt)
    average = copy.deepcopy(model).eval() if args.ema else None  # what ships, with --ema
    disc = models.create("patchgan_d", **dkwargs).to(args.device, memory_format=fmt)
    amp = functools.partial(torch.autocast, torch.device(args.device).type, dtype=torch.bfloat16,
                            enabled=args.bf16)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    dopt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    sched = TimeSchedule(steps=args.steps, warmup=args.warmup, budget_s=args.time_budget)
    ckpt_path = args.ckpt_dir / "latest.pt"
    step, dstep, log, history = 0, 0, [], []
    if args.init_from is not None:  # the warm-start source's own training commands come first in the record
        src = Path(args.init_from).with_suffix(".json")
        if src.is_file():
            meta = json.loads(src.read_text())
            history = [c if "(warm-start source" in c else f"{c}  (warm-start source {src.name})"
                       for c in meta.get("commands", [meta.get("command", "?")])]  # each run marked once
    if args.resume or args.export_only:
        if not ckpt_path.is_file():
            print(f"no checkpoint {ckpt_path} to resume/export", file=sys.stderr)
            return 2
        ck = load_ckpt(ckpt_path)
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as e:  # another nf / nb / BatchNorm choice than the run that wrote it
            raise SystemExit(f"{ckpt_path}: this checkpoint is not an srresnet {kwargs} (the network these "
                             f"options build); resume with the run's own --nf/--nb/--no-bn. torch: "
                             f"{str(e).splitlines()[0]}") from None
        if average is not None:
            average.load_state_dict(ck.get("average", ck["model"]))
        opt.load_state_dict(ck["opt"])
        disc.load_state_dict(ck["disc"])
        dopt.load_state_dict(ck["dopt"])
        step, dstep, log = ck["step"], ck["dstep"], json.loads(ck["log"])
        history = json.loads(ck.get("history", '["(first run: command not recorded in its checkpoint)"]'))
        sched.elapsed_before = ck["elapsed"]
        print(f"resumed {ckpt_path}: step {step}, D step {dstep}, {ck['elapsed']:.0f} s done", flush=True)

    history.append(f"{command}  # from step {step}")

    def checkpoint() -> None:
        save_ckpt(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "disc": disc.state_dict(),
                              **({"average": average.state_dict()} if average is not None else {}),
                              "dopt": dopt.state_dict(), "step": step, "dstep": dstep,
                              "elapsed": sched.elapsed(), "log": json.dumps(log),
                              "history": json.dumps(history)})

    data = open_dataset("builtin:sr", crop_size=args.patch, augment="dihedral", scales=args.scales,
                        images=args.photos, weights=args.photo_weights, channel_shuffle=args.channel_shuffle,
                        patches_per_epoch=10000 * args.batch_size, seed=args.seed + step)
    loader = make_loader(data, batch_size=args.batch_size, seed=args.seed + step, num_workers=0)
    stream = loader.batches()
    pixel_loss = make_pixel_loss(args.loss, args.rgb_weight)

    def shipped() -> torch.nn.Module:
        return model if average is None else average
    print(f"srresnet {kwargs}: {n_params:,} parameters; "
          + (f"{args.time_budget:.0f} s budget" if args.time_budget > 0 else f"{args.steps} steps")
          + f" of {args.batch_size} {args.patch}x{args.patch} LR patches on {args.device} "
            f"({args.threads} thread(s)); {args.loss} loss"
          + (f", weight average {args.ema}" if args.ema else "") + "; photos: "
          + ", ".join(n if data.weights[n] == 1.0 else f"{n} (x{data.weights[n]:g})" for n in args.photos),
          flush=True)
    t_start = time.time()

    def recalibrate(net: torch.nn.Module) -> None:
        t = time.time()
        with amp():
            n = recalibrate_bn(net, (next(stream)["input"].to(args.device, memory_format=fmt)
                                     for _ in range(args.bn_batches)))
        print(f"BatchNorm statistics re-estimated over {n} batches ({time.time() - t:.0f}s)", flush=True)

    if args.freeze_bn and args.bn_batches and step == 0 and not args.export_only:
        recalibrate(model)
        if average is not None:
            average.load_state_dict(model.state_dict())
    train_mode(model, freeze_bn=args.freeze_bn)
    mix_gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # CutMix draws; resumes reseed
    smooth = None  # running mean of the loss, for the log
    bar = tqdm(disable=args.no_progress, desc="teacher", dynamic_ncols=True)
    while not args.export_only and not sched.done(step):
        for gr in opt.param_groups:
            gr["lr"] = args.lr * sched.factor(step)
        batch = next(stream)
        lr_img, hr_img = batch["input"], batch["target"]
        if args.cutmix:
            lr_img, hr_img = cutmix_pairs(lr_img, hr_img, args.cutmix, mix_gen)
        lr_img = lr_img.to(args.device, memory_format=fmt)
        hr_img = hr_img.to(args.device)
        with amp():
            out = model(lr_img)
        loss = pixel_loss(out.float(), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            ema_update(average, model, args.ema)
        step += 1
        if not math.isfinite(loss.item()):
            print(f"loss is {loss.item()} at step {step}: stopping (try a lower --lr)", file=sys.stderr)
            return 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix({args.loss: f"{smooth:.4f}"}, lr=f"{opt.param_groups[0]['lr']:.1e}")
        if args.no_progress and step % 50 == 0:
            print(f"step {step} {args.loss} {smooth:.4f} lr {opt.param_groups[0]['lr']:.2e} ({sched.elapsed():.0f}s)",
                  flush=True)
        if args.eval_every and step % args.eval_every == 0:
            model.eval()
            m = evaluate_sr(shipped(), device=args.device)["mean"]
            train_mode(model, freeze_bn=args.freeze_bn)
            log.append({"step": step, "elapsed_s": round(sched.elapsed(), 1), "psnr_y": m["model"]["psnr_y"],
                        "bicubic_psnr_y": m["bicubic"]["psnr_y"]})
            print(f"step {step}: held-out PSNR-Y {m['model']['psnr_y']:.3f} dB (bicubic "
                  f"{m['bicubic']['psnr_y']:.3f}, gain {m['model']['psnr_y'] - m['bicubic']['psnr_y']:+.3f})",
                  flush=True)
        if step % args.ckpt_every == 0:
            checkpoint()
    bar.close()
    wall_g = sched.elapsed()
    model.eval()
    if not args.export_only:
        checkpoint()
    if average is not None:  # from here on (the discriminator, the export), the teacher is the average
        model.load_state_dict(average.state_dict())
    if args.bn_batches and not args.freeze_bn:  # also with --export-only: re-estimate, then export
        recalibrate(model)
    model.eval()
    teacher = model  # what D trains against and what ships; checkpoints keep the trained weights
    if args.blend_init:
        teacher = copy.deepcopy(model)
        blend_state(teacher, init_state, args.blend_init)
        print(f"shipping {1 - args.blend_init:g} x trained + {args.blend_init:g} x warm-start weights", flush=True)

    # The discriminator, trained against the finished teacher's outputs (LSGAN).
    t_d = time.time()
    disc.train()
    while not args.export_only and dstep < args.d_steps:
        batch = next(stream)
        with torch.no_grad():
            fake = teacher(batch["input"].to(args.device, memory_format=fmt)).clamp(0, 1)
        real = batch["target"].to(args.device, memory_format=fmt)
        with amp():
            pr, pf = disc(real).float(), disc(fake).float()
        dl = 0.5 * ((pr - 1).pow(2).mean() + pf.pow(2).mean())
        dopt.zero_grad(set_to_none=True)
        dl.backward()
        dopt.step()
        dstep += 1
        if dstep % 50 == 0 or dstep == args.d_steps:
            print(f"D step {dstep}/{args.d_steps} lsgan {dl.item():.4f}", flush=True)
            checkpoint()
    wall_d = time.time() - t_d
    disc.eval()

    # Export (fp16 storage), then measure what users load.
    storage = not args.fp32
    dout = discriminator_path(args.out)
    export_model(teacher, args.out, arch="srresnet", kwargs=kwargs, fp16=storage)
    loaded = load_teacher(weights=args.out)
    res = evaluate_sr(loaded, device="cpu")
    mean = res["mean"]
    gain = mean["model"]["psnr_y"] - mean["bicubic"]["psnr_y"]
    print(f"held-out ({', '.join(HELDOUT_IMAGES)}), as loaded: teacher PSNR-Y {mean['model']['psnr_y']:.3f} dB / "
          f"SSIM-Y {mean['model']['ssim_y']:.4f}; bicubic {mean['bicubic']['psnr_y']:.3f} dB / "
          f"{mean['bicubic']['ssim_y']:.4f}; gain {gain:+.3f} dB", flush=True)
    export_model(disc, dout, arch="patchgan_d", kwargs=dkwargs, fp16=storage, extra={
        "task": "builtin:sr", "role": "discriminator",
        "input": "an HR RGB image in [0, 1] (the teacher's output or a real photo), unconditional",
        "loss": "LSGAN (real -> 1, teacher output -> 0), trained after the teacher against its outputs",
        "steps": dstep, "batch_size": args.batch_size, "patch_hr": 2 * args.patch,
        "optimizer": "Adam(2e-4, betas 0.5, 0.999)", "train_wall_s": round(wall_d, 1),
        "scores": d_scores(disc, loaded), "command": command, "seed": args.seed})
    meta = {
        "task": "builtin:sr", "role": "teacher", "params": n_params, "command": command,
        "commands": history,
        "seed": args.seed, "steps": step, "time_budget_s": args.time_budget, "batch_size": args.batch_size,
        "patch_lr": args.patch,
        "init": (f"warm start from {args.init_from} (widen_from)" if args.init_from else
                 "random" if args.random_init else "bicubic-like (init_as_upsampler)"),
        "lr": args.lr, "warmup": args.warmup, "loss": {"l1": "L1", "mse": "MSE",
                                                   "mse-y": f"MSE of Y + {args.rgb_weight:g} x MSE of RGB"}[args.loss],
        "weight_average": args.ema or None,
        "blend_init": (f"{1 - args.blend_init:g} x trained + {args.blend_init:g} x warm start"
                       if args.blend_init else None),
        "optimizer": "Adam(0.9, 0.999); cosine to 1% over "
                     + ("wall time (--time-budget)" if args.time_budget > 0 else "steps"),
        "augment": "random crop + dihedral (flips/transposes)"
                   + (" + RGB channel shuffle" if args.channel_shuffle else "")
                   + (f" + CutMix (p {args.cutmix:g})" if args.cutmix else ""),
        "threads": args.threads,
        "bf16_autocast": args.bf16, "freeze_bn": args.freeze_bn, "bn_recalibration_batches": args.bn_batches,
        "device": str(args.device), "torch": torch.__version__, "train_wall_s": round(wall_g, 1),
        "session_wall_s": round(time.time() - t_start, 1),
        "train_images": list(args.photos), "train_photo_weights": data.weights, "train_scales": list(args.scales),
        "heldout_images": list(HELDOUT_IMAGES),
        "eval_protocol": "whole held-out images, output clamped and rounded to 8 bits, Y channel (BT.601), "
                         "2-pixel border cropped; measured after loading the stored weights",
        "heldout_log": log, "heldout": res, "discriminator": dout.name,
    }
    export_model(teacher, args.out, arch="srresnet", kwargs=kwargs, fp16=storage, extra=meta)
    size = args.out.stat().st_size + dout.stat().st_size
    print(f"wrote {args.out} and {dout} ({size / 1e6:.2f} MB) with their .json; teacher trained "
          f"{step} steps in {wall_g / 60:.1f} min, D {dstep} steps in {wall_d / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
