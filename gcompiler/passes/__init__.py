"""Compiler passes over torch.fx GraphModules, their registry and the pass manager."""
from .registry import Contract, PassInfo, available, get_pass, pass_infos, register_pass

__all__ = ["Contract", "PassInfo", "available", "get_pass", "pass_infos", "register_pass"]
from .manager import PassLog, PassRecord, compile, parse_pipeline, run_pipeline  # noqa: E402

__all__ += ["PassLog", "PassRecord", "compile", "parse_pipeline", "run_pipeline"]
