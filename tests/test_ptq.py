"""Method ptq: post-training quantization (+ magnitude slimming), no training, judged like every method."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import gcompiler
from gcompiler.errors import ConfigError
from gcompiler.methods import get_method


def test_ptq_options_are_validated() -> None:
    info = get_method("ptq")
    with pytest.raises(ConfigError, match="calib_batches"):
        info.make_options({"calib_batches": 0})
    with pytest.raises(ConfigError, match="clip_percentile"):
        info.make_options({"clip_percentile": 120})
    assert info.defaults["finetune_steps"] == 0


@pytest.mark.slow
def test_ptq8_keeps_quality_and_quarters_the_size(tmp_path: Path) -> None:
    res = gcompiler.compress("builtin:sr", "builtin:sr", "ptq", bits=8, batch_size=2, crop=24, quiet=True,
                             threads=1, out=tmp_path / "run", calib_batches=2)
    s = res.summary
    assert s["steps"] == 0 and s["macs_after"] == s["macs_before"]
    assert s["size_bytes_after"] < 0.3 * s["size_bytes_before"]  # 8-bit weights
    # no training: the quantized teacher stays close to it and above bicubic (measured 43.3 / 34.4 dB)
    assert s["psnr_to_teacher"] > 38 and s["psnr_to_target"] > s["baseline_psnr"]
    stages = [(r["stage"], r["pass"]) for r in res.report["pass_log"]]
    assert stages == [("fold", "fold-norms"), ("ptq", "insert-fake-quant"), ("ptq", "calibrate-activations")]
    assert (res.run_dir / "report.html").is_file()


@pytest.mark.slow
def test_ptq_slims_to_the_budget_by_magnitude(tmp_path: Path) -> None:
    res = gcompiler.compress("builtin:sr", "builtin:sr", "ptq", bits=32, target_macs="2x", batch_size=2, crop=24,
                             quiet=True, threads=1, out=tmp_path / "run")
    s = res.summary
    assert s["macs_after"] <= s["macs_before"] / 2
    log = res.report["pass_log"]
    prune = [r for r in log if r["pass"] == "prune-by-ratio"]
    assert prune and prune[0]["options"]["criterion"] == "l1" and prune[0]["stage"] == "slim"
    # the honest verdict is written down either way (here: far below bicubic without fine-tuning)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    if summary["psnr_to_target"] < summary["baseline_psnr"]:
        assert "STUDENT BELOW BASELINE" in (res.run_dir / "report.html").read_text()
