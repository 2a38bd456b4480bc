"""Exception types raised by gcompiler.

Every error a user can trigger derives from :class:`GCompilerError` and its message names the
node, module, file or option at fault and, where one exists, the fix.
"""
from __future__ import annotations

from pathlib import Path


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


class NonFiniteError(GCompilerError):
    """A loss term (or a parameter) became NaN/inf during training; the run stopped without saving over good
    checkpoints.

    Attributes: ``step`` (1-based update at which it happened), ``phase``, ``term`` and
    ``checkpoint`` (the last good checkpoint directory, or ``None``).
    """

    def __init__(self, message: str, *, step: int, phase: str | None, term: str | None,
                 checkpoint: "Path | None") -> None:
        super().__init__(message)
        self.step, self.phase, self.term, self.checkpoint = step, phase, term, checkpoint


class ExportError(GCompilerError):
    """A model could not be exported (ONNX, integer conversion) or the exported model disagrees with it."""


class DistributedError(GCompilerError):
    """A multi-process (torchrun) run cannot continue: another rank failed, the ranks disagree (a graph
    rewrite produced different graphs), or the run cannot resume on this number of processes."""
