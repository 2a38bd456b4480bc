"""The tracing front end: ``nn.Module`` -> shape-annotated, in-place-free ``torch.fx.GraphModule``.

Contract of :func:`trace`:

* the module is deep-copied first (passes mutate weights; the user's model is never touched),
* every ``torch.nn`` module (except containers) and every class registered with :func:`register_leaf` or
  passed in ``leaf_modules`` is a leaf (a ``call_module`` node),
* in-place operations (``ReLU(inplace=True)``, ``x += y``, ``x.mul_(2)``, ``F.relu(x, inplace=True)``) are
  rewritten to out-of-place ones, and later readers of the mutated value read the new node instead, so the
  graph computes bit-identically what the eager module computes,
* every node carries ``node.meta["tensor_meta"]`` from shape propagation on the example inputs and
  ``gm.meta["input_shapes"]`` / ``gm.meta["input_specs"]`` record those inputs.
"""
from __future__ import annotations

import copy
import linecache
import operator
import os
import sys
import traceback
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from ..errors import TraceError

_LEAF_CLASSES: list[type] = []

_INPLACE_FUNCTIONS: dict[Any, Any] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.ipow: operator.pow,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    torch.relu_: torch.relu,
    torch.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
    torch.clamp_: torch.clamp,
}
_FUNCTIONS_WITH_INPLACE_KW = {F.relu, F.leaky_relu, F.elu, F.hardtanh, F.relu6, F.dropout, F.dropout2d,
                              F.silu, F.hardswish, F.selu, F.celu, F.rrelu, F.threshold, F.alpha_dropout}
_VIEW_METHODS = {"view", "reshape", "permute", "transpose", "narrow", "unsqueeze", "squeeze", "flatten",
                 "expand", "split", "chunk", "unflatten", "view_as", "t", "__getitem__", "select", "as_strided"}


def register_leaf(cls: type) -> type:
    """Register ``cls`` so that :func:`trace` keeps its instances as single ``call_module`` nodes.

    Usable as a class decorator. Leaves are opaque to the channel analysis unless it knows them, which
    pins the channels they touch (safe by default).
    """
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise TypeError(f"register_leaf expects an nn.Module subclass, got {cls!r}")
    if cls not in _LEAF_CLASSES:
        _LEAF_CLASSES.append(cls)
    return cls


class _Tracer(fx.Tracer):
    def __init__(self, leaf_classes: tuple[type, ...], leaf_paths: frozenset[str]):
        super().__init__()
        self._leaf_classes = leaf_classes
        self._leaf_paths = leaf_paths
        self.module_stack_paths: list[str] = []
        self.failed_path: str | None = None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_classes and isinstance(m, self._leaf_classes):
            return True
        if module_qualified_name in self._leaf_paths:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            path = self.path_of_module(m)
        except NameError:
            path = type(m).__name__
        self.module_stack_paths.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_path is None:
                self.failed_path = path
            raise
        finally:
            self.module_stack_paths.pop()


