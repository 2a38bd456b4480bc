"""Compiler passes over torch.fx GraphModules, their registry and the pass manager."""
from .registry import (Contract, PassInfo, available, get_pass, parse_list, pass_infos, register_pass,
                       register_pass_module)

__all__ = ["Contract", "PassInfo", "available", "get_pass", "parse_list", "pass_infos", "register_pass",
           "register_pass_module"]
from .manager import PassLog, PassRecord, compile, parse_pipeline, run_pipeline  # noqa: E402

__all__ += ["PassLog", "PassRecord", "compile", "parse_pipeline", "run_pipeline"]
