"""A toy compression method: prune channels to the MACs budget, then distil (the example of docs/methods.md)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import gcompiler
from gcompiler.methods import CompressJob, register_method
from gcompiler.train import Distill, DistillConfig, Trainer


@dataclass
class ToyOptions:
    """Options of ``toy-prune`` (``--opt key=value``, a ``[toy-prune]`` table, or keyword arguments)."""

    criterion: Literal["gamma", "l1"] = "l1"
    "How channels are ranked: 'gamma' (their norm's scale) or 'l1' (the L1 norm of their filters)."
    ratio: float = 2.0
    "Without --target-macs: the MACs reduction factor."
    lr: float = 2e-4
    "Adam learning rate of the distillation."
    round_to: int = 1
    "Kept widths are multiples of this."

    def validate(self) -> None:
        if self.ratio < 1:
            raise gcompiler.ConfigError(f"toy-prune option ratio must be >= 1, got {self.ratio}")


@register_method("toy-prune", options=ToyOptions, summary="prune channels to the MACs budget, then distil",
                 defaults={"max_steps": 20, "finetune_steps": 0})
def run_toy(job: CompressJob, opts: ToyOptions) -> dict[str, Any]:
    # 1. the student is the teacher's graph; every rewrite is a verified, logged pass pipeline
    student = gcompiler.trace(copy.deepcopy(job.teacher), job.reference_input)
    budget = job.target_macs or int(job.teacher_profile.macs / opts.ratio)
    r = opts.round_to
    job.rewrite(student, f"insert-masks{{round_to={r}}},"
                         f"prune-by-ratio{{target_macs={budget},criterion={opts.criterion},round_to={r}}},"
                         f"eliminate-dead-channels{{round_to={r}}},fold-norms", stage="prune")
    bits = job.settings.bits
    if bits < 32:
        job.rewrite(student, f"insert-fake-quant{{weight_bits={bits},act_bits={bits}}}", stage="quantize")
    # 2. training is a recipe of the engine: here plain L1 distillation from the teacher
    for p in student.parameters():
        p.requires_grad_(True)
    trainer = Trainer(Distill(DistillConfig(pixel="l1", lr=opts.lr)), student=student, teacher=job.teacher,
                      data=job.make_loader(), config=job.train_config(job.run_dir, job.settings.max_steps),
                      callbacks=[job.state_saver("distill")])
    result = trainer.fit()
    # 3. measure, evaluate beside the teacher and the baseline, export
    return job.finish(trainer.module("student"), steps=result.steps, report={"budget": budget,
                                                                             "losses": result.losses})
