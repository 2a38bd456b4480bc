"""AutoGAN-Distiller (AGD; Fu et al., ICML 2020) as ``gcompiler compress --method agd``.

1. **Supernet**: the teacher traced at the reference input, then ``substitute-ops`` (through
   ``job.rewrite``): residual blocks (or conv-norm-act layers) become :class:`gcompiler.MixedOp` cells over
   ``conv1x1 / conv3x3 / residual / dwsblock`` and the AGD widths {4,6,8,10,12}/12 (multiples of 8), stem and
   header layers become width-only cells. New operators start from random weights; width-only layers keep
   the teacher's.
2. **Pretraining** (``pretrain_steps``, weights only): the sandwich rule — the distillation loss summed
   over the widest, the narrowest and two random width settings, every operator in the softmax mixture.
3. **Search** (``--max-steps``): first-order alternating updates. Each step: one architecture update on a
   batch of the second half of the training data (loss = distillation at a hard straight-through Gumbel
   width sample + ``lambda_f`` x expected MACs / target; operators as a softmax mixture), then one weight
   update on a batch of the first half (Gumbel sample, plus the widest and narrowest widths with
   ``sandwich``). The expected MACs come from :class:`gcompiler.nas.cost.CostTable` (a lookup table over
   every operator and width, priced with the profiler; exact at one-hot choices). Every ``eval_every`` steps
   the argmax architecture is priced: ``lambda_f`` is doubled above the band
   ``[target (1 - band), target (1 + band)]`` and halved below it.
4. **Band**: if the final argmax architecture is still outside the band, the choice is moved in the
   cheapest-in-logits direction (one width step or one operator switch at a time, least logit loss per MAC)
   until it is inside (``report.json["search"]["repair"]`` lists the moves); ``repair=false`` turns this off.
5. **Derive**: ``derive-architecture`` (exact w.r.t. the supernet's argmax) -> a plain student; its
   architecture is written to ``agd_architecture.json`` (operator and width per cell; rebuilds the student
   with :func:`gcompiler.nas.derive.build_student`). With ``inherit`` (default) the student keeps the
   supernet's weights for its choices; ``inherit=false`` starts from fresh weights as the paper does.
6. **Train** the derived student by distillation for ``--finetune-steps``, evaluate, export.

Defaults versus the paper: AGD pretrains and searches 50 epochs each (Adam, weights 1e-3 / arch 3e-4) and
trains the derived net from scratch for hundreds of epochs, with content + style (VGG) losses. Here the
loss is the pixel distance to the teacher's output (``loss``; ``vgg_weights`` adds the perceptual distance),
runs are a few hundred steps, the architecture learning rate is higher (``arch_lr`` 5e-3) so that the logits
move in that many steps, the MACs term is normalised by the target (``lambda_f`` is unit-free), the
expectation over widths uses the softmax rather than one Gumbel sample, and a skip across a width change
passes the first channels (zero-padded) instead of a 1x1 conv.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx

from ..errors import ConfigError
from ..nas.cost import CostTable
from ..nas.derive import architecture, build_student
from ..nas.mixed import MixedOp, arch_parameters, cells, set_mode, weight_parameters
from ..train import Distill, DistillConfig, ParamGroup, Phase, Trainer, adam, build_distance
from ..train.recipe import StepContext
from . import register_method
from .base import CompressJob
from .dist import sync_module

log = logging.getLogger("gcompiler.compress")


@dataclass
class AGDOptions:
    """Options of the ``agd`` method (``--opt key=value``, or an ``[agd]`` table in ``--config``)."""

    band: float = 0.25
    "The derived net must land in [target x (1 - band), target x (1 + band)] MACs (--target-macs; default 4x)."
    lambda_f: float = 0.01
    "Initial weight of the MACs term (expected MACs / target); doubled above the band, halved below."
    pretrain_steps: int = 100
    "Supernet pretraining steps (sandwich rule: widest, narrowest, 2 random widths)."
    eval_every: int = 10
    "Search steps between two pricings of the argmax architecture (lambda_f adjustment)."
    candidates: str = "conv1x1|conv3x3|residual|dwsblock"
    "Operators of the search space (| separated; 'original' adds the teacher's own block)."
    blocks: str = "auto"
    "substitute-ops blocks: auto, residual, layers or residual|layers."
    widths: str = "agd"
    "Width choices: agd ({4,6,8,10,12}/12 of the base width, multiples of 8), full, or ratios 0.5|1."
    stem_header: bool = True
    "Width-only choices for the stem and header layers."
    nesting: int = 1
    "Residual nesting level that becomes a cell (1: innermost blocks; 2: e.g. ESRGAN's RRDBs)."
    lr: float = 1e-3
    "Adam learning rate of the supernet weights (betas 0.5/0.999), pretraining and search."
    arch_lr: float = 5e-3
    "Adam learning rate of the architecture logits (betas 0.5/0.999; the paper: 3e-4 over 50 epochs)."
    train_lr: float = 5e-4
    "Adam learning rate of the derived student's training (linear decay from half-way)."
    tau: float = 1.0
    "Gumbel-softmax temperature of the width sampling."
    sandwich: bool = True
    "Search weight steps also train the widest and narrowest widths (AGD's _loss)."
    inherit: bool = True
    "The derived student starts from the supernet's weights (false: fresh weights, as the paper)."
    repair: bool = True
    "Move the final architecture into the band if the search ends outside it."
    loss: Literal["l1", "mse"] = "l1"
    "Pixel distance to the teacher's output."
    vgg_weights: str | None = None
    "torchvision VGG16 weights: use the perceptual distance (content + style) instead of the pixel loss."

    def validate(self) -> None:
        if not (0 < self.band < 1):
            raise ConfigError(f"agd option band must be in (0, 1), got {self.band}")
        for name in ("lambda_f", "lr", "arch_lr", "train_lr", "tau"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"agd option {name} must be a finite number > 0, got {v!r}")
        if self.pretrain_steps < 0 or self.eval_every < 1 or self.nesting < 1:
            raise ConfigError("agd options: pretrain_steps >= 0, eval_every >= 1 and nesting >= 1")


# ------------------------------------------------------------------------------------------------ recipes

def _distance_sum(trainer: Trainer, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return sum(trainer.net("distance")(s, t).values())  # type: ignore[return-value]


class SupernetPretrain(Distill):
    """Sandwich-rule pretraining of the supernet's weights (no architecture updates)."""

    name = "agd-pretrain"
    MODES = ("max", "min", "random", "random")

    def __init__(self, config: DistillConfig) -> None:
        super().__init__(config)

    def param_groups(self, trainer: Trainer) -> list[ParamGroup]:
        for p in arch_parameters(trainer.module("student")):
            p.requires_grad_(False)
        return [ParamGroup("weights", weight_parameters(trainer.module("student")),
                           adam(self.cfg.lr, self.cfg.betas), self.cfg.schedule, clip_grad_norm=5.0)]

    def phases(self, trainer: Trainer) -> list[Phase]:
        return [Phase("W", ["weights"], self.sandwich_loss)]

    def sandwich_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        trainer = ctx.trainer
        x = ctx.batch()["input"]
        t = ctx.teacher(x)
        student = trainer.module("student")
        terms: dict[str, torch.Tensor] = {}
        try:
            for i, mode in enumerate(self.MODES):
                set_mode(student, mode)
                s = trainer.net("student")(x)
                terms[f"{mode}{i if mode == 'random' else ''}"] = _distance_sum(trainer, s, t)
        finally:
            set_mode(student, "gumbel")
        ctx.cache.update(input=x.detach(), teacher=t.detach(), student=s.detach())
        return terms


