"""Pass ``convert-to-int``: fake-quant graph -> integer graph (the reference executor, format in ``int_ops``)."""
from __future__ import annotations

import logging

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..fx.utils import replace_module, unique_name
from ..passes.registry import Contract, register_pass
from .int_ops import IntConv2d, IntConvTranspose2d, QuantizeActivation
from .qmodules import QConv2d, QConvTranspose2d
from .quantizers import quantize_weight_int

log = logging.getLogger("gcompiler.quant")

_PAD_MODULES = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.ZeroPad2d: "zeros",
                nn.ConstantPad2d: "zeros"}


def _pad_of(gm: fx.GraphModule, node: fx.Node) -> tuple[tuple[int, int, int, int], str] | None:
    """``((left, right, top, bottom), mode)`` when ``node`` is a 2-d pad that a conv can absorb, else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        mode = _PAD_MODULES.get(type(mod))
        if mode is None or (isinstance(mod, nn.ConstantPad2d) and mod.value != 0):
            return None
        pad = tuple(int(p) for p in mod.padding)
        return (pad, mode) if len(pad) == 4 else None  # type: ignore[return-value]
    if node.op == "call_function" and node.target is F.pad:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        if not isinstance(pad, (tuple, list)) or len(pad) != 4 or not all(isinstance(p, int) and p >= 0 for p in pad):
            return None
        if mode == "constant" and value in (None, 0, 0.0):
            return tuple(pad), "zeros"  # type: ignore[return-value]
        if mode in ("reflect", "replicate"):
            return tuple(pad), mode  # type: ignore[return-value]
    return None


def _conv_padding(conv: nn.Conv2d) -> tuple[tuple[int, int, int, int], str]:
    # _reversed_padding_repeated_twice is (left, right, top, bottom) for 2-d convs, 'same' resolved.
    pad = tuple(int(p) for p in conv._reversed_padding_repeated_twice)
    mode = {"zeros": "zeros", "reflect": "reflect", "replicate": "replicate"}.get(conv.padding_mode)
    if mode is None:
        raise ValueError(f"padding_mode {conv.padding_mode!r} has no integer equivalent")
    return pad, mode  # type: ignore[return-value]


@register_pass("convert-to-int", contract=Contract.approximate(0.1))
def convert_to_int(gm: fx.GraphModule, *, absorb_padding: bool = True) -> fx.GraphModule:
    """Replace fake-quant convs by integer modules: ``QuantizeActivation`` -> ``IntConv2d`` / ``IntConvTranspose2d``.

    For each ``QConv2d`` / ``QConvTranspose2d`` with quantized weights: the weight becomes integers (int8, int16
    above 8 bits, packed int4 at <= 4 bits) with per-output-channel scales computed exactly as the fake quantizer
    does; a quantized input becomes a ``QuantizeActivation`` node (shared by convs that quantize the same value
    identically) feeding the integer conv; an input left in float makes a weight-only layer. With
    ``absorb_padding`` a ``ReflectionPad2d`` / ``ReplicationPad2d`` / ``ZeroPad2d`` (or ``F.pad``) read only by
    the conv moves into the integer conv's ``padding`` / ``padding_mode`` and the quantization moves before it
    (padding commutes with quantization). Fake-quant convs with float weights stay as they are (logged).
    The module format is specified in :mod:`gcompiler.quant.int_ops`.

    Contract: approximate. The integers are bit-identical to the fake quantizer's for equal inputs and the
    accumulation is exact, so each integer conv agrees with its fake-quant conv up to float32 rounding
    (:func:`layerwise_errors` measures this; ~1e-6 on the zoo and on generated graphs). End to end, a float32
    rounding difference can move one value across a quantization boundary (one step), and untrained narrow
    nets with InstanceNorm amplify such a step (up to ~3e-2 x max|y| measured on 8-channel zoo nets; ~1e-6 when
    no value crosses). The registered tolerance, 0.1 x max|y|, covers that and still catches a wrong scale or
    layout, which costs O(1).
    """
    quant_nodes: dict[tuple, fx.Node] = {}
    kept: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if not isinstance(mod, (QConv2d, QConvTranspose2d)):
            continue
        if mod.weight_quant is None:
            kept.append(node.name)
            continue
        transposed = isinstance(mod, QConvTranspose2d)
        wq = mod.weight_quant
        w = mod.weight.detach()
        scale = wq.scale(w)
        w_int = quantize_weight_int(w, scale, wq.bits, transposed=transposed, groups=mod.groups)
        aq = mod.input_quant
        src = node.args[0]
        if transposed:
            new: nn.Module = IntConvTranspose2d(
                mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.output_padding,
                mod.groups, mod.bias is not None, mod.dilation, weight_bits=wq.bits,
                input_quantized=aq is not None, input_zero_point=0)
        else:
            pad, mode = _conv_padding(mod)
            if aq is not None and absorb_padding and isinstance(src, fx.Node) and len(src.users) == 1:
                outer = _pad_of(gm, src)
                if outer is not None:
                    opad, omode = outer
                    if not any(pad):
                        pad, mode, src = opad, omode, src.args[0]
                    elif omode == "zeros" and mode == "zeros":
                        pad = tuple(a + b for a, b in zip(pad, opad))  # type: ignore[assignment]
                        src = src.args[0]
            new = IntConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, pad, mod.dilation,
                            mod.groups, mod.bias is not None, mode, weight_bits=wq.bits,
                            input_quantized=aq is not None, input_zero_point=0)
        input_scale = aq.scale() if aq is not None else 1.0
        new.set_quantized(w_int, scale, input_scale, mod.bias)
        new.train(mod.training)
        new.to(w.device)
        old_input = node.args[0]
        if aq is not None:
            s = float(aq.scale())
            key = (src, s, aq.zero_point, aq.qmin, aq.qmax)
            qnode = quant_nodes.get(key)
            if qnode is None:
                qmod = QuantizeActivation(s, aq.zero_point, aq.qmin, aq.qmax).to(w.device)
                qname = unique_name(gm, f"{node.name}_input_quant")
                gm.add_submodule(qname, qmod)
                with gm.graph.inserting_before(node):
                    qnode = gm.graph.call_module(qname, (src,))
                quant_nodes[key] = qnode
            node.args = (qnode,) + tuple(node.args[1:])
        elif src is not old_input:
            node.args = (src,) + tuple(node.args[1:])
        replace_module(gm, str(node.target), new)
        if isinstance(old_input, fx.Node) and old_input is not node.args[0] and not old_input.users:
            pad_target = old_input.target if old_input.op == "call_module" else None
            gm.graph.erase_node(old_input)
            if pad_target is not None and not any(n.op == "call_module" and n.target == pad_target
                                                  for n in gm.graph.nodes):
                gm.delete_submodule(str(pad_target))
    if kept:
        log.warning("convert-to-int: fake-quant conv(s) with float weights kept as they are: %s", ", ".join(kept))
    gm.meta["convert_to_int"] = {"kept_fake_quant": kept}
    gm.graph.lint()
    gm.recompile()
    return gm


def layerwise_errors(fake_gm: fx.GraphModule, int_gm: fx.GraphModule, *inputs: torch.Tensor) -> dict[str, float]:
    """Teacher-forced agreement of every integer conv with its fake-quant conv.

    Runs ``fake_gm`` (the graph before ``convert-to-int``) on ``inputs`` and records every node's value; then
    feeds each integer conv of ``int_gm`` (and its ``QuantizeActivation``) the *fake-quant graph's* value of its
    source node and compares with the fake-quant conv's output. Returns ``{conv node name: max|int - fake| /
    max|fake|}``. Unlike end-to-end comparisons, this isolates each layer from the amplification of a single
    rounding difference by later layers; values are float32 rounding (~1e-6) when the conversion is right.
    """
    values: dict[str, torch.Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        _Recorder(fake_gm).run(*inputs)
        errors: dict[str, float] = {}
        for node in int_gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = int_gm.get_submodule(str(node.target))
            if not isinstance(mod, (IntConv2d, IntConvTranspose2d)) or node.name not in values:
                continue
            src = node.args[0]
            if mod.input_quantized:
                qmod = int_gm.get_submodule(str(src.target))
                x = qmod(values[src.args[0].name])
            else:
                x = values[src.name]
            ref = values[node.name]
            errors[node.name] = float((mod(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    return errors
