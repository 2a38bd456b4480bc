"""The Python entry gcompiler.compress, the method API of docs/methods.md (its toy method runs as written), the
one option parser, and `gcompiler methods`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gcompiler
from gcompiler.cli import main
from gcompiler.errors import ConfigError
from gcompiler.methods.base import SUMMARY_KEYS

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TOY = Path(__file__).resolve().parent / "gsfix" / "toy_method.py"
FAST = dict(crop=16, batch_size=2, workers=0, threads=1, quiet=True, sample_every=0, save_every=0)


def _folder(path: Path, n: int = 6, size: int = 24) -> str:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(path / f"img{i}.png")
    return str(path)


def test_the_doc_shows_the_toy_method_exactly():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks[0] == TOY.read_text()
    code = [ln for ln in blocks[0].splitlines() if ln.strip() and not ln.strip().startswith(("#", '"'))]
    assert len(code) < 100  # "a new method in under 100 lines"


def test_toy_method_runs_through_compress(tmp_path):
    import gsfix.toy_method  # noqa: F401  registers toy-prune
    from gsfix.teachers import TinyGen

    res = gcompiler.compress("gsfix.teachers:TinyGen", _folder(tmp_path / "data"), "toy-prune", target_macs="2x",
                             bits=8, steps=3, out=tmp_path / "run", criterion="gamma", **FAST)
    assert isinstance(res, gcompiler.CompressResult) and res.run_dir == tmp_path / "run"
    s = res.summary
    assert tuple(s) == SUMMARY_KEYS and s["method"] == "toy-prune" and s["steps"] == 3
    teacher = gcompiler.profile(TinyGen(), torch.zeros(s["input_shape"]))
    assert s["macs_before"] == teacher.macs and s["macs_after"] <= teacher.macs // 2
    assert s["size_bytes_after"] < s["params_after"] * 4 / 3  # 8-bit weights
    rows = json.loads((res.run_dir / "report.json").read_text())["pass_log"]
    assert [(r["stage"], r["pass"]) for r in rows] == [
        ("prune", "insert-masks"), ("prune", "prune-by-ratio"), ("prune", "eliminate-dead-channels"),
        ("prune", "fold-norms"), ("quantize", "insert-fake-quant")]
    assert rows[1]["options"]["criterion"] == "gamma"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(gcompiler.load(res.run_dir)(x), res.student(x), atol=1e-5)
    # typed options from Python: a wrong type or name is a ConfigError naming the option
    with pytest.raises(ConfigError, match="criterion"):
        gcompiler.compress("gsfix.teachers:TinyGen", str(tmp_path / "data"), "toy-prune", out=tmp_path / "r2",
                           criterion="l2", **FAST)
    with pytest.raises(ConfigError, match="ratio must be >= 1"):
        gcompiler.compress("gsfix.teachers:TinyGen", str(tmp_path / "data"), "toy-prune", out=tmp_path / "r3",
                           ratio=0.5, **FAST)


def test_compress_runs_a_20_step_gs_job_from_python(tmp_path):
    from gsfix.teachers import TinyGen

    teacher = TinyGen().train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = gcompiler.compress(teacher, _folder(tmp_path / "data"), "gs", target_macs="2x", steps=15, out=tmp_path / "gs",
                             finetune_steps=5, rho=0.05, disc_layers=2, disc_ndf=8, **FAST)
    assert res.summary["steps"] == 20 and res.summary["method"] == "gs"
    assert res.summary["macs_after"] <= res.summary["macs_before"] // 2
    assert isinstance(res.student, torch.fx.GraphModule)
    assert res.student(torch.rand(1, 3, 20, 20) * 2 - 1).shape == (1, 3, 20, 20)
    assert res.report["options"]["rho"] == 0.05 and res.report["pass_log"]
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["teacher"] == "python:gsfix.teachers.TinyGen" and cfg["bits"] == 32 and cfg["max_steps"] == 15
    # the teacher module given is not modified
    assert teacher.training and all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in teacher.parameters())
    # the same run directory again is refused unless resuming
    with pytest.raises(ConfigError, match="resume"):
        gcompiler.compress(teacher, str(tmp_path / "data"), "gs", steps=15, out=tmp_path / "gs", **FAST)


def test_one_option_parser_for_flags_config_files_and_kwargs(tmp_path):
    from gcompiler.compression import resolve

    cfg = tmp_path / "c.toml"
    cfg.write_text('bits = 8\nmax_steps = 9\n[gs]\nrho = 0.25\ngan_weight = "0.5"\n')
    settings, info, opts = resolve([("kwargs", {"config": str(cfg), "max_steps": 3, "per_channel": "yes",
                                                "out": str(tmp_path / "o")})])
    assert info.name == "gs" and settings.bits == 8 and settings.max_steps == 3
    assert opts.rho == 0.25 and opts.gan_weight == 0.5 and opts.per_channel is True
    assert settings.options["rho"] == 0.25
    with pytest.raises(ConfigError, match="rho.*expected float"):
        resolve([("kwargs", {"rho": "lots", "out": str(tmp_path / "o")})])
    with pytest.raises(ConfigError, match="max_steps"):
        resolve([("kwargs", {"max_steps": "many", "out": str(tmp_path / "o")})])


def test_methods_command_lists_typed_options(capsys):
    assert main(["methods", "gs"]) == 0
    out = capsys.readouterr().out
    assert "method gs:" in out and "rho: float | None = None" in out and "ablation: none|prune-only" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in gcompiler.methods.available_methods():
        assert f"method {name}:" in out


def test_a_method_declares_the_bits_it_supports_and_is_refused_before_anything_runs(tmp_path):
    import dataclasses

    from gcompiler.compression import resolve
    from gcompiler.methods import _METHODS, register_method

    ran = []

    @dataclasses.dataclass
    class NoOptions:
        pass

    @register_method("float-only-test", options=NoOptions, summary="test", bits=(32, 16), bits_reason="floats only")
    def run(job, opts):  # pragma: no cover - must never run
        ran.append(job)
        return {}

    try:
        with pytest.raises(ConfigError, match=r"--method float-only-test takes --bits 32 or 16 \(got 8\): floats only"):
            resolve([("test", {"method": "float-only-test", "bits": 8})])
        settings, _, _ = resolve([("test", {"method": "float-only-test", "bits": 16})])
        assert settings.bits == 16 and not ran
        for name in ("gan-compression", "self-supervised"):  # the built-in float methods use the same check
            with pytest.raises(ConfigError, match=f"--method {name} takes --bits 32"):
                resolve([("test", {"method": name, "bits": 8})])
    finally:
        _METHODS.pop("float-only-test", None)