class AGDSearch(Distill):
    """First-order alternating search: architecture on the ``arch`` data, weights on the ``train`` data."""

    name = "agd-search"

    def __init__(self, config: DistillConfig, *, table: CostTable, target: float, band: float, lambda_f: float,
                 arch_lr: float, eval_every: int, sandwich: bool, tau: float) -> None:
        super().__init__(config)
        self.table, self.target, self.band = table, float(target), float(band)
        self.lambda_f, self.arch_lr, self.eval_every = float(lambda_f), float(arch_lr), int(eval_every)
        self.sandwich, self.tau = sandwich, float(tau)
        self.history: list[dict[str, float]] = []

    @property
    def lo(self) -> float:
        return self.target * (1 - self.band)

    @property
    def hi(self) -> float:
        return self.target * (1 + self.band)

    def param_groups(self, trainer: Trainer) -> list[ParamGroup]:
        student = trainer.module("student")
        for p in arch_parameters(student):
            p.requires_grad_(True)
        set_mode(student, "gumbel", tau=self.tau)
        return [ParamGroup("weights", weight_parameters(student), adam(self.cfg.lr, self.cfg.betas), self.cfg.schedule,
                           clip_grad_norm=5.0),
                ParamGroup("arch", arch_parameters(student), adam(self.arch_lr, (0.5, 0.999)), "constant")]

    def phases(self, trainer: Trainer) -> list[Phase]:
        return [Phase("A", ["arch"], self.arch_loss, data="arch"), Phase("W", ["weights"], self.weight_loss)]

    def arch_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        trainer = ctx.trainer
        x = ctx.batch()["input"]
        t = ctx.teacher(x)
        s = trainer.net("student")(x)
        macs = self.table.expected()
        return {"distill": _distance_sum(trainer, s, t),
                "macs": (self.lambda_f * macs / self.target).to(s.device, s.dtype)}

    def weight_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        trainer = ctx.trainer
        x = ctx.batch()["input"]
        t = ctx.teacher(x)
        student = trainer.module("student")
        s = trainer.net("student")(x)
        terms = {"gumbel": _distance_sum(trainer, s, t)}
        ctx.cache.update(input=x.detach(), teacher=t.detach(), student=s.detach())
        if self.sandwich:
            try:
                for mode in ("max", "min"):
                    set_mode(student, mode)
                    terms[mode] = _distance_sum(trainer, trainer.net("student")(x), t)
            finally:
                set_mode(student, "gumbel")
        return terms

    def after_step(self, trainer: Trainer, ctx: StepContext) -> None:
        if trainer.step % self.eval_every and trainer.step < trainer.config.max_steps:
            return
        macs = self.table.exact()
        before = self.lambda_f
        if macs > self.hi:
            self.lambda_f *= 2
        elif macs < self.lo:
            self.lambda_f /= 2
        self.history.append({"step": trainer.step, "argmax_macs": macs, "lambda_f": before,
                             "expected_macs": float(self.table.expected().detach())})

    def progress(self, trainer: Trainer) -> dict[str, float]:
        return {"macs": float(self.table.exact()), "lambda_f": self.lambda_f}

    def state_dict(self) -> dict[str, Any]:
        return {"lambda_f": self.lambda_f, "history": self.history}

    def load_state_dict(self, state: Any) -> None:
        self.lambda_f = float(state.get("lambda_f", self.lambda_f))
        self.history = list(state.get("history", []))


