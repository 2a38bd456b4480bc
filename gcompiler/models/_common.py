"""Small shared pieces of the zoo: option validation and the CycleGAN-style norm/padding factories."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from gcompiler.errors import ConfigError

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")


def check_choice(model: str, option: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"model {model!r}: option {option}={value!r} is not supported; choose one of "
            f"{', '.join(repr(c) for c in choices)}"
        )


def check_positive(model: str, **options: Any) -> None:
    """Raise ConfigError unless every option is a positive int."""
    for k, v in options.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model {model!r}: option {k} must be a positive int, got {v!r}")


def norm_factory(model: str, norm: str) -> Callable[[int], nn.Module]:
    """The norm layer of pytorch-CycleGAN-and-pix2pix's ``get_norm_layer``.

    ``instance``: InstanceNorm2d without affine and without running stats; ``batch``: BatchNorm2d
    with affine and running stats; ``none``: Identity (keeps the Sequential indices, hence the keys).
    """
    check_choice(model, "norm", norm, NORMS)
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    return lambda c: nn.Identity()


def conv_bias(norm: str) -> bool:
    """Whether convs followed by ``norm`` carry a bias.

    BatchNorm's shift makes a bias redundant (the reference omits it). The reference also uses no
    bias with ``none``; we keep one there, since without any norm the bias is the only offset (no
    public checkpoint uses ``norm='none'``, so no key layout is at stake).
    """
    return norm != "batch"


def pad_layers(model: str, padding_type: str, amount: int) -> tuple[list[nn.Module], int]:
    """Padding modules to put before a conv, and the conv's own zero padding."""
    check_choice(model, "padding_type", padding_type, PADDINGS)
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(amount)], 0
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(amount)], 0
    return [], amount
