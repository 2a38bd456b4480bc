"""Feature taps: run a model and also return the values of named intermediate nodes.

Two mechanisms, chosen per model:

* **GraphModule (graph rewriting).** A copy of the graph is made whose output node returns
  ``(original_output, tap_1, ..., tap_k)``; it is wrapped in a new GraphModule built on the *same*
  submodules and parameters (nothing is copied, so training the tapped view trains the model). Any
  node can be tapped, including ``call_function`` nodes such as the ``add`` that ends a residual
  block, which forward hooks cannot see. A tap is named by its node name (``gm.graph`` node names)
  or by a submodule path that is called exactly once in the graph.
* **Plain ``nn.Module`` (forward hooks).** Taps are submodule paths; a forward hook records each
  one's output. A module called more than once per forward is an error (its tap is ambiguous: trace
  the model and tap a node instead).

If the graph of a GraphModule is changed afterwards (a pass rewrites it), build the taps again.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError


def _resolve_nodes(gm: fx.GraphModule, names: Sequence[str]) -> list[fx.Node]:
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = []
    for name in names:
        node = by_name.get(name)
        if node is None:
            calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
            if len(calls) == 1:
                node = calls[0]
            elif len(calls) > 1:
                raise ConfigError(f"tap {name!r}: submodule {name!r} is called {len(calls)} times in the graph "
                                  f"(nodes {[n.name for n in calls]}); tap one of those node names instead")
        if node is None:
            candidates = [n.name for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
            shown = ", ".join(candidates[:40]) + (" ..." if len(candidates) > 40 else "")
            raise ConfigError(f"tap {name!r} is neither a node nor a called submodule of the graph; "
                              f"available nodes: {shown}")
        if node.op in ("output", "placeholder"):
            raise ConfigError(f"tap {name!r} is the graph's {node.op}; tap an intermediate node")
        nodes.append(node)
    return nodes


def tap_graph(gm: fx.GraphModule, names: Sequence[str]) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s modules whose forward returns ``(output, tap_1, ..., tap_k)``."""
    nodes = _resolve_nodes(gm, names)
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output((out, *[val_map[n] for n in nodes]))
    tapped = fx.GraphModule(gm, graph, class_name=f"{type(gm).__name__}Tapped")
    tapped.meta.update({k: v for k, v in gm.meta.items()})
    return tapped


class TappedModel(nn.Module):
    """``model`` plus taps: ``forward(*args) -> (output, {tap_name: tensor})``.

    ``model`` is held by reference; its parameters are this module's parameters (under the
    ``model.`` prefix). ``channels()`` gives each tap's channel count (dim 1) from the shape meta of a
    traced graph, or from one probe forward when ``example_inputs`` are given.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str]) -> None:
        super().__init__()
        self.tap_names = list(dict.fromkeys(taps))
        if len(self.tap_names) != len(list(taps)):
            raise ConfigError(f"duplicate tap names in {list(taps)}")
        self.model = model
        self._hooks: list[Any] = []
        self._captured: dict[str, list[torch.Tensor]] = {}
        if isinstance(model, fx.GraphModule):
            self.mode = "graph"
            self._nodes = _resolve_nodes(model, self.tap_names)
            self.graph_view = tap_graph(model, self.tap_names)
        else:
            self.mode = "hooks"
            self._nodes = []
            modules = dict(model.named_modules())
            for name in self.tap_names:
                if name not in modules or name == "":
                    shown = ", ".join(n for n in list(modules)[1:41])
                    raise ConfigError(f"tap {name!r} is not a submodule path of {type(model).__name__} "
                                      f"(a plain module can only be tapped at submodules; trace it with "
                                      f"gcompiler.trace to tap any node); submodules: {shown}")
                self._hooks.append(modules[name].register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            self._captured.setdefault(name, []).append(out)
        return hook

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        if self.mode == "graph":
            res = self.graph_view(*args, **kwargs)
            return res[0], dict(zip(self.tap_names, res[1:]))
        self._captured = {}
        out = self.model(*args, **kwargs)
        feats = {}
        for name in self.tap_names:
            vals = self._captured.get(name, [])
            if len(vals) != 1:
                raise ConfigError(f"tap {name!r}: the submodule ran {len(vals)} times in one forward; a tap "
                                  f"needs exactly one call (trace the model and tap a graph node)")
            feats[name] = vals[0]
        self._captured = {}
        return out, feats

    def remove(self) -> None:
        """Detach the forward hooks (hook mode); the model is then untouched."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def channels(self, *example_inputs: torch.Tensor) -> dict[str, int]:
        """Channel count (dim 1) of every tap."""
        result: dict[str, int] = {}
        if self.mode == "graph":
            from ..fx.utils import node_shape

            for name, node in zip(self.tap_names, self._nodes):
                shape = node_shape(node)
                if shape is None or len(shape) < 2:
                    break
                result[name] = int(shape[1])
            else:
                return result
        if not example_inputs:
            raise ConfigError("tap channel counts are unknown (no shape meta on the graph); pass example inputs")
        with torch.no_grad():
            _, feats = self(*example_inputs)
        for name, t in feats.items():
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                raise ConfigError(f"tap {name!r} does not produce an N x C x ... tensor")
            result[name] = int(t.shape[1])
        return result
