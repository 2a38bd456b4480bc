"""Side-by-side latency of several models, each on the back end ``deploy`` chose for it.

This is what the report and ``gcompiler export --latency`` print: every model is deployed on its own
(:func:`gcompiler.deploy`: candidates built, checked against the model and timed; the fastest kept), then the
chosen callables -- and, for reference, the float models' plain eager runs -- are timed again together, round
robin in one loop (:func:`~gcompiler.deploy.measure.round_robin`), so that the ratios between them come from
the same moments of a shared machine. ``torch.compile`` is left out by default: building it takes minutes,
longer than the rest of a report (pass ``inductor_timeout_s`` to include it).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import GCompilerError
from .measure import round_robin, summarize

__all__ = ["compare"]


def compare(models: Mapping[str, tuple[nn.Module, str]], *inputs: torch.Tensor, device: str = "cpu",
            rounds: int = 5, deploy_rounds: int = 3, inductor_timeout_s: float = 0.0,
            eager: bool = True) -> dict[str, Any]:
    """Deploy every ``name -> (model, precision)`` on ``device`` and time the chosen back ends side by side.

    Returns ``{"device", "threads", "rounds", "deployed": {name: {"precision", "backend", "median_ms",
    "min_ms", "error"}}, "eager": {name: {"median_ms", "min_ms"}}, "failed": {name: reason}}``. ``error`` is
    the chosen back end's ``max|y - y_ref| / max|y_ref|`` against ``deploy``'s reference (the model's eager
    output; the integer graph for int8). A model ``deploy`` refuses (no back end matches, an int8 graph it
    cannot build) goes to ``failed`` with the reason instead of raising: a latency table should not take a
    finished run down. ``eager``: also time the fp32 models' own eager forward in the same loop.
    """
    from . import deploy

    deployed: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, (model, precision) in models.items():
        try:
            deployed[name] = deploy(model, *inputs, device=device, precision=precision, rounds=deploy_rounds,
                                    inductor_timeout_s=inductor_timeout_s)
        except GCompilerError as exc:
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    run_inputs = tuple(x.cuda() for x in inputs) if device == "cuda" else inputs
    runners = {f"deploy:{k}": (lambda d=d: d(*run_inputs)) for k, d in deployed.items()}
    if eager:
        for name, (model, precision) in models.items():
            if precision == "fp32":
                m = copy.deepcopy(model).eval().to(run_inputs[0].device)  # the caller's model is left as it is
                runners[f"eager:{name}"] = lambda m=m: m(*run_inputs)
    with torch.no_grad():
        for fn in runners.values():  # warm-up round
            fn()
    medians, runs = summarize(round_robin(runners, rounds=rounds, device=device))

    def row(key: str) -> dict[str, float]:
        return {"median_ms": round(medians[key], 3), "min_ms": round(min(runs[key]), 3)}

    return {"device": device, "threads": torch.get_num_threads(), "rounds": rounds,
            "deployed": {k: {"precision": models[k][1], "backend": d.backend, "error": d.report.get("final_error"),
                             **row(f"deploy:{k}")} for k, d in deployed.items()},
            "eager": {k: row(f"eager:{k}") for k, (_, p) in models.items() if eager and p == "fp32"},
            "failed": failed}
