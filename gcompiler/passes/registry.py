"""The pass registry: names, typed options and declared contracts.

A pass is a plain function ``fn(gm: GraphModule, *, opt: T = default, ...) -> GraphModule`` that edits the
graph through the Graph API (it may mutate ``gm`` in place and return it, or return a new module) and ends
with ``gm.graph.lint(); gm.recompile()``. Its keyword-only parameters *are* its options: their annotations
give the types used to parse pipeline text (``"insert-masks{round_to=8}"``), their defaults the defaults.

Every pass declares a :class:`Contract` saying what it preserves; the verifier in
:mod:`gcompiler.passes.manager` checks it (after each pass on request, and for the whole pipeline at its end).
A contract may depend on the options: pass a function ``contract(options: dict) -> Contract`` (it receives
every option, defaults filled in), e.g. a quantization bound that depends on the bit widths.

List options. Every option that holds a list uses one syntax, read by :func:`parse_list`: items separated
by ``;`` (or ``|``), e.g. ``groups=model_1*;model_4`` or ``skip=conv1|conv9``; surrounding quotes or brackets
are stripped. Options annotated ``tuple[T, ...]`` / ``list[T]`` are parsed this way automatically; a pass
with a ``str`` option holding a list calls :func:`parse_list` itself.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Callable, Literal, Union

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

    An ``approximate`` contract may be *per input* (:meth:`bounded`): its tolerance is a bound the pass can
    compute for given inputs from the graph it produced (``per_input(gm, *inputs) -> (tol, reason)``), e.g. a
    sound propagation of quantization error. The verifier evaluates it on the inputs it checks with
    (:meth:`resolve`) and compares against that number.
    """

    kind: ContractKind
    tol: float = 1e-5
    per_input: Callable[..., tuple[float, str | None]] | None = None
    note: str | None = None

    @staticmethod
    def exact(tol: float = 1e-5) -> "Contract":
        return Contract("exact", tol)

    @staticmethod
    def approximate(tol: float) -> "Contract":
        return Contract("approximate", tol)

    @staticmethod
    def bounded(per_input: Callable[..., tuple[float, str | None]], note: str) -> "Contract":
        """An approximate contract whose tolerance ``per_input(gm_after, *inputs)`` computes per input."""
        return Contract("approximate", float("inf"), per_input, note)

    def resolve(self, gm: Any, inputs: Any) -> "Contract":
        """This contract with its tolerance evaluated on ``inputs`` (itself unless it is per input)."""
        if self.per_input is None:
            return self
        tol, why = self.per_input(gm, *inputs)
        note = f"{self.note} on the checked inputs" + (f"; no bound: {why}" if why else "")
        return Contract(self.kind, float(tol), None, note)

    @staticmethod
    def changes_semantics() -> "Contract":
        return Contract("changes-semantics", float("inf"))

    @property
    def numeric(self) -> bool:
        return self.kind != "changes-semantics"

    def error(self, reference: torch.Tensor, candidate: torch.Tensor) -> float:
        """Relative error ``max|cand - ref| / max|ref|`` as the contract measures it."""
        if reference.numel() == 0:
            return 0.0
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
        if self.per_input is not None:
            return f"{self.kind} ({self.note}, per input)"
        return f"{self.kind} (tol {self.tol:g} x max|y|" + (f"; {self.note})" if self.note else ")")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    name: str
    type: Any
    default: Any

    def parse(self, text: str, pass_name: str) -> Any:
        """Convert pipeline text to this option's type (``int``, ``float``, ``bool``, ``str``, literals, tuples)."""
        return _coerce(text.strip(), self.type, f"{pass_name}{{{self.name}}}")


ContractSpec = Union[Contract, Callable[[dict], Contract]]

LIST_SEPARATORS = ";|"


def parse_list(value: Any, where: str = "option") -> list[str]:
    """The one list syntax of pass options: ``"a;b;c"`` (or ``"a|b|c"``) -> ``["a", "b", "c"]``.

    Surrounding quotes and one pair of brackets (``[a;b]``, ``(a;b)``) are stripped, items are stripped of
    blanks and empty items dropped; a list / tuple passes through (items as text). A comma inside a list is
    an error that names ``where``: in pipeline text a comma ends the option.
    """
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1].strip()
    if "," in text:
        raise PassError(f"{where}: list {value!r} contains a comma; separate items with ';' (or '|'), "
                        f"e.g. 'a;b;c'")
    return [item.strip() for item in re.split(r"[;|]", text) if item.strip()]


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable[..., torch.fx.GraphModule]
    contract: ContractSpec
    description: str
    options: dict[str, OptionSpec]
    preserves: tuple[str, ...] = ()

    def contract_for(self, options: dict[str, Any] | None = None) -> Contract:
        """The contract for these (bound) options; defaults fill the options not given."""
        if isinstance(self.contract, Contract):
            return self.contract
        full = {k: o.default for k, o in self.options.items()}
        full.update(options or {})
        c = self.contract(full)
        if not isinstance(c, Contract):
            raise PassError(f"pass '{self.name}': its contract function returned {type(c).__name__}, "
                            "expected a Contract")
        return c

    def contract_text(self) -> str:
        """The contract in words (for a contract that depends on the options: its value at the defaults)."""
        if isinstance(self.contract, Contract):
            return str(self.contract)
        return f"{self.contract_for()} at the defaults; depends on the options"

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

#: Analyses cached in ``gm.meta["analysis_cache"]`` that a pass can declare it ``preserves``.
ANALYSES: tuple[str, ...] = ("channel-groups",)


def register_pass(name: str, *, contract: ContractSpec, description: str | None = None,
                  preserves: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as pass ``name``; options come from its keyword-only parameters.

    ``contract`` is a :class:`Contract`, or a function of the options dict returning one.
    ``preserves`` names analyses the pass keeps valid (e.g. ``("channel-groups",)``), MLIR style: the pass
    manager drops every cached analysis after a pass (see :data:`ANALYSES`) except those it preserves.
    """
    if not (isinstance(contract, Contract) or callable(contract)):
        raise PassError(f"pass '{name}': contract must be a Contract or a function of the options, "
                        f"got {type(contract).__name__}")
    unknown = sorted(set(preserves) - set(ANALYSES))
    if unknown:
        raise PassError(f"pass '{name}': preserves names unknown analyses {unknown}; known: {', '.join(ANALYSES)}")

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


_PASS_MODULES: list[str] = []
_LOADED: set[str] = set()


def register_pass_module(module: str) -> None:
    """Have the registry import ``module`` (a dotted name) before it lists or looks up passes (plugins)."""
    if module not in _PASS_MODULES:
        _PASS_MODULES.append(module)


def _load_builtin_passes() -> None:
    # Importing the pass modules registers them; done lazily to keep `import gcompiler` light. They are
    # imported by name: the registry must not depend on the subpackages (quant, kernels) layered above it.
    import importlib

    from . import _builtin

    for module in tuple(_builtin.BUILTIN_PASS_MODULES) + tuple(_PASS_MODULES):
        if module not in _LOADED:
            importlib.import_module(module)
            _LOADED.add(module)


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
            items = value if isinstance(value, (list, tuple)) else parse_list(value, where)
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
