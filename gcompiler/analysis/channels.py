"""Channel-coupling analysis: which channels of a traced network must be pruned together.

``channel_groups(gm)`` walks a shape-propagated :class:`torch.fx.GraphModule` once and unions individual
channels ``(node, c)`` (``c`` indexing dim 1 of the node's output) whenever an op forces them to live or die
together: a pass-through op joins output channel ``c`` with input channel ``c``, an elementwise op joins
its operands, ``cat`` on dim 1 joins each input with an offset slice of the output, ``pixel_shuffle(r)``
joins a block of ``r**2`` input channels with one output channel.  Convolutions, transposed convolutions
and linear layers do *not* join their input and output: they consume one channel space and open another.

Each connected set of channels is one *unit*: the smallest thing that can be removed.  Units that touch
exactly the same tensors form a :class:`ChannelGroup` (a residual trunk of width 256 is one group of 256
units).  A group is pinned (``prunable = False``, with a ``reason`` naming the op) when any tensor it
touches is a graph input or output, a constant, or is read or written by an op whose channel mapping is
not known.  Unknown ops are never guessed to be elementwise.

See ``docs/channel_groups.md`` for the rules and how the pruning passes use the result.
"""
from __future__ import annotations

import dataclasses
import operator
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TraceError
from ..fx.utils import not_plain_reason, torch_base_class

__all__ = [
    "ChannelGroup",
    "ConsumerSlice",
    "EqualRemoval",
    "channel_groups",
    "describe_groups",
    "groups_by_node",
    "register_channel_rule",
]


# --------------------------------------------------------------------------------------------------
# Result data structure
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConsumerSlice:
    """How one consumer (a conv / transposed conv / linear reading the group as *input* channels) sees it.

    ``input`` is the tensor node the consumer reads; it is one of the group's tensors, so
    ``group.index[input][u]`` lists the consumer's input channels that belong to unit ``u``.
    ``offset`` is the first such channel when the group occupies one contiguous slice of the consumer's
    input in unit order (the usual case; a concat consumer reads each group at its own offset), else None.
    ``block`` is the number of the consumer's input channels per unit, ``groups`` the consumer's conv
    ``groups`` (1 for ordinary convs and linear layers), ``in_channels`` the consumer's total input width.
    """

    node: str
    input: str
    kind: str
    offset: int | None
    block: int
    groups: int
    in_channels: int


@dataclasses.dataclass(frozen=True)
class EqualRemoval:
    """A grouped conv constraint: ``tensor``'s channels form ``groups`` contiguous equal slices and every
    slice must lose the same number of channels (on the conv's ``side``: its input or its output)."""

    node: str
    tensor: str
    groups: int
    side: str  # "input" | "output"


@dataclasses.dataclass
class ChannelGroup:
    """A set of channels that a pruning pass must remove together.

    The group consists of ``channels`` independent *units*.  Removing unit ``u`` removes, from every
    tensor ``t`` in :attr:`tensors` (producers and members), the output channels ``index[t][u]``, and from
    every consumer the input channels ``index[consumer_slices[c].input][u]``.  A unit is one channel at an
    ordinary producer, and a block of ``r**2`` channels at a producer feeding ``pixel_shuffle(r)``.

    Attributes:
        name: stable name, derived from the first producer (``"conv1"``; ``"conv1[0:8]"`` when the
            producer's channels are split between groups); the first tensor's name when there is no producer.
        producers: nodes whose output channels the group owns and that create them (conv, transposed conv,
            linear, functional conv), in graph order.
        consumers: nodes that read the group's channels as input channels (see ``consumer_slices``).
        members: pass-through nodes whose output channels belong to the group: norms, activations,
            padding, dropout, interpolation, pooling, depthwise convs, elementwise ops, cat, pixel_shuffle,
            and (for pinned groups) graph inputs, constants and the outputs of unknown ops.
        channels: number of units.
        prunable: False when the group is pinned.
        reason: why it is pinned, naming the op(s) ("" when prunable).
        index: for every tensor node of the group, ``index[node][u]`` = that node's channels of unit ``u``.
        consumer_slices: per consumer, how it reads the group.
        equal_removal: grouped-conv constraints on this group's tensors.
        kinds: the role of every node mentioned (``"conv"``, ``"norm"``, ``"concat"``, ...).
    """

    name: str
    producers: list[str]
    consumers: list[str]
    members: list[str]
    channels: int
    prunable: bool
    reason: str
    index: dict[str, tuple[tuple[int, ...], ...]]
    consumer_slices: dict[str, ConsumerSlice]
    equal_removal: list[EqualRemoval]
    kinds: dict[str, str]

    @property
    def tensors(self) -> list[str]:
        """Every node whose output channels belong (partly) to this group, in graph order."""
        return list(self.index)

    def block(self, node: str | None = None) -> int:
        """Channels per unit in ``node``'s output (default: the first producer, else the first tensor)."""
        if node is None:
            node = self.producers[0] if self.producers else next(iter(self.index))
        if node in self.consumer_slices and node not in self.index:
            node = self.consumer_slices[node].input
        return len(self.index[node][0]) if self.channels else 0

    def channels_of(self, node: str, units: Iterable[int] | None = None) -> list[int]:
        """Sorted channel indices of ``node``'s output that belong to ``units`` (default: all units).

        For a consumer node, the channels of its *input* are returned.
        """
        if node not in self.index and node in self.consumer_slices:
            node = self.consumer_slices[node].input
        rows = self.index[node]
        picked = range(len(rows)) if units is None else units
        return sorted(c for u in picked for c in rows[u])

    def slice(self, node: str) -> tuple[int, int] | None:
        """``(start, stop)`` when the group's channels in ``node`` (or a consumer's input) are one contiguous
        range laid out in unit order, else None."""
        if node not in self.index and node in self.consumer_slices:
            node = self.consumer_slices[node].input
        flat = [c for row in self.index[node] for c in row]
        if not flat:
            return None
        start = flat[0]
        return (start, start + len(flat)) if flat == list(range(start, start + len(flat))) else None

    def locate(self, unit: int) -> list[tuple[str, int]]:
        """Every ``(node, channel)`` that unit ``unit`` covers, over all the group's tensors."""
        if not 0 <= unit < self.channels:
            raise IndexError(f"group '{self.name}' has {self.channels} channels; unit {unit} is out of range")
        return [(node, c) for node, rows in self.index.items() for c in rows[unit]]

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"pinned: {self.reason}"
        return (f"ChannelGroup({self.name!r}, channels={self.channels}, producers={self.producers}, "
                f"consumers={self.consumers}, members={len(self.members)}, {state})")


