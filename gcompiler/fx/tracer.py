"""The torch.fx tracer behind :func:`gcompiler.trace`: real generator code, as its authors wrote it.

On top of :class:`torch.fx.Tracer` it

* specializes every ``forward`` argument beyond the example inputs to its default (or the value given in
  ``kwargs``): flags, lists, ``None``... are Python values while tracing, never graph inputs;
* answers Python-level questions about traced values (``bool``, ``int``, ``len``, iteration: ``if x.is_cuda``,
  ``assert h % 8 == 0``, ``range(x.size(0))``) from the example inputs, evaluated lazily on fake tensors
  (nothing is computed), and records each answer as a guard node (:mod:`gcompiler.fx.guards`); a question
  about tensor *values* (``if x.mean() > 0``) is data-dependent and refused;
* records ``y += x`` on a traced tensor as the in-place op it is (torch.fx records ``y = y + x``), so the
  in-place normalization sees aliases;
* keeps ``self.attr = <traced value>`` inside ``forward`` as a pure expression: later reads in the same trace
  see the traced value and the module attribute is restored afterwards (no Proxy is ever left on a module);
* keeps registered leaf functions (:func:`register_leaf_function`) un-traced, as ``call_function`` nodes;
* records random factories (``torch.randn(...)``) as graph nodes even with constant arguments (a baked
  constant would freeze the noise), and factories with traced sizes (``torch.zeros(x.size(0), 3)``);
* makes every subclass of a ``torch.nn`` layer a leaf (a subclass that redefines ``forward`` is an
  unknown leaf for the analyses, see :func:`gcompiler.fx.utils.not_plain_reason`);
* notes the user source line (``node.meta["source"]``) and module path (``node.meta["module_path"]``) of
  every node, for error messages.
"""
from __future__ import annotations

import builtins
import contextlib
import copy
import inspect
import operator
import os
import sys
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.proxy import Attribute

from ..errors import TraceError
from .guards import check_guard

_TORCH_DIR = os.path.dirname(torch.__file__)
_FX_DIR = os.path.dirname(os.path.abspath(__file__))
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)

_LEAF_FUNCTIONS: list[Callable[..., Any]] = []

# torch factories recorded as nodes when an argument is traced (sizes from x.size()) ...
_FACTORIES = ("zeros", "ones", "empty", "full", "arange", "linspace", "logspace", "eye", "tensor",
              "as_tensor", "zeros_like", "ones_like", "full_like", "empty_like")
# ... and random ones always (a constant would freeze one sample of the noise into the graph).
_RANDOM_FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "rand_like", "randn_like",
                     "randint_like", "bernoulli")

_INPLACE_DUNDERS = {
    "__iadd__": (operator.iadd, operator.add), "__isub__": (operator.isub, operator.sub),
    "__imul__": (operator.imul, operator.mul), "__itruediv__": (operator.itruediv, operator.truediv),
    "__ifloordiv__": (operator.ifloordiv, operator.floordiv), "__ipow__": (operator.ipow, operator.pow),
    "__iand__": (operator.iand, operator.and_), "__ior__": (operator.ior, operator.or_),
    "__ixor__": (operator.ixor, operator.xor),
}
_NON_TENSOR_METHODS = {"size", "dim", "numel", "item", "tolist", "nelement", "element_size", "stride",
                       "data_ptr", "is_contiguous", "get_device", "__len__"}
_BIN_SYMBOLS = {operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
                operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.eq: "==",
                operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
                operator.and_: "&", operator.or_: "|"}


