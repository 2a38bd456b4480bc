"""The one option parser: typed options of methods (dataclass fields) and shared settings, from any source.

``--opt key=value`` on the command line, a config file's values and Python keyword arguments of
:func:`gcompiler.compress` all go through :func:`coerce_option`, which converts a value to the field's type
hint (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``) or raises a
:class:`~gcompiler.errors.ConfigError` naming the option and the expected type. Untyped key/value pairs (the
teacher's constructor arguments) use :func:`guess_value`.
"""
from __future__ import annotations

import math
import re
import typing
from typing import Any, Iterable

from ..errors import ConfigError


def parse_key_values(items: Iterable[str], *, flag: str = "--opt", example: str = "gan_weight=0.1") -> dict[str, str]:
    """``["a=1", "b-c=x"]`` -> ``{"a": "1", "b_c": "x"}`` (values stay text; ``-`` in keys becomes ``_``)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def guess_value(v: str) -> Any:
    """A value without a declared type (a constructor argument): int, float, bool or the text itself.

    ``int()`` would also accept ``"16_16_32"`` (a channel configuration string), so only plain digits are ints.
    """
    if re.fullmatch(r"[+-]?\d+", v):
        return int(v)
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", v):
        return float(v)
    return {"true": True, "false": False}.get(v.lower(), v)


def type_name(hint: Any) -> str:
    """``int``, ``float | None``, ``one of a|b|c`` ... for help texts."""
    import types

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(hint))
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def option_docs(cls: type) -> dict[str, str]:
    """Help strings of a dataclass's fields: the string literal right after each field in the source."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, cur in zip(body, body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(cur, ast.Expr) \
                and isinstance(cur.value, ast.Constant) and isinstance(cur.value.value, str):
            docs[prev.target.id] = " ".join(cur.value.value.split())
    return docs


def coerce_option(method: str, name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (a string from ``--opt`` or a value from a config file) to the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    import types

    is_union = origin is typing.Union or origin is getattr(types, "UnionType", None)
    allowed = [a for a in args if a is not type(None)] if is_union else [hint]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")
                         and type(None) in args):
        if type(None) in args:
            return None
        raise ConfigError(f"method {method!r} option {name!r} cannot be empty")
    if typing.get_origin(allowed[0]) is typing.Literal:
        choices = typing.get_args(allowed[0])
        if value not in choices:
            raise ConfigError(f"method {method!r} option {name!r} must be one of {list(choices)}, got {value!r}")
        return value
    errors = []
    for t in allowed:
        try:
            if t is bool:
                if isinstance(value, bool):
                    return value
                s = str(value).strip().lower()
                if s in ("1", "true", "yes", "on"):
                    return True
                if s in ("0", "false", "no", "off"):
                    return False
                raise ValueError(f"{value!r} is not a boolean")
            if t is int:
                if isinstance(value, bool):
                    raise ValueError("a boolean is not an int")
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{value!r} is not an integer")
                return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            if t is float:
                if isinstance(value, bool):
                    raise ValueError("a boolean is not a number")
                f = float(value)
                if not math.isfinite(f):  # lr=nan would only surface as a NaN stop much later
                    raise ValueError(f"{value!r} is not a finite number")
                return f
            if t is str:
                return str(value)
            if t is Any:
                return value
        except (TypeError, ValueError, OverflowError) as exc:  # int("1e400") overflows
            errors.append(str(exc))
            continue
    want = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"method {method!r} option {name!r}: expected {want}, got {value!r}")
