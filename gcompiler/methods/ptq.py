"""Method ``ptq``: post-training quantization, no training — the fastest path, judged like every other.

Graph rewrites (all through :meth:`~gcompiler.methods.base.CompressJob.rewrite`, so every one is verified
and lands in ``report.json["pass_log"]``):

``slim`` (only with ``--target-macs``)  ``insert-masks{round_to}``, ``prune-by-ratio{target_macs,
                                       criterion=l1, round_to}`` (magnitude: the units whose producer weights
                                       have the smallest L1 norm, priced exactly by the cost model to meet
                                       the budget), ``eliminate-dead-channels{round_to}``
``fold``                               ``fold-norms`` (eval-mode BatchNorm folded into the convs)
``ptq``                                ``insert-fake-quant{weight_bits=act_bits=--bits, per_channel}`` and
                                       ``calibrate-activations{percentile}`` on ``calib_batches`` training
                                       batches (skipped with ``--bits 32``)

Then :meth:`~gcompiler.methods.base.CompressJob.finish` measures the student beside the teacher and the
baseline. Slimming without fine-tuning loses quality quickly (no weights are retrained): the table says
how much; a student below the baseline is reported loudly as for every method.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from . import register_method
from .base import CompressJob


@dataclass
class PTQOptions:
    calib_batches: int = 8
    "Training batches the activation clips are calibrated on."
    clip_percentile: float = 99.99
    "Percentile of each conv input's float values used as its clip."
    per_channel: bool = True
    "Per-output-channel weight scales (per-tensor when false)."
    round_to: int = 1
    "Kept widths' multiple when slimming to --target-macs."

    def validate(self) -> None:
        if self.calib_batches < 1:
            raise ConfigError(f"ptq: calib_batches must be >= 1, got {self.calib_batches}")
        if not 0 < self.clip_percentile <= 100:
            raise ConfigError(f"ptq: clip_percentile must be in (0, 100], got {self.clip_percentile}")
        if self.round_to < 1:
            raise ConfigError(f"ptq: round_to must be >= 1, got {self.round_to}")


@register_method("ptq", options=PTQOptions,
                 summary="post-training quantization (+ magnitude slimming to --target-macs), no training",
                 defaults={"max_steps": 1, "finetune_steps": 0, "bits": 8})
def run_ptq(job: CompressJob, opts: PTQOptions) -> dict[str, Any]:
    from ..fx import trace

    bits = job.settings.bits
    gm = trace(copy.deepcopy(job.teacher).cpu().eval(), job.reference_input.cpu())
    report: dict[str, Any] = {"method": "ptq", "bits": bits, "options": vars(opts).copy(), "training_steps": 0}
    if job.target_macs is not None:
        rt = opts.round_to
        job.rewrite(gm, [("insert-masks", {"round_to": rt}),
                         ("prune-by-ratio", {"target_macs": float(job.target_macs), "criterion": "l1",
                                             "round_to": rt}),
                         ("eliminate-dead-channels", {"round_to": rt})], stage="slim")
        gm.meta.pop("masks", None)
        report["target_macs"] = job.target_macs
    job.rewrite(gm, "fold-norms", stage="fold")
    if bits < 32:
        loader = job.make_loader(seed_offset=7, shard=False)  # the same calibration data on every rank
        calib: list[torch.Tensor] = []
        for batch in loader:
            calib.append(batch["input"])
            if len(calib) >= opts.calib_batches:
                break
        job.rewrite(gm, [("insert-fake-quant", {"weight_bits": bits, "act_bits": bits, "per_channel": opts.per_channel}),
                         ("calibrate-activations", {"method": "percentile", "percentile": opts.clip_percentile,
                                                    "data": calib})], stage="ptq")
        report["calibration_images"] = sum(int(c.shape[0]) for c in calib)
    return job.finish(gm, steps=0, report=report, method="ptq", bits=bits if bits < 32 else 32)
