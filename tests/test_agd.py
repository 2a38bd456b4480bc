"""The ``agd`` method: lambda_F control, band repair, options, and a tiny search end to end on the CPU."""
from __future__ import annotations

import json
import time

import pytest
import torch

import gcompiler
from gcompiler.errors import ConfigError
from gcompiler.methods import get_method
from gcompiler.methods.agd import AGDOptions, AGDSearch, repair_to_band
from gcompiler.models import create
from gcompiler.nas import MixedOp, cells
from gcompiler.nas.cost import CostTable
from gcompiler.passes.manager import run_pipeline
from gcompiler.train import DistillConfig, PixelDistance
from test_compress_cli import make_folder, run


def _supernet():
    torch.manual_seed(0)
    model = create("resnet_6blocks", ngf=16, n_blocks=2).eval()
    x = torch.randn(1, 3, 32, 32)
    gm, _ = run_pipeline(gcompiler.trace(model, x), "substitute-ops", verify="shapes")
    return gm


def test_repair_moves_the_architecture_into_the_band():
    gm = _supernet()
    table = CostTable(gm)
    lo_all, hi_all = table.bounds()
    for lo, hi in ((lo_all * 1.05, lo_all * 1.3), (hi_all * 0.7, hi_all * 0.8)):
        moves = repair_to_band(gm, table, lo, hi)
        assert lo <= table.exact() <= hi and moves  # started outside (at the widest / cheapest op), now inside
        assert moves[-1]["macs"] == table.exact()
    assert repair_to_band(gm, table, 0, 10 * hi_all) == []  # already inside: nothing moves


def test_lambda_f_is_doubled_above_and_halved_below_the_band():
    gm = _supernet()
    table = CostTable(gm)
    macs = table.exact()
    search = AGDSearch(DistillConfig(pixel=None, distance=PixelDistance("l1")), table=table, target=macs / 3,
                       band=0.25, lambda_f=0.1, arch_lr=1e-3, eval_every=2, sandwich=False, tau=1.0)

    class _T:  # the two trainer attributes after_step reads
        step = 2

        class config:
            max_steps = 10

    search.after_step(_T, None)
    assert search.lambda_f == pytest.approx(0.2) and search.history[-1]["argmax_macs"] == macs
    search.target = macs * 3
    search.after_step(_T, None)
    assert search.lambda_f == pytest.approx(0.1)
    _T.step = 3  # not a pricing step
    search.after_step(_T, None)
    assert len(search.history) == 2
    search.load_state_dict(search.state_dict() | {"lambda_f": 0.5})
    assert search.lambda_f == 0.5


def test_agd_options_and_registry():
    info = get_method("agd")
    opts = info.make_options({"band": "0.1", "candidates": "conv3x3|dwsblock", "inherit": "false"})
    assert opts.band == 0.1 and opts.inherit is False and opts.candidates == "conv3x3|dwsblock"
    with pytest.raises(ConfigError):
        info.make_options({"band": "1.5"})
    with pytest.raises(ConfigError):
        info.make_options({"arch_lr": "0"})
    assert "lambda_f" in info.option_help() and AGDOptions().band == 0.25


FAST = ["--crop", "16", "--batch-size", "2", "--workers", "0", "--threads", "1", "--quiet", "--sample-every", "0",
        "--macs-size", "32"]


@pytest.mark.slow  # ~10 s of CPU; more wall time on a busy machine
def test_tiny_search_end_to_end_lands_in_the_band(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=8, size=40)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc, stdout, err = run(capsys, "--method", "agd", "--teacher", "resnet_6blocks", "--teacher-kw", "ngf=16",
                          "--teacher-kw", "n_blocks=2", "--data", str(data), "--bits", "32", "--target-macs", "2x",
                          "--max-steps", "6", "--finetune-steps", "3", "--out", str(out), "--opt", "pretrain_steps=3",
                          "--opt", "eval_every=2", *FAST)
    assert rc == 0, err
    assert time.perf_counter() - t0 < 120
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report.json").read_text())
    lo, hi = report["band"]
    assert lo <= summary["macs_after"] <= hi and report["in_band"]
    assert summary["macs_after"] < summary["macs_before"] and summary["method"] == "agd"
    arch = json.loads((out / "agd_architecture.json").read_text())
    assert arch["macs"] == summary["macs_after"] == report["derived_macs"]
    assert sum(c["kind"] == "op" for c in arch["cells"]) == 2
    assert [r["pass"] for r in report["pass_log"]] == ["substitute-ops", "derive-architecture"]
    student = gcompiler.load(out)
    assert not any(isinstance(m, MixedOp) for m in student.modules())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert gcompiler.profile(student, x).macs == summary["macs_after"]
    assert not cells(student)
