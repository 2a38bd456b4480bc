"""ONNX export of float and integer graphs (QDQ format) and running them with ONNX Runtime.

Needs the optional extra ``gcompiler[onnx]`` (``onnx``, ``onnxruntime``); without it every entry point raises
:class:`~gcompiler.errors.ConfigError` saying so.

The exporter walks the FX graph node by node (no tracing through ``torch.onnx``), so what it writes is exactly
the graph gcompiler built, with static shapes taken from the example inputs:

* float convs, norms, activations, pads, resizes, adds / muls / concats map to the standard ONNX ops
  (opset 17 by default: ``Pad`` with ``reflect`` / ``edge`` modes, ``InstanceNormalization``,
  ``ConvTranspose``, ``Tanh``, ...);
* ``QuantizeActivation`` becomes ``QuantizeLinear`` to uint8 (preceded by a ``Clip`` when its integer range is
  narrower than the type, e.g. 4-bit activations); signed 8-bit codes are stored as uint8 with the zero point
  moved by 128 (same real values; ORT's x86 int8 convolutions take uint8 activations);
* ``IntConv2d`` / ``IntConvTranspose2d`` become ``[Pad on the integers] -> DequantizeLinear -> Conv`` with the int8
  weights stored as int8 initializers and dequantized by a per-channel ``DequantizeLinear`` (axis 0, axis 1 for
  transposed convs), the float bias added by the conv. This is the QDQ form of the reference executor
  (:mod:`gcompiler.quant.int_ops`): ``export_onnx(..., requantize_outputs=False)`` (the default) matches it within
  float rounding, i.e. within one quantization step of any later quantizer.

ONNX Runtime only runs a QDQ conv with integer kernels (``QLinearConv``, VNNI on x86) when the conv *output*
is quantized too (``DQ -> Conv -> Q``). ``requantize_outputs=True`` therefore adds, after every conv whose input
is quantized, a ``QuantizeLinear -> DequantizeLinear`` pair to uint8 with a per-tensor scale and zero point
calibrated from the conv's output range on ``calibration`` inputs (the reference executor's values; min/max,
or ``output_percentile``), and stores the bias as int32 at scale ``s_x * s_w[c]`` (the QDQ convention).
That is one more rounding per conv than the reference (8-bit conv outputs before the float InstanceNorm), so
outputs drift from the reference by a few output quantization steps; it is what makes ORT's int8 path fast.
In that mode transposed convs are rewritten exactly as a stride-1 conv + ``DepthToSpace`` (ORT's CPU provider
has no int8 transposed conv), and layers that stay float (weight-only, or fewer than ``min_int8_channels``
output channels, where int8 kernels lose: an RGB head) get their exactly dequantized weights as constants so
ORT's float layout optimizations apply. Integer layers above 8 bits cannot be exported (QDQ here is 8-bit).
"""
from __future__ import annotations

import operator
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, GCompilerError
from ..fx.utils import input_specs, node_shape, not_plain_reason
from .int_ops import IntConv2d, IntConvTranspose2d, QuantizeActivation, phase_weight, subpixel_decomposition
from .qmodules import QConv2d, QConvTranspose2d
from .quantizers import ActFakeQuant

DEFAULT_OPSET = 17


from ..errors import ExportError  # noqa: E402  (importable from here as before)


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError("ONNX export needs the optional dependencies onnx and onnxruntime: "
                          "pip install 'gcompiler[onnx]'") from exc
    return onnx, onnxruntime


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


_NP_TO_ONNX = {np.dtype("float32"): 1, np.dtype("uint8"): 2, np.dtype("int8"): 3, np.dtype("int32"): 6,
               np.dtype("int64"): 7, np.dtype("float64"): 11}


