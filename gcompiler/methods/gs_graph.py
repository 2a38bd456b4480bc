"""The graph stages of GAN Slimming (:mod:`gcompiler.methods.gs`) as pass pipelines.

Every rewrite goes through :meth:`CompressJob.rewrite <gcompiler.methods.base.CompressJob.rewrite>`, so the
pass manager verifies each pass and the pass log lands in ``report.json["pass_log"]``:

======================  =============================================================================
stage                   pipeline
======================  =============================================================================
``search-student``      ``insert-masks{round_to}`` [, ``insert-fake-quant{bits, act_range, act_clip,
                        per_channel}``, ``calibrate-activations{percentile}`` (clips from training
                        batches, when ``act_clip`` is unset)]
``slim``                [``strip-fake-quant``,] ``prune-by-ratio{target_macs, criterion=gamma, round_to}``
                        (with ``--target-macs``), ``eliminate-dead-channels{round_to}``, ``fold-norms``
``finetune-quant``      ``insert-fake-quant{...}`` [, ``calibrate-activations``] on the slim student
``ptq``                 ``insert-fake-quant{...}``, ``calibrate-activations`` (post-training quantization)
``int8-export``         ``convert-to-int`` on a copy of the fake-quant student
======================  =============================================================================

GS's budget step is the one budget pruner (:func:`gcompiler.passes.budget.prune_to_budget`, through
``prune-by-ratio{target_macs}``): it zeroes the mask units of smallest *relative* magnitude (``|m_u|`` over
the group's mean: norm scales and channel-mask scales live on different scales) until
:func:`gcompiler.estimate` -- the exact price of the network ``eliminate-dead-channels`` would build,
carriers and ``round_to`` included -- meets the budget; every group keeps at least ``round_to`` units.
:func:`min_reachable_macs` is the smallest budget that allows, checked before the search starts.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from ..errors import ConfigError
from .gs_recipes import float_copy, mask_sparsity

if TYPE_CHECKING:
    from .base import CompressJob

log = logging.getLogger("gcompiler.compress")


def min_reachable_macs(gm: fx.GraphModule, round_to: int) -> int:
    """The MACs of ``gm``'s network with every mask group cut to ``round_to`` units (the floor of a budget)."""
    from ..cost import estimate
    from ..passes.masks import masks

    priced = float_copy(gm)
    return estimate(priced, widths={n: min(round_to, m.numel()) for n, m in masks(priced).items()},
                    round_to=round_to).macs


def quant_items(bits: int, opts: Any, calib: list[torch.Tensor] | None, *, calibrate: bool) -> list[tuple]:
    """``insert-fake-quant`` with the GS settings (weights and activations at ``bits``) and, with
    ``calibrate``, ``calibrate-activations`` on the input batches ``calib`` (``clip_percentile`` of each conv
    input's float values)."""
    items: list[tuple] = [("insert-fake-quant", {"weight_bits": bits, "act_bits": bits, "act_range": opts.act_range,
                                                 "act_clip": opts.act_clip, "per_channel": opts.per_channel})]
    if calibrate:
        if not calib:
            raise ConfigError("gs: calibrating the activation clips needs calibration batches (act_clip unset)")
        items.append(("calibrate-activations", {"method": "percentile", "percentile": opts.clip_percentile,
                                                "data": list(calib)}))
    return items


def search_student(job: "CompressJob", opts: Any, *, bits: int, calib: list[torch.Tensor] | None
                   ) -> fx.GraphModule:
    """Trace a copy of the teacher, put masks on its prunable groups and (``bits`` < 32) fake quantization
    with clips calibrated on ``calib`` when ``opts.act_clip`` is unset (stage ``search-student``)."""
    from ..fx import trace

    model = copy.deepcopy(job.teacher).cpu().eval()
    gm = trace(model, job.reference_input.cpu())
    for p in gm.parameters():
        p.requires_grad_(True)
    items: list[Any] = [("insert-masks", {"round_to": opts.round_to})]
    if bits < 32:
        items += quant_items(bits, opts, calib, calibrate=opts.act_clip is None)
    return job.rewrite(gm, items, stage="search-student")