# ------------------------------------------------------------------------------------------------ band repair

def _logit(values: torch.Tensor, i: int) -> float:
    return float(values[i])


def repair_to_band(gm: fx.GraphModule, table: CostTable, lo: float, hi: float,
                   max_moves: int = 500) -> list[dict[str, Any]]:
    """Move the argmax architecture into ``[lo, hi]`` MACs one choice at a time (least logit loss per MAC).

    A move is one width step or one operator switch of one cell; the logit loss is the drop of the chosen
    logit (relative to the cell's current choice). The chosen architecture is then fixed into the logits.
    Returns the moves made (empty when already inside).
    """
    cs = cells(gm)
    choice = {n: (c.op_index() if isinstance(c, MixedOp) else 0, c.width_index()) for n, c in cs.items()}
    macs = float(table.expected(choices=choice))
    moves: list[dict[str, Any]] = []
    for _ in range(max_moves):
        if lo <= macs <= hi:
            break
        down = macs > hi
        best = None
        for n, c in cs.items():
            k, j = choice[n]
            opts = []
            for j2 in (j - 1, j + 1):
                if 0 <= j2 < len(c.widths):
                    opts.append(((k, j2), _logit(c.width_logits.detach(), j) - _logit(c.width_logits.detach(), j2)))
            if isinstance(c, MixedOp):
                for k2 in range(len(c.candidates)):
                    if k2 != k:
                        opts.append(((k2, j), _logit(c.op_logits.detach(), k) - _logit(c.op_logits.detach(), k2)))
            for new, loss in opts:
                trial = dict(choice)
                trial[n] = new
                m = float(table.expected(choices=trial))
                gain = (macs - m) if down else (m - macs)
                if gain <= 0:
                    continue
                overshoot = (m < lo) if down else (m > hi)
                score = (overshoot, max(loss, 0.0) / gain)
                if best is None or score < best[0]:
                    best = (score, n, new, m)
        if best is None:
            break
        _, n, new, m = best
        c = cs[n]
        moves.append({"cell": n, "from": _describe(c, choice[n]), "to": _describe(c, new), "macs": int(m)})
        choice[n] = new
        macs = m
    for n, (k, j) in choice.items():
        c = cs[n]
        if isinstance(c, MixedOp) and k != c.op_index():
            c.fix_op(c.candidates[k])
        if j != c.width_index():
            c.fix_width(c.widths[j])
    return moves