class _Emitter:
    def __init__(self, gm: fx.GraphModule, opset: int, requantize: bool,
                 out_ranges: dict[str, tuple[float, float]], debug_outputs: bool = False,
                 min_int8_channels: int = 16) -> None:
        self.onnx, _ = _require()
        self.h = self.onnx.helper
        self.gm = gm
        self.opset = opset
        self.requantize = requantize
        self.out_ranges = out_ranges
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: set[str] = set()
        self.values: dict[fx.Node, Any] = {}
        self.debug_outputs = debug_outputs
        self.min_int8_channels = min_int8_channels

    # ---------------------------------------------------------------- helpers
    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, value: np.ndarray | float | int | Sequence[int], dtype: Any = None) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=self.fresh(f"{base}/{op_type}"),
                                           **attrs))
        return out

    def arg(self, a: Any, like: fx.Node | None = None) -> str:
        if isinstance(a, fx.Node):
            v = self.values.get(a)
            if not isinstance(v, str):
                raise ExportError(f"node '{a.name}' does not produce a tensor the exporter can use")
            return v
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return self.const("scalar", np.float32(a))
        raise ExportError(f"unsupported argument {a!r}")

    def mod(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    # ---------------------------------------------------------------- quantization pieces
    @staticmethod
    def code_shift(qmin: int, qmax: int, base: str) -> int:
        """Offset added to integer codes in ONNX: 0 for uint8 ranges, 128 for int8 ranges.

        Signed 8-bit codes are written as uint8 with the zero point moved by 128 (the same real values): ONNX
        Runtime's x86 int8 convolution takes uint8 activations, and its int8 -> uint8 rewrite only applies where
        QuantizeLinear feeds DequantizeLinear directly, not across the Pad of a reflection-padded conv.
        """
        if qmin >= 0 and qmax <= 255:
            return 0
        if qmin >= -128 and qmax <= 127:
            return 128
        raise ExportError(f"{base}: activations of more than 8 bits (integer range [{qmin}, {qmax}]) cannot be "
                          "exported as ONNX QDQ; use at most 8 activation bits")

    def quantize(self, x: str, scale: float, zp: int, qmin: int, qmax: int, base: str) -> str:
        shift = self.code_shift(qmin, qmax, base)
        lo, hi = -shift, 255 - shift
        if qmin > lo or qmax < hi:
            x = self.op("Clip", [x, self.const(f"{base}.clip_lo", np.float32((qmin - zp) * scale)),
                                 self.const(f"{base}.clip_hi", np.float32((qmax - zp) * scale))], f"{base}.clipped")
        return self.op("QuantizeLinear", [x, self.const(f"{base}.scale", np.float32(scale)),
                                          self.const(f"{base}.zero_point", np.array(zp + shift, dtype=np.uint8))],
                       base)

    def dequant_act(self, q: str, scale: float, zp: int, qmin: int, qmax: int, base: str) -> str:
        shift = self.code_shift(qmin, qmax, base)
        return self.op("DequantizeLinear", [q, self.const(f"{base}.scale", np.float32(scale)),
                                            self.const(f"{base}.zero_point", np.array(zp + shift, dtype=np.uint8))],
                       base)

    def int_weight(self, m: IntConv2d | IntConvTranspose2d, base: str) -> str:
        if m.weight_bits > 8:
            raise ExportError(f"{base}: {m.weight_bits}-bit weights cannot be exported as ONNX QDQ (int8 at most)")
        if m.transposed and m.groups > 1:
            # DequantizeLinear's axis=1 cannot hold per-group output channels: store the float weight.
            return self.const(f"{base}.weight", _np(m.dequantized_weight()))
        return self.weight_dq(m.int_weight(), m.weight_scale, 1 if m.transposed else 0, base)

    def pad(self, x: str, pad: Sequence[int], mode: str, base: str, value: Any = None) -> str:
        left, right, top, bottom = (int(p) for p in pad)
        pads = self.const(f"{base}.pads", np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64))
        onnx_mode = {"zeros": "constant", "constant": "constant", "reflect": "reflect", "replicate": "edge"}[mode]
        inputs = [x, pads]
        if value is not None and onnx_mode == "constant":
            inputs.append(value)
        return self.op("Pad", inputs, f"{base}.padded", mode=onnx_mode)

    # ---------------------------------------------------------------- modules
    def int_conv(self, node: fx.Node, m: IntConv2d | IntConvTranspose2d) -> str:
        base = node.name
        x = self.arg(node.args[0])
        attrs: dict[str, Any] = {"strides": list(m.stride), "dilations": list(m.dilation), "group": m.groups}
        xq_info = None
        if m.input_quantized:
            src = node.args[0]
            q = self.gm.get_submodule(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
            if not isinstance(q, QuantizeActivation):
                raise ExportError(f"{base}: the input of an integer conv must come from a QuantizeActivation node")
            xq_info = (float(q.scale), q.zero_point, q.qmin, q.qmax)
        requant = (self.requantize and m.input_quantized and node.name in self.out_ranges
                   and m.out_channels >= self.min_int8_channels)
        w_int = m.int_weight()
        w_scale, bias = m.weight_scale, m.bias
        shuffle = None
        if m.transposed and requant and m.groups == 1 and m.dilation == (1, 1) and m.weight_bits <= 8:
            in_shape = node_shape(node.args[0])
            sub = subpixel_decomposition(w_int.to(torch.int32), m.stride, m.padding, m.output_padding,
                                         tuple(in_shape[2:])) if in_shape is not None else None
            if sub is not None:  # QLinearConv has no transposed variant: stride-1 conv + DepthToSpace
                phases = sub["stride"][0] * sub["stride"][1]
                w_int = sub["weight"].to(torch.int8)
                w_scale = m.weight_scale.repeat_interleave(phases)
                bias = m.bias.repeat_interleave(phases) if m.bias is not None else None
                left, right, top, bottom = sub["pads"]
                attrs = {"strides": [1, 1], "dilations": [1, 1], "group": 1, "pads": [top, left, bottom, right]}
                shuffle = sub
        if shuffle is None and not m.transposed:
            pad = m.padding
            if any(pad):
                symmetric = pad[0] == pad[1] and pad[2] == pad[3]
                zp_ok = not m.input_quantized or m.input_zero_point == 0
                if m.padding_mode == "zeros" and symmetric and zp_ok:
                    attrs["pads"] = [pad[2], pad[0], pad[3], pad[1]]
                else:
                    value = None
                    if m.padding_mode == "zeros" and m.input_quantized:
                        shift = self.code_shift(xq_info[2], xq_info[3], base)  # type: ignore[index]
                        value = self.const(f"{base}.pad_value",
                                           np.array(m.input_zero_point + shift, dtype=np.uint8))
                    x = self.pad(x, pad, m.padding_mode, base, value)
        elif shuffle is None:
            attrs["pads"] = [m.padding[0], m.padding[1], m.padding[0], m.padding[1]]
            attrs["output_padding"] = list(m.output_padding)
        if xq_info is not None:
            x = self.dequant_act(x, *xq_info, base=f"{base}.input")
        if shuffle is not None:
            w = self.weight_dq(w_int, w_scale, 0, base)
        elif self.requantize and not requant:
            # A layer ORT runs in float anyway (weight-only, or too few channels for int8): store the exactly
            # dequantized weight as a constant so ORT's layout optimizer (NCHWc) can pre-pack it.
            phased = self.phase_split(node, m, x, attrs, bias)
            if phased is not None:
                return phased
            w = self.const(f"{base}.weight", _np(m.dequantized_weight()))
        else:
            w = self.int_weight(m, base)
        inputs = [x, w]
        if bias is not None:
            if requant:
                s_b = m.input_scale.double() * w_scale.double()
                b_int = torch.round(bias.double() / s_b).clamp(-2**31, 2**31 - 1).to(torch.int32)
                inputs.append(self.op("DequantizeLinear", [self.const(f"{base}.bias_q", _np(b_int)),
                                                           self.const(f"{base}.bias_scale", _np(s_b.float())),
                                                           self.const(f"{base}.bias_zero_point",
                                                                      np.zeros(b_int.numel(), dtype=np.int32))],
                                      f"{base}.bias", axis=0))
            else:
                inputs.append(self.const(f"{base}.bias", _np(bias)))
        op_type = "ConvTranspose" if m.transposed and shuffle is None else "Conv"
        y = self.op(op_type, inputs, f"{base}.conv", **attrs)
        if requant:
            lo, hi = self.out_ranges[node.name]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            zp = int(min(255, max(0, round(-lo / scale))))
            y = self.quantize(y, scale, zp, 0, 255, f"{base}.output_q")
            if shuffle is not None:  # rearrange the uint8 codes (4x less memory than floats)
                y = self.depth_to_space(y, shuffle, base)
            y = self.dequant_act(y, scale, zp, 0, 255, f"{base}.output")
        elif shuffle is not None:
            y = self.depth_to_space(y, shuffle, base)
        if shuffle is not None:
            sh, sw = shuffle["stride"]
            out_h, out_w = shuffle["out_size"]
            mh, mw = -(-out_h // sh) * sh, -(-out_w // sw) * sw
            if (mh, mw) != (out_h, out_w):
                y = self.op("Slice", [y, self.const(f"{base}.crop_starts", np.array([0, 0], np.int64)),
                                      self.const(f"{base}.crop_ends", np.array([out_h, out_w], np.int64)),
                                      self.const(f"{base}.crop_axes", np.array([2, 3], np.int64))], f"{base}.cropped")
        return y

    def phase_split(self, node: fx.Node, m: IntConv2d | IntConvTranspose2d, x: str, attrs: dict[str, Any],
                    bias: torch.Tensor | None, r: int = 2) -> str | None:
        """A float conv with few outputs (an RGB head ORT runs in float) as its ``r x r`` pixel-phase
        decomposition: ``SpaceToDepth`` -> ``Conv`` (r*r times the outputs, kernel ``ceil(k / r)``)
        -> ``DepthToSpace``. The same products re-associated; a conv with 3 outputs fills 3 of the 16 lanes
        ORT's NCHWc kernels block output channels by, the split one 12. ``None`` where it does not apply
        (``x`` is the already padded, dequantized input)."""
        k = m.kernel_size
        shape = node_shape(node.args[0])
        if (m.transposed or m.out_channels > 4 or m.groups != 1 or m.stride != (1, 1) or m.dilation != (1, 1)
                or k[0] != k[1] or k[0] < 3 or k[0] % 2 == 0 or shape is None):
            return None
        left, right, top, bottom = m.padding
        h, w = int(shape[2]) + top + bottom, int(shape[3]) + left + right
        if h % r or w % r:
            return None
        base = node.name
        if "pads" in attrs:  # symmetric zero padding the Conv would have applied: pad the float input explicitly
            x = self.pad(x, m.padding, "zeros", base)
        # SpaceToDepth puts input phase (a, b) at channels (a * r + b) * C ..: the phases concatenated in order
        cat = self.op("SpaceToDepth", [x], f"{base}.phases", blocksize=r)
        inputs = [cat, self.const(f"{base}.phase_weight", _np(phase_weight(m.dequantized_weight(), r)))]
        if bias is not None:
            inputs.append(self.const(f"{base}.phase_bias", _np(bias.repeat_interleave(r * r))))
        y = self.op("Conv", inputs, f"{base}.conv", strides=[1, 1], dilations=[1, 1], group=1)
        return self.op("DepthToSpace", [y], f"{base}.shuffled", blocksize=r, mode="CRD")

    def depth_to_space(self, y: str, shuffle: dict[str, Any], base: str) -> str:
        sh, sw = shuffle["stride"]
        if sh != sw:
            raise ExportError(f"{base}: DepthToSpace needs equal strides, got {shuffle['stride']}")
        return self.op("DepthToSpace", [y], f"{base}.shuffled", blocksize=sh, mode="CRD")

    def weight_dq(self, w_int: torch.Tensor, scale: torch.Tensor, axis: int, base: str) -> str:
        return self.op("DequantizeLinear", [self.const(f"{base}.weight_q", _np(w_int.to(torch.int8))),
                                            self.const(f"{base}.weight_scale", _np(scale.float())),
                                            self.const(f"{base}.weight_zero_point",
                                                       np.zeros(scale.numel(), dtype=np.int8))],
                       f"{base}.weight", axis=axis)

    def float_conv(self, node: fx.Node, m: nn.Conv2d | nn.ConvTranspose2d, weight: torch.Tensor, x: str) -> str:
        base = node.name
        attrs: dict[str, Any] = {"strides": list(m.stride), "dilations": list(m.dilation), "group": m.groups}
        if isinstance(m, nn.ConvTranspose2d):
            ph, pw = m.padding
            attrs["pads"] = [ph, pw, ph, pw]
            attrs["output_padding"] = list(m.output_padding)
        else:
            left, right, top, bottom = (int(p) for p in m._reversed_padding_repeated_twice)
            if m.padding_mode != "zeros":
                if m.padding_mode not in ("reflect", "replicate"):
                    raise ExportError(f"{base}: padding_mode {m.padding_mode!r} is not exportable")
                x = self.pad(x, (left, right, top, bottom), m.padding_mode, base)
            elif left != right or top != bottom:
                x = self.pad(x, (left, right, top, bottom), "zeros", base)
            else:
                attrs["pads"] = [top, left, bottom, right]
        inputs = [x, self.const(f"{base}.weight", _np(weight))]
        if m.bias is not None:
            inputs.append(self.const(f"{base}.bias", _np(m.bias)))
        return self.op("ConvTranspose" if isinstance(m, nn.ConvTranspose2d) else "Conv", inputs, f"{base}.conv",
                       **attrs)

    def fake_act(self, x: str, aq: ActFakeQuant, base: str) -> str:
        s = float(aq.scale())
        q = self.quantize(x, s, 0, aq.qmin, aq.qmax, f"{base}.input_q")
        return self.dequant_act(q, s, 0, aq.qmin, aq.qmax, f"{base}.input")

    def call_module(self, node: fx.Node) -> str:
        m = self.mod(node)
        base = node.name
        if isinstance(m, QuantizeActivation):
            return self.quantize(self.arg(node.args[0]), float(m.scale), m.zero_point, m.qmin, m.qmax, base)
        if isinstance(m, (IntConv2d, IntConvTranspose2d)):
            return self.int_conv(node, m)
        if isinstance(m, (QConv2d, QConvTranspose2d)):
            x = self.arg(node.args[0])
            if m.input_quant is not None:
                x = self.fake_act(x, m.input_quant, base)
            with torch.no_grad():
                return self.float_conv(node, m, m.quantized_weight(), x)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            reason = not_plain_reason(m)
            if reason is not None:  # e.g. a subclass with its own forward: a plain Conv op would be wrong
                raise ExportError(f"node '{node.name}': {type(m).__name__} ('{node.target}') is not a plain "
                                  f"convolution ({reason}); it has no ONNX mapping")
            return self.float_conv(node, m, m.weight, self.arg(node.args[0]))
        x = self.arg(node.args[0]) if node.args else None
        if isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d)):
            mode = "reflect" if isinstance(m, nn.ReflectionPad2d) else \
                "replicate" if isinstance(m, nn.ReplicationPad2d) else "zeros"
            value = self.const(f"{base}.value", np.float32(getattr(m, "value", 0.0))) if mode == "zeros" else None
            return self.pad(x, m.padding, mode, base, value)
        if isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)):
            c = m.num_features
            w = _np(m.weight) if m.weight is not None else np.ones(c, np.float32)
            b = _np(m.bias) if m.bias is not None else np.zeros(c, np.float32)
            use_batch_stats = isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats)
            if use_batch_stats:
                return self.op("InstanceNormalization", [x, self.const(f"{base}.scale", w),
                                                         self.const(f"{base}.bias", b)], base, epsilon=m.eps)
            if m.running_mean is None:
                raise ExportError(f"{base}: BatchNorm without running statistics cannot be exported for inference")
            return self.op("BatchNormalization", [x, self.const(f"{base}.scale", w), self.const(f"{base}.bias", b),
                                                  self.const(f"{base}.mean", _np(m.running_mean)),
                                                  self.const(f"{base}.var", _np(m.running_var))], base, epsilon=m.eps)
        if isinstance(m, nn.Linear):
            y = self.op("MatMul", [x, self.const(f"{base}.weight_t", _np(m.weight.t()))], f"{base}.matmul")
            return self.op("Add", [y, self.const(f"{base}.bias", _np(m.bias))], base) if m.bias is not None else y
        if isinstance(m, nn.ReLU):
            return self.op("Relu", [x], base)
        if isinstance(m, nn.LeakyReLU):
            return self.op("LeakyRelu", [x], base, alpha=float(m.negative_slope))
        if isinstance(m, nn.PReLU):
            if m.weight.numel() == 1:
                return self.op("LeakyRelu", [x], base, alpha=float(m.weight.detach().reshape(())))
            # relu(x) + slope * min(x, 0): the same values as PRelu (one term is always 0), and ORT runs these
            # element-wise kernels ~8x faster than its PRelu with a per-channel slope (measured at 64x128x128)
            slope = self.const(f"{base}.slope", _np(m.weight).reshape(-1, 1, 1))
            neg = self.op("Min", [x, self.const(f"{base}.zero", np.zeros(1, np.float32))], f"{base}.neg")
            return self.op("Add", [self.op("Relu", [x], f"{base}.pos"),
                                   self.op("Mul", [neg, slope], f"{base}.scaled")], base)
        if isinstance(m, nn.Tanh):
            return self.op("Tanh", [x], base)
        if isinstance(m, nn.Sigmoid):
            return self.op("Sigmoid", [x], base)
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            return self.op("Identity", [x], base)
        if isinstance(m, nn.PixelShuffle):
            return self.op("DepthToSpace", [x], base, blocksize=int(m.upscale_factor), mode="CRD")
        if isinstance(m, nn.Upsample):
            return self.resize(node, x, m.mode, m.align_corners)
        if callable(getattr(m, "channel_scale", None)):
            s = _np(m.channel_scale()).reshape(-1, 1, 1)
            return self.op("Mul", [x, self.const(f"{base}.scale", s)], base)
        raise ExportError(f"node '{node.name}': module {type(m).__name__} ('{node.target}') has no ONNX mapping in "
                          "gcompiler.quant.onnx_export")

    def resize(self, node: fx.Node, x: str, mode: str, align_corners: bool | None) -> str:
        out = node_shape(node)
        if out is None:
            raise ExportError(f"node '{node.name}': resize without a recorded output shape")
        sizes = self.const(f"{node.name}.sizes", np.array(list(out), dtype=np.int64))
        if mode == "nearest":
            attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        elif mode == "bilinear":
            attrs = {"mode": "linear",
                     "coordinate_transformation_mode": "align_corners" if align_corners else "pytorch_half_pixel"}
        else:
            raise ExportError(f"node '{node.name}': interpolation mode {mode!r} is not exportable")
        return self.op("Resize", [x, "", "", sizes], node.name, **attrs)

    # ---------------------------------------------------------------- functions and methods
    _BINARY = {operator.add: "Add", torch.add: "Add", "add": "Add", operator.sub: "Sub", torch.sub: "Sub",
               "sub": "Sub", operator.mul: "Mul", torch.mul: "Mul", "mul": "Mul", operator.truediv: "Div",
               torch.div: "Div", "div": "Div"}
    _UNARY = {torch.tanh: "Tanh", "tanh": "Tanh", torch.sigmoid: "Sigmoid", "sigmoid": "Sigmoid",
              torch.relu: "Relu", F.relu: "Relu", "relu": "Relu"}

    def call(self, node: fx.Node) -> Any:
        t = node.target
        base = node.name
        if t in self._BINARY:
            if len(node.args) != 2 or node.kwargs:
                raise ExportError(f"node '{base}': {t} with arguments {node.args} {dict(node.kwargs)} is not exportable")
            return self.op(self._BINARY[t], [self.arg(node.args[0]), self.arg(node.args[1])], base)
        if t in self._UNARY:
            return self.op(self._UNARY[t], [self.arg(node.args[0])], base)
        if t is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return self.op("LeakyRelu", [self.arg(node.args[0])], base, alpha=float(slope))
        if t in (torch.cat, torch.concat, torch.concatenate):
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            return self.op("Concat", [self.arg(a) for a in tensors], base, axis=int(dim))
        if t is F.pixel_shuffle:
            return self.op("DepthToSpace", [self.arg(node.args[0])], base, blocksize=int(node.args[1]), mode="CRD")
        if t is F.interpolate:
            mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
            return self.resize(node, self.arg(node.args[0]), mode, node.kwargs.get("align_corners"))
        if t is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
            if len(pad) != 4:
                raise ExportError(f"node '{base}': only 2-d padding is exportable")
            v = self.const(f"{base}.value", np.float32(value or 0.0)) if mode == "constant" else None
            return self.pad(self.arg(node.args[0]), pad, "zeros" if mode == "constant" else mode, base, v)
        if t in (torch.clamp, "clamp"):
            lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
            hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
            ins = [self.arg(node.args[0]), self.const(f"{base}.lo", np.float32(lo)) if lo is not None else "",
                   self.const(f"{base}.hi", np.float32(hi)) if hi is not None else ""]
            return self.op("Clip", ins, base)
        if t in ("view", "reshape", torch.reshape, torch.flatten, "flatten", "expand"):
            out = node_shape(node)
            if out is None:
                raise ExportError(f"node '{base}': reshape without a recorded output shape")
            shape = self.const(f"{base}.shape", np.array(list(out), dtype=np.int64))
            return self.op("Expand" if t == "expand" else "Reshape", [self.arg(node.args[0]), shape], base)
        if t in ("transpose", torch.transpose):
            nd = len(node_shape(node.args[0]) or ())
            d0, d1 = (int(d) % nd for d in node.args[1:3])
            perm = list(range(nd))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return self.op("Transpose", [self.arg(node.args[0])], base, perm=perm)
        if t in ("contiguous",):
            return self.arg(node.args[0])
        if t is operator.getitem and isinstance(node.args[0], fx.Node) and node_shape(node.args[0]) is not None:
            return self.getitem(node)
        if t in (getattr, operator.getitem, "size", "dim") and node_shape(node) is None:
            return None  # a shape query: consumers use their static recorded shapes
        name = getattr(t, "__name__", str(t))
        raise ExportError(f"node '{base}': {node.op} {name} has no ONNX mapping in gcompiler.quant.onnx_export")

    def getitem(self, node: fx.Node) -> str:
        """Tensor indexing with ``None`` (new axis), ``:`` / ``a:b:c`` slices and ``...`` (static shapes)."""
        base = node.name
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        x = self.arg(node.args[0])
        nd = len(node_shape(node.args[0]))  # type: ignore[arg-type]
        if sum(i is Ellipsis for i in idx) > 1:
            raise ExportError(f"node '{base}': more than one ... in an index")
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            fill = nd - sum(1 for i in idx if i is not None and i is not Ellipsis)
            idx = idx[:k] + (slice(None),) * fill + idx[k + 1:]
        starts, ends, axes, steps, new_axes = [], [], [], [], []
        dim = 0
        out_pos = 0
        for i in idx:
            if i is None:
                new_axes.append(out_pos)
                out_pos += 1
            elif isinstance(i, slice):
                if i != slice(None):
                    if any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)):
                        raise ExportError(f"node '{base}': slices with tensor bounds are not exportable")
                    starts.append(0 if i.start is None else i.start)
                    ends.append(2**62 if i.stop is None else i.stop)
                    axes.append(dim)
                    steps.append(1 if i.step is None else i.step)
                dim += 1
                out_pos += 1
            else:
                raise ExportError(f"node '{base}': index {i!r} is not exportable (None, slices and ... only)")
        if axes:
            x = self.op("Slice", [x, self.const(f"{base}.starts", np.array(starts, np.int64)),
                                  self.const(f"{base}.ends", np.array(ends, np.int64)),
                                  self.const(f"{base}.axes", np.array(axes, np.int64)),
                                  self.const(f"{base}.steps", np.array(steps, np.int64))], f"{base}.sliced")
        if new_axes:
            x = self.op("Unsqueeze", [x, self.const(f"{base}.new_axes", np.array(new_axes, np.int64))], base)
        return x if (axes or new_axes) else self.op("Identity", [x], base)

    # ---------------------------------------------------------------- driver
    def build(self, name: str) -> Any:
        graph_inputs, graph_outputs = [], []
        specs = input_specs(self.gm)
        i = 0
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape, dtype = specs[i]
                i += 1
                if dtype != torch.float32:
                    raise ExportError(f"input '{node.name}' is {dtype}; only float32 inputs are exportable")
                self.names.add(node.name)
                graph_inputs.append(self.h.make_tensor_value_info(node.name, 1, list(shape)))
                self.values[node] = node.name
            elif node.op == "call_module":
                self.values[node] = self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self.call(node)
            elif node.op == "get_attr":
                obj: Any = self.gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                if not isinstance(obj, torch.Tensor):
                    raise ExportError(f"node '{node.name}': attribute {node.target} is not a tensor")
                self.values[node] = self.const(node.name, _np(obj.float()) if obj.is_floating_point() else _np(obj))
            elif node.op == "output":
                outs = node.args[0]
                outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                for k, o in enumerate(outs):
                    out_name = f"output_{k}" if len(outs) > 1 else "output"
                    self.nodes.append(self.h.make_node("Identity", [self.arg(o)], [out_name],
                                                       name=self.fresh(f"{out_name}/Identity")))
                    shape = node_shape(o) if isinstance(o, fx.Node) else None
                    graph_outputs.append(self.h.make_tensor_value_info(out_name, 1, list(shape) if shape else None))
        if self.debug_outputs:
            for node in self.gm.graph.nodes:
                if node.op == "call_module" and isinstance(self.mod(node), QuantizeActivation):
                    q = self.mod(node)
                    out = self.values[node]
                    if self.code_shift(q.qmin, q.qmax, node.name):  # report the int8 codes, not the shifted ones
                        wide = self.op("Cast", [out], f"{node.name}.wide", to=6)
                        wide = self.op("Sub", [wide, self.const(f"{node.name}.shift", np.int32(128))],
                                       f"{node.name}.unshifted")
                        out = self.op("Cast", [wide], f"{node.name}.codes", to=3)
                    graph_outputs.append(self.h.make_tensor_value_info(out, 2 if q.int_dtype == torch.uint8 else 3,
                                                                       list(node_shape(node) or []) or None))
        graph = self.h.make_graph(self.nodes, name, graph_inputs, graph_outputs, self.inits)
        model = self.h.make_model(graph, opset_imports=[self.h.make_opsetid("", self.opset)],
                                  producer_name="gcompiler")
        model.ir_version = min(model.ir_version, 8 if self.opset <= 17 else 9)
        self.onnx.checker.check_model(model)
        return model


