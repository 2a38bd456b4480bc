"""The modules that define the built-in passes, listed by name and imported when the registry is first asked.

Built-in passes live in three subpackages layered ``passes`` < ``quant`` < ``kernels`` (quant's passes
register through :mod:`gcompiler.passes.registry`; ``lower-to-triton`` consumes quant's integer modules).
The registry sits in the lowest of them and must not import the layers above it, so the pass modules are
named here as text and imported with :mod:`importlib` -- the same way a plugin's modules are loaded
(:func:`gcompiler.passes.registry.register_pass_module`). Add one line per new built-in pass module.
"""
BUILTIN_PASS_MODULES: tuple[str, ...] = (
    "gcompiler.quant.insert",  # insert-fake-quant, strip-fake-quant
    "gcompiler.quant.calibrate",  # calibrate-activations
    "gcompiler.quant.fold",  # fold-norms
    "gcompiler.quant.convert",  # convert-to-int
    "gcompiler.passes.masks",  # insert-masks
    "gcompiler.passes.dead_channels",  # eliminate-dead-channels
    "gcompiler.kernels.lower",  # lower-to-triton
    "gcompiler.passes.prune_ratio",  # prune-by-ratio
    "gcompiler.passes.fine_grained",  # prune-fine-grained
    "gcompiler.passes.supernet",  # make-supernet
    "gcompiler.nas.substitute",  # substitute-ops
    "gcompiler.nas.derive",  # derive-architecture, fix-architecture
)
