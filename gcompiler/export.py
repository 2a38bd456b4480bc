"""``gcompiler export RUN --format safetensors|pt2|onnx [--int8]``: the student of a finished run in a
deployable format, each file verified by running it after writing.

* ``safetensors``: ``model.safetensors`` + ``architecture.json`` (:func:`gcompiler.save`; read back with
  :func:`gcompiler.load`, no model code needed);
* ``pt2``: a :func:`torch.export.export` program (``model.pt2``; ``torch.export.load(path).module()``), with the
  static input shape the run counted MACs at;
* ``onnx``: ``model.onnx`` (the student graph as it is: float, or fake-quant ops as Q/DQ pairs), with
  ``--int8`` also ``model.int8.onnx``: the integer graph (``convert-to-int`` of a quantized student; a float
  student is post-training quantized first: ``fold-norms,insert-fake-quant`` + percentile calibration on the
  run's held-out images) in QDQ form, run with ONNX Runtime (``gcompiler[onnx]``).

Every file is written atomically (:mod:`gcompiler.ioutil`), then loaded and run on the example input and
compared with the PyTorch student; :func:`export_run` returns one row per file with the maximum absolute
error (and, for int8, the error against the integer reference graph it was exported from, whose contract
is ``convert-to-int``'s). A file whose check fails is removed and :class:`~gcompiler.errors.VerificationError`
is raised naming it.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from .errors import ConfigError, VerificationError
from .quant import is_quantized

__all__ = ["export_run", "FORMATS", "example_input"]

FORMATS = ("safetensors", "pt2", "onnx")
#: max |y - y_student| allowed, as a fraction of max |y_student| (fp32 formats: float rounding only)
FLOAT_TOL = 1e-4
#: the same for quantized graphs in ONNX (rounding ties may differ by one step): convert-to-int's contract
QUANT_TOL = 0.1


def _load_run(run: Path) -> tuple[fx.GraphModule, dict[str, Any]]:
    from . import serialize

    if not (run / serialize.ARCH_FILE).is_file():
        raise ConfigError(f"gcompiler export: {run} holds no student ({serialize.ARCH_FILE} missing): give the "
                          "directory of a finished `gcompiler compress` / `gcompiler compile` run")
    cfg: dict[str, Any] = {}
    for name in ("config.json", "summary.json"):
        try:
            cfg[name] = json.loads((run / name).read_text())
        except (OSError, ValueError):
            cfg[name] = {}
    return serialize.load(run).eval(), cfg


def example_input(gm: fx.GraphModule, meta: dict[str, Any]) -> torch.Tensor:
    """A deterministic input of the shape the run counted MACs at (else the graph's recorded input shape)."""
    shape = (meta.get("summary.json") or {}).get("input_shape")
    if not shape:
        ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
        tm = ph.meta.get("tensor_meta")
        if tm is None:
            raise ConfigError("gcompiler export: the saved graph records no input shape")
        shape = list(tm.shape)
    g = torch.Generator().manual_seed(0)
    data = str((meta.get("config.json") or {}).get("data", ""))
    lo = 0.0 if data == "builtin:sr" else -1.0
    return torch.rand(tuple(int(s) for s in shape), generator=g) * (1.0 - lo) + lo


def _calibration(meta: dict[str, Any], x: torch.Tensor, n: int = 4) -> list[tuple[torch.Tensor]]:
    """Held-out images of the run's data at the example's size (else the example itself)."""
    data = (meta.get("config.json") or {}).get("data")
    if data:
        try:
            from .data import open_dataset

            ds = open_dataset(str(data), split="eval", seed=0, crop_size=int(x.shape[-1]))
            items = [ds[i]["input"][None] for i in range(min(n, len(ds)))]
            items = [t for t in items if t.shape == x.shape]
            if items:
                return [(t,) for t in items]
        except Exception:  # calibrating on the example input is the documented fallback
            pass
    return [(x,)]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _check(name: str, path: Path, err: float, ref: torch.Tensor, tol: float, what: str = "the PyTorch student"
           ) -> None:
    bound = tol * float(ref.abs().max().clamp_min(1e-12))
    if not err <= bound:
        path.unlink(missing_ok=True)
        raise VerificationError(f"gcompiler export ({name}): {path} differs from {what} by {err:.3g} "
                                f"(> {bound:.3g} = {tol:g} x max|y|); the file was removed")


def export_run(run_dir: str | os.PathLike, fmt: str, *, int8: bool = False, out: str | os.PathLike | None = None,
               threads: int = 1) -> list[dict[str, Any]]:
    """Export the student of ``run_dir`` as ``fmt`` into ``out`` (default ``RUN/export``); verified rows
    ``{"format", "path", "bytes", "max_abs_err", "tolerance", ...}`` (module docstring)."""
    from .ioutil import atomic_file, atomic_write_bytes

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8 needs --format onnx (int8 QDQ is written as ONNX)")
    run = Path(run_dir)
    student, meta = _load_run(run)
    x = example_input(student, meta)
    with torch.no_grad():
        y = student(x)
    dest = Path(out) if out is not None else run / "export"
    dest.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if fmt == "safetensors":
        from . import serialize

        target = dest / "safetensors"
        serialize.save(student, target)
        with torch.no_grad():
            err = _err(serialize.load(target)(x), y)
        _check(fmt, target / serialize.WEIGHTS_FILE, err, y, FLOAT_TOL)
        rows.append({"format": "safetensors + architecture.json", "path": str(target),
                     "bytes": sum(p.stat().st_size for p in target.iterdir()), "max_abs_err": err,
                     "loaded_with": f"gcompiler.load({str(target)!r})"})
    elif fmt == "pt2":
        target = dest / "model.pt2"
        try:
            ep = torch.export.export(copy.deepcopy(student), (x,))
        except Exception as exc:
            raise ConfigError(f"gcompiler export --format pt2: torch.export cannot capture the student: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        import io

        buf = io.BytesIO()
        torch.export.save(ep, buf)
        atomic_write_bytes(target, buf.getvalue())
        with torch.no_grad():
            err = _err(torch.export.load(str(target)).module()(x), y)
        _check(fmt, target, err, y, FLOAT_TOL)
        rows.append({"format": "torch.export program", "path": str(target), "bytes": target.stat().st_size,
                     "max_abs_err": err, "loaded_with": f"torch.export.load({str(target)!r}).module()"})
    else:
        from .quant.onnx_export import export_onnx, ort_session, run_onnx

        target = dest / "model.onnx"
        proto = export_onnx(copy.deepcopy(student), x)
        with atomic_file(target) as tmp:
            Path(tmp).write_bytes(proto.SerializeToString())
        err = _err(run_onnx(ort_session(str(target), threads=threads), x)[0], y)
        quantized = is_quantized(student)
        # a quantized student: ONNX Runtime rounds ties to even where torch may not, so a value on a rounding
        # boundary moves by one quantization step; bound as convert-to-int's contract (0.1 x max|y|)
        tol = QUANT_TOL if quantized else 1e-3
        _check(fmt, target, err, y, tol)
        rows.append({"format": "ONNX (fake-quant layers as Q/DQ)" if quantized else "ONNX fp32",
                     "path": str(target), "bytes": target.stat().st_size, "max_abs_err": err,
                     "tolerance": f"{tol:g} x max|y| = {tol * float(y.abs().max()):.3g}",
                     "loaded_with": "onnxruntime.InferenceSession(path)"})
        if int8:
            rows.append(_export_int8(student, x, y, dest, meta, threads))
    return rows


def _export_int8(student: fx.GraphModule, x: torch.Tensor, y: torch.Tensor, dest: Path, meta: dict[str, Any],
                 threads: int) -> dict[str, Any]:
    from .ioutil import atomic_file
    from .passes.manager import run_pipeline
    from .quant import calibrate
    from .quant.onnx_export import export_onnx, ort_session, run_onnx

    gm = copy.deepcopy(student).eval()
    how = "convert-to-int of the quantized student"
    if not is_quantized(gm):
        gm, _ = run_pipeline(gm, "fold-norms,insert-fake-quant", verify="lint", check=False)
        calibrate(gm, _calibration(meta, x), method="percentile", percentile=99.99)
        how = "post-training int8 (fold-norms, insert-fake-quant, percentile calibration) + convert-to-int"
    gi, _ = run_pipeline(gm, "convert-to-int", verify="lint", check=False)
    with torch.no_grad():
        y_int = gi(x)
    target = dest / "model.int8.onnx"
    proto = export_onnx(copy.deepcopy(gi), x)
    with atomic_file(target) as tmp:
        Path(tmp).write_bytes(proto.SerializeToString())
    y_ort = run_onnx(ort_session(str(target), threads=threads), x)[0]
    err_ref = _err(y_ort, y_int)
    # the ONNX file computes the integer graph (float rounding only); the integer graph approximates the
    # student within convert-to-int's contract (0.1 x max|y|)
    _check("onnx int8", target, err_ref, y_int, QUANT_TOL, "the integer reference graph")
    err = _err(y_ort, y)
    _check("onnx int8", target, err, y, QUANT_TOL)
    return {"format": "ONNX int8 QDQ", "path": str(target), "bytes": target.stat().st_size, "max_abs_err": err,
            "max_abs_err_to_integer_graph": err_ref, "how": how, "loaded_with": "onnxruntime.InferenceSession(path)"}


def export_latency(run_dir: str | os.PathLike, *, int8: bool = False, rounds: int = 5) -> dict[str, Any]:
    """Latency of the run's student at its example input through :func:`gcompiler.deploy` (the back end deploy
    measures fastest; :func:`gcompiler.deploy.latency.compare`): fp32 (a quantized student with its fake
    quantizers stripped) and, with ``int8`` or for a quantized student, ``deploy(precision="int8")``."""
    from .deploy.latency import compare
    from .quant import float_copy

    student, meta = _load_run(Path(run_dir))
    x = example_input(student, meta)
    models = {"student": (float_copy(student).eval(), "fp32")}
    if int8 or is_quantized(student):
        models["student int8"] = (student.eval(), "int8")
    res = compare(models, x, rounds=rounds)
    res["input_shape"] = list(x.shape)
    return res


def print_latency(res: dict[str, Any]) -> None:
    print(f"latency through gcompiler.deploy at input {res['input_shape']} ({res['device']}, {res['threads']} "
          f"thread(s), median / min of {res['rounds']} interleaved runs):")
    for name, r in res["deployed"].items():
        print(f"    {name:<13} {r['precision']:<5} {r['backend']:<24} {r['median_ms']:9.2f} / {r['min_ms']:.2f} ms  "
              f"(error {r['error']:.2g} x max|y|)")
    for name, r in res["eager"].items():
        print(f"    {name:<13} fp32  {'eager (for reference)':<24} {r['median_ms']:9.2f} / {r['min_ms']:.2f} ms")
    for name, why in res["failed"].items():
        print(f"    {name:<13} not deployed: {why}")


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        extra = (f", {r['max_abs_err_to_integer_graph']:.3g} to the integer graph it encodes"
                 if "max_abs_err_to_integer_graph" in r else "")
        print(f"{r['format']}: {r['path']} ({r['bytes']:,} bytes) verified: max |y - y_student| = "
              f"{r['max_abs_err']:.3g}{extra}")
        if r.get("how"):
            print(f"    {r['how']}")
        print(f"    load: {r['loaded_with']}")
