"""The candidate back ends ``deploy`` builds and measures, per device and precision.

A candidate is a name and a builder ``build(ctx) -> (runner, notes)``; ``runner(*inputs)`` returns the
output tensor (float32, contiguous NCHW, on the input's device). A builder that cannot apply raises
:class:`Skip` (or any exception): the candidate is reported as skipped with the reason.

CPU fp32: ``eager`` (the model as given), ``channels-last``, ``fused`` / ``fused-channels-last``
(:func:`~gcompiler.deploy.rewrite.fuse_for_inference`), ``padded`` / ``padded-channels-last`` (group widths
padded to SIMD multiples, exact, then fused), ``inductor`` (``torch.compile`` with weight freezing, guarded
by a time limit), ``onnxruntime``, ``onnxruntime-opt`` (BatchNorm folded, RGB head split into pixel phases:
:func:`~gcompiler.deploy.rewrite.split_phases`) and ``onnxruntime-padded`` (the float graph exported by
:mod:`gcompiler.quant.onnx_export`). The fused and padded graphs include the phase split too.

CPU int8 (reference: the integer graph of ``convert-to-int``, run by the reference executor):
``onnxruntime-int8`` (QDQ with requantized conv outputs: ``QLinearConv`` kernels; ranges min/max, or the
99.999th percentile in ``onnxruntime-int8-clipped``), ``onnxruntime-qdq``
(exact-semantics QDQ, float kernels), ``inductor-int8`` (needs torch's pt2e quantizer).

CUDA fp32 / fp16 / int8: ``cuda-eager``, ``cuda-channels-last``, ``cudnn-fp16`` (channels-last half),
``triton-int8`` (``lower-to-triton`` on the integer graph).
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn

Runner = Callable[..., torch.Tensor]


class Skip(Exception):
    """A candidate does not apply here; the message is the reason."""


@dataclass
class Context:
    """Everything the builders share; derived graphs are built once and cached in ``cache``."""

    model: nn.Module                      # eval copy of the argument (the eager candidate)
    gm: fx.GraphModule | None             # traced float (or quantized) graph, or None
    trace_error: str
    inputs: tuple[torch.Tensor, ...]
    threads: int
    pad_multiple: int
    inductor_timeout_s: float
    quant_options: dict[str, Any]
    calibration: list[Any]
    cache: dict[str, Any] = field(default_factory=dict)

    def graph(self) -> fx.GraphModule:
        if self.gm is None:
            raise Skip(f"needs a traced graph: {self.trace_error}")
        return self.gm


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise Skip(f"the model returns {type(out).__name__}, not a tensor")
    return out


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _channels_last(module: nn.Module) -> Runner:
    mod = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def run(*xs: torch.Tensor) -> torch.Tensor:
        return _first(mod(*[_cl(x) for x in xs])).contiguous()
    run.module = mod  # type: ignore[attr-defined]
    return run


# ------------------------------------------------------------------------------------------ float CPU

def _eager(ctx: Context) -> tuple[Runner, list[str]]:
    model = ctx.model
    return (lambda *xs: _first(model(*xs))), []


def _channels_last_eager(ctx: Context) -> tuple[Runner, list[str]]:
    return _channels_last(ctx.model), ["model and inputs in channels-last memory format"]


def _folded(ctx: Context) -> fx.GraphModule:
    """``fold-norms`` of the traced graph (BatchNorm and channel masks into the convs; exact)."""
    if "folded" not in ctx.cache:
        import logging

        from ..passes.manager import run_pipeline
        quant_log = logging.getLogger("gcompiler.quant")
        level = quant_log.level
        quant_log.setLevel(logging.ERROR)  # "InstanceNorm cannot fold" is expected here
        try:
            ctx.cache["folded"], _ = run_pipeline(copy.deepcopy(ctx.graph()), "fold-norms", verify="lint", check=False)
        finally:
            quant_log.setLevel(level)
    return ctx.cache["folded"]


def _opt_graph(ctx: Context) -> tuple[fx.GraphModule, list[str]]:
    """Folded graph with small-output convs split into pixel phases (plain modules: exportable)."""
    if "opt" not in ctx.cache:
        from .rewrite import split_phases
        ctx.cache["opt"] = split_phases(_folded(ctx), *ctx.inputs)
    return ctx.cache["opt"]


def _fused_graph(ctx: Context) -> tuple[fx.GraphModule, list[str]]:
    if "fused" not in ctx.cache:
        from .rewrite import fuse_for_inference
        opt, notes = _opt_graph(ctx)
        fused, fnotes = fuse_for_inference(opt)
        ctx.cache["fused"] = (fused, notes + fnotes)
    return ctx.cache["fused"]


def _padded_plain(ctx: Context) -> tuple[fx.GraphModule, list[str]]:
    if "padded_plain" not in ctx.cache:
        from .rewrite import pad_channels, split_phases
        padded, notes = pad_channels(_folded(ctx), ctx.pad_multiple, *ctx.inputs)
        changed = [f"{k} {v}" for k, v in notes.items() if "->" in v]
        blocked = [f"{k}: {v}" for k, v in notes.items() if "->" not in v and "pinned" not in v]
        if not changed:
            ctx.cache["padded_plain"] = Skip(
                f"no group to pad to a multiple of {ctx.pad_multiple}"
                + (f" ({'; '.join(blocked)})" if blocked else " (every prunable group's width is one)"))
        else:
            padded, pnotes = split_phases(padded, *ctx.inputs)
            ctx.cache["padded_plain"] = (padded, [f"pad to {ctx.pad_multiple}: " + ", ".join(changed)] + pnotes)
    got = ctx.cache["padded_plain"]
    if isinstance(got, Skip):
        raise got
    return got


def _padded_fused(ctx: Context) -> tuple[fx.GraphModule, list[str]]:
    if "padded_fused" not in ctx.cache:
        from .rewrite import fuse_for_inference
        padded, notes = _padded_plain(ctx)
        fused, fnotes = fuse_for_inference(padded)
        ctx.cache["padded_fused"] = (fused, notes + fnotes)
    return ctx.cache["padded_fused"]


def _fused(ctx: Context) -> tuple[Runner, list[str]]:
    gm, notes = _fused_graph(ctx)
    return (lambda *xs: _first(gm(*xs))), notes


def _fused_cl(ctx: Context) -> tuple[Runner, list[str]]:
    gm, notes = _fused_graph(ctx)
    return _channels_last(gm), notes + ["channels-last"]


def _padded(ctx: Context) -> tuple[Runner, list[str]]:
    gm, notes = _padded_fused(ctx)
    return (lambda *xs: _first(gm(*xs))), notes


def _padded_cl(ctx: Context) -> tuple[Runner, list[str]]:
    gm, notes = _padded_fused(ctx)
    return _channels_last(gm), notes + ["channels-last"]


def _compile_guarded(gm: nn.Module, inputs: tuple[torch.Tensor, ...], timeout_s: float,
                     options: dict[str, Any]) -> Callable:
    """``torch.compile(gm)`` compiled by one call on ``inputs`` in a worker thread, given ``timeout_s``.

    A compile past the limit is abandoned (it finishes in its thread; Python cannot stop it) and the
    candidate is skipped with that reason; a compile error skips it with the error.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            import torch._inductor.config as inductor_config
            with inductor_config.patch(options), torch.no_grad():
                compiled = torch.compile(gm, backend="inductor", dynamic=False)
                compiled(*inputs)
            result["fn"] = compiled
        except BaseException as exc:  # noqa: BLE001 - any failure skips the candidate with its reason
            result["error"] = exc

    # Not a daemon: an abandoned compile finishes in the background and the interpreter waits for it at exit
    # (a daemon thread killed inside C++ code at exit aborts the process).
    worker = threading.Thread(target=work, name="gcompiler-deploy-inductor", daemon=False)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise Skip(f"torch.compile did not finish within {timeout_s:.0f} s (deploy(inductor_timeout_s=...)); "
                   "abandoned")
    if "error" in result:
        exc = result["error"]
        raise Skip(f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return result["fn"]


def _inductor(ctx: Context) -> tuple[Runner, list[str]]:
    if ctx.inductor_timeout_s <= 0:
        raise Skip("disabled (inductor_timeout_s <= 0)")
    base = copy.deepcopy(_opt_graph(ctx)[0])
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    fn = _compile_guarded(base, ctx.inputs, ctx.inductor_timeout_s, {"freezing": True})
    return (lambda *xs: _first(fn(*xs))), ["torch.compile(backend='inductor', freezing=True, dynamic=False)"]


def _ort_runner(model_proto: Any, threads: int) -> Runner:
    from ..quant.onnx_export import ort_session, run_onnx

    sess = ort_session(model_proto, threads=threads)

    def run(*xs: torch.Tensor) -> torch.Tensor:
        return run_onnx(sess, *xs)[0]
    run.session = sess  # type: ignore[attr-defined]
    run.static_shapes = True  # type: ignore[attr-defined]
    return run


def _ort(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gm = copy.deepcopy(ctx.graph())
    return _ort_runner(export_onnx(gm, *ctx.inputs), ctx.threads), [f"{ctx.threads} intra-op threads"]


def _ort_opt(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gm, notes = _opt_graph(ctx)
    if not notes:
        raise Skip("no conv to split into phases (same graph as onnxruntime)")
    return _ort_runner(export_onnx(copy.deepcopy(gm), *ctx.inputs), ctx.threads), notes


def _ort_padded(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gm, notes = _padded_plain(ctx)
    return _ort_runner(export_onnx(copy.deepcopy(gm), *ctx.inputs), ctx.threads), notes


# ------------------------------------------------------------------------------------------ int8

def _is_kind(gm: fx.GraphModule, names: tuple[str, ...]) -> bool:
    return any(type(m).__name__ in names for m in gm.modules())


def integer_graph(ctx: Context) -> fx.GraphModule:
    """The integer reference graph: ``convert-to-int`` of the (fake-quantized) graph; built once."""
    if "int" in ctx.cache:
        return ctx.cache["int"]
    from ..passes.manager import run_pipeline
    from ..quant import calibrate

    gm = copy.deepcopy(ctx.graph())
    gm.eval()
    if not _is_kind(gm, ("IntConv2d", "IntConvTranspose2d", "QConv2d", "QConvTranspose2d")):
        gm = copy.deepcopy(_opt_graph(ctx)[0])  # phase-split head: same integer weights and codes
    if _is_kind(gm, ("IntConv2d", "IntConvTranspose2d")):
        pass  # already integer
    else:
        if not _is_kind(gm, ("QConv2d", "QConvTranspose2d")):  # float: post-training quantization
            opts = ",".join(f"{k}={v}" for k, v in ctx.quant_options.items())
            gm, _ = run_pipeline(gm, "fold-norms,insert-fake-quant" + (f"{{{opts}}}" if opts else ""),
                                 verify="lint", check=False)
            calibrate(gm, ctx.calibration, method="percentile", percentile=99.99)
        gm, _ = run_pipeline(gm, "convert-to-int", verify="lint", check=False)
    ctx.cache["int"] = gm
    return gm


def _ort_int8(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gi = integer_graph(ctx)
    proto = export_onnx(copy.deepcopy(gi), *ctx.inputs, requantize_outputs=True, calibration=ctx.calibration)
    return _ort_runner(proto, ctx.threads), ["QDQ with requantized conv outputs (QLinearConv)"]


def _ort_int8_clipped(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gi = integer_graph(ctx)
    proto = export_onnx(copy.deepcopy(gi), *ctx.inputs, requantize_outputs=True, calibration=ctx.calibration,
                        output_percentile=99.999)
    return _ort_runner(proto, ctx.threads), ["QLinearConv, conv output ranges at the 99.999th percentile "
                                            "(finer steps for the bulk; rare outliers clipped)"]


def _ort_qdq(ctx: Context) -> tuple[Runner, list[str]]:
    from ..quant.onnx_export import export_onnx
    gi = integer_graph(ctx)
    return _ort_runner(export_onnx(copy.deepcopy(gi), *ctx.inputs), ctx.threads), ["exact QDQ, float kernels"]


def _inductor_int8(ctx: Context) -> tuple[Runner, list[str]]:
    import importlib.util

    if importlib.util.find_spec("torch.ao.quantization.quantize_pt2e") is None:
        raise Skip(f"torch {torch.__version__} has no pt2e quantizer (torch.ao.quantization.quantize_pt2e; it "
                   "moved to torchao), so Inductor cannot build int8 kernels here")
    raise Skip("pt2e's X86InductorQuantizer quantizes with its own observers, not this graph's integer format, "
               "so its output cannot be held to the integer graph's contract; use onnxruntime-int8")


def _int_reference(ctx: Context) -> tuple[Runner, list[str]]:
    gi = integer_graph(ctx)
    return (lambda *xs: _first(gi(*xs))), ["integer reference executor (a correctness oracle, slow)"]


# ------------------------------------------------------------------------------------------ CUDA

def _to_cuda(xs: tuple[torch.Tensor, ...], half: bool = False, cl: bool = False) -> list[torch.Tensor]:
    out = []
    for x in xs:
        x = x.to("cuda", non_blocking=True)
        if half and x.is_floating_point():
            x = x.half()
        out.append(_cl(x) if cl else x)
    return out


def _cuda_eager(ctx: Context) -> tuple[Runner, list[str]]:
    mod = copy.deepcopy(ctx.model).cuda()
    return (lambda *xs: _first(mod(*_to_cuda(xs))).float()), []


def _cuda_cl(ctx: Context) -> tuple[Runner, list[str]]:
    mod = copy.deepcopy(ctx.model).cuda().to(memory_format=torch.channels_last)
    return (lambda *xs: _first(mod(*_to_cuda(xs, cl=True))).float().contiguous()), ["channels-last"]


def _cudnn_fp16(ctx: Context) -> tuple[Runner, list[str]]:
    gm, notes = _fused_graph(ctx)
    mod = copy.deepcopy(gm).cuda().half().to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    return (lambda *xs: _first(mod(*_to_cuda(xs, half=True, cl=True))).float().contiguous()), \
        notes + ["fp16, channels-last, cudnn.benchmark"]


def _triton_int8(ctx: Context) -> tuple[Runner, list[str]]:
    from ..kernels import lower  # noqa: F401 - registers lower-to-triton
    from ..passes.manager import run_pipeline
    gi = copy.deepcopy(integer_graph(ctx))  # lowered on the CPU, then moved (as bench/gpu_kernels.py does)
    gl, _ = run_pipeline(gi, "lower-to-triton{backend=triton}", verify="lint", check=False)
    gl = gl.cuda()
    paths = [r["path"] for r in gl.meta.get("lower_to_triton", [])]
    return (lambda *xs: _first(gl(*_to_cuda(xs, cl=True))).float().contiguous()), \
        [f"int8 {paths.count('int8')}, fp16 {paths.count('fp16')}, kept {paths.count('keep')} convs"]


CANDIDATES: dict[tuple[str, str], dict[str, Callable[[Context], tuple[Runner, list[str]]]]] = {
    ("cpu", "fp32"): {"eager": _eager, "channels-last": _channels_last_eager, "fused": _fused,
                      "fused-channels-last": _fused_cl, "padded": _padded, "padded-channels-last": _padded_cl,
                      "inductor": _inductor, "onnxruntime": _ort, "onnxruntime-opt": _ort_opt,
                      "onnxruntime-padded": _ort_padded},
    ("cpu", "int8"): {"onnxruntime-int8": _ort_int8, "onnxruntime-int8-clipped": _ort_int8_clipped,
                      "onnxruntime-qdq": _ort_qdq, "inductor-int8": _inductor_int8},
    ("cuda", "fp32"): {"cuda-eager": _cuda_eager, "cuda-channels-last": _cuda_cl},
    ("cuda", "fp16"): {"cudnn-fp16": _cudnn_fp16},
    ("cuda", "int8"): {"triton-int8": _triton_int8},
}
FALLBACK: dict[tuple[str, str], dict[str, Callable[[Context], tuple[Runner, list[str]]]]] = {
    ("cpu", "int8"): {"int-reference": _int_reference},
}
