"""The tracing front end: ``nn.Module`` -> shape-annotated, in-place-free ``torch.fx.GraphModule``.

Contract of :func:`trace`:

* the module is deep-copied first (passes mutate weights; the user's model is never touched),
* every ``torch.nn`` module (except containers) and every class registered with :func:`register_leaf` or
  passed in ``leaf_modules`` is a leaf (a ``call_module`` node),
* in-place operations (``ReLU(inplace=True)``, ``x += y``, ``x.mul_(2)``, ``F.relu(x, inplace=True)``) are
  rewritten to out-of-place ones, and later readers of the mutated value read the new node instead, so the
  graph computes bit-identically what the eager module computes,
* every node carries ``node.meta["tensor_meta"]`` from shape propagation on the example inputs (fake tensors:
  nothing is computed) and ``gm.meta["input_shapes"]`` / ``gm.meta["input_specs"]`` record those inputs,
* ``forward`` arguments beyond the example inputs are specialized to their defaults or ``kwargs`` values;
  Python-level reads of tensor attributes are answered from the example inputs and re-checked at run time
  by guards (``gm.meta["guards"]``, :mod:`gcompiler.fx.guards`); see :mod:`gcompiler.fx.tracer`,
* any failure becomes a :class:`~gcompiler.errors.TraceError` naming the module and the source line.
"""
from __future__ import annotations

import copy
import linecache
import operator
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from ..errors import TraceError
from .guards import check_guard
from .guards import guards as graph_guards
from .patches import find_proxies, tracing_patches
from .tracer import _FX_DIR, _TORCH_DIR, GTracer, describe, prefer_real
from .tracer import leaf_functions as leaf_function_registry
from .tracer import register_leaf_function  # noqa: F401 - re-exported

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


def trace(module: torch.nn.Module, *example_inputs: torch.Tensor, kwargs: dict[str, Any] | None = None,
          leaf_modules: Iterable[type | str] = (), leaf_functions: Iterable[Callable[..., Any]] = (),
          concrete_args: dict[str, Any] | None = None, copy_module: bool = True,
          propagate: bool = True, verify: bool = True) -> fx.GraphModule:
    """Trace ``module`` into a :class:`torch.fx.GraphModule` ready for gcompiler passes.

    Args:
        module: the model. It is deep-copied unless ``copy_module=False``; the argument is never changed.
        example_inputs: the tensors ``forward`` takes first (at least one unless ``propagate=False``).
        kwargs: values for ``forward``'s other arguments; those not given take their defaults. They are
            specialized (Python values while tracing), never graph inputs.
        leaf_modules: extra classes (or dotted submodule paths) to keep as opaque leaves.
        leaf_functions: plain functions to keep un-traced (as :func:`register_leaf_function` does).
        concrete_args: deprecated spelling of ``kwargs``.
        verify: run the eager module (a copy, in the mode it was traced in) and the graph (buffers restored
            afterwards) on the example inputs (cropped to <= 32 pixels a side when the model accepts that) with
            the same random seed and require identical outputs.

    Python-level questions the code asks about traced tensors (``x.is_cuda``, ``x.shape[2] % 8``, ...) are
    answered from the example inputs and re-checked at run time by guard nodes, listed in
    ``gm.meta["guards"]``; ``gm.meta["specialized"]`` records the specialized arguments.

    Raises:
        TraceError: naming the module path and source line when tracing fails (any torch.fx failure, data-
            dependent control flow, a Proxy left on a module), or the node and module when shape propagation
            fails (e.g. an input of the wrong rank).
    """
    if not isinstance(module, torch.nn.Module):
        raise TraceError(f"trace() expects an nn.Module, got {type(module).__name__}")
    if propagate and not example_inputs:
        raise TraceError(f"trace({type(module).__name__}) needs example inputs for shape propagation, e.g. "
                         f"gcompiler.trace(model, torch.randn(1, 3, 256, 256))")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TraceError(f"example input {i} is a {type(x).__name__}, not a tensor; give non-tensor forward "
                             f"arguments with kwargs={{name: value}}")
    kw = dict(concrete_args or {})
    kw.update(kwargs or {})
    stale = find_proxies(module)
    if stale:
        raise TraceError("the model holds torch.fx Proxy objects, left by an earlier trace (e.g. torch.fx.symbolic_trace "
                         "of a forward that assigns a traced value to self): " + "; ".join(stale) +
                         ". Rebuild or reload the model, then trace it with gcompiler.trace (which keeps such "
                         "assignments trace-local)")
    root = _copy_model(module) if copy_module else module
    classes = tuple(c for c in (*_LEAF_CLASSES, *leaf_modules) if isinstance(c, type))
    paths = frozenset(c for c in leaf_modules if isinstance(c, str))
    fns = tuple(dict.fromkeys((*leaf_function_registry(), *leaf_functions)))
    for f in fns:
        if not callable(f) or isinstance(f, type):
            raise TraceError(f"leaf_functions must hold plain functions, got {f!r}")
    tracer = GTracer(classes, paths, fns, tuple(example_inputs), kw)
    try:
        with tracing_patches(tracer):
            graph = tracer.trace(root)
        left = find_proxies(root)
        if left:
            raise TraceError("tracing left torch.fx Proxy objects on the model: " + "; ".join(left) +
                             ". A traced value stored in a list or dict attribute (self.feats.append(x)) escapes "
                             "the trace; keep such values in local variables")
        gm = fx.GraphModule(tracer.root, graph, class_name=type(root).__name__)
    except TraceError as exc:
        if tracer.failed_path is not None or "cannot trace" not in str(exc):
            raise _trace_error(root, tracer, exc) from exc
        raise
    except Exception as exc:  # torch raises many types here; all mean "not symbolically traceable"
        raise _trace_error(root, tracer, exc) from exc
    try:
        _finish_graph(gm, tracer)
        normalize_inplace(gm)
    except TraceError:
        raise
    except Exception as exc:  # a lint / codegen failure of the rewritten graph
        raise _trace_error(root, tracer, exc) from exc
    if propagate:
        _propagate_for_trace(gm, example_inputs)
        if verify:
            _verify_against_eager(module, gm, example_inputs, kw)
    return gm


