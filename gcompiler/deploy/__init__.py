"""``gcompiler.deploy``: run a generator with the fastest back end this package knows, chosen by measurement.

::

    fast = gcompiler.deploy(model, x)                       # CPU, fp32
    y = fast(x)
    print(fast.report)                                      # every candidate's timing, error, skip reason
    fast8 = gcompiler.deploy(model, x, precision="int8")    # ONNX Runtime int8 (QDQ) on CPU

Contract:

* The argument is never modified (the candidates work on copies, in eval mode).
* Every candidate is built, run once on the example inputs (warm-up) and compared with the reference output;
  one that fails to build, raises, or misses the tolerance is skipped with the reason in
  ``report["skipped"]``. The rest are timed **round robin** (``rounds`` interleaved runs after the warm-up,
  so load changes on a shared machine hit all alike) at the current ``torch.get_num_threads()`` (ONNX Runtime
  sessions get the same number of intra-op threads), and the smallest minimum (``stat="min"``, default),
  median, or minimum process CPU time (``stat="cpu"``, for one-thread runs on a loaded machine) wins.
* Float (fp32): reference = the model's eager output; tolerance ``1e-3 x max|y|`` (``max|y - y_ref|``).
  fp16 (CUDA): the same reference, tolerance ``1e-2 x max|y|``. int8: reference = the integer graph of
  ``convert-to-int`` (post-training quantized from a float model with ``quant_options`` and percentile
  calibration on ``calibration``, or converted from a fake-quant graph, or the integer graph itself) run by
  the reference executor; tolerance ``0.1 x max|y|``, the contract of ``convert-to-int`` /
  ``lower-to-triton``.
* After the choice the chosen back end is run again on the example inputs and checked; a violation raises
  :class:`~gcompiler.errors.VerificationError` (never a silently wrong callable).
* Back ends with static shapes (ONNX Runtime) refuse inputs of other shapes with a ConfigError.

Bad arguments raise :class:`~gcompiler.errors.ConfigError`: unknown device / precision / back-end names,
``device="cuda"`` without a GPU, fp16 on CPU, no example inputs.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError, GCompilerError, VerificationError
from .backends import CANDIDATES, FALLBACK, Context, Skip, integer_graph
from .measure import DeployReport, load_average, rel_error, round_robin, summarize

__all__ = ["deploy", "Deployed", "DeployReport", "candidates", "TOLERANCE"]

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "int8", "fp16")
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "int8": 0.1}


def candidates(device: str = "cpu", precision: str = "fp32") -> list[str]:
    """Names of the candidate back ends ``deploy`` tries for ``device`` / ``precision``."""
    return list(CANDIDATES.get((device, precision), {}))


class Deployed:
    """The callable ``deploy`` returns: ``deployed(*inputs) -> output`` with the chosen back end.

    Attributes: ``backend`` (chosen candidate name), ``report`` (:class:`DeployReport`), ``runner`` (the
    underlying callable), ``input_shapes`` (the example inputs' shapes).
    """

    def __init__(self, runner: Any, backend: str, report: DeployReport, input_shapes: list[tuple[int, ...]],
                 device: str) -> None:
        self.runner = runner
        self.backend = backend
        self.report = report
        self.input_shapes = input_shapes
        self.device = device
        self._static = bool(getattr(runner, "static_shapes", False))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._static:
            shapes = [tuple(x.shape) for x in inputs]
            if shapes != self.input_shapes:
                raise ConfigError(f"this model was deployed with the '{self.backend}' back end for input shapes "
                                  f"{self.input_shapes}, got {shapes}; call gcompiler.deploy again with an "
                                  "example input of the new shape")
        with torch.no_grad():
            return self.runner(*inputs)

    def __repr__(self) -> str:
        ms = self.report.get("timings_ms", {}).get(self.backend, float("nan"))
        return f"Deployed(backend={self.backend!r}, device={self.device!r}, {ms:.2f} ms at {self.input_shapes})"


def _check_args(model: Any, inputs: Sequence[Any], device: str, precision: str) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"deploy() expects a torch.nn.Module or GraphModule, got {type(model).__name__}")
    if device not in DEVICES:
        raise ConfigError(f"deploy(): device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"deploy(): precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not inputs:
        raise ConfigError("deploy() needs example inputs: deploy(model, x, ...) measures the candidates on them")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"deploy(): example input {i} is a {type(x).__name__}, not a tensor")
        if not x.is_floating_point():
            raise ConfigError(f"deploy(): example input {i} has dtype {x.dtype}; float inputs only")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"deploy(device='cuda') needs a CUDA GPU, but torch.cuda.is_available() is False "
                          f"(torch {torch.__version__}); use device='cpu'")
    if (device, precision) not in CANDIDATES:
        raise ConfigError(f"deploy(): precision {precision!r} is not available on {device}; "
                          f"{device} supports {', '.join(p for d, p in CANDIDATES if d == device)}")


def _select(device: str, precision: str, backends: Iterable[str] | None, exclude: Iterable[str]) -> dict[str, Any]:
    table = dict(CANDIDATES[(device, precision)])
    names = list(table)
    chosen = list(backends) if backends is not None else names
    unknown = [b for b in list(chosen) + list(exclude) if b not in table and b not in FALLBACK.get((device, precision), {})]
    if unknown:
        raise ConfigError(f"deploy(): unknown back end(s) {unknown} for device={device!r} precision={precision!r}; "
                          f"choose from {', '.join(names + list(FALLBACK.get((device, precision), {})))}")
    full = {**table, **FALLBACK.get((device, precision), {})}
    return {n: full[n] for n in chosen if n not in set(exclude)}


def deploy(model_or_gm: nn.Module, *example_inputs: torch.Tensor, device: str = "cpu", precision: str = "fp32",
           backends: Iterable[str] | None = None, exclude: Iterable[str] = (), rounds: int = 5,
           budget_s: float | None = None, pad_multiple: int | None = None, inductor_timeout_s: float = 300.0,
           quant_options: dict[str, Any] | None = None,
           calibration: Sequence[torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
           tolerance: float | None = None, stat: str = "min") -> Deployed:
    """Build, check and time the candidate back ends for ``device`` / ``precision``; return the fastest.

    Args:
        model_or_gm: a float model or a gcompiler GraphModule (float, fake-quant or integer); not modified.
        example_inputs: the inputs timing and numeric checks use (their shapes are the deployed shapes for
            static back ends).
        device: ``"cpu"`` or ``"cuda"``. precision: ``"fp32"``, ``"int8"`` or ``"fp16"`` (CUDA only).
        backends / exclude: restrict the candidates by name (:func:`candidates` lists them).
        rounds: interleaved timed runs per candidate (after one warm-up run); ``budget_s`` stops earlier.
        pad_multiple: SIMD width multiple for the ``padded`` candidates (default 16 with AVX-512, else 8).
        inductor_timeout_s: time limit of the torch.compile candidate (<= 0 disables it).
        quant_options: ``insert-fake-quant`` options for post-training int8 of a float model.
        calibration: batches for int8 calibration (default: the example inputs).
        tolerance: override the precision's tolerance (see the module docstring).
        stat: ``"min"`` (default) or ``"median"`` of each candidate's interleaved wall-clock runs decides, or
            ``"cpu"``: the minimum process CPU time per run (with one thread, a run's own work without the
            time spent waiting for a core on a loaded machine; with several threads it sums them, so use it
            only at one thread). Contention from other processes only ever adds time, so on a shared machine
            the minimum estimates a back end's own cost best; all three are in the report.

    Returns a :class:`Deployed`; ``.report`` holds the choice and every timing. Raises
    :class:`~gcompiler.errors.ConfigError` for bad arguments, :class:`~gcompiler.errors.VerificationError`
    when no candidate matches the reference or the chosen one fails the re-check.
    """
    _check_args(model_or_gm, example_inputs, device, precision)
    if rounds < 1:
        raise ConfigError(f"deploy(): rounds must be >= 1, got {rounds}")
    if stat not in ("min", "median", "cpu"):
        raise ConfigError(f"deploy(): stat must be 'min', 'median' or 'cpu', got {stat!r}")
    exclude = list(exclude)
    table = _select(device, precision, backends, exclude)
    tol = TOLERANCE[precision] if tolerance is None else float(tolerance)
    inputs = tuple(x.detach().float().cpu().contiguous() for x in example_inputs)
    model = copy.deepcopy(model_or_gm).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gm, trace_error = None, ""
    if isinstance(model, fx.GraphModule):
        gm = model
        from ..fx.trace import propagate_shapes
        propagate_shapes(gm, *inputs)
    else:
        try:
            from ..fx.trace import trace
            gm = trace(model, *inputs)
        except GCompilerError as exc:
            trace_error = f"tracing failed: {str(exc).splitlines()[0]}"
    ctx = Context(model=model, gm=gm, trace_error=trace_error, inputs=inputs, threads=torch.get_num_threads(),
                  pad_multiple=pad_multiple or _default_pad_multiple(),
                  inductor_timeout_s=inductor_timeout_s, quant_options=dict(quant_options or {}),
                  calibration=list(calibration) if calibration is not None else [inputs])
    report = DeployReport(device=device, precision=precision, threads=ctx.threads, tolerance=tol,
                          input_shapes=[tuple(x.shape) for x in inputs], load_average=load_average(),
                          skipped={n: "excluded by the caller (exclude=...)" for n in exclude}, errors={},
                          build_s={}, notes={})
    run_inputs = inputs
    with torch.no_grad():
        if precision == "int8":
            try:
                gi = integer_graph(ctx)
            except (GCompilerError, Skip) as exc:
                raise ConfigError(f"deploy(precision='int8'): could not build the integer graph: {exc}") from exc
            reference = gi(*inputs)
            report["reference"] = "integer graph (convert-to-int, reference executor)"
            if not any(type(m).__name__.startswith(("Int", "Q")) for m in model.modules()):
                float_ref = model(*inputs)
        else:
            reference = model(*inputs)
            report["reference"] = "the model's eager fp32 output"
        if isinstance(reference, (tuple, list)):
            reference = reference[0]
        if device == "cuda":
            run_inputs = tuple(x.cuda() for x in inputs)
        runners = _build_all(table, ctx, run_inputs, reference, tol, report)
        if not runners and (device, precision) in FALLBACK and backends is None:
            runners = _build_all(FALLBACK[(device, precision)], ctx, run_inputs, reference, tol, report)
        if not runners:
            raise VerificationError("deploy(): no back end built and matched the reference within "
                                    f"{tol:g} x max|y|: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items()))
        cpu: dict[str, list[float]] = {}
        times = round_robin({k: (lambda r=r: r(*run_inputs)) for k, r in runners.items()}, rounds=rounds,
                            device=device, budget_s=budget_s, cpu=cpu)
        medians, runs = summarize(times)
        mins = {k: min(v) for k, v in runs.items() if v}
        cpu_ms = {k: min(v) * 1e3 for k, v in cpu.items() if v}
        decide = {"min": mins, "median": medians, "cpu": cpu_ms}[stat]
        choice = min(decide, key=decide.get)
        report.update(choice=choice, timings_ms=medians, min_ms=mins, stat=stat, runs_ms=runs, cpu_ms=cpu_ms,
                      rounds=len(runs[choice]))
        final = rel_error(reference, runners[choice](*run_inputs))
        report["final_error"] = final
        if precision == "int8" and "float_ref" in locals():
            report["error_vs_float"] = rel_error(float_ref, runners[choice](*run_inputs))
    if not final <= tol:
        raise VerificationError(f"deploy(): the chosen back end '{choice}' gave error {final:.3e} x max|y| on the "
                                f"re-check, above the {precision} tolerance {tol:g}")
    return Deployed(runners[choice], choice, report, report["input_shapes"], device)


def _build_all(table: dict[str, Any], ctx: Context, inputs: tuple[torch.Tensor, ...], reference: torch.Tensor,
               tol: float, report: DeployReport) -> dict[str, Any]:
    runners = {}
    for name, build in table.items():
        t0 = time.perf_counter()
        try:
            runner, notes = build(ctx)
            out = runner(*inputs)  # warm-up and numeric check
        except Skip as exc:
            report["skipped"][name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a failing back end is skipped with its reason
            msg = str(exc).strip().splitlines()
            report["skipped"][name] = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
            continue
        report["build_s"][name] = round(time.perf_counter() - t0, 3)
        err = rel_error(reference, out)
        report["errors"][name] = err
        if notes:
            report["notes"][name] = notes
        if not err <= tol:
            report["skipped"][name] = f"error {err:.3e} x max|y| above the tolerance {tol:g}"
            continue
        runners[name] = runner
    return runners


def _default_pad_multiple() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return 16 if " avx512f" in line else 8
    except OSError:
        pass
    return 8


class _CallableModule(type(__import__("sys"))):
    """``gcompiler.deploy(...)`` calls :func:`deploy` even after ``import gcompiler.deploy`` has bound the
    package attribute ``gcompiler.deploy`` to this module (Python sets it on import of the subpackage)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Deployed:
        return deploy(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
