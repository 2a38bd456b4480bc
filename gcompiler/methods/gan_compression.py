"""GAN Compression (Li et al., CVPR 2020; the "Fast" variant) as ``gcompiler compress --method gan-compression``.

Stages (BRIEF section 1):

1. **Student**: a traced copy of the teacher (same weights), or with ``--opt student=mobile`` every
   residual block replaced by a depthwise-separable block (the ``substitute-ops`` pass; pipeline text in
   ``mobile_pipeline``). The ``make-supernet`` pass turns it into a once-for-all supernet: one width per
   prunable channel group, weights sliced to their first ``k`` channels (:mod:`gcompiler.supernet`),
   in the teacher's channel order (``order=keep``, the default), or with the units of every group first
   sorted by the L1 norm of their filters (``order=l1``, as GAN Compression's weight transfer keeps the
   top-k filters by L1 norm). Measured on the builtin:sr teacher (BatchNorm): l1 order is harmful there,
   because the channels with the weakest filters carry the BatchNorm biases (constant offsets) that the
   network relies on; its untrained sub-networks fell to 6.7 dB PSNR against 35-39 dB in the teacher's order.
2. **Once-for-all training** (the shared engine: :class:`~gcompiler.train.Trainer` + a
   :class:`~gcompiler.train.Distill` recipe): every step samples one configuration uniformly from the
   search space (``sandwich=true``: the largest, the smallest and a random one, losses summed) and
   minimises ``lambda_gan * GAN + lambda_recon * L1 + lambda_distill * sum MSE(A_k(S_k), T_k)``. The L1
   target is the ground truth for paired data and the teacher's output otherwise; ``A_k`` is a learnable
   1x1 conv on the *student* feature ``S_k`` (sliced to the active channels, like GAN Compression's
   ``SuperConv2d`` mapping layers); the taps default to the trunk input and the outputs of blocks 3, 6
   and 9 of the widest residual trunk (any node names by ``--opt feature_taps=s1=t1,s2=t2``). A PatchGAN
   discriminator (LSGAN by default; GAN Compression's CycleGAN setting) judges the student's outputs
   against the ground truth (paired) or the teacher's outputs.
3. **Search** under ``--target-macs``: brute force when the space is small (``brute_force_limit``), else
   evolution (population, mutation probability 0.2, crossover; :mod:`gcompiler.search.evolution`). Each
   candidate is priced exactly by the supernet's cost table at the reference input
   (:func:`gcompiler.supernet.subnet_cost`: equal to profiling the extracted network, and to the shared cost
   model ``gcompiler.estimate(widths=...)`` on a masked copy of the plain student whenever the removed units
   leave no constant behind; where they would -- a norm bias before a zero-padded conv -- ``estimate`` prices
   the *elimination* of zeroed units, which keeps a carrier for the constant, while a sub-network simply does
   not compute those units; the report lists all three counts for the chosen one) and scored
   on a fixed search split (``search_images`` crops drawn with their own seed from whole training images
   held out of supernet training and fine-tuning -- one in eight, ``search_split=sources``, the default
   when the data has enough images -- and never from the held-out evaluation photos) by PSNR or SSIM to
   the teacher or the ground truth, or by FID when Inception weights are given (``fid_weights``). Every candidate goes into ``search.json`` and the
   Pareto plot ``pareto.png`` in the run directory.
4. **Fine-tuning** of the extracted sub-network (a plain slim GraphModule) with the reconstruction and
   GAN losses for ``--finetune-steps``, then export (``job.export``).

Defaults follow GAN Compression (lambda 1 / 100 / 1, Adam 2e-4 with betas 0.5 / 0.999, linear decay
from half-way, the ``channels-64-cycleGAN`` choices {64, 48, 32, 24, 16} x ngf / 64 for ResNet
generators); for other models each group offers 1/4 .. 1 of its width in eighths (``choices``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import CheckpointError, ConfigError, DataError
from ..train import DistillConfig
from . import register_method
from .base import CompressJob, _first_sample
from .dist import on_rank0, sync_module
from .gc_recipes import (CandidateScorer, FrozenNormFinetune, OnceForAll, SlicedFeatureLoss, residual_taps,  # noqa: F401
                         search_split)

log = logging.getLogger("gcompiler.compress")


@dataclass
class GANCompressionOptions:
    """Options of the ``gan-compression`` method (``--opt key=value``, or a ``[gan-compression]`` table)."""

    student: Literal["teacher", "mobile"] = "teacher"
    "Student layout: the teacher's own, or 'mobile' (every residual block depthwise-separable via substitute-ops)."
    mobile_pipeline: str = "substitute-ops{candidates=dwsblock,widths=full,stem_header=false},derive-architecture"
    "Pass pipeline that makes the mobile student (student=mobile)."
    order: Literal["keep", "l1"] = "keep"
    "Unit order of the supernet: keep the teacher's, or l1 (strongest filters first; harmful with BatchNorm biases)."
    lambda_recon: float = 100.0
    "Weight of the L1 reconstruction loss (ground truth when paired, else the teacher's output)."
    lambda_distill: float = 1.0
    "Weight of the intermediate-feature distillation (sum of MSEs through 1x1 mappings)."
    lambda_gan: float = 1.0
    "Weight of the generator's adversarial loss."
    recon: Literal["l1", "mse"] = "l1"
    "Reconstruction loss."
    recon_target: Literal["auto", "target", "teacher"] = "auto"
    "L1 target: auto = the ground truth when the data is paired, else the teacher's output."
    gan: Literal["lsgan", "hinge", "vanilla"] = "lsgan"
    "Adversarial loss (GAN Compression: lsgan for CycleGAN, hinge for pix2pix)."
    feature_taps: str | None = None
    "Distilled features as 'student_node=teacher_node' pairs separated by ',' (default: trunk input, blocks 3/6/9)."
    lr: float = 2e-4
    "Adam learning rate (generator, mappings; betas 0.5/0.999, linear decay from half-way)."
    d_lr: float | None = None
    "Discriminator learning rate (default: lr)."
    finetune_lr: float | None = None
    "Learning rate of the fine-tuning (default: lr)."
    disc_ndf: int | None = None
    "PatchGAN width (default: the teacher's first conv width clamped to [16, 64])."
    disc_layers: int = 3
    "PatchGAN stride-2 layers."
    sandwich: bool = False
    "Sandwich rule: each step trains the largest, the smallest and one random sub-network (3x the cost)."
    choices: str | None = None
    "Width choices as fractions of the full width, e.g. '0.25,0.5,0.75,1' (ResNet: fractions of ngf)."
    round_to: int = 4
    "Group widths are multiples of this (generic space)."
    search: Literal["auto", "brute-force", "evolution", "random"] = "auto"
    "Search algorithm (auto: brute force up to brute_force_limit candidates, else evolution)."
    brute_force_limit: int = 256
    "Largest space searched exhaustively."
    search_evals: int = 120
    "Evolution: sub-networks scored at most."
    population: int = 20
    "Evolution: population size (parents 1/4, mutations 1/2, crossovers the rest)."
    mutate_prob: float = 0.2
    "Evolution: probability that a mutation resamples a position."
    metric: Literal["psnr", "ssim", "fid"] = "psnr"
    "Search score (fid needs fid_weights)."
    score_against: Literal["auto", "teacher", "target"] = "auto"
    "Reference of the search score: auto = the ground truth when the data has it, else the teacher."
    search_images: int = 16
    "Crops in the search split."
    search_split: Literal["auto", "sources", "crops"] = "auto"
    ("Where the search crops come from. sources: whole training images (search_sources of them, seeded) are held "
     "out of supernet training and fine-tuning and scored on; crops: seeded crops of the training images; auto: "
     "sources when the data has at least 4 source images and the others still fill a batch (or search_sources is "
     "set), else crops.")
    search_sources: int = 0
    "Training images held out for the search with search_split=sources (0: one in eight, at least 1)."
    fid_weights: str | None = None
    "Path to pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) for metric=fid."
    freeze_norm_stats: bool = True
    "BatchNorm in eval mode with the teacher's statistics (exact first-k slices)."

    def validate(self) -> None:
        for name in ("lambda_recon", "lambda_distill", "lambda_gan"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"gan-compression option {name} must be a finite number >= 0, got {v!r}")
        for name in ("lr", "d_lr", "finetune_lr"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"gan-compression option {name} must be > 0, got {v!r}")
        if self.lambda_recon == 0 and self.lambda_gan == 0 and self.lambda_distill == 0:
            raise ConfigError("gan-compression: every loss weight is 0")
        for name in ("round_to", "brute_force_limit", "search_evals", "search_images", "disc_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gan-compression option {name} must be >= 1")
        if self.population < 2:
            raise ConfigError("gan-compression option population must be >= 2")
        if not 0 <= self.mutate_prob <= 1:
            raise ConfigError(f"gan-compression option mutate_prob must be in [0, 1], got {self.mutate_prob}")
        if self.metric == "fid" and not self.fid_weights:
            raise ConfigError("gan-compression: metric=fid needs the Inception weights: --opt fid_weights=PATH "
                              "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
        self.choice_list()
        self.tap_pairs()

    def choice_list(self) -> list[float] | None:
        if self.choices is None:
            return None
        try:
            vals = [float(v) for v in str(self.choices).replace(";", ",").split(",") if v.strip()]
        except ValueError:
            vals = []
        if not vals or any(not 0 < v <= 1 for v in vals):
            raise ConfigError(f"gan-compression option choices must be fractions in (0, 1] separated by ',', "
                              f"got {self.choices!r}")
        return vals

    def tap_pairs(self) -> list[tuple[str, str]] | None:
        if not self.feature_taps:
            return None
        pairs = []
        for item in str(self.feature_taps).replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            s, sep, t = item.partition("=")
            if not sep or not s.strip() or not t.strip():
                raise ConfigError(f"gan-compression option feature_taps: {item!r} is not 'student_node=teacher_node'")
            pairs.append((s.strip(), t.strip()))
        return pairs


# ------------------------------------------------------------------------------------------------
# the driver

def _discriminator(job: CompressJob, opts: GANCompressionOptions, conditional: bool) -> nn.Module:
    from ..models import create

    width = 64
    for m in job.teacher.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            width = int(m.out_channels)
            break
    ndf = opts.disc_ndf if opts.disc_ndf is not None else max(16, min(64, width))
    shape = job.train_output_shape
    side = min(shape[-2:])
    layers = opts.disc_layers
    while layers > 1 and side // 2 ** layers - 1 < 2:
        layers -= 1
    channels = int(shape[0]) + (int(job.reference_input.shape[1]) if conditional else 0)
    return create("patchgan_d", input_nc=channels, ndf=ndf, n_layers=layers)


def _build_student(job: CompressJob, opts: GANCompressionOptions) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The supernet, and a masked copy of the plain student that the shared cost model prices widths on."""
    from ..fx import trace
    from ..passes.registry import available

    model = copy.deepcopy(job.teacher).cpu().eval()
    gm = trace(model, job.reference_input.cpu())
    for p in gm.parameters():
        p.requires_grad_(True)
    if opts.student == "mobile":
        name = opts.mobile_pipeline.split("{")[0].split(",")[0].strip()
        if name not in available():
            raise ConfigError(f"gan-compression: student=mobile needs the pass {name!r}, which this build does not "
                              f"register (available: {', '.join(available())}); use student=teacher")
        gm = job.rewrite(gm, opts.mobile_pipeline, stage="mobile-student")
    priced = job.rewrite(copy.deepcopy(gm), "insert-masks", stage="cost-model")
    return job.rewrite(gm, f"make-supernet{{order={opts.order}}}", stage="supernet"), priced