def _copy_model(module: torch.nn.Module) -> torch.nn.Module:
    try:
        return copy.deepcopy(module)
    except Exception as exc:
        bad = []
        for path, m in module.named_modules():
            for k, v in m.__dict__.items():
                if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                    bad.append(f"'{path or type(module).__name__}'.{k}")
        hint = (f" (non-leaf tensor attributes: {', '.join(bad)}; usually torch.nn.utils.weight_norm / "
                "spectral_norm: use torch.nn.utils.parametrizations or remove the hook)") if bad else ""
        raise TraceError(f"cannot copy {type(module).__name__} before tracing: {type(exc).__name__}: {exc}{hint}") \
            from exc


def _finish_graph(gm: fx.GraphModule, tracer: GTracer) -> None:
    """Post-trace clean-up: asserts -> guards, constants detached, guard / specialization metadata."""
    graph = gm.graph
    changed = False
    dropped: list[str] = []
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch._assert:
            cond = node.args[0] if node.args else node.kwargs.get("condition")
            msg = node.args[1] if len(node.args) > 1 else node.kwargs.get("message", "")
            if isinstance(cond, fx.Node) and not tracer.is_tensor(cond):
                node.target = check_guard
                node.args, node.kwargs = (cond, True, f"torch._assert({describe(cond)}): {msg}"), {}
                tracer.guards.append({"expected": True, "description": node.args[2]})
            else:  # an assert on tensor values: not checkable on shapes alone; dropped (recorded)
                dropped.append(f"torch._assert({describe(cond)}, {msg!r})")
                graph.erase_node(node)
            changed = True
    frozen = []
    for name, value in list(gm.__dict__.items()):
        if isinstance(value, torch.Tensor) and (value.grad_fn is not None or value.requires_grad):
            setattr(gm, name, value.detach())
            frozen.append(name)
    for name, b in list(gm.named_buffers()):
        if b.grad_fn is not None:
            mod_name, _, attr = name.rpartition(".")
            gm.get_submodule(mod_name).register_buffer(attr, b.detach())
            frozen.append(name)
    if changed:
        graph.lint()
        gm.recompile()
    gm.meta["guards"] = graph_guards(gm)  # from the graph: a re-traced graph keeps its guard nodes
    gm.meta["specialized"] = {k: _short_repr(v) for k, v in tracer.specialized.items()}
    if dropped:
        gm.meta["dropped_asserts"] = dropped
    if frozen:
        gm.meta["frozen_constants"] = frozen