def conv_output_ranges(gm: fx.GraphModule, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]], *,
                       percentile: float = 100.0) -> dict[str, tuple[float, float]]:
    """``{node: (min, max)}`` of every integer conv's float output over ``batches`` (reference executor).

    With ``percentile < 100`` the range is the ``(100 - p, p)`` percentiles of a 2^18-value sample per batch,
    averaged over batches, which ignores rare outliers.
    """
    stats: dict[str, list[tuple[float, float]]] = {}
    hooks = []
    gen = torch.Generator().manual_seed(0)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), (IntConv2d, IntConvTranspose2d)):
            def hook(mod, inputs, out, name=node.name):
                v = out.detach().reshape(-1).float()
                if percentile >= 100:
                    stats.setdefault(name, []).append((float(v.min()), float(v.max())))
                else:
                    if v.numel() > 1 << 18:
                        v = v[torch.randint(0, v.numel(), (1 << 18,), generator=gen)]
                    q = torch.quantile(v, torch.tensor([1 - percentile / 100, percentile / 100]))
                    stats.setdefault(name, []).append((float(q[0]), float(q[1])))
            hooks.append(gm.get_submodule(str(node.target)).register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                gm(*b) if isinstance(b, (tuple, list)) else gm(b)
    finally:
        for h in hooks:
            h.remove()
    if percentile >= 100:
        return {k: (min(a for a, _ in v), max(b for _, b in v)) for k, v in stats.items()}
    return {k: (sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)) for k, v in stats.items()}


