"""Model registry of the zoo: names -> builders, plus what each model expects as input.

A family module registers each public builder with :func:`register_model`::

    @register_model("resnet_9blocks", family="cyclegan", kind="generator",
                    default_input=lambda in_nc=3, **_: (image(in_nc, 256, 256),))
    def resnet_9blocks(*, ngf: int = 64, ...) -> nn.Module: ...

``default_input`` is either a tuple of :class:`InputSpec` (one per positional forward argument) or a
callable receiving the builder's keyword arguments (defaults filled in) and returning that tuple, for
models whose input shape depends on a keyword (``in_nc``, ``nz``, ``c_dim``).

:func:`create` builds a model by name and turns every bad name, keyword or value into a
:class:`~gcompiler.errors.ConfigError` that names the model and the fix.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, Union

import torch
from torch import nn

from gcompiler.errors import ConfigError

Kind = Literal["generator", "discriminator", "features"]
_KINDS = ("generator", "discriminator", "features")


@dataclass(frozen=True)
class InputSpec:
    """One positional input of a model, without the batch dimension.

    ``role`` decides how :meth:`ModelSpec.example_inputs` fills it: ``"image"`` uniform in [-1, 1],
    ``"noise"`` standard normal, ``"label"`` a one-hot vector (class ``i % n`` for batch item i).
    ``spatial`` inputs are images whose last two dims follow the ``size`` argument.
    """

    shape: tuple[int, ...]
    role: Literal["image", "noise", "label"] = "image"

    @property
    def spatial(self) -> bool:
        return self.role == "image" and len(self.shape) == 3


def image(channels: int, height: int, width: int | None = None) -> InputSpec:
    """An image input ``(channels, height, width)`` in [-1, 1]."""
    return InputSpec((channels, height, height if width is None else width), "image")


def noise(*shape: int) -> InputSpec:
    """A latent noise input (standard normal), e.g. ``noise(100, 1, 1)`` or ``noise(128)``."""
    return InputSpec(tuple(shape), "noise")


def label(num_classes: int) -> InputSpec:
    """A one-hot label vector of ``num_classes`` entries."""
    return InputSpec((num_classes,), "label")


InputsFn = Callable[..., Sequence[InputSpec]]
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str
    family: str
    kind: Kind
    builder: Builder = field(repr=False)
    default_input: Union[Sequence[InputSpec], InputsFn] = field(repr=False)
    description: str = ""

    def keyword_defaults(self) -> dict[str, Any]:
        """The builder's keyword arguments with their default values."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
        }

    def input_specs(self, **model_kw: Any) -> tuple[InputSpec, ...]:
        """The input specs for a model built with ``model_kw`` (unknown keywords are a ConfigError)."""
        _check_kwargs(self, model_kw)
        if callable(self.default_input):
            kw = self.keyword_defaults()
            kw.update(model_kw)
            return tuple(self.default_input(**kw))
        return tuple(self.default_input)

    @property
    def has_spatial_input(self) -> bool:
        """Whether some input is an image whose size ``example_inputs(size=...)`` can change."""
        return any(s.spatial for s in self.input_specs())

    def example_inputs(
        self,
        batch: int = 1,
        size: int | tuple[int, int] | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        **model_kw: Any,
    ) -> tuple[torch.Tensor, ...]:
        """Reference input tensors for this model (deterministic for a given ``seed``).

        ``size`` (an int or ``(height, width)``) replaces the spatial size of image inputs; a model
        without an image input (noise-driven generators) rejects it. ``model_kw`` are the keywords
        the model is (or will be) built with, for inputs whose shape depends on them.
        """
        if batch < 1:
            raise ConfigError(f"example_inputs of {self.name!r}: batch must be >= 1, got {batch}")
        specs = self.input_specs(**model_kw)
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            if len(hw) != 2 or any((not isinstance(v, int)) or v < 1 for v in hw):
                raise ConfigError(
                    f"example_inputs of {self.name!r}: size must be a positive int or (height, width), "
                    f"got {size!r}"
                )
            if not any(s.spatial for s in specs):
                raise ConfigError(
                    f"model {self.name!r} takes no image input (inputs: "
                    f"{', '.join(s.role + str(s.shape) for s in specs)}), so size={size!r} does not apply; "
                    "leave size unset"
                )
            specs = tuple(
                InputSpec(s.shape[:-2] + hw, s.role) if s.spatial else s for s in specs
            )
        gen = torch.Generator().manual_seed(seed)
        out = []
        for s in specs:
            shape = (batch, *s.shape)
            if s.role == "image":
                t = torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1
            elif s.role == "noise":
                t = torch.randn(shape, generator=gen, dtype=dtype)
            else:
                t = torch.zeros(shape, dtype=dtype)
                t[torch.arange(batch), torch.arange(batch) % s.shape[0]] = 1
            out.append(t.to(device))
        return tuple(out)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    kind: Kind,
    default_input: Union[Sequence[InputSpec], InputsFn],
) -> Callable[[Builder], Builder]:
    """Register ``fn(**kw) -> nn.Module`` under ``name`` (decorator; returns ``fn`` unchanged)."""
    if kind not in _KINDS:
        raise ValueError(f"register_model({name!r}): kind must be one of {_KINDS}, got {kind!r}")

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].builder is not fn:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].builder}")
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = ModelSpec(
            name=name,
            family=family,
            kind=kind,
            builder=fn,
            default_input=default_input,
            description=doc.splitlines()[0] if doc else "",
        )
        return fn

    return deco


def available(kind: Kind | None = None, family: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally only those of one ``kind`` / ``family``."""
    return sorted(
        n for n, s in _REGISTRY.items()
        if (kind is None or s.kind == kind) and (family is None or s.family == family)
    )


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under ``name`` (ConfigError with close matches if none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Available models: {', '.join(available())}"
        ) from None


def _check_kwargs(s: ModelSpec, kw: dict[str, Any]) -> None:
    params = inspect.signature(s.builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for k in kw:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"model {s.name!r} has no option {k!r}.{hint} Its options: "
                f"{', '.join(allowed) if allowed else '(none)'}"
                + ("; weights=PATH loads a checkpoint" if "weights" not in allowed else "")
            )


def create(name: str, **kw: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword options ``kw``.

    ``weights=PATH`` (for models whose builder has no ``weights`` option of its own) loads a
    checkpoint with :func:`gcompiler.checkpoint.load_checkpoint` after building. An unknown name,
    an unknown option or an invalid option value raises :class:`ConfigError`.
    """
    s = spec(name)
    weights = None
    if "weights" in kw and "weights" not in inspect.signature(s.builder).parameters:
        weights = kw.pop("weights")
    _check_kwargs(s, kw)
    try:
        model = s.builder(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} with options {kw}: {e}") from e
    if weights is not None:
        from gcompiler.checkpoint import load_checkpoint

        load_checkpoint(model, weights)
    return model
