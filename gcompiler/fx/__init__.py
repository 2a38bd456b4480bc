"""The torch.fx front end: tracing, shape propagation and graph helpers."""
from .trace import check_traced_equal, normalize_inplace, propagate_shapes, register_leaf, trace
from .utils import get_module, input_shapes, node_shape, random_inputs, replace_module, unique_name

__all__ = ["trace", "register_leaf", "propagate_shapes", "normalize_inplace", "check_traced_equal",
           "get_module", "node_shape", "replace_module", "unique_name", "input_shapes", "random_inputs"]