def _describe(c: Any, kj: tuple[int, int]) -> str:
    k, j = kj
    return f"{c.candidates[k]}@{c.widths[j]}" if isinstance(c, MixedOp) else f"@{c.widths[j]}"


# ------------------------------------------------------------------------------------------------ driver

class _Half(torch.utils.data.Dataset):
    """Items ``[start, start + length)`` of a gcompiler dataset (keys may be :class:`SampleKey` objects)."""

    def __init__(self, dataset: Any, start: int, length: int) -> None:
        self.dataset, self.start, self.length = dataset, int(start), int(length)
        self.value_range = getattr(dataset, "value_range", (-1.0, 1.0))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Any) -> Any:
        from ..data.sampler import SampleKey

        if isinstance(key, SampleKey):
            return self.dataset[key._replace(index=self.start + int(key.index))]
        return self.dataset[self.start + int(key)]


def _half_loaders(job: CompressJob) -> tuple[Any, Any]:
    """Loaders over the first half (weights) and the second half (architecture) of the training data, by index."""
    from ..data import make_loader

    n = len(job.dataset)
    if n < 2:
        raise ConfigError(f"agd needs at least 2 training samples to split into weight / architecture halves, "
                          f"--data {job.settings.data} has {n}")
    half = n // 2
    bs = job.settings.batch_size
    if half < bs:
        raise ConfigError(f"agd: each half of the training data ({half} samples) is smaller than --batch-size {bs}")
    s = job.settings
    d = job.dist  # under torchrun each rank loads its share of the global batch (start_distributed checked it splits)
    w = make_loader(_Half(job.dataset, 0, half), batch_size=bs // d.world_size, seed=s.seed,
                    num_workers=s.data_workers(), rank=d.rank, world_size=d.world_size)
    a = make_loader(_Half(job.dataset, half, n - half), batch_size=bs // d.world_size, seed=s.seed + 7,
                    num_workers=s.data_workers(), rank=d.rank, world_size=d.world_size)
    return w, a


def substitute_text(opts: AGDOptions) -> str:
    """The ``substitute-ops`` pipeline text of the options."""
    return (f"substitute-ops{{candidates={opts.candidates},blocks={opts.blocks},widths={opts.widths},"
            f"stem_header={str(opts.stem_header).lower()},nesting={opts.nesting}}}")


@register_method("agd", options=AGDOptions,
                 summary="AutoGAN-Distiller: supernet of AGD operators/widths (substitute-ops), sandwich pretraining, "
                         "differentiable search under a MACs band, derive, distil, export",
                 defaults={"max_steps": 200, "finetune_steps": 200, "batch_size": 8})
