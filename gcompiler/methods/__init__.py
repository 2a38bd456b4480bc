"""Compression methods: what ``gcompiler compress --method NAME`` and ``gcompiler.compress(..., method=NAME)`` run
(GAN Slimming, AGD, GAN Compression, self-supervised pruning).

A method is graph rewrites (pass pipelines) plus training (recipes of :mod:`gcompiler.train`), registered with
:func:`register_method` (the full walk-through, tested: ``docs/methods.md``)::

    @dataclass
    class MyOptions:                      # every field is a typed option: --opt key=value, [my] in --config,
        lr: float = 2e-4                  # or a keyword argument of gcompiler.compress
        "Adam learning rate of the student's weights."   # a string right after a field is its help

    @register_method("my", options=MyOptions, summary="one line for --help",
                     defaults={"max_steps": 300, "finetune_steps": 100})
    def run_my(job: CompressJob, opts: MyOptions) -> dict:
        gm = gcompiler.trace(copy.deepcopy(job.teacher), job.reference_input)
        job.rewrite(gm, "insert-masks,prune-by-ratio{ratio=0.5},eliminate-dead-channels", stage="prune")
        ...                               # train with a Recipe: Trainer(..., config=job.train_config(...))
        return job.finish(gm, steps=..., report={...})

The runner receives a :class:`~gcompiler.methods.base.CompressJob`: the teacher, the data, the run
directory and the settings shared by every method (steps, bits, target MACs, seed, device ...), plus the
helpers every method needs (``rewrite``, loaders, ``train_config``, ``finish``). Options are converted by
the one option parser (:mod:`gcompiler.methods.options`). Built-in methods are imported lazily from
:data:`BUILTIN` the first time the registry is consulted.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from .options import coerce_option, option_docs, parse_key_values, type_name

#: Built-in method name -> module that registers it on import.
BUILTIN: dict[str, str] = {"gs": "gcompiler.methods.gs", "gan-compression": "gcompiler.methods.gan_compression", "agd": "gcompiler.methods.agd",
                          "self-supervised": "gcompiler.methods.self_supervised", "ptq": "gcompiler.methods.ptq"}


@dataclass(frozen=True)
class MethodInfo:
    """A registered compression method."""

    name: str
    run: Callable[..., dict[str, Any]]
    options: type
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    bits: tuple[int, ...] | None = None
    bits_reason: str = ""

    def check_bits(self, bits: int) -> None:
        """:class:`ConfigError` (before anything runs) when the method cannot produce ``bits``-bit students."""
        if self.bits is not None and bits not in self.bits:
            allowed = " or ".join(str(b) for b in self.bits)
            raise ConfigError(f"--method {self.name} takes --bits {allowed} (got {bits}): {self.bits_reason}")

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def option_rows(self) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, help)`` of every option."""
        docs = option_docs(self.options)
        hints = typing.get_type_hints(self.options)
        rows = []
        for f in self.option_fields():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f.name, type_name(hints.get(f.name, Any)), default, docs.get(f.name, "")))
        return rows

    def option_help(self) -> str:
        """One line per option: ``name: type = default  help``."""
        return "\n".join(f"  {n}: {t} = {d!r}  {h}".rstrip() for n, t, d, h in self.option_rows())

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """Build the options dataclass from ``values`` (strings are converted to each field's type)."""
        known = {f.name: f for f in self.option_fields()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"method {self.name!r} has no option(s) {unknown}; its options are "
                              f"{sorted(known)} (see `gcompiler compress --help`)")
        hints = typing.get_type_hints(self.options)
        kwargs = {k: coerce_option(self.name, k, v, hints.get(k, Any)) for k, v in values.items()}
        try:
            opts = self.options(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"method {self.name!r}: bad options: {exc}") from exc
        check = getattr(opts, "validate", None)
        if callable(check):
            check()
        return opts


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, options: type, summary: str,
                    defaults: Mapping[str, Any] | None = None, bits: tuple[int, ...] | None = None,
                    bits_reason: str = "") -> Callable:
    """Register ``run(job, opts) -> summary dict`` as compression method ``name``.

    ``options`` is a dataclass whose fields are the method's own options; ``defaults`` overrides the
    shared settings' defaults for this method (``max_steps``, ``finetune_steps``, ``batch_size``, ...).
    ``bits``: the ``--bits`` values the method supports (``None``: any), checked when the settings are
    resolved, with ``bits_reason`` in the error.
    """
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"register_method({name!r}): options must be a dataclass type")

    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        _METHODS[name] = MethodInfo(name, fn, options, summary, dict(defaults or {}), bits, bits_reason)
        return fn

    return deco


def _load_builtin() -> None:
    for name, module in BUILTIN.items():
        if name not in _METHODS:
            importlib.import_module(module)


def available_methods() -> list[str]:
    """Names of the registered methods (built-ins included)."""
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` registered as ``name``; :class:`ConfigError` listing the others if unknown."""
    _load_builtin()
    if name not in _METHODS:
        import difflib

        close = difflib.get_close_matches(name, list(_METHODS), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown --method {name!r}; available: {', '.join(sorted(_METHODS))}.{hint}")
    return _METHODS[name]


from .base import CompressJob  # noqa: E402  (re-export; base imports nothing from here at module level)

__all__ = ["MethodInfo", "register_method", "get_method", "available_methods", "option_docs", "coerce_option",
           "parse_key_values", "CompressJob", "BUILTIN"]
