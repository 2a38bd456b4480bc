"""Portable compiled models: ``save(gm, dir)`` / ``load(dir)`` without the original model's code.

A saved model is a directory holding

* ``model.safetensors``: every parameter, buffer and graph constant (no pickle anywhere);
* ``architecture.json``: the graph (one entry per node: name, op, target, encoded args / kwargs), each
  called submodule's type and constructor arguments, which tensors are parameters / buffers / constants
  and which names share one tensor (e.g. :class:`~gcompiler.passes.masks.ChannelMask` instances sharing
  a scale), the example input shapes and dtypes, and the JSON-representable part of ``gm.meta``.

:func:`load` rebuilds a :class:`torch.fx.GraphModule` that computes bit-identically what the saved one
computed. Only these module types can be saved: the ``torch.nn`` leaf types listed in
:data:`TORCH_MODULES` and gcompiler's own modules registered with :func:`register_module_type` (they
provide ``constructor_args()``). Functions called by the graph must come from ``torch``,
``torch.nn.functional``, ``operator``, ``math`` or ``gcompiler`` itself. Anything else is refused at save
time with an error naming the node, so a saved directory always loads.

Safety: loading reads tensors with safetensors and builds modules only from the allow-lists above; it
never unpickles and never imports a module named by the files (the gcompiler modules that define saveable
module types are a fixed list, :data:`_MODULE_TYPE_PROVIDERS`). Everything from ``architecture.json`` that
torch.fx would paste into generated Python code is checked first: node names, placeholder / attribute /
module targets and keyword names must be plain identifiers (dotted paths of ``[A-Za-z0-9_]`` parts), so a
crafted file cannot inject code into ``forward``; ``getattr`` nodes may not read ``_private`` / dunder
attributes, and ``gcompiler`` functions are allowed from its compute layers only (``fx``, ``passes``,
``quant``, ``kernels``, ``nas``). Sizes are checked against the weights file before anything is allocated:
every module is first built on the ``meta`` device and its parameter and buffer shapes must match the stored
tensors, and the example inputs are capped at :data:`MAX_EXAMPLE_ELEMENTS` elements. Non-finite values in
stored parameters are refused with the tensor's name.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import keyword
import operator
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import CheckpointError, GCompilerError

FORMAT = "gcompiler-graph"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ARCH_FILE = "architecture.json"

#: torch.nn leaf module types that can be saved (rebuilt from their constructor arguments).
TORCH_MODULES: tuple[str, ...] = (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "GroupNorm", "LayerNorm", "LocalResponseNorm",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
    "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink", "Softmax", "LogSoftmax",
    "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Flatten", "Unflatten",
    "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d",
    "ReplicationPad3d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d",
    "ConstantPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d",
    "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool2d",
)

_OWN_MODULES: dict[str, type] = {}

_FUNCTION_MODULES = ("torch", "torch.nn.functional", "torch.functional", "torch.special", "torch.fft",
                     "torch.linalg", "operator", "math")
_DENIED_FUNCTIONS = {"load", "save", "from_file", "set_default_device", "set_default_dtype", "compile",
                     "manual_seed", "seed", "set_num_threads", "use_deterministic_algorithms"}
_BUILTINS = {"getattr": getattr}
#: gcompiler sub-packages whose functions a saved graph may call (never I/O, training or CLI code).
_GCOMPILER_FUNCTION_PACKAGES = ("gcompiler.fx", "gcompiler.passes", "gcompiler.quant", "gcompiler.kernels",
                                "gcompiler.nas")
_DENIED_QUALIFIED = {"operator:call", "operator:attrgetter", "operator:methodcaller"}
#: gcompiler modules that register saveable module types; load imports exactly these (never a name from a file).
_MODULE_TYPE_PROVIDERS = ("gcompiler.passes.masks", "gcompiler.quant.int_ops", "gcompiler.quant.qmodules")
#: largest example input (elements, all inputs together) load will allocate for shape propagation.
MAX_EXAMPLE_ELEMENTS = 1 << 26
_PATH_PART = re.compile(r"^[A-Za-z0-9_]+$")


def register_module_type(cls: type) -> type:
    """Allow saving instances of ``cls`` (a gcompiler module defining ``constructor_args() -> dict``).

    Usable as a class decorator. ``cls(**m.constructor_args())`` must rebuild ``m`` up to its state dict.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_type expects an nn.Module subclass, got {cls!r}")
    if not callable(getattr(cls, "constructor_args", None)):
        raise TypeError(f"{cls.__qualname__} must define constructor_args() to be saved")
    _OWN_MODULES[_type_name(cls)] = cls
    return cls


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------------------------- values