def add_fake_quant(job: "CompressJob", gm: fx.GraphModule, bits: int, opts: Any,
                   calib: list[torch.Tensor] | None, *, stage: str, always_calibrate: bool = False) -> fx.GraphModule:
    """Fake quantization on a slim student (stages ``finetune-quant`` and ``ptq``)."""
    return job.rewrite(gm, quant_items(bits, opts, calib, calibrate=always_calibrate or opts.act_clip is None),
                       stage=stage)


def slim_student(job: "CompressJob", gm: fx.GraphModule, *, target_macs: int | None, round_to: int
                 ) -> tuple[fx.GraphModule, dict[str, Any]]:
    """After the search: drop quantizers, meet ``target_macs``, eliminate dead channels, fold norms (stage
    ``slim``). Returns the slim student and what happened (sparsity, pruning, elimination, folding)."""
    from ..cost import estimate
    from ..fx import propagate_shapes
    from ..quant.qmodules import QUANT_CONV_TYPES

    gm = gm.cpu().eval()
    info: dict[str, Any] = {"search_sparsity": mask_sparsity(gm)}
    quantized = any(isinstance(m, QUANT_CONV_TYPES) for m in gm.modules())
    if quantized:
        job.rewrite(gm, "strip-fake-quant", stage="slim")
    info["estimate_after_search"] = estimate(gm, round_to=round_to).macs
    items: list[Any] = []
    if target_macs is not None and info["estimate_after_search"] > target_macs:
        items.append(("prune-by-ratio", {"target_macs": float(target_macs), "criterion": "gamma",
                                         "round_to": round_to}))
    if items:
        job.rewrite(gm, items, stage="slim")  # the budget step, then the masks it leaves are recorded
        info["_pruned_sparsity"] = mask_sparsity(gm)
    job.rewrite(gm, [("eliminate-dead-channels", {"round_to": round_to}), "fold-norms"], stage="slim")
    if target_macs is not None:
        elim = [r for r in job.pass_log if r["stage"] == "slim" and r["pass"] == "eliminate-dead-channels"]
        macs = elim[-1]["macs"][1]
        by_ratio = gm.meta.pop("prune_by_ratio", None)
        sparsity = info["search_sparsity"] if by_ratio is None else info.pop("_pruned_sparsity")
        info["target_pruning"] = {"target": target_macs, "zeroed": sparsity["zero"] - info["search_sparsity"]["zero"],
                                  "estimate": info["estimate_after_search"] if by_ratio is None
                                  else by_ratio["estimated_macs"], "macs": macs, "sparsity": sparsity}
        if macs is not None and macs > target_macs:
            log.warning(f"--target-macs {target_macs:.4g}: reached {macs:.4g} MACs (the groups cannot shrink further "
                        f"without removing whole layers)")
    info["dead_channels"] = gm.meta.get("dead_channels")
    info["fold_norms"] = gm.meta.get("fold_norms")
    gm.meta.pop("masks", None)
    propagate_shapes(gm, job.reference_input)
    return gm, info


def export_integer(job: "CompressJob", student: fx.GraphModule, directory: Path) -> dict[str, Any]:
    """``convert-to-int`` of a copy of the fake-quant student (stage ``int8-export``), saved to ``directory``
    (integer weights on disk); the largest difference to the fake-quant student at the reference input is
    recorded. A failure is a warning (the fake-quant student is still exported)."""
    from .. import serialize
    from ..errors import GCompilerError
    from .evaluation import describe_bytes

    x = job.reference_input
    try:
        int_gm = job.rewrite(copy.deepcopy(student), "convert-to-int", stage="int8-export")
        with torch.no_grad():
            err = float((int_gm(x) - student(x)).abs().max())
        if not job.is_main:  # rank 0 writes the run directory (and reports what it wrote)
            return {"dir": str(directory), "max_abs_diff": err}
        serialize.save(int_gm, directory)
    except (GCompilerError, RuntimeError, ValueError) as exc:
        log.warning(f"gs: the integer export failed ({type(exc).__name__}: {exc}); the fake-quant student is saved")
        return {"error": f"{type(exc).__name__}: {exc}"}
    size = (directory / serialize.WEIGHTS_FILE).stat().st_size
    log.info(f"gs: integer model (convert-to-int) in {directory}: {describe_bytes(size)} of weights on disk, "
             f"max |difference| to the fake-quant student {err:.2e} at the reference input")
    return {"dir": str(directory), "weights_file_bytes": size, "max_abs_diff": err}
