"""`gcompiler export`: every format written, then loaded, run and compared with the PyTorch student."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gcompiler
from gcompiler.cli import main
from gcompiler.errors import ConfigError
from gcompiler.export import export_run


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("exp") / "model"
    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=1)
    gm = gcompiler.compile(model, "fold-norms", torch.rand(1, 3, 32, 32) * 2 - 1)
    gcompiler.save(gm, d)
    return d


def _reference(d: Path) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    from gcompiler.export import example_input

    gm = gcompiler.load(d).eval()
    return gm, example_input(gm, {})


def test_safetensors_and_pt2_match_the_student(saved: Path, tmp_path: Path) -> None:
    gm, x = _reference(saved)
    with torch.no_grad():
        y = gm(x)
    rows = export_run(saved, "safetensors", out=tmp_path)
    assert rows[0]["max_abs_err"] == 0.0
    with torch.no_grad():
        assert torch.equal(gcompiler.load(tmp_path / "safetensors")(x), y)
    rows = export_run(saved, "pt2", out=tmp_path)
    prog = torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        err = float((prog(x) - y).abs().max())
    assert err == rows[0]["max_abs_err"] and err <= 1e-4 * float(y.abs().max())
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # atomic: no temp files left


def test_onnx_fp32_and_int8(saved: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    rc = main(["export", str(saved), "--format", "onnx", "--int8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ONNX fp32" in out and "ONNX int8 QDQ" in out and out.count("verified") == 2
    from gcompiler.quant.onnx_export import ort_session, run_onnx

    gm, x = _reference(saved)
    with torch.no_grad():
        y = gm(x)
    fp32 = run_onnx(ort_session(str(tmp_path / "model.onnx"), threads=1), x)[0]
    assert float((fp32 - y).abs().max()) <= 1e-3 * float(y.abs().max())
    int8 = run_onnx(ort_session(str(tmp_path / "model.int8.onnx"), threads=1), x)[0]
    err8 = float((int8 - y).abs().max())
    assert 0 < err8 <= 0.1 * float(y.abs().max())  # quantized: not exact, within convert-to-int's contract
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size


def test_bad_requests(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--int8 needs --format onnx"):
        export_run(saved, "pt2", int8=True, out=tmp_path)
    with pytest.raises(ConfigError, match="--format"):
        export_run(saved, "tflite", out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_latency_goes_through_deploy(saved: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from gcompiler.deploy import candidates
    from gcompiler.export import export_latency

    res = export_latency(saved, int8=True, rounds=2)
    assert set(res["deployed"]) == {"student", "student int8"}, res["failed"]
    assert res["deployed"]["student"]["backend"] in candidates("cpu", "fp32")
    assert res["deployed"]["student int8"]["backend"] in candidates("cpu", "int8") + ["int-reference"]
    assert res["deployed"]["student"]["error"] <= 1e-3 and res["deployed"]["student int8"]["error"] <= 0.1
    assert set(res["eager"]) == {"student"} and res["input_shape"] == [1, 3, 32, 32]
    assert all(0 < r["min_ms"] <= r["median_ms"] for r in [*res["deployed"].values(), *res["eager"].values()])
    rc = main(["export", str(saved), "--format", "safetensors", "--out", str(tmp_path), "--latency"])
    out = capsys.readouterr().out
    assert rc == 0 and "latency through gcompiler.deploy" in out
    assert "student       fp32  " in out and "eager (for reference)" in out