def export_onnx(gm: fx.GraphModule, *example_inputs: torch.Tensor, path: str | os.PathLike | None = None,
                opset: int = DEFAULT_OPSET, requantize_outputs: bool = False,
                calibration: Iterable[torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
                output_percentile: float = 100.0, name: str = "gcompiler", debug_outputs: bool = False,
                min_int8_channels: int = 16) -> Any:
    """Export ``gm`` (float, fake-quant or integer graph) to an ``onnx.ModelProto`` (and to ``path`` if given).

    Shapes are static: those of ``example_inputs`` (or the graph's recorded inputs when none are given).
    ``requantize_outputs`` adds uint8 output quantization to every integer conv so ONNX Runtime fuses it into
    ``QLinearConv`` (see the module docstring); its ranges come from ``calibration`` batches (default: the
    example inputs) run through the reference executor; convs with fewer than ``min_int8_channels`` output
    channels (an RGB head) are not requantized (int8 kernels are slower than float there), and transposed
    convs become a stride-1 conv + ``DepthToSpace`` (:func:`~gcompiler.quant.int_ops.subpixel_decomposition`,
    exact) so they run as ``QLinearConv`` too. ``debug_outputs`` appends every ``QuantizeActivation``
    result (the integer activations, named after the FX node) to the graph outputs. Raises :class:`ExportError` naming the node for anything
    without an ONNX mapping, :class:`ConfigError` when onnx / onnxruntime are missing.
    """
    onnx, _ = _require()
    if opset < 13:
        raise ConfigError(f"export_onnx: opset {opset} is too old; per-channel QDQ needs opset >= 13 (17 default)")
    if example_inputs:
        from ..fx.trace import propagate_shapes

        propagate_shapes(gm, *example_inputs)
    ranges: dict[str, tuple[float, float]] = {}
    if requantize_outputs:
        batches = list(calibration) if calibration is not None else [tuple(example_inputs)]
        if not batches or (isinstance(batches[0], tuple) and not batches[0]):
            raise ConfigError("export_onnx(requantize_outputs=True) needs calibration batches or example inputs")
        ranges = conv_output_ranges(gm, batches, percentile=output_percentile)
    model = _Emitter(gm, opset, requantize_outputs, ranges, debug_outputs, min_int8_channels).build(name)
    if path is not None:
        from ..ioutil import atomic_write_bytes

        atomic_write_bytes(path, model.SerializeToString())
    return model


def ort_session(model: Any, *, threads: int = 2, optimized_model_path: str | os.PathLike | None = None,
                optimization: str = "all", spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session for ``model`` (a ModelProto or a path) with ``threads`` intra-op threads.

    ``optimized_model_path`` saves the graph after ORT's optimizations (to check that QDQ groups became
    ``QLinearConv``); ``optimization`` is ``all`` / ``extended`` / ``basic`` / ``none``. ``spinning`` sets ORT's
    ``session.intra_op.allow_spinning``: ORT's default (on) makes idle pool threads busy-wait between ops, which
    on cores shared with other processes cost the many-small-op int8 graphs up to 2x (measured on resnet_9blocks
    ngf 32: 259 ms spinning vs 116 ms not; fp32 unchanged), so it is off here unless asked for.
    """
    onnx, ort = _require()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        raise ConfigError(f"ort_session: optimization must be one of {', '.join(levels)}, got {optimization!r}")
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = os.fspath(optimized_model_path)
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else os.fspath(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run an ORT session on torch tensors (in graph-input order); returns torch tensors."""
    feeds = {i.name: _np(x.float()) for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds)]


