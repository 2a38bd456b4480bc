"""Sparsity training helpers: the proximal L1 step of GAN Slimming, its subgradient twin, the AGP schedule
for fine-grained pruning, and what the current masks would cost once their dead channels are removed.

* :func:`soft_threshold_` / :func:`proximal_l1`: ``γ ← sign(γ)·max(|γ| − ρ·η_t, 0)`` applied after the
  optimizer step with ``η_t`` the learning rate that step used (so a cosine γ schedule is respected). This is
  the proximal operator of ``ρ‖γ‖₁``: entries reach exactly 0 and stay there unless the loss pulls them out.
* :func:`subgradient_l1`: adds ``ρ·sign(γ)`` to the gradient before the step (the plain-SGD way); entries
  oscillate around 0 instead of reaching it — kept for comparison, as in the GS paper's ablation.
* :func:`agp_sparsity` and :class:`FineGrainedPruner`: single-weight magnitude pruning on the gradual
  schedule of Zhu & Gupta (the self-supervised compression method's schedule: from 5 % to the target by
  half-way). Note: unstructured zeros do not reduce dense MACs or latency; only a sparse kernel would.
* :func:`sparsity_report`: per-group alive/total mask units. What the slim network would cost is
  :func:`gcompiler.estimate` (exact: the price of the network ``eliminate-dead-channels`` builds).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError

PostStep = Callable[[Sequence[torch.Tensor], float], None]


def soft_threshold_(params: Iterable[torch.Tensor], threshold: float) -> None:
    """In place: ``p ← sign(p)·max(|p| − threshold, 0)`` for every tensor."""
    with torch.no_grad():
        for p in params:
            p.copy_(p.sign() * (p.abs() - threshold).clamp_min(0.0))


def _check_rho(rho: float) -> float:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
        raise ConfigError(f"rho must be a finite number >= 0, got {rho!r}")
    return float(rho)


def proximal_l1(rho: float) -> PostStep:
    """A post-step hook ``hook(params, lr)`` applying the proximal step of ``rho·‖p‖₁`` with step ``lr``.

    Plugs into :class:`gcompiler.train.ParamGroup` (``post_step=proximal_l1(0.01)``) or call it yourself
    after ``optimizer.step()`` with the learning rate that step used.
    """
    rho = _check_rho(rho)

    def hook(params: Sequence[torch.Tensor], lr: float) -> None:
        soft_threshold_(params, rho * float(lr))

    return hook


def subgradient_l1(params: Iterable[torch.Tensor], rho: float) -> None:
    """Add ``rho·sign(p)`` to every ``p.grad`` (call between ``backward()`` and ``optimizer.step()``)."""
    rho = _check_rho(rho)
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(p.sign(), alpha=rho)


def agp_sparsity(step: int, total_steps: int, final: float, *, initial: float = 0.05, start: int = 0,
                 end_fraction: float = 0.5) -> float:
    """Sparsity at ``step`` on the AGP schedule: ``s_f + (s_i − s_f)·(1 − (t − t0)/n)³``.

    Rises from ``initial`` at ``start`` to ``final`` at ``end = start + end_fraction·(total_steps − start)``
    and stays there (the cubic makes early steps prune fast while the network still has redundancy).
    """
    if not 0 <= final < 1 or not 0 <= initial <= final:
        raise ConfigError(f"AGP needs 0 <= initial ({initial}) <= final ({final}) < 1")
    if total_steps <= start or not 0 < end_fraction <= 1:
        raise ConfigError(f"AGP needs total_steps > start and 0 < end_fraction <= 1 (got {total_steps}, {start}, "
                          f"{end_fraction})")
    if step < start:
        return 0.0
    n = max(1, round(end_fraction * (total_steps - start)))
    frac = min(1.0, (step - start) / n)
    return final + (initial - final) * (1.0 - frac) ** 3


def _prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))
            and isinstance(getattr(m, "weight", None), nn.Parameter)}


class FineGrainedPruner:
    """Magnitude pruning of single weights on the AGP schedule, for a trainer to call each step.

    ``pruner.step(t)`` raises the sparsity to :func:`agp_sparsity` ``(t)`` by zeroing the smallest-magnitude
    weights of every conv / linear layer (``scope="layer"``: the same fraction in each; ``"global"``: one
    threshold over all) and re-applies the masks so pruned weights stay 0 after the optimizer step. Masks
    never revive a weight. Contract: after ``step``, each layer's zero fraction is at least the scheduled
    sparsity (ties at the threshold may add a few). Dense MACs are unchanged (see the module docstring).
    """

    def __init__(self, model: nn.Module, final_sparsity: float, total_steps: int, *, initial: float = 0.05,
                 start: int = 0, end_fraction: float = 0.5, scope: str = "layer",
                 skip: Iterable[str] = ()) -> None:
        if scope not in ("layer", "global"):
            raise ConfigError(f"FineGrainedPruner scope must be 'layer' or 'global', got {scope!r}")
        agp_sparsity(start, total_steps, final_sparsity, initial=initial, start=start, end_fraction=end_fraction)
        skip = set(skip)
        self.weights = {k: w for k, w in _prunable_weights(model).items() if k not in skip}
        if not self.weights:
            raise ConfigError("FineGrainedPruner: the model has no conv or linear weights to prune")
        self.final, self.total, self.initial, self.start, self.end_fraction = (final_sparsity, total_steps, initial,
                                                                               start, end_fraction)
        self.scope = scope
        self.masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in self.weights.items()}
        self.sparsity = 0.0

    def target(self, step: int) -> float:
        return agp_sparsity(step, self.total, self.final, initial=self.initial, start=self.start,
                            end_fraction=self.end_fraction)

    @torch.no_grad()
    def step(self, step: int) -> float:
        """Update masks to the scheduled sparsity and apply them; returns the sparsity now in force."""
        s = self.target(step)
        if s > self.sparsity:
            if self.scope == "layer":
                for k, w in self.weights.items():
                    self.masks[k] &= self._keep(w.abs(), s)
            else:
                flat = torch.cat([w.detach().abs().flatten() for w in self.weights.values()])
                thr = self._threshold(flat, s)
                for k, w in self.weights.items():
                    self.masks[k] &= w.abs() > thr
            self.sparsity = s
        self.apply()
        return self.sparsity

    @staticmethod
    def _threshold(values: torch.Tensor, s: float) -> float:
        k = math.ceil(s * values.numel() - 1e-9)
        return float(values.kthvalue(k).values) if k > 0 else -1.0

    def _keep(self, mag: torch.Tensor, s: float) -> torch.Tensor:
        return mag > self._threshold(mag.flatten(), s)

    @torch.no_grad()
    def apply(self) -> None:
        for k, w in self.weights.items():
            w.mul_(self.masks[k])

    def zero_fraction(self) -> float:
        total = sum(w.numel() for w in self.weights.values())
        return sum(int((w == 0).sum()) for w in self.weights.values()) / total

    def state_dict(self) -> dict:
        return {"sparsity": self.sparsity, "masks": {k: m.clone() for k, m in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.sparsity = float(state["sparsity"])
        for k, m in state["masks"].items():
            self.masks[k] = m.to(torch.bool)


@dataclasses.dataclass
class GroupSparsity:
    group: str
    alive: int
    total: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.alive / self.total if self.total else 0.0


def sparsity_report(gm: fx.GraphModule) -> list[GroupSparsity]:
    """Alive (non-zero) and total mask units of every masked group."""
    from .masks import masks

    return [GroupSparsity(name, int((m.detach() != 0).sum()), m.numel()) for name, m in masks(gm).items()]
