"""Pieces of ``--method gan-compression`` (:mod:`gcompiler.methods.gan_compression`): the default feature taps,
the sliced 1x1 mapping layers, the once-for-all training recipe, the search split and the candidate scorer.
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError
from ..train import Distill, DistillConfig, Trainer
from ..train.losses import FeatureDistillLoss
from ..train.taps import TappedModel
from .base import CompressJob

__all__ = ["residual_taps", "SlicedFeatureLoss", "init_permuted_mappings", "OnceForAll", "FrozenNormFinetune", "search_split",
           "CandidateScorer"]


# ------------------------------------------------------------------------------------------------
# feature taps and the sliced mapping layers

def residual_taps(gm: fx.GraphModule) -> list[str]:
    """Trunk input and the outputs of blocks n/3, 2n/3 and n of the widest coupled group's residual additions.

    For ``resnet_9blocks`` / ``mobile_resnet_9blocks`` these are GAN Compression's ``model.9`` (the
    ReLU after the second down conv) and the outputs of residual blocks 3, 6 and 9.
    """
    import operator

    from ..analysis import channel_groups

    best: list[fx.Node] = []
    nodes = {n.name: n for n in gm.graph.nodes}
    for g in channel_groups(gm):
        adds = [nodes[m] for m in g.members if m in nodes and nodes[m].op == "call_function"
                and nodes[m].target in (operator.add, torch.add)]
        if len(adds) > len(best):
            best = adds
    if not best:
        raise ConfigError("gan-compression: no residual trunk found to tap; name the distilled nodes with "
                          "--opt feature_taps=student_node=teacher_node,...")
    first = _skip_operand(best[0])
    n = len(best)
    picks = sorted({max(1, round(n / 3)), max(1, round(2 * n / 3)), n})
    taps = ([first.name] if isinstance(first, fx.Node) else []) + [best[i - 1].name for i in picks]
    return list(dict.fromkeys(taps))


def _skip_operand(add: fx.Node) -> fx.Node | None:
    """The operand of a residual ``add`` that the other operand is computed from (the block's input)."""
    a, b = (x for x in add.args[:2])
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
        return a if isinstance(a, fx.Node) else b if isinstance(b, fx.Node) else None
    for skip, branch in ((a, b), (b, a)):
        seen, stack = set(), [branch]
        while stack:
            n = stack.pop()
            if n is skip:
                return skip
            if n.name in seen:
                continue
            seen.add(n.name)
            stack.extend(x for x in n.all_input_nodes)
    return a


def init_permuted_mappings(loss: FeatureDistillLoss, channel_order: dict[str, list[int]]) -> None:
    """Start each square 1x1 mapping as the permutation that undoes the supernet's channel reordering.

    ``FeatureDistillLoss`` starts an equal-width mapping as the identity; when ``make-supernet{order=l1}``
    moved the tapped student channels (student channel ``j`` is the teacher's ``channel_order[tap][j]``),
    the mapping that makes the untrained supernet's loss 0 is that permutation instead.
    """
    with torch.no_grad():
        for (s, _t), conv in zip(loss.pairs, loss.maps.values()):
            order = channel_order.get(s)
            if order is None or conv.weight.shape[0] != conv.weight.shape[1] or len(order) != conv.weight.shape[1]:
                continue
            conv.weight.zero_()
            for j, src in enumerate(order):
                conv.weight[src, j, 0, 0] = 1.0
            conv.bias.zero_()


class SlicedFeatureLoss(FeatureDistillLoss):
    """:class:`FeatureDistillLoss` whose 1x1 mappings read only the student's active channels.

    ``slices[tap]`` is ``None`` (all channels), ``k`` (the first k) or a LongTensor of channel indices;
    the recipe updates it whenever it selects a sub-network.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slices: dict[str, Any] = {}

    def forward(self, student_feats, teacher_feats) -> torch.Tensor:  # noqa: ANN001
        import torch.nn.functional as F

        from ..passes.super_modules import _take

        total = None
        for (s, t), conv in zip(self.pairs, self.maps.values()):
            fs, ft = student_feats[s], teacher_feats[t]
            w = _take(conv.weight, 1, self.slices.get(s))
            mapped = F.conv2d(fs, w, conv.bias)
            term = F.mse_loss(mapped.float(), ft.detach().float())
            total = term if total is None else total + term
        assert total is not None
        return total


# ------------------------------------------------------------------------------------------------
# the once-for-all recipe

class OnceForAll(Distill):
    """Distill + one sampled sub-network per step (or the sandwich) + sliced feature distillation."""

    name = "gan-compression"

    def __init__(self, config: DistillConfig, *, space, taps: list[tuple[str, str]], feature_weight: float,
                 sandwich: bool, seed: int, freeze_norm_stats: bool) -> None:
        super().__init__(config)
        self.space = space
        self.taps = taps
        self.fweight = feature_weight
        self.sandwich = sandwich
        self.seed = seed
        self.freeze_norm_stats = freeze_norm_stats
        self._bns: list[nn.Module] = []
        self.last_config: str = ""

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        student = trainer.module("student")
        if self.freeze_norm_stats:
            self._bns = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.taps and self.fweight > 0:
            s_run = TappedModel(student, [s for s, _ in self.taps])
            t_run = TappedModel(trainer.module("teacher"), [t for _, t in self.taps])
            x = trainer.example_input()
            loss = SlicedFeatureLoss(self.taps, s_run.channels(x), t_run.channels(x))
            init_permuted_mappings(loss, student.meta.get("supernet", {}).get("channel_order", {}))
            self.feature_loss = trainer.register_module("feature_maps", loss, trainable=True)
            self.cfg.feature_weight = self.fweight
            trainer.set_runner("student", s_run)
            trainer.set_runner("teacher", t_run)

    def sample(self, step: int) -> list[tuple]:
        rng = random.Random(self.seed * 1_000_003 + step)
        rand = tuple(rng.choice(c) for c in self.space.choices)
        if self.sandwich:
            return [self.space.largest(), rand, self.space.smallest()]
        return [rand]

    def select(self, student: fx.GraphModule, cand: tuple) -> None:
        from ..supernet import set_config

        widths = set_config(student, self.space.to_config(cand))
        if self.feature_loss is not None:
            kept = student.meta["supernet"]["plan"].kept(widths)
            self.feature_loss.slices = {s: kept.get(s) for s, _ in self.taps}
        self.last_config = self.space.label(cand)

    def generator_loss(self, ctx) -> dict[str, torch.Tensor]:  # noqa: ANN001
        student = ctx.trainer.module("student")
        for m in self._bns:
            m.eval()
        total: dict[str, torch.Tensor] = {}
        for cand in self.sample(ctx.step):
            self.select(student, cand)
            for k, v in super().generator_loss(ctx).items():
                total[k] = total[k] + v if k in total else v
        return total

    def describe(self) -> str:
        taps = f"; {self.fweight:g} x feature MSE at {self.taps}" if self.taps and self.fweight > 0 else ""
        rule = "sandwich (largest + random + smallest)" if self.sandwich else "one uniform random sub-network"
        return f"{super().describe()}{taps}; {rule} per step from {self.space.size} configurations"


class FrozenNormFinetune(Distill):
    """Distill with BatchNorm kept in eval mode (the fine-tuning of the extracted sub-network)."""

    name = "gan-compression-finetune"

    def generator_loss(self, ctx) -> dict[str, torch.Tensor]:  # noqa: ANN001
        for m in ctx.trainer.module("student").modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return super().generator_loss(ctx)


# ------------------------------------------------------------------------------------------------
# search split and scoring

def search_split(job: CompressJob, n: int, dataset=None) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed crops of ``dataset`` (default: the job's training data) drawn with their own seed (batches of
    up to 8), the same in every session."""
    from ..train import checkpoint as ckpt

    state = ckpt.capture_rng_state()
    items: list[dict[str, torch.Tensor]] = []
    try:
        torch.manual_seed(job.settings.seed + 7919)
        ds = job.dataset if dataset is None else dataset
        loader = job.make_loader(seed_offset=7919, batch_size=min(8, n, len(ds)), shard=False,  # scored on rank 0
                                 dataset=ds)
        while sum(b["input"].shape[0] for b in items) < n:  # several epochs when the split has few images
            for batch in loader:
                items.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
                if sum(b["input"].shape[0] for b in items) >= n:
                    break
    finally:
        ckpt.restore_rng_state(state)
    return items


class CandidateScorer:
    """Scores the active sub-network of a supernet on the search split (higher is better)."""

    def __init__(self, supernet: fx.GraphModule, space, batches: list[dict[str, torch.Tensor]], references: list,
                 *, metric: str, value_range: tuple[float, float], fid_features: nn.Module | None = None) -> None:
        self.supernet, self.space, self.batches, self.references = supernet, space, batches, references
        self.metric, self.value_range, self.fid_features = metric, value_range, fid_features

    @torch.no_grad()
    def __call__(self, cand: tuple) -> float:
        from ..supernet import set_config

        set_config(self.supernet, self.space.to_config(cand))
        self.supernet.eval()
        return self.score_model(self.supernet)

    @torch.no_grad()
    def score_model(self, model: nn.Module) -> float:
        """The score of any model on the split (the teacher, for the plot)."""
        from ..metrics import psnr, ssim

        lo, hi = self.value_range
        outs = [model(b["input"]).float().clamp(lo, hi) for b in self.batches]
        if self.metric == "fid":
            from ..search.fid import fid_score

            norm = lambda t: (t - lo) / (hi - lo)  # noqa: E731
            return -fid_score([norm(o) for o in outs], [norm(r) for r in self.references], self.fid_features)
        fn = psnr if self.metric == "psnr" else ssim
        vals = [fn(o, r, data_range=hi - lo) * o.shape[0] for o, r in zip(outs, self.references)]
        return float(sum(vals) / sum(o.shape[0] for o in outs))