def _search_split_data(job: CompressJob, opts: GANCompressionOptions):
    """``(dataset the search crops come from, description)``; with ``search_split=sources`` it also narrows
    ``job.dataset`` (what every training stage loads) to the other training images."""
    from ..data import CropFlipDataset, SourceSubset

    ds = job.dataset
    n = ds.num_sources() if isinstance(ds, CropFlipDataset) else 0
    k = opts.search_sources or max(1, n // 8)
    # one item per image (a folder): the images left must still fill a training batch
    need = 1 if isinstance(ds, CropFlipDataset) and ds.random_sources else job.settings.batch_size
    mode = opts.search_split
    if mode == "auto":
        mode = "sources" if opts.search_sources or (n >= 4 and n - k >= need) else "crops"
    if mode == "crops":
        return ds, "the training images (the supernet trains on them too)"
    if n < 2:
        raise ConfigError(f"gan-compression: search_split=sources needs at least 2 training images to hold one out "
                          f"for the search; the data has {n}. Use --opt search_split=crops")
    if not 1 <= k < n:
        raise ConfigError(f"gan-compression: search_sources={k} must leave at least one of the {n} training images "
                          f"for training (1 .. {n - 1})")
    if n - k < need:
        raise ConfigError(f"gan-compression: holding {k} of the {n} training images out for the search leaves "
                          f"{n - k}, fewer than --batch-size {need}: lower search_sources or the batch size, or use "
                          f"--opt search_split=crops")
    import numpy as np

    held = sorted(int(i) for i in np.random.default_rng(job.settings.seed + 7919).choice(n, size=k, replace=False))
    job.dataset = SourceSubset(ds, [i for i in range(n) if i not in held])
    val = SourceSubset(ds, held)
    names = ", ".join(str(x) for x in val.names) if len(val.names) == k else f"{k} images"
    note = (f"{k} of the {n} training images held out of supernet training and fine-tuning ({names})")
    log.info(f"gan-compression: search split: {note}")
    return val, note


@register_method("gan-compression", options=GANCompressionOptions,
                 summary="GAN Compression: once-for-all supernet trained by distillation (features + L1 + GAN), "
                         "brute-force / evolutionary search under --target-macs, fine-tune, export",
                 defaults={"max_steps": 300, "finetune_steps": 100, "batch_size": 8, "bits": 32}, bits=(32,),
                 bits_reason="gan-compression trains and exports float networks (quantize the result with GS-8 "
                             "or the quantization passes)")
def run_gan_compression(job: CompressJob, opts: GANCompressionOptions) -> dict[str, Any]:
    """Run GAN Compression on ``job`` (see the module docstring); returns ``{"summary", "report"}``."""
    from ..search.evolution import search
    from ..supernet import extract, search_space, subnet_cost

    s = job.settings
    sample = _first_sample(job.dataset)
    paired = isinstance(sample.get("target"), torch.Tensor) and \
        tuple(sample["target"].shape) == tuple(job.train_output_shape)
    recon_target = ("target" if paired else "teacher") if opts.recon_target == "auto" else opts.recon_target
    if recon_target == "target" and not paired:
        raise ConfigError("gan-compression: recon_target=target but the data has no ground truth of the output's "
                          "shape (unpaired data: use recon_target=teacher)")
    d_real = "target" if paired else ("reference" if isinstance(sample.get("reference"), torch.Tensor) else "teacher")
    report: dict[str, Any] = {"method": "gan-compression", "options": dataclasses.asdict(opts),
                              "teacher": job.teacher_info, "target_macs": job.target_macs, "paired": paired,
                              "recon_target": recon_target, "d_real": d_real}

    search_data, split_note = _search_split_data(job, opts)
    report["search_split"] = split_note

    # -- stage 1: the supernet ---------------------------------------------------------------------------------
    supernet, priced = _build_student(job, opts)
    meta = supernet.meta["supernet"]
    space = search_space(supernet, choices=opts.choice_list(), round_to=opts.round_to)
    report["supernet"] = {"groups": dict(meta["groups"]), "fixed": dict(meta["fixed"]), "space": space.kind,
                          "positions": space.positions, "choices": space.choices, "space_size": space.size}
    fixed_note = f" ({len(meta['fixed'])} fixed)" if meta["fixed"] else ""
    log.info(f"gan-compression: supernet with {len(meta['groups'])} sliceable groups{fixed_note}; search space "
             f"{space.kind}, {space.size} configurations")
    taps = opts.tap_pairs()
    if taps is None:
        student_taps = residual_taps(supernet)
        taps = list(zip(student_taps, student_taps)) if opts.student == "teacher" else \
            list(zip(student_taps, residual_taps(_trace_teacher(job))))
    report["feature_taps"] = taps
    teacher_run: nn.Module = _trace_teacher(job) if opts.lambda_distill > 0 and taps else job.teacher

    disc = None
    if opts.lambda_gan > 0:
        try:  # the task's pretrained D (--discriminator, or builtin:NAME:discriminator), else a fresh PatchGAN
            disc = job.build_discriminator()
        except (ConfigError, DataError, CheckpointError) as exc:
            if getattr(job.settings, "discriminator", None):
                raise
            log.warning(f"gan-compression: no pretrained discriminator ({exc}); training a fresh PatchGAN")
            disc = None
        report["discriminator"] = job.discriminator_spec() if disc is not None else "fresh PatchGAN"
        if disc is None:
            disc = _discriminator(job, opts, conditional=False)
    dcfg = DistillConfig(pixel=opts.recon if opts.lambda_recon > 0 else None, pixel_weight=opts.lambda_recon,
                         target=recon_target, gan=opts.gan if disc is not None else None, gan_weight=opts.lambda_gan,
                         discriminator=disc, d_real=d_real, lr=opts.lr, betas=(0.5, 0.999), d_lr=opts.d_lr,
                         schedule="linear_decay:0.5")
    if dcfg.pixel is None and dcfg.gan is None:
        dcfg.pixel, dcfg.pixel_weight = "l1", 0.0  # only features: Distill needs one output loss to be valid
    recipe = OnceForAll(dcfg, space=space, taps=taps if opts.lambda_distill > 0 else [],
                        feature_weight=opts.lambda_distill, sandwich=opts.sandwich, seed=s.seed,
                        freeze_norm_stats=opts.freeze_norm_stats)
    t0 = time.perf_counter()
    trainer, result = job.train_stage(recipe, supernet, stage="supernet", steps=s.max_steps, teacher=teacher_run)
    supernet = sync_module(trainer.module("student").eval(), what="the trained supernet")
    if disc is not None:
        disc = trainer.module("disc").cpu()
    report["supernet_training"] = {"steps": result.steps, "losses": result.losses,
                                   "seconds": round(time.perf_counter() - t0, 1)}
    train_steps = result.steps

    # -- stage 2: search ---------------------------------------------------------------------------------------
    def run_search() -> dict[str, Any]:
        """Score sub-networks and choose one (rank 0 only under torchrun: the others receive the choice)."""
        batches = search_split(job, opts.search_images, dataset=search_data)
        against = ("target" if paired else "teacher") if opts.score_against == "auto" else opts.score_against
        if against == "target" and not paired:
            raise ConfigError("gan-compression: score_against=target but the data has no ground truth")
        with torch.no_grad():
            refs = [b["target"] if against == "target" else job.teacher(b["input"]) for b in batches]
        fid_features = None
        if opts.metric == "fid":
            from ..search.fid import load_inception

            fid_features = load_inception(opts.fid_weights)
        scorer = CandidateScorer(supernet, space, batches, refs, metric=opts.metric, value_range=job.value_range,
                                 fid_features=fid_features)

        def cost(c: tuple) -> float:  # exact MACs of the sub-network (== the profile of its extraction)
            return float(subnet_cost(supernet, space.to_config(c))["macs"])

        budget = float(job.target_macs) if job.target_macs is not None else None
        t0 = time.perf_counter()
        res = search(space.choices, cost, scorer, budget=budget, method=opts.search,
                     brute_force_limit=opts.brute_force_limit, evals=opts.search_evals, population=opts.population,
                     mutate_prob=opts.mutate_prob, seed=s.seed)
        search_s = time.perf_counter() - t0
        chosen = res.best
        cfg = space.to_config(chosen.candidate)
        metric_name = {"psnr": "PSNR (dB)", "ssim": "SSIM", "fid": "-FID"}[opts.metric] + f" to the {against}"
        full_score = scorer(space.largest())
        teacher_score = scorer.score_model(job.teacher.eval()) if against == "target" else None
        history = [{"config": space.label(e.candidate), "macs": int(e.cost), "score": e.score} for e in res.history]
        job.write_json("search.json", {"method": res.method, "budget": budget, "metric": metric_name,
                                       "evaluations": res.evaluations, "seconds": round(search_s, 1),
                                       "chosen": space.label(chosen.candidate), "chosen_macs": int(chosen.cost),
                                       "chosen_score": chosen.score, "largest_score": full_score,
                                       "teacher_score": teacher_score, "candidates": history})
        plot_path = None
        try:
            from ..search.plot import pareto_plot

            plot_path = pareto_plot(res.history, chosen, job.run_dir / "pareto.png", budget=budget, metric=metric_name,
                                    title=f"gan-compression {res.method} search: {res.evaluations} sub-networks",
                                    baselines={"largest sub-network": (cost(space.largest()), full_score),
                                               "teacher": (float(job.teacher_profile.macs), teacher_score)})
        except ConfigError as exc:
            log.warning(f"gan-compression: no Pareto plot ({exc})")
        report["search"] = {"method": res.method, "evaluations": res.evaluations, "seconds": round(search_s, 1),
                            "metric": metric_name, "chosen": space.label(chosen.candidate),
                            "chosen_macs": int(chosen.cost), "chosen_score": chosen.score,
                            "largest_score": full_score, "pareto_plot": str(plot_path) if plot_path else None,
                            "split": f"{sum(b['input'].shape[0] for b in batches)} crops (seed {s.seed} + 7919) "
                                     f"of {split_note}; never the held-out evaluation images"}
        log.info(f"gan-compression: {res.method} search scored {res.evaluations} sub-networks in {search_s:.1f} s; chose "
                 f"{space.label(chosen.candidate)} at {chosen.cost / 1e9:.4f} G MACs ({metric_name} {chosen.score:.3f}; "
                 f"largest {full_score:.3f})")
        return {"chosen": list(chosen.candidate), "search": report["search"]}

    found = on_rank0(run_search, what="the sub-network search")
    chosen_candidate = tuple(found["chosen"])
    report["search"] = found["search"]
    cfg = space.to_config(chosen_candidate)

    # -- stage 3: extract, fine-tune, export -----------------------------------------------------------------
    slim = extract(supernet, cfg)
    est = _cross_check_estimate(supernet, priced, cfg, slim, job.reference_input)
    report["cost_check"] = est
    for p in slim.parameters():
        p.requires_grad_(True)
    ft_steps = 0
    if s.finetune_steps > 0:
        fcfg = dataclasses.replace(dcfg, lr=opts.finetune_lr or opts.lr, discriminator=disc)
        ft = FrozenNormFinetune(fcfg)
        trainer, r = job.train_stage(ft, slim, stage="finetune", steps=s.finetune_steps, seed_offset=1)
        ft_steps = r.steps
        slim = trainer.module("student")
        report["finetune_losses"] = r.losses
    slim.meta.pop("supernet", None)
    report.update(supernet_steps=train_steps, finetune_steps=ft_steps, config=space.label(chosen_candidate))
    out = job.finish(slim, steps=train_steps + ft_steps, report=report, method="gan-compression", bits=32)
    if job.target_macs is not None and out["summary"]["macs_after"] > job.target_macs:
        raise ConfigError(f"gan-compression: the exported network has {out['summary']['macs_after']} MACs, above "
                          f"--target-macs {job.target_macs} (cost model and profile disagree: {json.dumps(est)})")
    return out


def _trace_teacher(job: CompressJob) -> fx.GraphModule:
    from ..fx import trace

    gm = trace(copy.deepcopy(job.teacher).cpu().eval(), job.reference_input.cpu())
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


def _cross_check_estimate(supernet: fx.GraphModule, priced: fx.GraphModule, cfg: Any, slim: fx.GraphModule,
                          x: torch.Tensor) -> dict[str, Any]:
    """MACs of the chosen sub-network three ways: the supernet's own cost table (what the search used), the
    profile of the extracted network and the shared cost model ``gcompiler.estimate`` (elimination semantics:
    equal unless removed units would leave constants behind, see the module docstring)."""
    from ..cost import estimate
    from ..profiler import profile
    from ..supernet import config_to_widths, subnet_cost

    return {"estimate": int(estimate(priced, widths=config_to_widths(supernet, cfg)).macs),
            "cost_table": subnet_cost(supernet, cfg)["macs"], "profile": profile(slim, x).macs}