def trace(module: torch.nn.Module, *example_inputs: torch.Tensor, leaf_modules: Iterable[type | str] = (),
          concrete_args: dict[str, Any] | None = None, copy_module: bool = True,
          propagate: bool = True, verify: bool = True) -> fx.GraphModule:
    """Trace ``module`` into a :class:`torch.fx.GraphModule` ready for gcompiler passes.

    Args:
        module: the model. It is deep-copied unless ``copy_module=False``.
        example_inputs: tensors used for shape propagation (at least one unless ``propagate=False``).
        leaf_modules: extra classes (or dotted submodule paths) to keep as opaque leaves.
        concrete_args: arguments to specialise away (``torch.fx`` semantics), e.g. a Python flag that
            drives control flow.
        verify: run the eager module (eval mode, on the copy) and the graph on the example inputs and
            require identical outputs. This catches the one thing tracing cannot see: Python's ``y += x``
            on a tensor that another name aliases (torch.fx records it as ``y = y + x``).

    Raises:
        TraceError: naming the module path and source line when tracing fails, or the node and module
            when shape propagation fails (e.g. an input of the wrong rank).
    """
    if not isinstance(module, torch.nn.Module):
        raise TraceError(f"trace() expects an nn.Module, got {type(module).__name__}")
    if propagate and not example_inputs:
        raise TraceError(f"trace({type(module).__name__}) needs example inputs for shape propagation, e.g. "
                         f"gcompiler.trace(model, torch.randn(1, 3, 256, 256))")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TraceError(f"example input {i} is a {type(x).__name__}, not a tensor")
    root = copy.deepcopy(module) if copy_module else module
    classes = tuple(c for c in (*_LEAF_CLASSES, *leaf_modules) if isinstance(c, type))
    paths = frozenset(c for c in leaf_modules if isinstance(c, str))
    tracer = _Tracer(classes, paths)
    try:
        graph = tracer.trace(root, concrete_args=concrete_args)
    except Exception as exc:  # torch raises many types here; all mean "not symbolically traceable"
        raise _trace_error(root, tracer, exc) from exc
    gm = fx.GraphModule(tracer.root, graph, class_name=type(root).__name__)
    normalize_inplace(gm)
    if propagate:
        out = propagate_shapes(gm, *example_inputs)
        if verify:
            _verify_against_eager(module, gm, out, example_inputs)
    return gm


def _verify_against_eager(module: torch.nn.Module, gm: fx.GraphModule, out: Any,
                          inputs: Sequence[torch.Tensor]) -> None:
    eager = copy.deepcopy(module).eval()
    with torch.no_grad():
        ref = eager(*inputs)
    refs = ref if isinstance(ref, (list, tuple)) else (ref,)
    outs = out if isinstance(out, (list, tuple)) else (out,)
    for i, (a, b) in enumerate(zip(refs, outs)):
        if isinstance(a, torch.Tensor) and not torch.equal(a, b):
            diff = float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("nan")
            raise TraceError(
                f"the traced graph of {type(module).__name__} differs from eager on the example inputs (output {i}, "
                f"max |diff| {diff:.3g}). The usual cause is an augmented assignment (y += x, y *= s) on a tensor "
                "that another variable still refers to: torch.fx records it out of place. Write it as "
                "y = y + x (or y.add_(x)) in the model's forward; pass verify=False to skip this check.")


def _trace_error(root: torch.nn.Module, tracer: _Tracer, exc: Exception) -> TraceError:
    path = tracer.failed_path or ""
    where = f"module '{path}' ({type(root.get_submodule(path)).__name__})" if path else \
        f"the top-level module ({type(root).__name__})"
    frames = traceback.extract_tb(exc.__traceback__)
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.dirname(__file__))
    user = [f for f in frames if not f.filename.startswith(torch_dir) and not f.filename.startswith(here)]
    src = ""
    if user:
        f = user[-1]
        line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
        src = f"\n  at {f.filename}:{f.lineno}: {line}"
    return TraceError(
        f"cannot trace {where}: {type(exc).__name__}: {exc}{src}\n"
        "  fixes: mark the offending submodule class as a leaf (gcompiler.trace(..., leaf_modules=[ThatClass]) or "
        "@gcompiler.register_leaf), or specialise Python-level control flow away with "
        "concrete_args={'flag': value}; data-dependent control flow (if x.sum() > 0) cannot be traced.")


