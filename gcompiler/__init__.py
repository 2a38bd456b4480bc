"""gcompiler: a compiler-style graph-rewriting framework that makes GAN generators small and fast.

Quick tour::

    import gcompiler, torch
    model = gcompiler.models.create("resnet_9blocks")
    x = torch.randn(1, 3, 256, 256)
    print(gcompiler.profile(model, x))                    # MACs / params / size table
    gm = gcompiler.compile(model, "insert-masks", x)      # trace + run a pass pipeline
    print(gm.meta["pass_log"])                            # per-pass time and before -> after summary

See ARCHITECTURE.md for the layout of the package.
"""
from __future__ import annotations

from . import errors
from .errors import (CheckpointError, ConfigError, DataError, GCompilerError, KernelError, PassError,
                     TraceError, VerificationError)
from .fx import propagate_shapes, register_leaf, trace
from .passes import Contract, register_pass
from .passes.manager import compile, run_pipeline
from .profiler import Profile, profile

__version__ = "0.1.0"

__all__ = [
    "trace", "register_leaf", "propagate_shapes", "profile", "Profile", "compile", "run_pipeline",
    "register_pass", "Contract", "errors", "GCompilerError", "TraceError", "CheckpointError", "PassError",
    "VerificationError", "ConfigError", "DataError", "KernelError", "__version__",
]


_LAZY = {  # public name -> (module, attribute); imported on first use to keep `import gcompiler` fast
    "dump": ("viz", "dump"),
    "register_leaf_function": ("fx", "register_leaf_function"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "save_checkpoint": ("checkpoint", "save_checkpoint"),
    "channel_groups": ("analysis", "channel_groups"),
    "masks": ("passes.masks", "masks"),
    "estimate": ("cost", "estimate"),
    "save": ("serialize", "save"),
    "load": ("serialize", "load"),
    "describe_groups": ("analysis", "describe_groups"),
    "open_dataset": ("data", "open_dataset"),
    "make_loader": ("data", "make_loader"),
    "psnr": ("metrics", "psnr"),
    "MixedOp": ("nas.mixed", "MixedOp"),
    "ssim": ("metrics", "ssim"),
    "deploy": ("deploy", "deploy"),
    "compress": ("compression", "compress"),
    "CompressResult": ("compression", "CompressResult"),
    "set_config": ("supernet", "set_config"),
    "extract": ("supernet", "extract"),
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    import importlib

    if name in ("models", "analysis", "passes", "quant", "kernels", "train", "data", "metrics", "serialize",
                "checkpoint", "viz", "spec", "methods"):
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'gcompiler' has no attribute '{name}'")