def register_leaf_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Keep calls of the plain function ``fn`` un-traced: each call becomes one ``call_function`` node.

    Use it for helpers with Python control flow on tensor values or shapes that tracing cannot follow
    (``assert h % s == 0`` with a data-dependent ``h``, numpy code). Usable as a decorator. The function must
    be called by a name visible in the calling module (``helper(x)`` or ``utils.helper(x)``). The channel
    analysis does not know what it computes, so it pins the channels it touches.
    """
    if not callable(fn) or isinstance(fn, type):
        raise TypeError(f"register_leaf_function expects a plain function, got {fn!r}")
    if fn not in _LEAF_FUNCTIONS:
        _LEAF_FUNCTIONS.append(fn)
    return fn


def leaf_functions() -> tuple[Callable[..., Any], ...]:
    """The functions registered with :func:`register_leaf_function`."""
    return tuple(_LEAF_FUNCTIONS)


def user_frame(start: Any) -> Any:
    """The innermost frame (from ``start`` outwards) that belongs to neither torch nor gcompiler.fx."""
    f = start
    while f is not None:
        fn = f.f_code.co_filename
        if not (fn.startswith(_TORCH_DIR) or fn.startswith(_FX_DIR) or fn.startswith("<")):
            return f
        f = f.f_back
    return None


# ---------------------------------------------------------------------------------------------- proxies

class _GProxy(fx.Proxy):
    """A Proxy that answers Python's int / len / in-place questions through its tracer."""

    def __getattr__(self, k: str) -> "_GAttribute":
        return _GAttribute(self, k)

    def __index__(self) -> int:
        return self.tracer.concrete(self, "index")  # type: ignore[attr-defined]

    def __int__(self) -> int:
        return self.tracer.concrete(self, "int")  # type: ignore[attr-defined]

    def __float__(self) -> float:
        return self.tracer.concrete(self, "float")  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return self.tracer.concrete(self, "len")  # type: ignore[attr-defined]


def _make_inplace(name: str, inplace_fn: Callable, plain_fn: Callable) -> Callable:
    def method(self: _GProxy, other: Any) -> Any:
        fn = inplace_fn if self.tracer.is_tensor(self.node) else plain_fn  # type: ignore[attr-defined]
        return self.tracer.create_proxy("call_function", fn, (self, other), {})

    method.__name__ = name
    return method


for _name, (_inplace, _plain) in _INPLACE_DUNDERS.items():
    setattr(_GProxy, _name, _make_inplace(_name, _inplace, _plain))


class _GAttribute(Attribute, _GProxy):
    pass


# ------------------------------------------------------------------------------------------- the tracer

