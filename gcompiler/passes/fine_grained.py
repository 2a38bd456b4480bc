"""``prune-fine-grained``: one-shot single-weight magnitude pruning as a pipeline pass.

The gradual version for training is :class:`gcompiler.passes.sparsity.FineGrainedPruner` (AGP schedule,
5 % to the target by half-way); this pass applies the final sparsity at once, e.g. to study how far a
network tolerates unstructured sparsity before fine-tuning. Unstructured zeros do not reduce dense MACs:
the profile (and the speed of dense kernels) is unchanged; only a sparse storage format would shrink it.
"""
from __future__ import annotations

import torch.fx as fx

from ..errors import PassError
from .registry import Contract, parse_list, register_pass
from .sparsity import FineGrainedPruner


@register_pass("prune-fine-grained", contract=Contract.changes_semantics(), preserves=("channel-groups",))
def prune_fine_grained(gm: fx.GraphModule, *, sparsity: float = 0.5, scope: str = "layer",
                       skip: str = "") -> fx.GraphModule:
    """Zero the ``sparsity`` fraction of smallest-magnitude conv / linear weights (changes semantics).

    Options:
        sparsity: fraction of weights to zero, in [0, 1).
        scope: ``layer`` (that fraction in every layer) or ``global`` (one magnitude threshold overall).
        skip: module names separated by ``;`` or ``|`` to leave dense (e.g. the first and last conv).

    Records the measured zero fraction in ``gm.meta["fine_grained"]``.
    """
    if not 0 <= sparsity < 1:
        raise PassError(f"prune-fine-grained{{sparsity}} must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise PassError(f"prune-fine-grained{{scope}} must be 'layer' or 'global', got {scope!r}")
    names = parse_list(skip, "prune-fine-grained{skip}")
    known = {n for n, _ in gm.named_modules()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PassError(f"prune-fine-grained{{skip}}: no module named {', '.join(map(repr, unknown))}")
    # A one-step AGP schedule whose initial and final sparsity coincide prunes to `sparsity` at step 0.
    pruner = FineGrainedPruner(gm, sparsity, 1, initial=sparsity, start=0, end_fraction=1.0, scope=scope, skip=names)
    pruner.step(0)
    gm.meta["fine_grained"] = {"target": sparsity, "scope": scope, "zero_fraction": pruner.zero_fraction()}
    gm.graph.lint()
    gm.recompile()
    return gm