def _encode(v: Any, where: str) -> Any:
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, torch.Size):
        return {"size": list(v)}
    if isinstance(v, tuple):
        return {"tuple": [_encode(x, where) for x in v]}
    if isinstance(v, list):
        return [_encode(x, where) for x in v]
    if isinstance(v, dict):
        return {"dict": [[_encode(k, where), _encode(x, where)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"slice": [_encode(v.start, where), _encode(v.stop, where), _encode(v.step, where)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if isinstance(v, torch.layout):
        return {"layout": str(v).removeprefix("torch.")}
    raise CheckpointError(f"cannot save {where}: value {v!r} of type {type(v).__name__} has no portable encoding "
                          "(supported: numbers, strings, None, tuples, lists, dicts, slices, dtypes, devices)")


def _decode(v: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(v, list):
        return [_decode(x, nodes) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise CheckpointError(f"malformed value in architecture.json: {v!r}")
    (tag, x), = v.items()
    if tag == "node":
        if x not in nodes:
            raise CheckpointError(f"architecture.json refers to node '{x}' before defining it")
        return nodes[x]
    if tag == "float":
        return float(x)
    if tag == "size":
        return torch.Size(x)
    if tag == "tuple":
        return tuple(_decode(e, nodes) for e in x)
    if tag == "dict":
        return {_decode(k, nodes): _decode(e, nodes) for k, e in x}
    if tag == "slice":
        return slice(*(_decode(e, nodes) for e in x))
    if tag == "ellipsis":
        return Ellipsis
    for tag_name, kind in (("dtype", torch.dtype), ("memory_format", torch.memory_format), ("layout", torch.layout)):
        if tag == tag_name:
            obj = getattr(torch, str(x), None)
            if not isinstance(obj, kind):
                raise CheckpointError(f"architecture.json: unknown {tag_name} {x!r}")
            return obj
    if tag == "device":
        return torch.device(x)
    raise CheckpointError(f"architecture.json: unknown value tag {tag!r}")


# -------------------------------------------------------------------------------------------- functions

def _function_ref(fn: Any, node: fx.Node) -> str:
    name = getattr(fn, "__name__", None)
    if name in _BUILTINS and _BUILTINS[name] is fn:
        return f"builtins:{name}"
    mod = getattr(fn, "__module__", None) or ""
    mod = "operator" if mod == "_operator" else mod
    candidates = [mod] + list(_FUNCTION_MODULES)
    for m in candidates:
        if name is None or not _function_module_allowed(m):
            continue
        try:
            if _resolve_function(f"{m}:{name}") is fn:
                return f"{m}:{name}"
        except CheckpointError:
            continue
    raise CheckpointError(
        f"cannot save node '{node.name}': it calls {getattr(fn, '__qualname__', fn)!r} from module {mod or '?'}, "
        "which a loader could not find without the original model's code; only functions of torch, "
        "torch.nn.functional, operator, math and gcompiler can be saved (make that code a leaf module of a "
        "registered type, or rewrite it with torch functions)")


def _function_module_allowed(module: str) -> bool:
    return module in _FUNCTION_MODULES or any(module == p or module.startswith(p + ".")
                                              for p in _GCOMPILER_FUNCTION_PACKAGES)


def _resolve_function(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    if module == "builtins":
        if name not in _BUILTINS:
            raise CheckpointError(f"architecture.json calls builtins.{name}, which is not allowed")
        return _BUILTINS[name]
    if not _function_module_allowed(module) or not name or name.startswith("_") or name in _DENIED_FUNCTIONS \
            or ref in _DENIED_QUALIFIED:
        raise CheckpointError(f"architecture.json calls {module}.{name}, which is not an allowed function "
                              f"(allowed: functions of {', '.join(_FUNCTION_MODULES)} and of "
                              f"{', '.join(_GCOMPILER_FUNCTION_PACKAGES)})")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"architecture.json calls {module}.{name}, which this torch/gcompiler "
                              "version does not have") from None
    if not callable(obj) or isinstance(obj, type):
        raise CheckpointError(f"architecture.json calls {module}.{name}, which is not a function")
    return obj


def _check_method(name: str, where: str) -> None:
    if not isinstance(name, str) or name.startswith("_") or not hasattr(torch.Tensor, name) \
            or name in _DENIED_FUNCTIONS:
        raise CheckpointError(f"{where}: tensor method {name!r} is not allowed in a saved graph")


# ---------------------------------------------------------------------------------------------- modules

def _module_type(mod: nn.Module) -> str | None:
    cls = type(mod)
    if cls.__module__.startswith("torch.nn.modules") and cls.__name__ in TORCH_MODULES \
            and getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    name = _type_name(cls)
    if name in _OWN_MODULES:
        return name
    return None


def _constructor_args(mod: nn.Module, where: str) -> dict[str, Any]:
    if callable(getattr(mod, "constructor_args", None)) and _type_name(type(mod)) in _OWN_MODULES:
        return dict(mod.constructor_args())
    args: dict[str, Any] = {}
    for p in inspect.signature(type(mod).__init__).parameters.values():
        if p.name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "bias" and (p.default is True or p.default is False):
            args["bias"] = getattr(mod, "bias", None) is not None
            continue
        if hasattr(mod, p.name):
            val = getattr(mod, p.name)
            if isinstance(val, torch.Tensor):
                raise CheckpointError(f"cannot save {where}: constructor argument {p.name} is a tensor")
            args[p.name] = val
        elif p.default is p.empty:
            raise CheckpointError(f"cannot save {where}: {type(mod).__name__} does not keep its constructor "
                                  f"argument '{p.name}'")
    return args


def _build_module(type_name: str, args: dict[str, Any], where: str) -> nn.Module:
    if type_name.startswith("torch.nn.") and type_name.count(".") == 2:
        short = type_name.rsplit(".", 1)[1]
        if short not in TORCH_MODULES:
            raise CheckpointError(f"{where}: module type {type_name} is not loadable")
        cls = getattr(nn, short)
    else:
        cls = _OWN_MODULES.get(type_name)
        if cls is None and type_name.startswith("gcompiler."):
            for provider in _MODULE_TYPE_PROVIDERS:  # a fixed list: never a module named by the file
                try:
                    importlib.import_module(provider)
                except ImportError:
                    pass
            cls = _OWN_MODULES.get(type_name)
        if cls is None:
            raise CheckpointError(f"{where}: unknown module type {type_name}; it is neither a supported torch.nn "
                                  "type nor a registered gcompiler module (is this gcompiler version older?)")
    try:
        return cls(**args)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot build {type_name}({args}): {exc}") from exc


# ------------------------------------------------------------------------------------------------- save

def _get_path(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if k in ("input_shapes", "input_specs", "pass_log"):
            continue
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def save(gm: fx.GraphModule, directory: str | os.PathLike) -> Path:
    """Write ``gm`` to ``directory`` (``model.safetensors`` + ``architecture.json``), atomically.

    The files are written to a temporary sibling directory which then replaces ``directory``, so a
    crash never leaves a half-written model. An existing ``directory`` is replaced only if it is empty or
    a previous save (holds ``architecture.json``). Returns the directory.

    Raises:
        CheckpointError: naming the node whose module type, function or argument cannot be saved.
    """
    if not isinstance(gm, fx.GraphModule):
        raise CheckpointError(f"save() expects a torch.fx.GraphModule (trace or compile the model first), "
                              f"got {type(gm).__name__}")
    target = Path(directory)
    if target.exists():
        if not target.is_dir():
            raise CheckpointError(f"save(): {target} exists and is not a directory")
        if any(target.iterdir()) and not (target / ARCH_FILE).exists():
            raise CheckpointError(f"save(): {target} is a non-empty directory that is not a saved gcompiler model; "
                                  "refusing to replace it (choose a new directory)")
    arch, tensors = _describe(gm)
    from safetensors.torch import save_file

    from .ioutil import atomic_dir

    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / ARCH_FILE).write_text(json.dumps(arch, indent=1))
    return target


def _describe(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    nodes, modules, attrs = [], {}, {}
    for node in gm.graph.nodes:
        where = f"node '{node.name}'"
        target: Any = node.target
        if node.op == "call_module":
            mod = gm.get_submodule(str(target))
            tname = _module_type(mod)
            if tname is None:
                raise CheckpointError(
                    f"cannot save node '{node.name}': module '{target}' is a {_type_name(type(mod))}, which is not a "
                    "saveable type (torch.nn leaf types, see gcompiler.serialize.TORCH_MODULES, and gcompiler "
                    "modules registered with register_module_type); rewrite or register it")
            if str(target) not in modules:
                encoded = json.loads(json.dumps(_encode(_constructor_args(mod, f"{where} ({tname})"), where)))
                rebuilt = _build_module(tname, _decode_args(encoded), where)
                if repr(rebuilt) != repr(mod):  # catches a constructor argument the module does not keep
                    raise CheckpointError(f"cannot save node '{node.name}': {tname} rebuilt from its constructor "
                                          f"arguments differs from the module ({rebuilt!r} vs {mod!r})")
                modules[str(target)] = {"type": tname, "args": encoded, "training": mod.training}
        elif node.op == "get_attr":
            val = _get_path(gm, str(target))
            if not isinstance(val, torch.Tensor):
                raise CheckpointError(f"cannot save {where}: attribute '{target}' is a {type(val).__name__}, "
                                      "not a tensor")
            attrs[str(target)] = val
        elif node.op == "call_function":
            target = _function_ref(target, node)
        elif node.op == "call_method":
            _check_method(str(target), f"cannot save {where}")
        nodes.append({"name": node.name, "op": node.op, "target": target,
                      "args": _encode(tuple(node.args), where), "kwargs": _encode(dict(node.kwargs), where)})
    # Tensors: every module's state plus graph attributes, shared tensors stored once.
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    seen: dict[int, str] = {}

    def add(name: str, t: torch.Tensor, kind: str) -> None:
        key = id(t)
        if key in seen:
            entries[name] = {"kind": kind, "alias_of": seen[key]}
            return
        seen[key] = name
        entries[name] = {"kind": kind, "requires_grad": bool(t.requires_grad) if kind == "parameter" else False}
        tensors[name] = t.detach().to("cpu").contiguous().clone()

    for path in sorted(modules):
        mod = gm.get_submodule(path)
        for n, p in mod.named_parameters(recurse=True, remove_duplicate=False):
            add(f"{path}.{n}", p, "parameter")
        for n, b in mod.named_buffers(recurse=True, remove_duplicate=False):
            add(f"{path}.{n}", b, "buffer")
    for path, t in sorted(attrs.items()):
        if path in entries:
            continue
        add(path, t, "parameter" if isinstance(t, nn.Parameter) else "buffer" if _is_buffer(gm, path) else "constant")
    arch = {
        "format": FORMAT, "version": VERSION, "torch": torch.__version__,
        "class_name": type(gm).__name__ if type(gm).__name__ != "GraphModule" else "GraphModule",
        "training": gm.training,
        "input_specs": [[list(s), str(d).removeprefix("torch.")] for s, d in _input_specs(gm)],
        "modules": modules, "tensors": entries, "nodes": nodes, "meta": _json_meta(gm.meta),
    }
    return arch, tensors


def _decode_args(encoded: Any) -> dict[str, Any]:
    return _decode(encoded, {})


def _is_buffer(gm: fx.GraphModule, path: str) -> bool:
    parent, _, name = path.rpartition(".")
    owner = gm.get_submodule(parent) if parent else gm
    return name in owner._buffers


def _input_specs(gm: fx.GraphModule) -> list[tuple[tuple[int, ...], torch.dtype]]:
    specs = gm.meta.get("input_specs")
    if specs is not None:
        return [(tuple(s), d) for s, d in specs]
    shapes = gm.meta.get("input_shapes")
    if shapes is not None:
        return [(tuple(s), torch.float32) for s in shapes]
    return []


# ------------------------------------------------------------------------------------------------- load

def _set_path(root: nn.Module, path: str, value: Any) -> None:
    parts = path.split(".")
    obj = root
    for p in parts[:-1]:
        if not hasattr(obj, p):
            obj.add_module(p, nn.Module())
        obj = getattr(obj, p)
    last = parts[-1]
    if isinstance(value, nn.Module):
        obj.add_module(last, value)
    elif isinstance(value, nn.Parameter):
        if last in obj._buffers:
            del obj._buffers[last]
        obj.register_parameter(last, value)
    elif isinstance(value, torch.Tensor):
        if last in obj._parameters:
            del obj._parameters[last]
        obj.register_buffer(last, value)
    else:
        setattr(obj, last, value)


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> fx.GraphModule:
    """Rebuild a model saved with :func:`save` as a runnable :class:`torch.fx.GraphModule`.

    ``path`` is the saved directory or a file inside it. The original model's code is not needed.
    Shapes are re-propagated from the recorded example input specs, so ``gm.meta["input_shapes"]``
    is set and gcompiler passes can run on the result.

    Raises:
        CheckpointError: missing files, a different format or version, or a module type / function this
            gcompiler does not know.
    """
    p = Path(path)
    d = p if p.is_dir() else p.parent
    arch_path, weights_path = d / ARCH_FILE, d / WEIGHTS_FILE
    for f in (arch_path, weights_path):
        if not f.is_file():
            raise CheckpointError(f"load({str(path)!r}): {f} is missing; expected a directory written by "
                                  "gcompiler.save (model.safetensors + architecture.json)")
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"load(): cannot read {arch_path}: {exc}") from exc
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise CheckpointError(f"load(): {arch_path} is not a gcompiler graph (format {arch.get('format')!r} "
                              f"if it is JSON at all)" if isinstance(arch, dict) else f"load(): {arch_path} is malformed")
    if arch.get("version") != VERSION:
        raise CheckpointError(f"load(): {arch_path} has format version {arch.get('version')}, this gcompiler "
                              f"reads version {VERSION}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"load(): cannot read {weights_path}: {exc}") from exc
    try:
        return _rebuild(arch, stored, str(d), device)
    except GCompilerError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError,
            RecursionError) as exc:
        raise CheckpointError(f"load(): {arch_path} is malformed: {type(exc).__name__}: {exc}") from exc


def _check_path(path: Any, what: str, where: str) -> str:
    """A dotted path of ``[A-Za-z0-9_]`` parts (what torch.fx pastes into generated code), else CheckpointError."""
    if not isinstance(path, str) or not path or not all(_PATH_PART.match(p) for p in path.split(".")):
        raise CheckpointError(f"load(): {where}/{ARCH_FILE}: {what} {path!r} is not a dotted path of "
                              "identifiers; refusing it (torch.fx would paste it into generated code)")
    return path


def _check_arch(arch: dict[str, Any], stored: dict[str, torch.Tensor], where: str) -> None:
    """Reject everything in ``arch`` that could inject code or allocate more than the weights file holds."""
    for key, kind in (("modules", dict), ("tensors", dict), ("nodes", list), ("input_specs", list)):
        if not isinstance(arch.get(key, kind()), kind):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: '{key}' must be a JSON {kind.__name__}")
    cname = arch.get("class_name", "GraphModule")
    if not isinstance(cname, str) or not cname.isidentifier():
        raise CheckpointError(f"load(): {where}/{ARCH_FILE}: class_name {cname!r} is not an identifier")
    for path in arch["modules"]:
        _check_path(path, "module path", where)
    for name, e in arch["tensors"].items():
        _check_path(name, "tensor name", where)
        if not isinstance(e, dict):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: entry of tensor '{name}' is not an object")
        t = stored.get(name)
        if t is not None and e.get("kind") == "parameter" and t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"load(): {where}/{WEIGHTS_FILE}: parameter '{name}' holds {bad} NaN/Inf "
                                  f"value(s) of {t.numel()}; the saved model is broken")
    for spec in arch["nodes"]:
        if not isinstance(spec, dict):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: a node entry is not an object")
        name, op, target = spec.get("name"), spec.get("op"), spec.get("target")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: node name {name!r} is not an identifier")
        if op == "placeholder":
            if not isinstance(target, str) or not target.lstrip("*").isidentifier() or keyword.iskeyword(target):
                raise CheckpointError(f"load(): {where}/{ARCH_FILE}: input name {target!r} of node '{name}' "
                                      "is not an identifier")
        elif op in ("get_attr", "call_module"):
            _check_path(target, f"target of node '{name}'", where)
        kwargs = spec.get("kwargs", {"dict": []})
        pairs = kwargs.get("dict") if isinstance(kwargs, dict) else None
        if not isinstance(pairs, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in pairs):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: keyword arguments of node '{name}' are malformed")
        for k, _ in pairs:
            if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k):
                raise CheckpointError(f"load(): {where}/{ARCH_FILE}: node '{name}' has keyword {k!r}, which is "
                                      "not an identifier (torch.fx would paste it into generated code)")
        if op == "call_function" and target == "builtins:getattr":
            args = spec.get("args")
            args = args.get("tuple") if isinstance(args, dict) else None
            attr = args[1] if isinstance(args, list) and len(args) == 2 else None
            if not isinstance(attr, str) or attr.startswith("_"):
                raise CheckpointError(f"load(): {where}/{ARCH_FILE}: node '{name}' reads attribute {attr!r} "
                                      "with getattr; only public attributes named by a string are allowed")
    total = 0
    for s in arch.get("input_specs", []):
        if not (isinstance(s, list) and len(s) == 2 and isinstance(s[0], list)
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n for n in s[0])):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: malformed input spec {s!r}")
        if not isinstance(getattr(torch, str(s[1]), None), torch.dtype):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: input spec dtype {s[1]!r} is not a torch dtype")
        total += math.prod(s[0])
    if total > MAX_EXAMPLE_ELEMENTS:
        raise CheckpointError(f"load(): {where}/{ARCH_FILE}: the example inputs hold {total:,} elements, more "
                              f"than the {MAX_EXAMPLE_ELEMENTS:,} load allocates; refusing")


def _check_module_state(mod: nn.Module, path: str, stored: dict[str, torch.Tensor],
                        entries: dict[str, Any], where: str) -> None:
    """``mod`` (built on the meta device) must have exactly the shapes of the stored tensors it will hold."""
    for n, t in list(mod.named_parameters(recurse=True, remove_duplicate=False)) + \
            list(mod.named_buffers(recurse=True, remove_duplicate=False)):
        full = f"{path}.{n}"
        e = entries.get(full)
        src = e.get("alias_of", full) if isinstance(e, dict) else full
        s = stored.get(src)
        if s is None:  # a missing tensor would silently keep the constructor's random init
            raise CheckpointError(f"load(): {where}: no tensor for '{full}' (module '{path}') in {ARCH_FILE} / "
                                  f"{WEIGHTS_FILE}")
        if tuple(s.shape) != tuple(t.shape):
            raise CheckpointError(f"load(): {where}/{WEIGHTS_FILE}: tensor '{src}' has shape {tuple(s.shape)}, but "
                                  f"module '{path}' as described in {ARCH_FILE} needs {tuple(t.shape)} for '{n}'")
        if s.is_floating_point() != t.is_floating_point() or s.is_complex() != t.is_complex():
            raise CheckpointError(f"load(): {where}/{WEIGHTS_FILE}: tensor '{src}' has dtype {s.dtype}, but "
                                  f"'{full}' of module '{path}' is {t.dtype}")


def _rebuild(arch: dict[str, Any], stored: dict[str, torch.Tensor], where: str,
             device: str | torch.device) -> fx.GraphModule:
    _check_arch(arch, stored, where)
    root = nn.Module()
    built: dict[str, nn.Module] = {}
    for path, spec in arch["modules"].items():
        args = _decode_args(spec["args"])
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise CheckpointError(f"load(): {where}/{ARCH_FILE}: constructor arguments of module '{path}' malformed")
        with torch.device("meta"):  # sizes checked against the weights file before anything is allocated
            shell = _build_module(spec["type"], args, f"{where}: module '{path}'")
        _check_module_state(shell, path, stored, arch["tensors"], where)
        mod = _build_module(spec["type"], args, f"{where}: module '{path}'")
        mod.to(device)
        mod.train(bool(spec.get("training", False)))
        built[path] = mod
        _set_path(root, path, mod)
    objects: dict[str, torch.Tensor] = {}
    entries = arch["tensors"]
    for name, e in entries.items():
        if "alias_of" in e:
            continue
        if name not in stored:
            raise CheckpointError(f"load(): tensor '{name}' is listed in {ARCH_FILE} but missing from {WEIGHTS_FILE}")
        # Own, aligned memory: safetensors hands out tensors that may live in the file mapping at any 8-byte
        # offset; BLAS picks different (differently rounded) kernels for misaligned operands, so a loaded
        # Linear would not compute bit-identically. clone() allocates fresh, 64-byte aligned storage.
        t = stored[name].clone(memory_format=torch.contiguous_format)
        objects[name] = nn.Parameter(t, requires_grad=bool(e.get("requires_grad", True))) \
            if e["kind"] == "parameter" else t
    for name, e in entries.items():
        obj = objects[e["alias_of"]] if "alias_of" in e else objects[name]
        _assign_tensor(root, built, name, obj)
    # Module state must be complete: a missing tensor would silently keep the constructor's random init.
    for path, mod in built.items():
        for n, _ in list(mod.named_parameters(recurse=True, remove_duplicate=False)) + \
                list(mod.named_buffers(recurse=True, remove_duplicate=False)):
            if f"{path}.{n}" not in entries:
                raise CheckpointError(f"load(): {ARCH_FILE} has no tensor for '{path}.{n}'")
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for spec in arch["nodes"]:
        op, target = spec["op"], spec["target"]
        if op == "call_function":
            target = _resolve_function(target)
        elif op == "call_method":
            _check_method(target, f"{where}: node '{spec['name']}'")
        elif op not in ("placeholder", "get_attr", "call_module", "output"):
            raise CheckpointError(f"{where}: node '{spec['name']}' has unknown op {op!r}")
        args = _decode(spec["args"], nodes)
        kwargs = _decode(spec["kwargs"], nodes)
        node = graph.create_node(op, target, tuple(args), dict(kwargs), name=spec["name"])
        if node.name != spec["name"]:
            raise CheckpointError(f"{where}: duplicate node name {spec['name']!r}")
        nodes[spec["name"]] = node
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=str(arch.get("class_name", "GraphModule")))
    gm.train(bool(arch.get("training", False)))
    for path, spec in arch["modules"].items():  # per-module flags win over the root's
        gm.get_submodule(path).train(bool(spec.get("training", False)))
    gm.meta.update(arch.get("meta", {}))
    specs = [(tuple(s), getattr(torch, d)) for s, d in arch.get("input_specs", [])]
    if specs:
        _propagate(gm, specs, device)
    return gm


def _assign_tensor(root: nn.Module, built: dict[str, nn.Module], name: str, obj: torch.Tensor) -> None:
    # Find the deepest built module owning `name` so parameters land in that module's own dicts.
    owner_path = max((p for p in built if name.startswith(p + ".")), key=len, default=None)
    if owner_path is None:
        _set_path(root, name, obj)
        return
    rel = name[len(owner_path) + 1:]
    _set_path(built[owner_path], rel, obj)


def _propagate(gm: fx.GraphModule, specs: list[tuple[tuple[int, ...], torch.dtype]], device: Any) -> None:
    from .fx.trace import propagate_shapes

    inputs = [torch.zeros(s, dtype=d, device=device) for s, d in specs]
    try:
        propagate_shapes(gm, *inputs, fake=True)
    except Exception:  # some ops have no fake-tensor kernel: fall back to a real run on zeros
        propagate_shapes(gm, *inputs)
    gm.meta["input_specs"] = [(s, d) for s, d in specs]