def normalize_inplace(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite in-place ops to out-of-place equivalents, preserving eager semantics (see module docstring)."""
    changed = False
    alias_of: dict[fx.Node, fx.Node] = {}  # node -> first node of the storage it aliases
    for node in list(gm.graph.nodes):
        mutated = None
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if getattr(mod, "inplace", False) is True:
                mod.inplace = False
                mutated = node.args[0] if node.args else None
        elif node.op == "call_function":
            if node.target in _INPLACE_FUNCTIONS:
                node.target = _INPLACE_FUNCTIONS[node.target]
                mutated = node.args[0]
            elif node.target in _FUNCTIONS_WITH_INPLACE_KW and node.kwargs.get("inplace", False):
                node.kwargs = {**node.kwargs, "inplace": False}
                mutated = node.args[0]
        elif node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name[:-1]):
                node.target = name[:-1]
                mutated = node.args[0]
        if isinstance(mutated, fx.Node):
            changed = True
            _check_not_view(mutated, node)
            root = alias_of.get(mutated, mutated)
            # Every earlier name of this storage now holds the mutated value: later readers read `node`.
            for alias in [n for n, r in alias_of.items() if r is root] + [root]:
                _redirect_later_uses(gm.graph, alias, node)
            alias_of[node] = root
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _check_not_view(mutated: fx.Node, at: fx.Node) -> None:
    if mutated.op == "call_method" and mutated.target in _VIEW_METHODS:
        base = mutated.args[0]
        if isinstance(base, fx.Node) and len(base.users) > 1:
            raise TraceError(f"node '{at.name}' mutates '{mutated.name}' in place, a view ({mutated.target}) of "
                             f"'{base.name}' that other nodes also read; rewrite that line out of place "
                             "(y = y + 1 instead of y += 1) so the graph can be made functional")


def _redirect_later_uses(graph: fx.Graph, mutated: fx.Node, new: fx.Node) -> None:
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(mutated.users):
        if user is not new and order[user] > order[new]:
            user.replace_input_with(mutated, new)


class _ShapePropagator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.extra_traceback = False

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except TraceError:
            raise
        except Exception as exc:
            raise _node_error(self.module, n, exc) from exc
        n.meta["tensor_meta"] = _tree_meta(result)
        return result


def _tree_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _extract_tensor_metadata(value)
    if isinstance(value, torch.Size):
        return None
    if isinstance(value, list):
        return [_tree_meta(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_tree_meta(v) for v in value)
    return None


def _node_error(gm: torch.nn.Module, n: fx.Node, exc: Exception) -> TraceError:
    def desc(a: Any) -> str:
        if isinstance(a, fx.Node):
            tm = a.meta.get("tensor_meta")
            return f"{a.name}{list(tm.shape) if isinstance(tm, TensorMetadata) else ''}"
        return repr(a)

    what = f"node '{n.name}'"
    if n.op == "call_module":
        what += f" (module '{n.target}': {gm.get_submodule(str(n.target))})"
    else:
        what += f" ({n.op} {getattr(n.target, '__name__', n.target)})"
    ins = ", ".join(desc(a) for a in n.args)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TraceError(f"shape propagation failed at {what} with inputs ({ins}): {msg}\n"
                      "  check the example inputs' rank, channels and size (generators take NCHW batches)")


def propagate_shapes(gm: fx.GraphModule, *inputs: torch.Tensor, fake: bool = False) -> Any:
    """Run ``gm`` on ``inputs`` (or on fake tensors of their shape) and record ``tensor_meta`` on every node.

    With ``fake=True`` nothing is computed (FakeTensorMode), so a 1-TMAC network costs milliseconds.
    Modules are put in eval mode for the run (no running-stat updates, no dropout) and restored after.
    Returns the output (fake tensors when ``fake``).
    """
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            if fake:
                from torch._subclasses.fake_tensor import FakeTensorMode

                mode = FakeTensorMode(allow_non_fake_inputs=True)
                fake_inputs = [mode.from_tensor(x) for x in inputs]
                with mode:
                    out = _ShapePropagator(gm).run(*fake_inputs)
            else:
                out = _ShapePropagator(gm).run(*inputs)
    finally:
        for m, t in flags.items():
            m.training = t
    gm.meta["input_shapes"] = [tuple(x.shape) for x in inputs]
    gm.meta["input_specs"] = [(tuple(x.shape), x.dtype) for x in inputs]
    return out


def check_traced_equal(module: torch.nn.Module, gm: fx.GraphModule, *inputs: torch.Tensor) -> float:
    """Max abs difference between eager ``module`` and ``gm`` on ``inputs`` (0.0 means bit-identical)."""
    with torch.no_grad():
        a, b = module(*inputs), gm(*inputs)
    return float((a - b).abs().max())


