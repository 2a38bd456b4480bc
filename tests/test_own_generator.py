"""A user's own generator from a plain .py file in a directory of their own, end to end through the console
entry (a subprocess whose working directory is that directory): compress with `file.py:Class:weights`,
`--teacher-kw`, a folder of images with and without `--eval-data`, then profile / compile / export it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcompiler.errors import ConfigError
from gcompiler.spec import parse_teacher

NET = textwrap.dedent('''
    import torch
    from torch import nn

    class MyGen(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                                      nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1))

        def forward(self, x):
            return torch.tanh(x + self.body(x))
''')


def _images(path: Path, n: int, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((20, 20), Image.BICUBIC).save(path / f"im{i}.png")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mynet.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        mod = importlib.import_module("mynet")
        torch.manual_seed(3)
        torch.save(mod.MyGen(width=6).state_dict(), tmp_path / "w.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynet", None)
    _images(tmp_path / "photos", 10, 0)
    _images(tmp_path / "val", 3, 1)
    return tmp_path


def gc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "gcompiler", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_teacher_spec_forms(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(NET)
    assert parse_teacher(str(tmp_path / "a.py") + ":MyGen:w.pth").kind == "file"
    assert parse_teacher("mynet:MyGen").kind == "class"  # a module in the current directory, no dot needed
    with pytest.raises(ConfigError, match="no such file"):
        parse_teacher(str(tmp_path / "missing.py") + ":MyGen")
    with pytest.raises(ConfigError, match="class name"):
        parse_teacher(str(tmp_path / "a.py"))


@pytest.mark.slow
def test_own_generator_end_to_end(project: Path) -> None:
    common = ["--method", "gs", "--bits", "32", "--max-steps", "2", "--finetune-steps", "1", "--batch-size", "2",
              "--crop", "16", "--save-every", "0", "--sample-every", "0", "--opt", "disc_layers=2",
              "--opt", "disc_ndf=8", "--threads", "1", "--workers", "0"]
    # a file path, weights and a constructor argument; held-out images in their own folder
    r = gc(project, "compress", "--teacher", "mynet.py:MyGen:w.pth", "--teacher-kw", "width=6", "--data", "photos",
           "--eval-data", "val", "--out", "run1", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--eval-data val (3 images)" in r.stdout
    report = json.loads((project / "run1" / "report.json").read_text())
    assert report["evaluation"]["protocol"].startswith("evaluated on --eval-data val")
    assert (project / "run1" / "report.html").is_file()
    # a dotted module from the current directory, no weights: a warning; a fixed hold-out of the folder
    r = gc(project, "compress", "--teacher", "mynet:MyGen", "--data", "photos", "--out", "run2", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no weights given" in r.stderr
    assert "held out of training" in r.stdout
    # profile / compile take the same specs; export verifies
    r = gc(project, "profile", "mynet.py:MyGen:w.pth", "--kw", "width=6", "--size", "32")
    assert r.returncode == 0 and "MACs" in r.stdout, r.stderr
    r = gc(project, "compile", "mynet.py:MyGen:w.pth", "--kw", "width=6", "insert-masks,eliminate-dead-channels",
           "--size", "32", "--out", "compiled")
    assert r.returncode == 0 and (project / "compiled" / "architecture.json").is_file(), r.stderr
    r = gc(project, "export", "run1", "--format", "safetensors")
    assert r.returncode == 0 and "verified: max |y - y_student| = 0" in r.stdout, r.stderr
