"""Tiny distillation runs for tests/test_train_engine.py (imported, or run as a script / under torchrun).

Everything is small and deterministic: a 3-conv teacher and student (traced), an in-memory dataset
of random 12x12 images with seeded crop/flip augmentation keyed by the sampler, a 2-layer PatchGAN.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn as nn

import gcompiler
from gcompiler.data.loader import make_loader
from gcompiler.data.sampler import sample_rng
from gcompiler.train import Distill, DistillConfig, TrainConfig, Trainer, dist_info

SIZE = 12
CROP = 8


class RandomImages(torch.utils.data.Dataset):
    """``n`` fixed random images; item = a random CROP x CROP crop, flipped with probability 1/2."""

    def __init__(self, n: int = 16, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        i, rng = sample_rng(key, fallback_seed=0)
        y, x = (int(v) for v in rng.integers(0, SIZE - CROP + 1, size=2))
        img = self.x[i, :, y:y + CROP, x:x + CROP]
        if rng.random() < 0.5:
            img = img.flip(-1)
        return {"input": img.clone(), "index": i}


def conv_net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                         nn.Conv2d(width, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh())


def models(seed: int = 0) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    torch.manual_seed(seed)
    example = torch.zeros(1, 3, CROP, CROP)
    teacher = gcompiler.trace(conv_net(8), example)
    student = gcompiler.trace(conv_net(4), example)
    return teacher, student


def method(gan: bool = True, taps: bool = True, lr: float = 5e-3) -> Distill:
    disc = None
    if gan:
        from gcompiler.models import create

        disc = create("patchgan_d", ndf=4, n_layers=1, norm="none")
    return Distill(DistillConfig(pixel="l1", feature_pairs=[("_1", "_3")] if taps else (),
                                 gan="lsgan" if gan else None, discriminator=disc, lr=lr, d_lr=lr))


def build(out: str, steps: int, *, batch: int = 4, save_every: int = 2, resume: bool = False, gan: bool = True,
          taps: bool = True, callbacks=(), loader=None, seed: int = 0, **cfg) -> Trainer:
    info = dist_info()
    teacher, student = models()
    if loader is None:
        loader = make_loader(RandomImages(), batch_size=batch, num_workers=0, seed=seed, rank=info.rank,
                             world_size=info.world_size)
    config = TrainConfig(out_dir=out, max_steps=steps, save_every=save_every, log_every=1, seed=seed,
                         resume=resume, progress=False, tensorboard=cfg.pop("tensorboard", False), **cfg)
    return Trainer(method(gan, taps), student=student, teacher=teacher, data=loader, config=config,
                   callbacks=callbacks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dump", default="", help="write the final student/disc/maps tensors (rank 0) here")
    p.add_argument("--no-gan", action="store_true")
    p.add_argument("--no-taps", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cbs = [lambda tr, ctx: time.sleep(a.sleep)] if a.sleep > 0 else []
    trainer = build(a.out, a.steps, batch=a.batch, save_every=a.save_every, resume=a.resume, callbacks=cbs,
                    gan=not a.no_gan, taps=not a.no_taps)
    result = trainer.fit()
    if a.dump and dist_info().rank == 0:
        from safetensors.torch import save_file

        tensors = {f"{n}.{k}": v.detach().clone() for n in ("student", "disc", "feature_maps")
                   if trainer.has_module(n) for k, v in trainer.module(n).state_dict().items()}
        save_file(tensors, a.dump)
    print(json.dumps({"rank": dist_info().rank, "steps": result.steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
