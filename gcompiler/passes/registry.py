"""The pass registry: names, typed options and declared contracts.

A pass is a plain function ``fn(gm: GraphModule, *, opt: T = default, ...) -> GraphModule`` that edits the
graph through the Graph API (it may mutate ``gm`` in place and return it, or return a new module) and ends
with ``gm.graph.lint(); gm.recompile()``. Its keyword-only parameters *are* its options: their annotations
give the types used to parse pipeline text (``"insert-masks{round_to=8}"``), their defaults the defaults.

Every pass declares a :class:`Contract` saying what it preserves; the verifier in
:mod:`gcompiler.passes.manager` checks it after each pass.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Literal

import torch

from ..errors import PassError

ContractKind = Literal["exact", "approximate", "changes-semantics"]


@dataclasses.dataclass(frozen=True)
class Contract:
    """What a pass promises about the function its graph computes.

    * ``exact``: outputs equal the previous graph's up to float re-association, checked as
      ``max|y_new - y_old| <= tol * max(max|y_old|, 1e-12)`` with the default ``tol = 1e-5``.
    * ``approximate``: the same check with a pass-chosen ``tol`` (e.g. quantization).
    * ``changes-semantics``: no numeric promise (e.g. a pass that zeroes channels on purpose);
      only lint and shapes are verified.
    """

    kind: ContractKind
    tol: float = 1e-5

    @staticmethod
    def exact(tol: float = 1e-5) -> "Contract":
        return Contract("exact", tol)

    @staticmethod
    def approximate(tol: float) -> "Contract":
        return Contract("approximate", tol)

    @staticmethod
    def changes_semantics() -> "Contract":
        return Contract("changes-semantics", float("inf"))

    @property
    def numeric(self) -> bool:
        return self.kind != "changes-semantics"

    def error(self, reference: torch.Tensor, candidate: torch.Tensor) -> float:
        """Relative error ``max|cand - ref| / max|ref|`` as the contract measures it."""
        scale = reference.detach().abs().max().clamp_min(1e-12)
        return float((candidate.detach() - reference.detach()).abs().max() / scale)

    def holds(self, reference: torch.Tensor, candidate: torch.Tensor) -> bool:
        if not self.numeric:
            return True
        if reference.shape != candidate.shape:
            return False
        return self.error(reference, candidate) <= self.tol

    def __str__(self) -> str:
        if self.kind == "changes-semantics":
            return "changes-semantics"
        return f"{self.kind} (tol {self.tol:g} x max|y|)"


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    name: str
    type: Any
    default: Any

    def parse(self, text: str, pass_name: str) -> Any:
        """Convert pipeline text to this option's type (``int``, ``float``, ``bool``, ``str``, literals, tuples)."""
        return _coerce(text.strip(), self.type, f"{pass_name}{{{self.name}}}")


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable[..., torch.fx.GraphModule]
    contract: Contract
    description: str
    options: dict[str, OptionSpec]
    preserves: tuple[str, ...] = ()

    def bind(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate option names and coerce text values; returns the keyword arguments to call with."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(f"{o.name}: {_type_name(o.type)} = {o.default!r}" for o in self.options.values())
            raise PassError(f"pass '{self.name}' has no option {', '.join(map(repr, unknown))}; "
                            f"valid options: {valid or '(none)'}")
        out = {}
        for key, value in options.items():
            spec = self.options[key]
            out[key] = spec.parse(value, self.name) if isinstance(value, str) and spec.type is not str \
                else _coerce(value, spec.type, f"{self.name}{{{key}}}") if isinstance(value, str) else value
        return out

    def __call__(self, gm: torch.fx.GraphModule, **options: Any) -> torch.fx.GraphModule:
        return self.fn(gm, **self.bind(options))


_REGISTRY: dict[str, PassInfo] = {}


def register_pass(name: str, *, contract: Contract, description: str | None = None,
                  preserves: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as pass ``name``; options come from its keyword-only parameters.

    ``preserves`` names analyses the pass keeps valid (e.g. ``("channel-groups",)``), MLIR style.
    """

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise PassError(f"a pass named '{name}' is already registered ({_REGISTRY[name].fn.__module__})")
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        opts: dict[str, OptionSpec] = {}
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                if p.default is inspect.Parameter.empty:
                    raise PassError(f"pass '{name}': option '{p.name}' needs a default")
                opts[p.name] = OptionSpec(p.name, hints.get(p.name, type(p.default)), p.default)
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        info = PassInfo(name, fn, contract, doc, opts, tuple(preserves))
        _REGISTRY[name] = info
        fn.pass_info = info  # type: ignore[attr-defined]
        return fn

    return deco


def get_pass(name: str) -> PassInfo:
    _load_builtin_passes()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise PassError(f"unknown pass '{name}'.{hint} Available passes: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    """Names of every registered pass, sorted."""
    _load_builtin_passes()
    return sorted(_REGISTRY)


def pass_infos() -> list[PassInfo]:
    _load_builtin_passes()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtin_passes() -> None:
    # Importing the package's pass modules registers them; done lazily to keep `import gcompiler` light.
    from . import _builtin  # noqa: F401


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if tp is Any or tp is None:
            return value
        if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
            if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
                return None
            errors = []
            for a in args:
                if a is type(None):
                    continue
                try:
                    return _coerce(value, a, where)
                except PassError as e:
                    errors.append(str(e))
            raise PassError("; ".join(errors))
        if origin is Literal:
            for a in args:
                if value == a or str(a) == str(value):
                    return a
            raise PassError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        if origin in (tuple, list):
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).strip("()[]").split(";") if v]
            inner = args[0] if args else str
            return origin(_coerce(v.strip() if isinstance(v, str) else v, inner, where) for v in items)
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        return tp(value)
    except PassError:
        raise
    except (TypeError, ValueError):
        raise PassError(f"{where}: cannot read {value!r} as {_type_name(tp)}") from None