def op_counts(model: Any) -> dict[str, int]:
    """How many nodes of each op type a model (ModelProto or path) has, e.g. to count ``QLinearConv``."""
    onnx, _ = _require()
    if not hasattr(model, "graph"):
        model = onnx.load(os.fspath(model))
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def layerwise_onnx_check(int_gm: fx.GraphModule, *inputs: torch.Tensor,
                         opset: int = DEFAULT_OPSET) -> dict[str, tuple[int, float]]:
    """Export every ``QuantizeActivation -> integer conv`` pair on its own and compare ORT with the reference.

    Each pair is fed the reference executor's float value of its input (teacher forcing), so differences of
    earlier layers do not propagate. Returns ``{conv node: (max |code difference|, max |out - ref| / max|ref|)}``:
    codes may differ by one step where a value sits on a rounding tie; outputs then agree up to float rounding
    (or one weight-times-step where a code differs).
    """
    values: dict[str, torch.Tensor] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        _Rec(int_gm).run(*inputs)
    results: dict[str, tuple[int, float]] = {}
    for node in int_gm.graph.nodes:
        if node.op != "call_module":
            continue
        conv = int_gm.get_submodule(str(node.target))
        if not isinstance(conv, (IntConv2d, IntConvTranspose2d)) or not conv.input_quantized:
            continue
        qnode = node.args[0]
        src = qnode.args[0]
        g = fx.Graph()
        x = g.placeholder("x")
        q = g.call_module(str(qnode.target), (x,))
        y = g.call_module(str(node.target), (q,))
        g.output(y)
        sub = fx.GraphModule(int_gm, g)
        xin = values[src.name]
        sess = ort_session(export_onnx(sub, xin, debug_outputs=True, opset=opset), threads=1)
        out, codes = run_onnx(sess, xin)
        dq = int((codes.long() - values[qnode.name].long()).abs().max())
        ref = values[node.name]
        results[node.name] = (dq, float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
    return results
