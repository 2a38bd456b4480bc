"""Pass ``fold-norms``: fold per-channel affine maps that follow a convolution into its weight and bias.

Folded (exactly, in eval mode):

* ``BatchNorm2d`` with running statistics: ``y = (conv(x) - mu) * g / sqrt(var + eps) + b`` becomes a conv with
  ``W'[c] = W[c] * a[c]``, ``b'[c] = (b[c] - mu[c]) * a[c] + beta[c]``, ``a = g / sqrt(var + eps)``;
* channel masks: any module exposing ``channel_scale() -> Tensor`` (length C) whose forward is
  ``x * channel_scale()`` per channel (dim 1), e.g. :class:`gcompiler.passes.masks.ChannelMask`:
  ``W'[c] = W[c] * m[c]``, ``b'[c] = b[c] * m[c]``.

The map must directly follow a ``Conv2d`` / ``ConvTranspose2d`` (or their fake-quant versions) whose output
has no other reader. For transposed convs the output channel is dim 1 of the weight (per group). Chains fold
one after the other (conv -> mask -> BN).

Not folded, with the reason logged (``logging`` channel ``gcompiler.quant``) and recorded in
``gm.meta["fold_norms"]["skipped"]``:

* ``InstanceNorm`` (and GroupNorm / LayerNorm): their statistics are computed per sample at run time, so no
  constant per-channel map exists to fold; the CycleGAN generators keep them (integer back ends fuse them into
  the conv epilogue instead, see ``gcompiler.kernels``);
* a BatchNorm without running statistics (``track_running_stats=False`` normalizes with batch statistics);
* a map whose input is not a conv, or a conv whose output is also read elsewhere (a residual branch);
* a fake-quant conv with *per-tensor* weight quantization: ``q(W * a)`` differs from ``q(W) * a`` when the
  channel factors ``a`` differ, so folding would change the function (per-channel quantization is
  scale-equivariant and folds). Fold before ``insert-fake-quant``.

Folding changes training-mode behaviour (BatchNorm would no longer update its statistics): the result is for
inference and for quantization-aware fine-tuning with frozen statistics.
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch import nn

from ..fx.utils import not_plain_reason
from ..passes.registry import Contract, register_pass
from .qmodules import QUANT_CONV_TYPES
from .quantizers import grouped_weight, out_channel_view

log = logging.getLogger("gcompiler.quant")

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_UNFOLDABLE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def fold_channel_affine(conv: nn.Module, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """In place: make ``conv`` compute ``conv(x) * scale[c] + shift[c]`` (per output channel ``c``)."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    w = conv.weight
    with torch.no_grad():
        scale = scale.detach().to(w.dtype)
        gw = grouped_weight(w.data, transposed=transposed, groups=conv.groups)
        new_w = (gw * out_channel_view(scale, w.shape, transposed=transposed, groups=conv.groups)).reshape(w.shape)
        w.copy_(new_w)
        bias = conv.bias.detach() * scale if conv.bias is not None else torch.zeros_like(scale)
        if shift is not None:
            bias = bias + shift.detach().to(w.dtype)
        if conv.bias is not None:
            conv.bias.copy_(bias)
        elif shift is not None:
            conv.bias = nn.Parameter(bias)


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel of the eval-mode ``bn`` (float64): ``bn(y) == y * scale + shift``."""
    inv = torch.rsqrt(bn.running_var.double() + bn.eps)
    g = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
    b = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
    a = g * inv
    return a, b - bn.running_mean.double() * a


def _skip_reason(gm: fx.GraphModule, node: fx.Node, mod: nn.Module) -> str | None:
    src = node.args[0] if node.args else None
    if not isinstance(src, fx.Node) or src.op != "call_module" or \
            not isinstance(gm.get_submodule(str(src.target)), _CONVS):
        return "its input is not a convolution"
    conv = gm.get_submodule(str(src.target))
    if not isinstance(conv, QUANT_CONV_TYPES) and not_plain_reason(conv) is not None:
        return f"conv '{src.name}' ({type(conv).__name__}) is not a plain convolution: {not_plain_reason(conv)}"
    if len(src.users) != 1:
        return f"the output of conv '{src.name}' is also read by {sorted(u.name for u in src.users if u is not node)}"
    if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target) > 1:
        return f"conv module '{src.target}' is called from several nodes"
    if isinstance(conv, QUANT_CONV_TYPES) and conv.weight_quant is not None and not conv.weight_quant.per_channel:
        return (f"conv '{src.name}' has per-tensor weight fake-quant; folding would change its quantization "
                "(run fold-norms before insert-fake-quant, or quantize per channel)")
    return None


@register_pass("fold-norms", contract=Contract.exact())
def fold_norms(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold eval-mode BatchNorm and channel masks into the preceding conv / transposed conv (exact).

    InstanceNorm cannot be folded (per-sample statistics) and is left in place with a logged reason; so are
    maps not directly after a conv. Details and the list of cases in :mod:`gcompiler.quant.fold`; the outcome
    is recorded in ``gm.meta["fold_norms"] = {"folded": [...], "skipped": [[node, reason], ...]}``.
    Contract: exact (eval mode).
    """
    folded: list[str] = []
    skipped: list[list[str]] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        is_mask = callable(getattr(mod, "channel_scale", None))
        if isinstance(mod, _UNFOLDABLE_NORMS):
            skipped.append([node.name, f"{type(mod).__name__} normalizes with per-sample statistics"])
            continue
        if not (is_bn or is_mask):
            continue
        if is_bn and (mod.running_mean is None or mod.running_var is None):
            skipped.append([node.name, "BatchNorm without running statistics (track_running_stats=False) "
                                       "normalizes with batch statistics"])
            continue
        if is_bn and not isinstance(mod, nn.BatchNorm2d):
            skipped.append([node.name, f"{type(mod).__name__} is not 2-d"])
            continue
        reason = _skip_reason(gm, node, mod)
        if reason is not None:
            skipped.append([node.name, reason])
            continue
        src = node.args[0]
        conv = gm.get_submodule(str(src.target))
        if is_bn:
            scale, shift = bn_affine(mod)
        else:
            scale, shift = mod.channel_scale().detach().double(), None
        if scale.dim() != 1 or scale.numel() != conv.out_channels:
            skipped.append([node.name, f"per-channel factor of length {scale.numel()} does not match the "
                                       f"{conv.out_channels} output channels of '{src.name}'"])
            continue
        fold_channel_affine(conv, scale, shift)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        if not any(n.op == "call_module" and n.target == node.target for n in gm.graph.nodes):
            gm.delete_submodule(str(node.target))
        folded.append(f"{node.name} -> {src.name}")
    if skipped:
        by_reason: dict[str, list[str]] = {}
        for n, r in skipped:
            by_reason.setdefault(r, []).append(n)
        log.warning("fold-norms: left %d node(s) unfolded: %s", len(skipped), "; ".join(
            f"{', '.join(ns[:3])}{f' and {len(ns) - 3} more' if len(ns) > 3 else ''}: {r}"
            for r, ns in by_reason.items()))
    gm.meta["fold_norms"] = {"folded": folded, "skipped": skipped}
    gm.graph.lint()
    gm.recompile()
    return gm