# --------------------------------------------------------------------------------------------------
# Extension point
# --------------------------------------------------------------------------------------------------

_CUSTOM_RULES: dict[Any, str] = {}
_RULES = ("passthrough", "pin")


def register_channel_rule(target: type | Callable[..., Any] | str, rule: str) -> None:
    """Tell the analysis how a module type, function, or method name maps channels.

    ``rule`` is ``"passthrough"`` (output channel c depends only on input channel c, the op holds at
    most per-channel state, e.g. a mask or a fake-quant module) or ``"pin"`` (pin every channel it
    touches).  A module class may instead define ``gcompiler_channel_rule = "passthrough"``.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown channel rule {rule!r}; valid rules: {', '.join(_RULES)}")
    _CUSTOM_RULES[target] = rule


# --------------------------------------------------------------------------------------------------
# Op tables
# --------------------------------------------------------------------------------------------------

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.RReLU, nn.Identity,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_PADS = (
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
_UPSAMPLES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
_SOFTMAXES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)

# Functions / method names whose output channel c depends only on channel c of their tensor operands
# (with broadcasting): the operands are coupled where their channel counts agree.
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.mod, operator.neg, operator.pos, operator.abs, operator.gt, operator.ge, operator.lt,
    operator.le, operator.eq, operator.ne, operator.and_, operator.or_, operator.xor, operator.invert,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.floor_divide, torch.pow, torch.maximum, torch.minimum, torch.fmax, torch.fmin,
    torch.where, torch.lerp, torch.addcmul, torch.addcdiv, torch.clamp, torch.clip, torch.relu, torch.sigmoid,
    torch.tanh, torch.exp, torch.log, torch.log1p, torch.expm1, torch.abs, torch.neg, torch.sqrt, torch.rsqrt,
    torch.sin, torch.cos, torch.sign, torch.square, torch.erf, torch.round, torch.floor, torch.ceil,
    torch.reciprocal, torch.nan_to_num, torch.gt, torch.ge, torch.lt, torch.le, torch.eq, torch.ne,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.threshold, F.rrelu,
    F.hardshrink, F.softshrink, F.tanhshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "pow", "maximum", "minimum", "clamp",
    "clip", "relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "sqrt", "rsqrt", "sign", "square",
    "reciprocal", "round", "floor", "ceil", "lerp", "addcmul", "addcdiv", "where", "gt", "ge", "lt", "le",
    "eq", "ne", "masked_fill",
    "add_", "sub_", "mul_", "div_", "pow_", "clamp_", "clip_", "relu_", "sigmoid_", "tanh_", "exp_",
    "abs_", "neg_", "sqrt_", "lerp_", "addcmul_", "addcdiv_",
}
_ELEMENTWISE_METHODS |= {f"__{n}__" for n in ("add", "sub", "mul", "truediv", "radd", "rsub", "rmul",
                                               "rtruediv", "neg", "pow", "rpow")}
# Ops that only read their first operand's values (other tensor arguments give a dtype or device).
_CAST_METHODS = {"contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type_as",
                 "type", "requires_grad_", "cpu", "cuda"}
_CAST_FUNCS = {torch.clone, torch.Tensor.contiguous, torch.Tensor.detach}
_INTERP_FUNCS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
_POOL_FUNCS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2, torch.avg_pool1d: 1,
}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
                 torch.prod}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_CONV_FUNCS = {F.conv1d: False, F.conv2d: False, F.conv3d: False, torch.conv1d: False, torch.conv2d: False,
               torch.conv3d: False, F.conv_transpose1d: True, F.conv_transpose2d: True,
               F.conv_transpose3d: True, torch.conv_transpose1d: True, torch.conv_transpose2d: True,
               torch.conv_transpose3d: True}
_SPLIT_FUNCS = {torch.split, torch.chunk, torch.tensor_split}
_SPLIT_METHODS = {"split", "chunk", "tensor_split"}
_FLATTEN_FUNCS = {torch.flatten}
_SHAPE_HARMLESS_ATTRS = {"dtype", "device", "ndim", "is_cuda", "requires_grad"}


# --------------------------------------------------------------------------------------------------
# Union-find over channel ids
# --------------------------------------------------------------------------------------------------

class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


@dataclasses.dataclass
class _Space:
    node: str
    base: int
    size: int

    def id(self, c: int) -> int:
        return self.base + c


def _is_tensor_meta(meta: Any) -> bool:
    return meta is not None and hasattr(meta, "shape") and hasattr(meta, "dtype")


def _flatten_nodes(obj: Any) -> Iterator[torch.fx.Node]:
    if isinstance(obj, torch.fx.Node):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten_nodes(o)
    elif isinstance(obj, slice):
        for o in (obj.start, obj.stop, obj.step):
            yield from _flatten_nodes(o)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(node: torch.fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return str(t)
    if node.op == "call_method":
        return f".{t}()"
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", None) or str(t)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


def _spatial_dims(module: nn.Module) -> int | None:
    name = type(module).__name__
    for d in (1, 2, 3):
        if name.endswith(f"{d}d"):
            return d
    return None


# --------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------

class _Analysis:
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.spaces: dict[str, _Space] = {}
        self.tuple_spaces: dict[str, list[_Space | None]] = {}
        self.order: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self.producers: set[str] = set()
        self.pins: dict[str, list[str]] = defaultdict(list)
        self.consumers: list[tuple[str, str, str, int]] = []  # (consumer, input tensor, kind, groups)
        self.equal_removal: list[EqualRemoval] = []
        self.shape_src: dict[str, torch.fx.Node] = {}  # node holding x.shape / x.size() -> x
        self.nodes = {n.name: n for n in gm.graph.nodes}

    # ---------------------------------------------------------------- space helpers
    def meta(self, node: torch.fx.Node) -> Any:
        return node.meta.get("tensor_meta")

    def shape(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        m = self.meta(node)
        return tuple(m.shape) if _is_tensor_meta(m) else None

    def has_channels(self, node: torch.fx.Node) -> bool:
        s = self.shape(node)
        return s is not None and len(s) >= 2

    def space(self, node: torch.fx.Node) -> _Space | None:
        """The channel space of ``node``'s output, created on first use (get_attr tensors lazily)."""
        sp = self.spaces.get(node.name)
        if sp is None and node.op == "get_attr" and self.has_channels(node):
            sp = self.open(node, "constant")
            self.pin(node, f"constant tensor '{node.target}' (get_attr) holds fixed channels")
        return sp

    def open(self, node: torch.fx.Node, kind: str, size: int | None = None) -> _Space:
        if size is None:
            size = self.shape(node)[1]
        sp = _Space(node.name, self.uf.make(size), size)
        self.spaces[node.name] = sp
        self.kinds.setdefault(node.name, kind)
        return sp

    def open_if_tensor(self, node: torch.fx.Node, kind: str) -> _Space | None:
        return self.open(node, kind) if self.has_channels(node) else None

    def pin(self, node: torch.fx.Node | str, reason: str) -> None:
        name = node if isinstance(node, str) else node.name
        if reason not in self.pins[name]:
            self.pins[name].append(reason)

    def union_map(self, a: _Space, b: _Space, pairs: Iterable[tuple[int, int]]) -> None:
        for ca, cb in pairs:
            self.uf.union(a.id(ca), b.id(cb))

    def same(self, out: _Space, src: _Space) -> None:
        self.union_map(out, src, ((c, c) for c in range(out.size)))

    def data_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """Tensor-valued node arguments that carry channels (ndim >= 2)."""
        seen: list[torch.fx.Node] = []
        for a in _flatten_nodes((node.args, node.kwargs)):
            if a not in seen and self.has_channels(a):
                seen.append(a)
        return seen

    def unknown(self, node: torch.fx.Node, why: str | None = None) -> None:
        """Pin everything ``node`` reads and writes: its channel mapping is not known."""
        what = f"{node.op} '{node.name}' ({_target_name(node)})"
        reason = f"{what}: {why}" if why else f"{what} has no known channel mapping"
        for a in self.data_inputs(node):
            sp = self.space(a)
            if sp is not None:
                self.pin(a, reason)
        for a in _flatten_nodes((node.args, node.kwargs)):
            src = self.shape_src.get(a.name)
            if src is not None and self.space(src) is not None:
                self.pin(src, f"{what} uses the shape of '{src.name}' (its channel count)")
        self.kinds[node.name] = "unknown"
        if self.has_channels(node):
            self.open(node, "unknown")
            self.pin(node, reason)
        else:
            m = self.meta(node)
            if isinstance(m, (list, tuple)):
                self.tuple_spaces[node.name] = [None] * len(m)

    def passthrough(self, node: torch.fx.Node, src: torch.fx.Node, kind: str) -> None:
        sp_in = self.space(src) if self.has_channels(src) else None
        if sp_in is None or not self.has_channels(node) or self.shape(node)[1] != sp_in.size:
            self.unknown(node, f"expected a {kind} op keeping the {sp_in.size if sp_in else '?'} channels of "
                               f"'{src.name}' on dim 1, got shape {self.shape(node)}")
            return
        self.same(self.open(node, kind), sp_in)

    def check_ndim(self, node: torch.fx.Node, src: torch.fx.Node, dims: int | None) -> bool:
        """True when ``src`` is a batched (N, C, *spatial) tensor for an op over ``dims`` spatial dims."""
        s = self.shape(src)
        if s is None or len(s) < 2:
            return False
        return dims is None or len(s) == dims + 2

    # ---------------------------------------------------------------- dispatch
    def run(self) -> None:
        graph = self.gm.graph
        if not any(_is_tensor_meta(self.meta(n)) for n in graph.nodes):
            raise TraceError("channel_groups needs shape metadata (node.meta['tensor_meta']) but the graph has "
                             "none; trace with gcompiler.trace(model, example_input) or run "
                             "torch.fx.passes.shape_prop.ShapeProp(gm).propagate(example_input) first")
        for i, node in enumerate(graph.nodes):
            self.order[node.name] = i
            handler = getattr(self, f"visit_{node.op}")
            handler(node)
        self.tie_shared_modules()

    def tie_shared_modules(self) -> None:
        """A module with parameters or buffers called at several places has one set of weights, so its
        call sites must lose the same channels: join their outputs, and their inputs, channel by channel."""
        sites: dict[str, list[torch.fx.Node]] = defaultdict(list)
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                sites[str(node.target)].append(node)
        for target, nodes in sites.items():
            m = self.modules.get(target)
            if len(nodes) < 2 or m is None or \
                    (next(m.parameters(), None) is None and next(m.buffers(), None) is None):
                continue
            for role in ("output", "input"):
                spaces = []
                for n in nodes:
                    src = n if role == "output" else (n.args[0] if n.args else None)
                    sp = self.space(src) if isinstance(src, torch.fx.Node) else None
                    spaces.append((src, sp))
                sizes = {sp.size if sp else None for _, sp in spaces}
                if len(sizes) != 1 or None in sizes:
                    for src, sp in spaces:
                        if sp is not None:
                            self.pin(src, f"module '{target}' is called at {len(nodes)} places with different "
                                          f"channel layouts")
                    continue
                first = spaces[0][1]
                for _, sp in spaces[1:]:
                    self.same(first, sp)

    def visit_placeholder(self, node: torch.fx.Node) -> None:
        if "tensor_meta" not in node.meta and not node.users:
            return
        if self.has_channels(node):
            self.open(node, "input")
            self.pin(node, f"graph input '{node.name}'")

    def visit_get_attr(self, node: torch.fx.Node) -> None:
        pass  # spaces of constants are created lazily when an op reads them as data

    def visit_output(self, node: torch.fx.Node) -> None:
        for a in _flatten_nodes(node.args):
            if self.space(a) is not None:
                self.pin(a, f"graph output ('{a.name}' is returned)")
            elif a.name in self.tuple_spaces:
                for sp in self.tuple_spaces[a.name]:
                    if sp is not None:
                        self.pin(sp.node, f"graph output ('{a.name}' is returned)")

    def visit_call_module(self, node: torch.fx.Node) -> None:
        m = self.modules.get(str(node.target))
        if m is None:
            self.unknown(node, "module not found in the GraphModule")
            return
        rule = getattr(m, "gcompiler_channel_rule", None)
        for cls, r in _CUSTOM_RULES.items():
            if isinstance(cls, type) and isinstance(m, cls):
                rule = r
        ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
        x = ins[0] if ins else None
        if rule is None and torch_base_class(type(m)) is not None \
                and not type(m).__module__.startswith("gcompiler."):
            why = not_plain_reason(m)
            if why is not None:  # a user subclass of a torch layer with its own forward, hooks, parametrizations
                self.unknown(node, why)
                return
        if rule == "pin":
            self.unknown(node, "pinned by a registered channel rule")
        elif rule == "passthrough":
            if x is None or len(self.data_inputs(node)) != 1:
                self.unknown(node, "a passthrough rule needs exactly one tensor input")
            else:
                self.passthrough(node, x, "passthrough")
        elif isinstance(m, nn.modules.conv._ConvNd):
            self.conv(node, x, m.in_channels, m.out_channels, m.groups,
                      isinstance(m, nn.modules.conv._ConvTransposeNd), _spatial_dims(m), "module")
        elif isinstance(m, nn.Linear):
            self.linear(node, x, m.in_features, m.out_features)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            dims = None if isinstance(m, (nn.BatchNorm1d, nn.SyncBatchNorm)) else _spatial_dims(m)
            if isinstance(m, nn.modules.instancenorm._InstanceNorm) and dims is not None:
                if not self.check_ndim(node, x, dims):
                    self.unknown(node, "unbatched input (channels not on dim 1)")
                    return
            self.passthrough(node, x, "norm")
        elif isinstance(m, nn.GroupNorm):
            if m.num_groups == m.num_channels:
                self.passthrough(node, x, "norm")
            else:
                self.unknown(node, f"GroupNorm({m.num_groups}, {m.num_channels}) normalizes across the "
                                   f"channels of each group, so removing one changes the others")
        elif isinstance(m, nn.LayerNorm):
            nd = len(self.shape(x) or ())
            if nd - len(m.normalized_shape) >= 2:
                self.passthrough(node, x, "norm")
            else:
                self.unknown(node, "LayerNorm normalizes across the channel axis")
        elif isinstance(m, _ACTIVATIONS):
            self.passthrough(node, x, "activation")
        elif isinstance(m, _DROPOUTS):
            self.passthrough(node, x, "dropout")
        elif isinstance(m, _PADS):
            if self.check_ndim(node, x, _spatial_dims(m)):
                self.passthrough(node, x, "pad")
            else:
                self.unknown(node, "unbatched input (channels not on dim 1)")
        elif isinstance(m, _POOLS):
            if getattr(m, "return_indices", False):
                self.unknown(node, "return_indices=True")
            elif self.check_ndim(node, x, _spatial_dims(m)):
                self.passthrough(node, x, "pool")
            else:
                self.unknown(node, "unbatched input (channels not on dim 1)")
        elif isinstance(m, _UPSAMPLES):
            self.passthrough(node, x, "interpolate")
        elif isinstance(m, _SOFTMAXES):
            self.softmax(node, x, m.dim)
        elif isinstance(m, nn.PixelShuffle):
            self.pixel_shuffle(node, x, m.upscale_factor)
        elif isinstance(m, nn.PixelUnshuffle):
            self.pixel_unshuffle(node, x, m.downscale_factor)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, x, m.start_dim)
        else:
            self.unknown(node, f"module type {type(m).__name__} has no known channel mapping")

    def visit_call_method(self, node: torch.fx.Node) -> None:
        name = str(node.target)
        x = node.args[0] if node.args else None
        if not isinstance(x, torch.fx.Node):
            self.unknown(node)
            return
        if self.check_shape_reader(node):
            return
        rule = _CUSTOM_RULES.get(name)
        if rule == "pin":
            self.unknown(node, "pinned by a registered channel rule")
        elif rule == "passthrough":
            self.passthrough(node, x, "passthrough")
        elif name == "size":
            self.size_method(node, x)
        elif name in _ELEMENTWISE_METHODS:
            self.elementwise(node)
        elif name in _CAST_METHODS:
            self.passthrough(node, x, "cast")
        elif name in _REDUCE_METHODS:
            self.reduce(node, x, _arg(node, 1, "dim"))
        elif name in _SPLIT_METHODS:
            self.split(node, x, _arg(node, 2, "dim", 0))
        elif name == "flatten":
            self.flatten(node, x, _arg(node, 1, "start_dim", 0))
        elif name in ("softmax", "log_softmax"):
            self.softmax(node, x, _arg(node, 1, "dim"))
        else:
            self.unknown(node)

    def visit_call_function(self, node: torch.fx.Node) -> None:
        t = node.target
        x = node.args[0] if node.args else None
        if self.check_shape_reader(node):
            return
        rule = _CUSTOM_RULES.get(t)
        if rule == "pin":
            self.unknown(node, "pinned by a registered channel rule")
        elif rule == "passthrough" and isinstance(x, torch.fx.Node):
            self.passthrough(node, x, "passthrough")
        elif t is operator.getitem:
            self.getitem(node, x, node.args[1])
        elif t is getattr:
            self.getattr_(node, x, node.args[1])
        elif t in _ELEMENTWISE_FUNCS:
            self.elementwise(node)
        elif t in _CAST_FUNCS and isinstance(x, torch.fx.Node):
            self.passthrough(node, x, "cast")
        elif t in _CAT_FUNCS:
            self.cat(node, node.args[0] if node.args else node.kwargs.get("tensors"),
                     _arg(node, 1, "dim", 0))
        elif t in _INTERP_FUNCS and isinstance(x, torch.fx.Node):
            if self.check_ndim(node, x, None) and len(self.shape(x)) >= 3:
                self.passthrough(node, x, "interpolate")
            else:
                self.unknown(node, "input is not batched (N, C, ...)")
        elif t in _POOL_FUNCS and isinstance(x, torch.fx.Node):
            if node.kwargs.get("return_indices") or any(a is True for a in node.args[1:]):
                self.unknown(node, "return_indices=True")
            elif self.check_ndim(node, x, _POOL_FUNCS[t]):
                self.passthrough(node, x, "pool")
            else:
                self.unknown(node, "unbatched input (channels not on dim 1)")
        elif t is F.pad and isinstance(x, torch.fx.Node):
            pad = _arg(node, 1, "pad")
            s = self.shape(x)
            if isinstance(pad, (list, tuple)) and s is not None and len(pad) // 2 <= len(s) - 2:
                self.passthrough(node, x, "pad")
            else:
                self.unknown(node, "pads the channel or batch axis (or the pad is not a constant)")
        elif t in (F.pixel_shuffle, torch.pixel_shuffle):
            self.pixel_shuffle(node, x, _arg(node, 1, "upscale_factor"))
        elif t in (F.pixel_unshuffle, torch.pixel_unshuffle):
            self.pixel_unshuffle(node, x, _arg(node, 1, "downscale_factor"))
        elif t in _CONV_FUNCS:
            self.functional_conv(node, x, _CONV_FUNCS[t])
        elif t is F.linear:
            self.functional_linear(node, x)
        elif t in (F.instance_norm,):
            extra = [a for a in _flatten_nodes((node.args[1:], node.kwargs))]
            if extra:
                self.unknown(node, "functional norm with per-channel tensors; use an nn module")
            else:
                self.passthrough(node, x, "norm")
        elif t in _REDUCE_FUNCS and isinstance(x, torch.fx.Node):
            self.reduce(node, x, _arg(node, 1, "dim"))
        elif t in _SPLIT_FUNCS and isinstance(x, torch.fx.Node):
            self.split(node, x, _arg(node, 2, "dim", 0))
        elif t in _FLATTEN_FUNCS and isinstance(x, torch.fx.Node):
            self.flatten(node, x, _arg(node, 1, "start_dim", 0))
        elif t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            self.softmax(node, x, _arg(node, 1, "dim"))
        else:
            self.unknown(node)

    # ---------------------------------------------------------------- shapes read as values
    def check_shape_reader(self, node: torch.fx.Node) -> bool:
        """Handle an op that reads a node holding a tensor's shape; returns True when ``node`` was handled."""
        readers = [a for a in _flatten_nodes((node.args, node.kwargs)) if a.name in self.shape_src]
        if not readers:
            return False
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in readers:
            src = self.shape_src[node.args[0].name]
            idx = node.args[1]
            nd = len(self.shape(src))
            reads_channel = True
            if isinstance(idx, int):
                reads_channel = _norm_dim(idx, nd) == 1
            elif isinstance(idx, slice) and all(isinstance(v, (int, type(None))) for v in
                                                (idx.start, idx.stop, idx.step)):
                reads_channel = 1 in range(nd)[idx]
            if reads_channel:
                self.pin(src, f"'{node.name}' reads the channel count of '{src.name}' (shape index {idx!r})")
            self.kinds[node.name] = "shape"
            return True
        for r in readers:
            src = self.shape_src[r.name]
            self.pin(src, f"{node.op} '{node.name}' ({_target_name(node)}) uses the shape of '{src.name}'")
        self.unknown(node)
        return True

    def size_method(self, node: torch.fx.Node, x: torch.fx.Node) -> None:
        dim = _arg(node, 1, "dim")
        s = self.shape(x)
        self.kinds[node.name] = "shape"
        if s is None or len(s) < 2:
            return
        if dim is None:
            self.shape_src[node.name] = x
        elif not isinstance(dim, int) or _norm_dim(dim, len(s)) == 1:
            self.pin(x, f"'{node.name}' reads the channel count of '{x.name}' (.size({dim!r}))")

    def getattr_(self, node: torch.fx.Node, x: Any, attr: Any) -> None:
        if isinstance(x, torch.fx.Node) and attr == "shape" and self.shape(x) is not None:
            self.kinds[node.name] = "shape"
            if len(self.shape(x)) >= 2:
                self.shape_src[node.name] = x
        elif isinstance(x, torch.fx.Node) and attr in _SHAPE_HARMLESS_ATTRS:
            self.kinds[node.name] = "shape"
        else:
            self.unknown(node, f"attribute {attr!r}")

    # ---------------------------------------------------------------- op rules
    def elementwise(self, node: torch.fx.Node) -> None:
        out_shape = self.shape(node)
        operands = self.data_inputs(node)
        what = f"'{node.name}' ({_target_name(node)})"
        # 0-d / 1-d tensors and python scalars have no channel axis and broadcast along it.
        if out_shape is None or len(out_shape) < 2:
            if operands:
                self.unknown(node, "result has no channel axis")
            return
        n, c_out = len(out_shape), out_shape[1]
        out = self.open(node, "elementwise")
        coupled = False
        for a in _flatten_nodes((node.args, node.kwargs)):
            s = self.shape(a)
            if s is None:
                continue
            m = len(s)
            if m == n:
                sp = self.space(a)
                if s[1] == c_out:
                    self.same(out, sp)
                    coupled = True
                else:  # s[1] == 1 broadcast against c_out channels
                    self.pin(a, f"{what} broadcasts the single channel of '{a.name}' against {c_out} channels")
            else:
                aligned = 1 - (n - m)
                if aligned >= 0 and s[aligned] != 1:
                    self.pin(node, f"{what}: operand '{a.name}' of shape {tuple(s)} holds per-channel values "
                                   f"on its dim {aligned}")
                if m >= 2:
                    self.pin(a, f"{what} broadcasts '{a.name}' (shape {tuple(s)}) so that its dim 1 is not "
                                f"the channel axis")
        if not coupled:
            self.pin(node, f"{what}: no operand carries the {c_out} output channels")

    def cat(self, node: torch.fx.Node, tensors: Any, dim: Any) -> None:
        out_shape = self.shape(node)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.fx.Node) for t in tensors) \
                or out_shape is None or len(out_shape) < 2 or not isinstance(dim, int):
            self.unknown(node, "cat of non-tensor or channel-less inputs")
            return
        if any(self.space(t) is None for t in tensors):
            self.unknown(node, "an input has no channel axis")
            return
        out = self.open(node, "concat")
        if _norm_dim(dim, len(out_shape)) == 1:
            offset = 0
            for t in tensors:
                sp = self.space(t)
                self.union_map(out, sp, ((offset + c, c) for c in range(sp.size)))
                offset += sp.size
        else:
            for t in tensors:
                self.same(out, self.space(t))

    def pixel_shuffle(self, node: torch.fx.Node, x: Any, r: Any) -> None:
        if not isinstance(x, torch.fx.Node) or not isinstance(r, int) or self.shape(x) is None \
                or len(self.shape(x)) != 4:
            self.unknown(node, "pixel_shuffle needs a 4-D (N, C, H, W) input and a constant factor")
            return
        sp_in = self.space(x)
        out = self.open(node, "pixel_shuffle")
        b = r * r
        self.union_map(out, sp_in, ((c, c * b + j) for c in range(out.size) for j in range(b)))

    def pixel_unshuffle(self, node: torch.fx.Node, x: Any, r: Any) -> None:
        if not isinstance(x, torch.fx.Node) or not isinstance(r, int) or self.shape(x) is None \
                or len(self.shape(x)) != 4:
            self.unknown(node, "pixel_unshuffle needs a 4-D (N, C, H, W) input and a constant factor")
            return
        sp_in = self.space(x)
        out = self.open(node, "pixel_unshuffle")
        b = r * r
        self.union_map(out, sp_in, ((c * b + j, c) for c in range(sp_in.size) for j in range(b)))

    def conv(self, node: torch.fx.Node, x: Any, c_in: int, c_out: int, groups: int, transposed: bool,
             dims: int | None, how: str) -> None:
        kind = ("conv_transpose" if transposed else "conv") + ("" if how == "module" else "_functional")
        if not isinstance(x, torch.fx.Node) or not self.check_ndim(node, x, dims) \
                or self.shape(x)[1] != c_in or not self.has_channels(node):
            self.unknown(node, f"{kind} input is not a batched (N, {c_in}, ...) tensor")
            return
        sp_in = self.space(x)
        if groups == c_in and groups > 1:
            # Depthwise: output channels [c*m, (c+1)*m) are computed from input channel c alone.
            mult = c_out // c_in
            out = self.open(node, "depthwise" + ("" if how == "module" else "_functional"))
            self.union_map(out, sp_in, ((c * mult + j, c) for c in range(c_in) for j in range(mult)))
            return
        self.consumers.append((node.name, x.name, kind, groups))
        self.open(node, kind)
        self.producers.add(node.name)
        if groups > 1:
            self.equal_removal.append(EqualRemoval(node.name, x.name, groups, "input"))
            self.equal_removal.append(EqualRemoval(node.name, node.name, groups, "output"))

    def functional_conv(self, node: torch.fx.Node, x: Any, transposed: bool) -> None:
        w = _arg(node, 1, "weight")
        b = _arg(node, 2, "bias")
        if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or \
                (isinstance(b, torch.fx.Node) and b.op != "get_attr") or self.shape(w) is None:
            self.unknown(node, "functional conv whose weight or bias is computed, not a parameter")
            return
        ws, xs, os = self.shape(w), self.shape(x) if isinstance(x, torch.fx.Node) else None, self.shape(node)
        if xs is None or os is None or len(xs) != len(ws):
            self.unknown(node, "functional conv on an unbatched input")
            return
        c_in, c_out = xs[1], os[1]
        groups = (c_out // ws[1]) if transposed else (c_in // ws[1])
        self.conv(node, x, c_in, c_out, groups, transposed, len(ws) - 2, "functional")

    def linear(self, node: torch.fx.Node, x: Any, f_in: int, f_out: int) -> None:
        s = self.shape(x) if isinstance(x, torch.fx.Node) else None
        if s is None or len(s) != 2 or s[1] != f_in:
            self.unknown(node, f"linear reads the last dim of a {len(s) if s else '?'}-D input, not dim 1")
            return
        self.consumers.append((node.name, x.name, "linear", 1))
        self.open(node, "linear")
        self.producers.add(node.name)

    def functional_linear(self, node: torch.fx.Node, x: Any) -> None:
        w = _arg(node, 1, "weight")
        b = _arg(node, 2, "bias")
        if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or \
                (isinstance(b, torch.fx.Node) and b.op != "get_attr"):
            self.unknown(node, "functional linear whose weight or bias is computed, not a parameter")
            return
        ws = self.shape(w)
        self.linear(node, x, ws[1], ws[0])
        if node.name in self.producers:
            self.kinds[node.name] = "linear_functional"
            self.consumers[-1] = (node.name, x.name, "linear_functional", 1)

    def softmax(self, node: torch.fx.Node, x: Any, dim: Any) -> None:
        s = self.shape(x) if isinstance(x, torch.fx.Node) else None
        if s is None or not isinstance(dim, int) or _norm_dim(dim, len(s)) in (0, 1):
            self.unknown(node, "softmax across channels (or an implicit dim)")
        else:
            self.passthrough(node, x, "activation")

    def reduce(self, node: torch.fx.Node, x: torch.fx.Node, dim: Any) -> None:
        s = self.shape(x)
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        if s is None or len(s) < 2 or dim is None or not all(isinstance(d, int) for d in dims) or \
                any(_norm_dim(d, len(s)) < 2 for d in dims):
            self.unknown(node, "reduces over the channel or batch axis")
        else:
            self.passthrough(node, x, "reduce")

    def flatten(self, node: torch.fx.Node, x: Any, start_dim: Any) -> None:
        s = self.shape(x) if isinstance(x, torch.fx.Node) else None
        if s is None or not isinstance(start_dim, int) or _norm_dim(start_dim, len(s)) < 2:
            self.unknown(node, "flattens the channel axis into others")
        else:
            self.passthrough(node, x, "reshape")

    def split(self, node: torch.fx.Node, x: torch.fx.Node, dim: Any) -> None:
        s = self.shape(x)
        metas = self.meta(node)
        if s is None or len(s) < 2 or not isinstance(dim, int) or _norm_dim(dim, len(s)) < 2 or \
                not isinstance(metas, (list, tuple)):
            self.unknown(node, "splits the channel or batch axis")
            return
        sp_in = self.space(x)
        self.kinds[node.name] = "split"
        parts: list[_Space | None] = []
        for i in range(len(metas)):
            sp = _Space(x.name, self.uf.make(sp_in.size), sp_in.size)  # pins on a part land on x
            self.same(sp, sp_in)
            parts.append(sp)
        self.tuple_spaces[node.name] = parts

    def getitem(self, node: torch.fx.Node, src: Any, idx: Any) -> None:
        if not isinstance(src, torch.fx.Node):
            self.unknown(node)
            return
        if src.name in self.tuple_spaces:
            parts = self.tuple_spaces[src.name]
            part = parts[idx] if isinstance(idx, int) and -len(parts) <= idx < len(parts) else None
            if part is None or not self.has_channels(node):
                if self.has_channels(node):
                    self.open(node, "unknown")
                    self.pin(node, f"'{node.name}' takes an element of '{src.name}' whose channel mapping is "
                                   f"not known")
                    # The tuple's elements come from an op already pinned as unknown.
                return
            out = self.open(node, "getitem")
            self.same(out, part)
            return
        s = self.shape(src)
        if s is None or len(s) < 2:
            if self.has_channels(node):
                self.unknown(node)
            return
        # Tensor indexing: known only when dims 0 and 1 are left whole.
        items = idx if isinstance(idx, tuple) else (idx,)
        keeps = False
        if any(isinstance(i, torch.fx.Node) for i in _flatten_nodes(items)):
            keeps = False
        elif items and items[0] is Ellipsis:
            rest = items[1:]
            keeps = all(isinstance(i, slice) for i in rest) and len(s) - len(rest) >= 2
        elif len(items) >= 2 and items[0] == slice(None) and items[1] == slice(None):
            keeps = all(isinstance(i, slice) or i is Ellipsis for i in items[2:])
        elif len(items) == 1 and items[0] == slice(None):
            keeps = True
        if keeps and self.has_channels(node) and self.shape(node)[:2] == s[:2]:
            self.passthrough(node, src, "slice")
        else:
            self.unknown(node, f"indexes the channel or batch axis ({idx!r})")

    # ---------------------------------------------------------------- grouping
    def groups(self) -> list[ChannelGroup]:
        uf = self.uf
        # unit (union-find root) -> node -> channels
        units: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for name, sp in self.spaces.items():
            for c in range(sp.size):
                units[uf.find(sp.base + c)][name].append(c)
        by_nodes: dict[frozenset[str], list[dict[str, list[int]]]] = defaultdict(list)
        for unit in units.values():
            by_nodes[frozenset(unit)].append(unit)

        order = self.order
        raw = []
        for node_set, members in by_nodes.items():
            nodes = sorted(node_set, key=lambda n: order.get(n, 1 << 30))
            producers = [n for n in nodes if n in self.producers]
            anchor = producers[0] if producers else nodes[0]
            members.sort(key=lambda u: min(u[anchor]))
            reasons: list[str] = []
            uniform = all(len(u[n]) == len(members[0][n]) for u in members for n in nodes)
            if not uniform:
                reasons.append("units of unequal size: a pixel_shuffle block straddles channels of several "
                               "producers (" + ", ".join(nodes) + ")")
            index = {n: tuple(tuple(sorted(u[n])) for u in members) for n in nodes}
            raw.append((nodes, producers, index, reasons))
        raw.sort(key=lambda r: order.get(r[0][0], 0))

        # Which groups own channels of each tensor (to name split producers and detect cross-group constraints).
        owners: dict[str, list[int]] = defaultdict(list)
        for gi, (nodes, _, _, _) in enumerate(raw):
            for n in nodes:
                owners[n].append(gi)

        extra_reasons: dict[int, list[str]] = defaultdict(list)
        constraints: dict[int, list[EqualRemoval]] = defaultdict(list)
        for er in self.equal_removal:
            gis = owners.get(er.tensor, [])
            if len(gis) > 1:
                for gi in gis:
                    extra_reasons[gi].append(
                        f"grouped conv '{er.node}' (groups={er.groups}) needs equal removal per conv group on "
                        f"'{er.tensor}', whose channels belong to several groups")
                continue
            for gi in gis:
                index = raw[gi][2][er.tensor]
                per = self.spaces[er.tensor].size // er.groups
                if any(len({c // per for c in row}) != 1 for row in index):
                    extra_reasons[gi].append(
                        f"grouped conv '{er.node}' (groups={er.groups}): a channel block straddles its conv "
                        f"groups on '{er.tensor}'")
                constraints[gi].append(er)

        groups: list[ChannelGroup] = []
        used_names: set[str] = set()
        for gi, (nodes, producers, index, reasons) in enumerate(raw):
            anchor = producers[0] if producers else nodes[0]
            name = anchor
            if len(owners[anchor]) > 1:
                flat = sorted(c for row in index[anchor] for c in row)
                contiguous = flat == list(range(flat[0], flat[0] + len(flat)))
                name = f"{anchor}[{flat[0]}:{flat[-1] + 1}]" if contiguous else f"{anchor}#{flat[0]}"
            base, k = name, 2
            while name in used_names:
                name, k = f"{base}~{k}", k + 1
            used_names.add(name)

            all_reasons = list(reasons)
            for n in nodes:
                for r in self.pins.get(n, ()):
                    if r not in all_reasons:
                        all_reasons.append(r)
            for r in extra_reasons.get(gi, ()):
                if r not in all_reasons:
                    all_reasons.append(r)
            if not producers and not all_reasons:
                all_reasons.append(f"no producer creates these channels ({nodes[0]})")

            cons: dict[str, ConsumerSlice] = {}
            for cname, inp, kind, g in self.consumers:
                if inp in index:
                    rows = index[inp]
                    flat = [c for row in rows for c in row]
                    start = flat[0] if flat else 0
                    offset = start if flat == list(range(start, start + len(flat))) else None
                    cons[cname] = ConsumerSlice(cname, inp, kind, offset, len(rows[0]) if rows else 0, g,
                                                self.spaces[inp].size)
            kinds = {n: self.kinds.get(n, "unknown") for n in nodes}
            kinds.update({c: cs.kind for c, cs in cons.items()})
            groups.append(ChannelGroup(
                name=name,
                producers=producers,
                consumers=sorted(cons, key=lambda c: order.get(c, 0)),
                members=[n for n in nodes if n not in self.producers],
                channels=len(next(iter(index.values()))) if index else 0,
                prunable=not all_reasons,
                reason="; ".join(all_reasons),
                index=index,
                consumer_slices=cons,
                equal_removal=constraints.get(gi, []),
                kinds=kinds,
            ))
        return groups


def channel_groups(gm: torch.fx.GraphModule) -> list[ChannelGroup]:
    """Partition the channels of ``gm`` into groups that must be pruned together.

    Args:
        gm: a shape-propagated GraphModule (``gcompiler.trace`` output, or ``symbolic_trace`` followed by
            ``ShapeProp(gm).propagate(x)``): every tensor node needs ``node.meta["tensor_meta"]``.

    Returns:
        The groups in graph order of their first tensor.  Every channel (dim 1) of every tensor output
        with at least two dims belongs to exactly one group.  A group is prunable only when every op that
        touches its channels has a known channel mapping and none of its tensors is a graph input, output
        or constant; otherwise ``reason`` names the op(s).

    Raises:
        TraceError: the graph carries no shape metadata.
    """
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"channel_groups expects a torch.fx.GraphModule, got {type(gm).__name__}; "
                        f"trace the model first with gcompiler.trace(model, example_input)")
    analysis = _Analysis(gm)
    analysis.run()
    return analysis.groups()


def groups_by_node(groups: Sequence[ChannelGroup]) -> dict[str, list[ChannelGroup]]:
    """Map every node name to the groups whose channels it produces, carries or consumes."""
    out: dict[str, list[ChannelGroup]] = defaultdict(list)
    for g in groups:
        for n in list(g.index) + [c for c in g.consumers if c not in g.index]:
            out[n].append(g)
    return dict(out)


def describe_groups(groups: Sequence[ChannelGroup], *, max_width: int = 60) -> str:
    """A readable table: one row per group with width, block, producers, consumers and pin reason."""

    def cut(text: str) -> str:
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    headers = ("group", "ch", "blk", "prunable", "producers", "consumers", "members", "reason")
    rows = []
    for g in groups:
        cons = []
        for c in g.consumers:
            cs = g.consumer_slices[c]
            whole = cs.offset == 0 and cs.block * g.channels == cs.in_channels
            sl = g.slice(c)
            cons.append(c if whole else f"{c}[{sl[0]}:{sl[1]}]" if sl else f"{c}[scattered]")
        rows.append((g.name, str(g.channels), str(g.block()), "yes" if g.prunable else "no",
                     cut(", ".join(g.producers) or "-"), cut(", ".join(cons) or "-"), str(len(g.members)),
                     g.reason if len(g.reason) <= 2 * max_width else g.reason[: 2 * max_width - 3] + "..."))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    n_prunable = sum(g.prunable for g in groups)
    lines.append(f"{len(groups)} groups, {n_prunable} prunable, "
                 f"{sum(g.channels for g in groups if g.prunable)} prunable channels")
    return "\n".join(lines)
