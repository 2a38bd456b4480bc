"""Quantization: fake quantizers with straight-through gradients, the ``insert-fake-quant``, ``fold-norms``
and ``convert-to-int`` passes, the integer reference executor and ONNX (QDQ) export.

Typical use (GAN Slimming's 8-bit setting)::

    gm = gcompiler.compile(model, "fold-norms,insert-fake-quant", x)     # QAT-ready graph, trains
    calibrate(gm, batches)                                                # optional PTQ clip values
    gi, _ = gcompiler.run_pipeline(gm, "convert-to-int")                  # integer graph (reference)
    export_onnx(gi, x, path="g.onnx", requantize_outputs=True)            # ONNX Runtime int8

Formats and conventions: :mod:`.quantizers` (scales, STE), :mod:`.insert` (override syntax),
:mod:`.int_ops` (integer module format), :mod:`.onnx_export` (QDQ layout). ONNX needs ``gcompiler[onnx]``;
importing this package does not.
"""
from .calibrate import act_quantizers, calibrate
from .convert import layerwise_errors
from .int_ops import IntConv2d, IntConvTranspose2d, QuantizeActivation, subpixel_decomposition
from .onnx_export import export_onnx, layerwise_onnx_check, op_counts, ort_session, run_onnx
from .qmodules import QConv2d, QConvTranspose2d
from .quantizers import ActFakeQuant, WeightFakeQuant, fake_quant_act, fake_quant_weight


def is_quantized(model) -> bool:
    """True when ``model`` holds quantized layers: fake-quant convolutions (``insert-fake-quant``) or integer
    ones (``convert-to-int``), i.e. something ``deploy(precision="int8")`` and ``export --int8`` take as is."""
    return any(isinstance(m, (QConv2d, QConvTranspose2d, IntConv2d, IntConvTranspose2d)) for m in model.modules())


def float_copy(gm):
    """A copy of the GraphModule ``gm`` with every fake-quant conv replaced by the float conv it wraps
    (``strip-fake-quant``): the float network of the same shape and weights. ``gm`` is not modified."""
    import copy

    from ..passes.manager import run_pipeline

    out = copy.deepcopy(gm)
    if is_quantized(out):
        run_pipeline(out, "strip-fake-quant", check=False)
    return out


__all__ = [
    "ActFakeQuant", "WeightFakeQuant", "fake_quant_act", "fake_quant_weight", "QConv2d", "QConvTranspose2d",
    "calibrate", "act_quantizers", "IntConv2d", "IntConvTranspose2d", "QuantizeActivation",
    "subpixel_decomposition", "layerwise_errors", "export_onnx", "ort_session", "run_onnx", "op_counts",
    "layerwise_onnx_check", "is_quantized", "float_copy",
]
