"""Exception types raised by gcompiler.

Every error a user can trigger derives from :class:`GCompilerError` and its message names the
node, module, file or option at fault and, where one exists, the fix.
"""
from __future__ import annotations


class GCompilerError(Exception):
    """Base class of every error gcompiler raises on purpose."""


class TraceError(GCompilerError):
    """A model could not be traced to a torch.fx graph (or shapes could not be propagated)."""


class CheckpointError(GCompilerError):
    """A checkpoint file is missing, unreadable, unsafe, or does not match the model."""


class PassError(GCompilerError):
    """A pass or pipeline was misconfigured (unknown pass, unknown option, bad value) or failed."""


class VerificationError(GCompilerError):
    """The verifier found a pass broke its declared contract (lint, shapes or numerics)."""


class ConfigError(GCompilerError):
    """A command-line flag, config file or model specification is invalid."""


class DataError(GCompilerError):
    """A data source is empty, unreadable, or does not fit the teacher."""


class KernelError(GCompilerError):
    """A kernel was called with unsupported arguments or could not be compiled."""


class GuardError(TraceError):
    """A traced graph ran on inputs that break an assumption recorded at trace time (a guard)."""
