"""What :func:`gcompiler.trace` patches while a trace runs, and the check that nothing traced escaped.

* ``nn.Module.__setattr__``: a traced value assigned to a module attribute (``self.mean = self.mean.type_as(x)``)
  shadows the attribute for the rest of the trace only; the original value is restored afterwards;
* torch factories: random ones (``torch.randn``) always become graph nodes, the others when an argument is
  traced (``torch.zeros(x.size(0), 3)``);
* ``nn.Module.parameters`` / ``named_parameters`` called from model code yield traced parameters (``get_attr``
  nodes), so ``list(self.fc.parameters())[0].unsqueeze(2)`` stays tied to the parameter instead of becoming a
  frozen constant;
* :func:`find_proxies` lists any torch.fx Proxy left on a model (e.g. appended to a list attribute).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.proxy import Attribute

from .tracer import _FACTORIES, _RANDOM_FACTORIES, GTracer, user_frame

__all__ = ["tracing_patches", "find_proxies"]


@contextlib.contextmanager
def tracing_patches(tracer: GTracer) -> Iterator[list[tuple[nn.Module, str, str]]]:
    """Patch ``nn.Module.__setattr__`` (traced values assigned to a module become trace-local) and the torch
    factories (see the module docstring) for the duration of a trace. Yields the list of
    ``(module, attribute, source)`` assignments that were made trace-local."""
    assigned: list[tuple[nn.Module, str, str]] = []
    undo: list[tuple[nn.Module, str, bool, Any]] = []
    orig_setattr = nn.Module.__setattr__

    def setattr_wrapper(mod: nn.Module, name: str, value: Any) -> None:
        if _has_proxy(value) and not tracer._evaluating:
            d = mod.__dict__
            undo.append((mod, name, name in d, d.get(name)))
            object.__setattr__(mod, name, value)  # shadows a buffer / parameter / attribute for this trace
            f = user_frame(sys._getframe(1))
            assigned.append((mod, name, f"{f.f_code.co_filename}:{f.f_lineno}" if f else "?"))
            return
        if name in mod.__dict__ and any(u[0] is mod and u[1] == name for u in undo):
            del mod.__dict__[name]  # a real value replaces a trace-local one
        orig_setattr(mod, name, value)

    def make_factory(orig: Callable, random: bool) -> Callable:
        def factory(*args: Any, **kwargs: Any) -> Any:
            if not tracer._evaluating and (random or _has_proxy((args, kwargs))):
                return tracer.create_proxy("call_function", orig, args, kwargs)
            return orig(*args, **kwargs)

        factory.__name__ = getattr(orig, "__name__", "factory")
        return factory

    orig_named_parameters = nn.Module.named_parameters
    orig_parameters = nn.Module.parameters
    param_proxies: dict[str, fx.Proxy] = {}

    def as_proxies(mod: nn.Module, items: Any, prefix: str) -> Any:
        try:
            base = tracer.path_of_module(mod)
        except NameError:
            return items
        out = []
        for name, p in items:
            local = name[len(prefix) + 1:] if prefix else name
            path = f"{base}.{local}" if base else local
            if path not in param_proxies:
                param_proxies[path] = tracer.create_proxy("get_attr", path, (), {})
            out.append((name, param_proxies[path]))
        return iter(out)

    def named_parameters_wrapper(mod: nn.Module, prefix: str = "", recurse: bool = True,
                                 remove_duplicate: bool = True) -> Any:
        items = orig_named_parameters(mod, prefix, recurse, remove_duplicate)
        if tracer._evaluating or not _from_user(sys._getframe(1)):
            return items
        return as_proxies(mod, items, prefix)

    def parameters_wrapper(mod: nn.Module, recurse: bool = True) -> Any:
        if tracer._evaluating or not _from_user(sys._getframe(1)):
            return orig_parameters(mod, recurse)
        return (p for _, p in as_proxies(mod, orig_named_parameters(mod, "", recurse), ""))

    patched: list[tuple[Any, str, Any]] = [(nn.Module, "named_parameters", orig_named_parameters),
                                           (nn.Module, "parameters", orig_parameters)]
    wrappers = {"named_parameters": named_parameters_wrapper, "parameters": parameters_wrapper}
    for names, random in ((_FACTORIES, False), (_RANDOM_FACTORIES, True)):
        for name in names:
            orig = getattr(torch, name, None)
            if orig is not None:
                patched.append((torch, name, orig))
    nn.Module.__setattr__ = setattr_wrapper  # type: ignore[method-assign]
    for owner, name, orig in patched:
        setattr(owner, name, wrappers[name] if owner is nn.Module else make_factory(orig, name in _RANDOM_FACTORIES))
    try:
        yield assigned
    finally:
        nn.Module.__setattr__ = orig_setattr  # type: ignore[method-assign]
        for owner, name, orig in patched:
            setattr(owner, name, orig)
        for mod, name, had, old in reversed(undo):
            if had:
                mod.__dict__[name] = old
            else:
                mod.__dict__.pop(name, None)


def _from_user(frame: Any) -> bool:
    """Whether ``frame`` is model code (not torch's or gcompiler.fx's own)."""
    return frame is not None and user_frame(frame) is frame


def _has_proxy(value: Any, depth: int = 0) -> bool:
    if isinstance(value, fx.Proxy):
        return True
    if depth > 3:
        return False
    if isinstance(value, (list, tuple, set)):
        return any(_has_proxy(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_has_proxy(v, depth + 1) for v in value.values())
    return False


def find_proxies(root: nn.Module) -> list[str]:
    """Every ``module.attribute`` of ``root`` that holds a torch.fx Proxy (directly or in a list / dict),
    with the source line that created it when known."""
    found = []
    for path, m in root.named_modules():
        for k, v in list(m.__dict__.items()):
            if k in ("_modules", "_parameters", "_buffers") or k.startswith("__"):
                continue
            if _has_proxy(v):
                p = v if isinstance(v, fx.Proxy) and not isinstance(v, Attribute) else None
                src = p.node.meta.get("source") if p is not None else None
                src = src or _assignment_line(type(m), k)
                where = f"'{path}' ({type(m).__name__})" if path else f"the top-level module ({type(m).__name__})"
                found.append(f"{where}.{k}" + (f" (assigned at {src})" if src else ""))
    return found


def _assignment_line(cls: type, attr: str) -> str | None:
    """``file:line: text`` of the first ``self.<attr> = ...`` in ``cls``'s methods (where a traced value was
    stored on the module), or None."""
    import inspect
    import re
    pat = re.compile(rf"\bself\.{re.escape(attr)}\s*(=|\+=|\.append\(|\[)")
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch."):
            break
        for name, fn in vars(klass).items():
            if name == "__init__" or not inspect.isfunction(fn):
                continue
            try:
                lines, start = inspect.getsourcelines(fn)
                fname = inspect.getsourcefile(fn)
            except (OSError, TypeError):
                continue
            for i, line in enumerate(lines):
                if pat.search(line):
                    return f"{fname}:{start + i}: {line.strip()}"
    return None