class GTracer(fx.Tracer):
    """See the module docstring. ``inputs`` are the example inputs (for answering shape questions)."""

    def __init__(self, leaf_classes: tuple[type, ...], leaf_paths: frozenset[str],
                 leaf_fns: tuple[Callable[..., Any], ...], inputs: tuple[torch.Tensor, ...],
                 kwargs: dict[str, Any]):
        leaf_fns = tuple(leaf_fns)
        # check_guard too: re-tracing a traced (or loaded) graph keeps its guard nodes as they are
        super().__init__(autowrap_functions=leaf_fns + (check_guard,))
        for fn in leaf_fns:  # `utils.helper(x)` resolves through the helper's module: patch it there too
            mod = sys.modules.get(getattr(fn, "__module__", None) or "")
            if mod is not None and mod not in self._autowrap_search:
                self._autowrap_search.append(mod)
        self._leaf_classes = leaf_classes
        self._leaf_paths = leaf_paths
        self._inputs = inputs
        self._kwargs = dict(kwargs)
        self.specialized: dict[str, Any] = {}
        self.module_stack_paths: list[str] = []
        self.failed_path: str | None = None
        self.guards: list[dict[str, Any]] = []
        self.placeholders: list[fx.Node] = []
        self._evaluating = 0
        self._fake_env: dict[fx.Node, Any] = {}
        self._real_env: dict[fx.Node, Any] = {}
        self._mode: Any = None

    # ------------------------------------------------------------------ leaves and module calls
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_classes and isinstance(m, self._leaf_classes):
            return True
        if module_qualified_name in self._leaf_paths:
            return True
        base = _torch_layer_base(type(m))
        if base is not None and not isinstance(m, _CONTAINERS):
            return True  # torch layers and user subclasses of them (unknown when they redefine forward)
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
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

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    # ------------------------------------------------------------------ nodes and proxies
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _GProxy(node, self)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        f = user_frame(sys._getframe(1))
        if f is not None:
            node.meta["source"] = f"{f.f_code.co_filename}:{f.f_lineno}"
        if self.module_stack_paths:
            node.meta["module_path"] = self.module_stack_paths[-1]
        if kind == "placeholder":
            self.placeholders.append(node)
        return node

    # ------------------------------------------------------------------ specialization of forward's arguments
    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        if not is_module:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        fn = inspect.unwrap(root_fn)
        params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
        n_in = len(self._inputs)
        kw = dict(self._kwargs)
        tensors: list[Any] = []
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        used = 0
        P = inspect.Parameter
        for p in params:
            if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
                if used < n_in:
                    if p.name in kw:
                        raise TraceError(f"forward argument '{p.name}' of {type(self.root).__name__} gets both an "
                                         f"example input and a value in kwargs=")
                    tensors.append(self.create_proxy("placeholder", p.name, (), {}))
                    used += 1
                    continue
                positional.append(self._specialize(p, kw))
            elif p.kind == P.VAR_POSITIONAL:
                while used < n_in:
                    tensors.append(self.create_proxy("placeholder", f"{p.name}_{used}", (), {}))
                    used += 1
            elif p.kind == P.KEYWORD_ONLY:
                keywords[p.name] = self._specialize(p, kw)
            elif p.kind == P.VAR_KEYWORD:
                for k in list(kw):
                    keywords[k] = kw.pop(k)
                    self.specialized[k] = keywords[k]
        if used < n_in:
            raise TraceError(f"{type(self.root).__name__}.forward takes {used} tensor argument(s) but "
                             f"{n_in} example inputs were given")
        if kw:
            raise TraceError(f"kwargs= names {sorted(kw)}, which {type(self.root).__name__}.forward does not take "
                             f"(its arguments: {[p.name for p in params]})")
        root = self.root
        # Positional values that are still their defaults can go by keyword too, but positional-only ones cannot:
        # pass every specialized positional argument by position, after the tensors.
        if positional and len(tensors) < sum(1 for p in params if p.kind in (P.POSITIONAL_ONLY,
                                                                             P.POSITIONAL_OR_KEYWORD)) \
                and any(p.kind == P.VAR_POSITIONAL for p in params):
            raise TraceError(f"{type(self.root).__name__}.forward has *args after named arguments that are not "
                             "example inputs; pass those as example inputs")

        def specialized(*ts):  # no annotations: torch.fx copies a return annotation into the generated code
            return root_fn(root, *ts, *positional, **keywords)

        return specialized, tensors

    def _specialize(self, p: inspect.Parameter, kw: dict[str, Any]) -> Any:
        if p.name in kw:
            value = kw.pop(p.name)
        elif p.default is not inspect.Parameter.empty:
            value = p.default
            if isinstance(value, (list, dict, set)):
                value = copy.deepcopy(value)  # forward may mutate a mutable default; keep the user's intact
        else:
            raise TraceError(f"forward argument '{p.name}' of {type(self.root).__name__} has no default and no "
                             f"example input: give it as an example input (a tensor) or its value with "
                             f"kwargs={{'{p.name}': ...}}")
        if isinstance(value, torch.Tensor):
            raise TraceError(f"forward argument '{p.name}' is a tensor: pass it as an example input, not in kwargs=")
        self.specialized[p.name] = value
        return value

    # ------------------------------------------------------------------ Python-level questions
    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self._answer(obj, "bool")
        b = bool(value)
        self._guard(obj.node, b)
        return b

    def concrete(self, obj: fx.Proxy, kind: str) -> Any:
        value = self._answer(obj, kind)
        if kind == "len":
            n = len(value)
            if isinstance(value, torch.Tensor):  # len(x) reads the batch size, not the channels
                self._guard(self.create_proxy("call_method", "size", (obj, 0), {}).node, n)
            else:
                self._guard(self.create_proxy("call_function", operator.length_hint, (obj,), {}).node, n)
            return n
        out = {"index": operator.index, "int": int, "float": float}[kind](value)
        self._guard(obj.node, out)
        return out

    def iter(self, obj: fx.Proxy) -> Iterator:
        value = self._answer(obj, "iter")
        n = value.shape[0] if isinstance(value, torch.Tensor) else len(value)
        if isinstance(value, torch.Tensor):
            size = self.create_proxy("call_method", "size", (obj, 0), {})
            self._guard(size.node, n)
        elif not isinstance(value, torch.Size):  # a Size's length is the rank, fixed by the graph's ops
            self._guard(self.create_proxy("call_function", operator.length_hint, (obj,), {}).node, n)
        return iter([obj[i] for i in range(n)])

    def _answer(self, obj: fx.Proxy, kind: str) -> Any:
        node = obj.node
        value = self.value_of(node)
        if isinstance(value, torch.Tensor) and kind not in ("iter", "len"):
            what = {"bool": "a Python condition (if / while / assert / and / or)", "index": "a Python int",
                    "int": "int()", "float": "float()", "len": "len()"}[kind]
            raise TraceError(
                f"data-dependent control flow: {what} on the values of tensor '{describe(node)}' cannot be traced "
                "(the answer changes with the input data)")
        return value

    def _guard(self, node: fx.Node, expected: Any) -> None:
        src = node.meta.get("source", "")
        line = ""
        if src:
            import linecache
            fname, _, lineno = src.rpartition(":")
            text = linecache.getline(fname, int(lineno)).strip() if lineno.isdigit() else ""
            line = f" at {os.path.basename(fname)}:{lineno}" + (f" `{text}`" if text else "")
        where = node.meta.get("module_path")
        desc = f"{describe(node)}{line}" + (f" (module '{where}')" if where else "")
        self.create_node("call_function", check_guard, (node, expected, desc), {})
        self.guards.append({"expected": expected if isinstance(expected, (bool, int, float)) else str(expected),
                            "description": desc})

    def is_tensor(self, node: fx.Node) -> bool:
        """Whether ``node`` holds a tensor, decided from the graph (an example value when unclear)."""
        if node.op == "placeholder":
            return True
        if node.op == "call_module":
            return True
        if node.op == "get_attr":
            return isinstance(_fetch(self.root, str(node.target)), torch.Tensor)
        if node.op == "call_method":
            if node.target in _NON_TENSOR_METHODS:
                return False
            return isinstance(node.args[0], fx.Node) and self.is_tensor(node.args[0])
        if node.op == "call_function":
            if node.target is builtins.getattr:
                return False
            if node.target is operator.getitem:
                src = node.args[0]
                return isinstance(src, fx.Node) and self.is_tensor(src) and \
                    not (src.op == "call_function" and src.target is builtins.getattr)
            return any(self.is_tensor(a) for a in node.all_input_nodes)
        return False

    # ------------------------------------------------------------------ lazy example values
    def value_of(self, node: fx.Node) -> Any:
        """The value ``node`` takes on the example inputs: real tensors when that is cheap (see
        :func:`prefer_real`), else fake tensors (nothing computed); the other kind when the first fails."""
        first = not prefer_real(self.root, self._inputs)
        try:
            return self._evaluate(node, fake=first)
        except TraceError:
            raise
        except Exception:
            try:
                return self._evaluate(node, fake=not first)
            except Exception as exc:
                raise TraceError(f"cannot evaluate '{describe(node)}' on the example inputs to answer a Python-level "
                                 f"question: {type(exc).__name__}: {exc}") from exc

    def _evaluate(self, node: fx.Node, fake: bool) -> Any:
        env = self._fake_env if fake else self._real_env
        if node in env:
            return env[node]
        order: list[fx.Node] = []
        seen: set[fx.Node] = set()
        stack: list[tuple[fx.Node, bool]] = [(node, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen or n in env:
                continue
            seen.add(n)
            stack.append((n, True))
            for a in n.all_input_nodes:
                if a not in env and a not in seen:
                    stack.append((a, False))
        if fake and self._mode is None:
            from torch._subclasses.fake_tensor import FakeTensorMode
            self._mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._evaluating += 1
        try:
            with torch.no_grad():
                for n in order:
                    env[n] = self._compute(n, env, fake)
        finally:
            self._evaluating -= 1
        return env[node]

    def _compute(self, n: fx.Node, env: dict[fx.Node, Any], fake: bool) -> Any:
        def load(t: torch.Tensor) -> torch.Tensor:
            return self._mode.from_tensor(t) if fake else t.clone()

        if n.op == "placeholder":
            return load(self._inputs[self.placeholders.index(n)])
        if n.op == "get_attr":
            v = _fetch(self.root, str(n.target))
            return load(v) if isinstance(v, torch.Tensor) else v
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        ctx = self._mode if fake else contextlib.nullcontext()
        with ctx:
            if n.op == "call_function":
                if n.target is check_guard or n.target is torch._assert:
                    return None
                return n.target(*args, **kwargs)
            if n.op == "call_method":
                return getattr(args[0], str(n.target))(*args[1:], **kwargs)
            if n.op == "call_module":
                return self.root.get_submodule(str(n.target))(*args, **kwargs)
        raise TraceError(f"cannot evaluate node {n.format_node()}")


def prefer_real(model: nn.Module, inputs: tuple[torch.Tensor, ...], budget: float = 2e9) -> bool:
    """Whether running ``model`` for real on ``inputs`` is cheap: parameters x input pixels (a bound on the
    MACs of full-resolution convs) under ``budget``, or fake tensors would cost their one-time start-up
    (about 4 s: the first FakeTensorMode of a process imports torch._dynamo) and the run is not huge."""
    params = sum(p.numel() for p in model.parameters())
    pixels = max((x[0, 0].numel() if x.dim() >= 3 else x[0].numel() if x.dim() >= 1 else 1) for x in inputs) \
        if inputs else 1
    work = params * pixels * max((x.shape[0] for x in inputs if x.dim() >= 1), default=1)
    if "torch._dynamo" in sys.modules:  # fake tensors are warm: use them unless the real run is trivial
        return work <= budget / 20
    return work <= budget


def _torch_layer_base(cls: type) -> type | None:
    for k in cls.__mro__:
        if k.__module__.startswith(("torch.nn.modules.", "torch.ao.nn.")):
            return None if k is nn.Module else k
    return None


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def describe(node: Any, depth: int = 0) -> str:
    """A short Python-like rendering of the expression computing ``node`` (for guard and error messages)."""
    if not isinstance(node, fx.Node):
        return repr(node)
    if depth > 4:
        return node.name
    d = depth + 1
    if node.op == "placeholder":
        return node.name
    if node.op == "get_attr":
        return f"self.{node.target}"
    if node.op == "call_method":
        rest = ", ".join(describe(a, d) for a in node.args[1:])
        return f"{describe(node.args[0], d)}.{node.target}({rest})"
    if node.op == "call_function":
        t = node.target
        if t is builtins.getattr:
            return f"{describe(node.args[0], d)}.{node.args[1]}"
        if t is operator.getitem:
            idx = node.args[1]
            if isinstance(idx, slice):
                s = f"{'' if idx.start is None else describe(idx.start, d)}:" \
                    f"{'' if idx.stop is None else describe(idx.stop, d)}"
            else:
                s = describe(idx, d)
            return f"{describe(node.args[0], d)}[{s}]"
        if t in _BIN_SYMBOLS and len(node.args) == 2:
            return f"({describe(node.args[0], d)} {_BIN_SYMBOLS[t]} {describe(node.args[1], d)})"
        if t is operator.length_hint:
            return f"len({describe(node.args[0], d)})"
        if t is operator.not_:
            return f"not {describe(node.args[0], d)}"
        if getattr(t, "__module__", None) in ("math", "builtins", "_operator", "operator"):
            args = ", ".join(describe(a, d) for a in node.args)
            return f"{getattr(t, '__name__', str(t))}({args})"
    if node.op == "call_module":
        return f"self.{node.target}(...)"
    return node.name
