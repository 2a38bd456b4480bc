"""Fused int8 convolution kernels (Triton, NHWC implicit GEMM) and their PyTorch references.

Public API: :func:`conv2d_int8`, :func:`depthwise_conv2d_int8`, :func:`conv_transpose2d_int8`,
:func:`instance_norm_act_quant` (see :mod:`gcompiler.kernels.conv` for the shared contract), the reference
implementations in :mod:`gcompiler.kernels.reference`, layout helpers, the ``torch.ops.gcompiler.*`` custom
ops (:mod:`gcompiler.kernels.ops`) and the ``lower-to-triton`` pass (:mod:`gcompiler.kernels.lower`).
Importing this package does not import Triton; the kernels are compiled (CUDA) or interpreted
(``TRITON_INTERPRET=1``) on first use.
"""
from ._common import ConvResult
from .conv import conv2d_int8, conv_transpose2d_int8, depthwise_conv2d_int8, instance_norm_act_quant, triton_status
from . import ops  # noqa: F401  registers the torch.ops.gcompiler.* custom ops (lowered graphs call them)
from .reference import (conv2d_int8_ref, conv_transpose2d_int8_ref, conv_transpose_weight_from_ohwi,
                        conv_transpose_weight_to_ohwi, depthwise_conv2d_int8_ref, instance_norm_act_quant_ref,
                        nchw_to_nhwc, nhwc_to_nchw, weight_ohwi_to_oihw, weight_oihw_to_ohwi)

__all__ = [
    "ConvResult", "conv2d_int8", "depthwise_conv2d_int8", "conv_transpose2d_int8", "instance_norm_act_quant",
    "triton_status", "conv2d_int8_ref", "depthwise_conv2d_int8_ref", "conv_transpose2d_int8_ref",
    "instance_norm_act_quant_ref", "nchw_to_nhwc", "nhwc_to_nchw", "weight_oihw_to_ohwi", "weight_ohwi_to_oihw",
    "conv_transpose_weight_to_ohwi", "conv_transpose_weight_from_ohwi",
]