def _short_repr(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    r = repr(v)
    return r if len(r) <= 200 else r[:197] + "..."


def _propagate_for_trace(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Shape metadata from real tensors when that is cheap (:func:`~gcompiler.fx.tracer.prefer_real`), else from
    fake tensors (nothing computed; real ones when an op needs real data)."""
    if prefer_real(gm, tuple(inputs)):
        propagate_shapes(gm, *inputs)
        return
    try:
        propagate_shapes(gm, *inputs, fake=True)
    except Exception:
        propagate_shapes(gm, *inputs)


def _reduced_inputs(inputs: Sequence[torch.Tensor], side: int = 32) -> tuple[torch.Tensor, ...] | None:
    """The example inputs cropped spatially (dims >= 2 of 4-D / 5-D tensors) to at most ``side`` by repeated
    halving; None when nothing gets smaller."""
    out, smaller = [], False
    for x in inputs:
        if x.dim() in (4, 5):
            idx: list[Any] = [slice(None)] * 2
            for d in x.shape[2:]:
                r = d
                while r > side and r % 2 == 0:
                    r //= 2
                smaller |= r < d
                idx.append(slice(0, r))
            out.append(x[tuple(idx)].contiguous())
        else:
            out.append(x)
    return tuple(out) if smaller else None


def _run_seeded(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], kwargs: dict[str, Any]) -> Any:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return fn(*inputs, **kwargs)


def _verify_against_eager(module: torch.nn.Module, gm: fx.GraphModule, inputs: Sequence[torch.Tensor],
                          kwargs: dict[str, Any]) -> None:
    left = find_proxies(module)
    if left:
        raise TraceError("the model holds torch.fx Proxy objects from an earlier trace: " + "; ".join(left) +
                         "; rebuild or reload the model before tracing it")
    # Both run in the mode the model was traced in (a `if self.training:` branch was specialized to it), on a
    # copy of the model and on the graph with its buffers restored afterwards (BatchNorm statistics...).
    eager = _copy_model(module)
    saved = {name: b.detach().clone() for name, b in gm.named_buffers()}

    def restore() -> None:
        with torch.no_grad():
            for name, b in gm.named_buffers():
                if name in saved and b.shape == saved[name].shape:
                    b.copy_(saved[name])

    try:
        small = _reduced_inputs(inputs)
        if small is not None:
            try:
                ref = _run_seeded(eager, small, kwargs)
                out = _run_seeded(gm, small, {})
            except Exception:
                small = None  # the model only takes the example's size (or a guard says so): check at full size
                eager = _copy_model(module)
                restore()
        if small is None:
            ref = _run_seeded(eager, inputs, kwargs)
            out = _run_seeded(gm, inputs, {})
    except TraceError:
        raise
    except Exception as exc:
        raise TraceError(f"the traced graph of {type(module).__name__} fails on the example inputs where the eager "
                         f"module runs: {type(exc).__name__}: {exc}") from exc
    finally:
        restore()
    where = "the example inputs" if small is None else f"the example inputs cropped to {[tuple(x.shape) for x in small]}"
    refs = ref if isinstance(ref, (list, tuple)) else (ref,)
    outs = out if isinstance(out, (list, tuple)) else (out,)
    if len(refs) != len(outs):
        raise TraceError(f"the traced graph of {type(module).__name__} returns {len(outs)} outputs, eager {len(refs)}")
    for i, (a, b) in enumerate(zip(refs, outs)):
        if isinstance(a, torch.Tensor) and not (isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)):
            diff = float((a.float() - b.float()).abs().max()) if isinstance(b, torch.Tensor) and a.shape == b.shape \
                else float("nan")
            raise TraceError(
                f"the traced graph of {type(module).__name__} differs from eager on {where} (output {i}, max |diff| "
                f"{diff:.3g}). Causes: Python state the trace cannot see (a tensor stored on self and read back, a "
                "global), or an augmented assignment on a tensor that another variable refers to through a view. "
                "Pass verify=False to skip this check.")


def _trace_error(root: torch.nn.Module, tracer: GTracer, exc: Exception) -> TraceError:
    path = tracer.failed_path or ""
    try:
        where = f"module '{path}' ({type(root.get_submodule(path)).__name__})" if path else \
            f"the top-level module ({type(root).__name__})"
    except AttributeError:
        where = f"module '{path}'"
    frame, lineno = None, None
    tb = exc.__traceback__
    while tb is not None:
        f = tb.tb_frame
        fn = f.f_code.co_filename
        if not (fn.startswith(_TORCH_DIR) or fn.startswith(_FX_DIR) or fn.startswith("<")):
            frame, lineno = f, tb.tb_lineno
        tb = tb.tb_next
    src = ""
    remedy = ("  fixes: mark the offending submodule class as a leaf (gcompiler.trace(..., leaf_modules=[ThatClass]) or "
              "@gcompiler.register_leaf); give non-tensor forward arguments with kwargs={'flag': value}; "
              "data-dependent control flow (if x.sum() > 0) cannot be traced.")
    if frame is not None:
        line = linecache.getline(frame.f_code.co_filename, lineno).strip()
        src = f"\n  at {frame.f_code.co_filename}:{lineno}: {line}"
        func = frame.f_code.co_name
        if not isinstance(frame.f_locals.get("self"), torch.nn.Module) and func not in ("<module>", "<lambda>"):
            remedy = (f"  fix: keep the plain function '{func}' un-traced with gcompiler.register_leaf_function({func}) "
                      f"or gcompiler.trace(..., leaf_functions=[{func}]); or mark the module calling it as a leaf "
                      "(leaf_modules=[ThatClass]).")
    elif isinstance(exc, SyntaxError) or "code" in type(exc).__name__.lower():
        srcs = [n.meta.get("source") for n in tracer.graph.nodes if n.meta.get("source")] \
            if getattr(tracer, "graph", None) is not None else []
        if srcs:
            src = f"\n  while generating Python code for the graph; last traced line: {srcs[-1]}"
    msg = str(exc) if not isinstance(exc, TraceError) else str(exc).split("\n  fix")[0]
    return TraceError(f"cannot trace {where}: {type(exc).__name__}: {msg}{src}\n{remedy}")


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


