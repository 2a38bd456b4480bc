"""Quantization: fake quantizers with straight-through gradients, the ``insert-fake-quant``, ``fold-norms``
and ``convert-to-int`` passes, the integer reference executor and ONNX (QDQ) export."""