def run_agd(job: CompressJob, opts: AGDOptions) -> dict[str, Any]:
    """Run AGD on ``job`` (see the module docstring); returns ``{"summary": ..., "report": ...}``."""
    import json

    from ..fx import trace
    from ..profiler import profile

    s = job.settings
    tp = job.teacher_profile
    target = job.target_macs
    if target is None:
        target = tp.macs / 4
        log.info(f"agd: no --target-macs given; searching for {target / 1e9:.3f} G MACs (4x)")
    lo, hi = target * (1 - opts.band), target * (1 + opts.band)
    if opts.vgg_weights:
        distance, note = build_distance("perceptual", vgg_weights=opts.vgg_weights, fallback=opts.loss,
                                        value_range=job.value_range)
    else:
        distance, note = build_distance(opts.loss)
    report: dict[str, Any] = {"method": "agd", "options": dataclasses.asdict(opts), "teacher": job.teacher_info,
                              "target_macs": target, "band": [lo, hi], "distance": note}

    # -- supernet ------------------------------------------------------------------------------------------------
    supernet = trace(job.teacher, job.reference_input)
    for p in supernet.parameters():
        p.requires_grad_(True)
    supernet = job.rewrite(supernet, substitute_text(opts), stage="substitute")
    table = CostTable(supernet)
    reach = table.bounds()
    report["supernet"] = {"cells": supernet.meta["nas"]["cells"], "macs_range": list(reach),
                          "params": sum(p.numel() for p in weight_parameters(supernet))}
    n_op = sum(1 for c in cells(supernet).values() if isinstance(c, MixedOp))
    log.info(f"agd: supernet with {n_op} operator cells and {len(cells(supernet)) - n_op} width-only cells; "
             f"reachable {reach[0] / 1e9:.3f}-{reach[1] / 1e9:.3f} G MACs; band {lo / 1e9:.3f}-{hi / 1e9:.3f} G")
    if hi < reach[0] or lo > reach[1]:
        raise ConfigError(f"agd: the band {lo:.4g}-{hi:.4g} MACs (--target-macs {target:.4g}, band {opts.band}) is "
                          f"outside what the search space reaches ({reach[0]:.4g}-{reach[1]:.4g} MACs at the "
                          f"reference input {tuple(job.reference_input.shape)}): choose a target in that range")
    w_loader, a_loader = _half_loaders(job)
    dcfg = DistillConfig(pixel=None, distance=distance, distance_note=note, lr=opts.lr, betas=(0.5, 0.999),
                         schedule="constant")

    # -- pretraining (sandwich) -----------------------------------------------------------------------------------
    pre_steps = 0
    if opts.pretrain_steps > 0:
        trainer, res = job.train_stage(SupernetPretrain(dcfg), supernet, stage="pretrain", steps=opts.pretrain_steps,
                                       data=w_loader, amp="off")
        pre_steps = res.steps
        supernet = trainer.module("student")
        report["pretrain_losses"] = res.losses

    # -- search ---------------------------------------------------------------------------------------------------
    search = AGDSearch(dataclasses.replace(dcfg, schedule="linear_decay:0.5"), table=table, target=target,
                       band=opts.band, lambda_f=opts.lambda_f, arch_lr=opts.arch_lr, eval_every=opts.eval_every,
                       sandwich=opts.sandwich, tau=opts.tau)
    trainer, res = job.train_stage(search, supernet, stage="search", steps=s.max_steps,
                                   data={"train": w_loader, "arch": a_loader}, amp="off")
    search_steps = res.steps
    supernet = sync_module(trainer.module("student").eval(), what="the searched supernet")  # rank 0's alphas
    table = CostTable(supernet)
    searched = architecture(supernet)
    searched_macs = table.exact()
    moves = repair_to_band(supernet, table, lo, hi) if opts.repair else []
    final_macs = table.exact()
    report["search"] = {"steps": search_steps, "losses": res.losses, "lambda_f_final": search.lambda_f,
                        "history": search.history, "argmax_macs_after_search": searched_macs,
                        "architecture_after_search": searched, "repair": moves, "macs": final_macs,
                        "in_band": bool(lo <= final_macs <= hi)}
    log.info(f"agd: search done ({search_steps} steps): argmax {searched_macs / 1e9:.3f} G MACs, lambda_f "
             f"{search.lambda_f:.3g}" + (f"; {len(moves)} repair move(s) -> {final_macs / 1e9:.3f} G" if moves else ""))
    if not lo <= final_macs <= hi:
        log.warning(f"agd: the architecture ({final_macs:.4g} MACs) is outside the band {lo:.4g}-{hi:.4g}")

    # -- derive ---------------------------------------------------------------------------------------------------
    arch = architecture(supernet)
    arch["macs"] = final_macs
    job.write_json("agd_architecture.json", arch)
    if opts.inherit:
        for c in cells(supernet).values():
            c.train(False)
        student = job.rewrite(supernet, "derive-architecture", stage="derive")
    else:
        student = build_student(job.teacher, job.reference_input, arch)
    for p in student.parameters():
        p.requires_grad_(True)
    derived_macs = profile(student, job.reference_input).macs
    report["derived_macs"] = derived_macs

    # -- train the derived student ----------------------------------------------------------------------------------
    ft_steps = 0
    if s.finetune_steps > 0:
        tcfg = DistillConfig(pixel=None, distance=distance, distance_note=note, lr=opts.train_lr, betas=(0.5, 0.999),
                             schedule="linear_decay:0.5")
        trainer, res = job.train_stage(Distill(tcfg), student, stage="train", steps=s.finetune_steps, seed_offset=1,
                                       amp="off")
        ft_steps = res.steps
        student = trainer.module("student")
        report["train_losses"] = res.losses

    # -- export ---------------------------------------------------------------------------------------------------
    report.update(pretrain_steps=pre_steps, search_steps=search_steps, train_steps=ft_steps, architecture=arch,
                  in_band=bool(lo <= derived_macs <= hi))
    log.info("agd: architecture " + json.dumps([(c["name"], c.get("op", "-"), c["width"]) for c in arch["cells"]]))
    return job.finish(student, steps=pre_steps + search_steps + ft_steps, report=report, method="agd")
