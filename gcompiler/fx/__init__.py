"""The torch.fx front end: tracing, shape propagation, guards and graph helpers."""
from .guards import check_guard, guards
from .trace import check_traced_equal, normalize_inplace, propagate_shapes, register_leaf, trace
from .tracer import register_leaf_function
from .utils import (get_module, input_shapes, is_plain_conv, is_plain_linear, is_plain_module, node_shape,
                    not_plain_reason, random_inputs, replace_module, unique_name)

__all__ = ["trace", "register_leaf", "register_leaf_function", "propagate_shapes", "normalize_inplace",
           "check_traced_equal", "get_module", "node_shape", "replace_module", "unique_name", "input_shapes",
           "random_inputs", "guards", "check_guard", "is_plain_module", "is_plain_conv", "is_plain_linear",
           "not_plain_reason"]
