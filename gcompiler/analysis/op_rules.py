"""The op rules of the channel analysis: one ``visit_<op>`` handler per FX node kind dispatching to rules
(pass-through, elementwise broadcasting, cat, pixel (un)shuffle, conv / depthwise / grouped conv, linear,
softmax, reductions, flatten, split, getitem, shape reads). Unknown ops pin what they touch."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..fx.guards import check_guard
from ..fx.utils import not_plain_reason, torch_base_class
from .groups import EqualRemoval
from .rules import (_ACTIVATIONS, _CAST_FUNCS, _CAST_METHODS, _CAT_FUNCS, _CONV_FUNCS, _CUSTOM_RULES, _DROPOUTS,
                    _ELEMENTWISE_FUNCS, _ELEMENTWISE_METHODS, _FLATTEN_FUNCS, _INTERP_FUNCS, _PADS, _POOL_FUNCS,
                    _POOLS, _REDUCE_FUNCS, _REDUCE_METHODS, _SHAPE_HARMLESS_ATTRS, _SOFTMAXES, _SPLIT_FUNCS,
                    _SPLIT_METHODS, _UPSAMPLES, _arg, _flatten_nodes, _norm_dim, _spatial_dims, _target_name)
from .solver import _Solver, _Space


class _OpRules(_Solver):
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
        if t is check_guard:  # a run-time check of a trace-time answer: reads ints, touches no channel
            self.kinds[node.name] = "guard"
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
        # Tensor indexing: known only when dims 0 and 1 are left whole. Spatial slices may have computed bounds
        # (a crop to the input's size, x[:, :, :h, :w]).
        items = idx if isinstance(idx, tuple) else (idx,)
        keeps = False
        if any(isinstance(i, torch.fx.Node) for i in items):  # indexing by a computed int / tensor
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
