"""Crash safety (issue 18), the slow part: ``gcompiler compress`` killed with SIGKILL at chosen moments —
while writing a training checkpoint, the search result, the fine-tuning checkpoint, the exported student,
summary.json, the int8 export and the report — then checked and resumed.

The kill is injected in the child process just before the ``os.replace`` that would publish a file or
directory under its final name (the temporary is complete at that moment: the last instant at which a
non-atomic writer would have left a partial file), plus one kill at a random time. After each kill:

* every visible file of the run directory is whole: each ``*.json`` parses, each ``*.safetensors`` loads,
  each listed checkpoint reads, ``gcompiler.load`` works wherever an ``architecture.json`` is visible;
* ``--resume`` finishes (taking over the dead run's stale lock, with a warning) with the same summary fields
  and a bit-identical student to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gcompiler
from gcompiler.cli import main
from reliability_counts import new_counter, write_counts

# minutes of subprocess runs: part of `make test-thorough` (HYPOTHESIS_PROFILE=thorough) or GCOMPILER_CRASH_TESTS=1
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE") != "thorough" and os.environ.get("GCOMPILER_CRASH_TESTS") != "1",
    reason="kill -9 crash tests run under make test-thorough (or GCOMPILER_CRASH_TESTS=1)")]

COUNTS = new_counter()
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

FAST = ["--crop", "16", "--batch-size", "2", "--workers", "0", "--threads", "1", "--quiet", "--sample-every", "0",
        "--opt", "disc_layers=2", "--opt", "disc_ndf=8"]
# summary fields that must agree between a resumed and an uninterrupted run (wall time and dates differ)
SAME = ("method", "steps", "macs_after", "params_after", "size_bytes_after", "psnr_to_teacher", "psnr_to_target")

_CHILD = r"""
import os, re, signal, sys
import torch
torch.set_num_threads(1)
pattern, nth = re.compile(os.environ["RELIAB_KILL_AT"]), int(os.environ.get("RELIAB_KILL_NTH", "1"))
real_replace, hits = os.replace, [0]
def replace(src, dst, *a, **k):
    if pattern.search(str(dst)):
        hits[0] += 1
        if hits[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # the temporary is complete; the final name not yet published
    return real_replace(src, dst, *a, **k)
os.replace = replace
from gcompiler.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module", autouse=True)
def _record_counts():
    yield
    write_counts(__name__, COUNTS)


def _data(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((24, 24), Image.BICUBIC).save(root / f"img{i}.png")
    return root


def _args(data: Path, method: str = "gs") -> list[str]:
    if method == "gan-compression":  # supernet training, evolutionary search, fine-tuning, export
        return ["--teacher", "resnet_9blocks", "--teacher-kw", "ngf=4", "--teacher-kw", "n_blocks=3",
                "--macs-size", "16", "--data", str(data), "--method", "gan-compression", "--target-macs", "3x",
                "--max-steps", "4", "--finetune-steps", "2", "--save-every", "2", "--seed", "1", "--bits", "32",
                "--opt", "search_evals=6", "--opt", "population=3", "--opt", "search_images=2", *FAST]
    if method == "agd":  # pre-training, differentiable search, training of the found architecture, export
        return ["--method", "agd", "--teacher", "resnet_6blocks", "--teacher-kw", "ngf=16", "--teacher-kw",
                "n_blocks=2", "--macs-size", "16", "--data", str(data), "--bits", "32", "--target-macs", "2x",
                "--max-steps", "6", "--finetune-steps", "3", "--save-every", "2", "--seed", "1",
                "--opt", "pretrain_steps=3", "--opt", "eval_every=2", *FAST[:-4]]
    return ["--teacher", "gsfix.teachers:TinyGen", "--data", str(data), "--bits", "8", "--max-steps", "12",
            "--finetune-steps", "4", "--save-every", "4", "--seed", "1", *FAST]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", GCOMPILER_TEST_THREADS="1")


_STRAIGHT: dict[str, tuple[Path, Path]] = {}


_SECONDS: dict[str, float] = {}  # wall time of each uninterrupted in-process run


def _straight(tmp_path_factory, method: str) -> tuple[Path, Path, str]:
    if method not in _STRAIGHT:
        root = tmp_path_factory.mktemp(f"straight-{method}")
        data = _data(root / "data")
        out = root / "run"
        t0 = time.perf_counter()
        assert main(["compress", *_args(data, method), "--out", str(out)]) == 0
        _SECONDS[method] = time.perf_counter() - t0
        _STRAIGHT[method] = (data, out)
    return (*_STRAIGHT[method], method)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _straight(tmp_path_factory, "gs")


@pytest.fixture(scope="module")
def straight_agd(tmp_path_factory):
    return _straight(tmp_path_factory, "agd")


@pytest.fixture(scope="module")
def straight_gc(tmp_path_factory):
    return _straight(tmp_path_factory, "gan-compression")


def _student(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def check_whole(out: Path) -> int:
    """Every visible file under ``out`` is complete; returns the number of files checked."""
    from safetensors.torch import load_file

    from gcompiler.train import list_checkpoints, read_run_checkpoint

    n = 0
    for p in sorted(out.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(out).parts):
            continue  # temporaries (and the lock file) are hidden by name
        if p.suffix == ".json":
            json.loads(p.read_text())
            n += 1
        elif p.suffix == ".safetensors":
            load_file(str(p))
            n += 1
        elif p.name == "architecture.json" or (p.is_dir() and (p / "architecture.json").is_file()):
            pass
        if p.is_dir() and (p / "architecture.json").is_file() and (p / "model.safetensors").is_file():
            gcompiler.load(p)
            n += 1
        if p.is_dir() and p.name == "checkpoints":
            for _, ck in list_checkpoints(p):
                read_run_checkpoint(ck)
                n += 1
        if p.suffix in (".png", ".html", ".md") and p.is_file():
            assert p.stat().st_size > 0, p
            if p.suffix == ".png":
                from PIL import Image

                with Image.open(p) as im:
                    im.load()
            n += 1
    return n


def _kill_then_resume(tmp_path, capsys, caplog, straight, kill_at: str | None, nth: int = 1, delay: float | None = None):
    data, ref, method = straight
    out = tmp_path / "run"
    env = _env()
    if kill_at is not None:
        env.update(RELIAB_KILL_AT=kill_at, RELIAB_KILL_NTH=str(nth))
    else:
        env.update(RELIAB_KILL_AT="^$")  # never matches: killed by the timer below
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, "compress", *_args(data, method), "--out", str(out)],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if delay is not None:  # counted from the first training step (scalars.csv), not from the spawn
            deadline = time.monotonic() + 300
            while not (out / "scalars.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {kill_at!r} (rc {proc.returncode}): {err[-2000:]}"
    COUNTS["kill9"] += 1
    COUNTS["files_checked_after_kill"] += check_whole(out)
    capsys.readouterr()
    caplog.clear()
    rc = main(["compress", *_args(data, method), "--out", str(out), "--resume"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert "stale lock of pid" in caplog.text  # the dead run's lock was taken over, with a warning
    got, want = json.loads((out / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    a, b = _student(out), _student(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed student differs"
    check_whole(out)
    COUNTS["resumed_identical"] += 1


@pytest.mark.parametrize("kill_at", [
    r"/run/checkpoints/step_00000008$",           # training (search) checkpoint
    r"/run/stages/pruned$",                        # the search result
    r"/run/finetune/checkpoints/step_00000004$",   # fine-tuning checkpoint
    r"/run/model\.safetensors$",                   # the exported student
    r"/run/summary\.json$",                        # the summary
    r"/run/int8$",                                 # the int8 export
    r"/run/report\.html$",                         # the report
])
def test_kill9_while_publishing_then_resume(tmp_path, capsys, caplog, straight, kill_at):
    _kill_then_resume(tmp_path, capsys, caplog, straight, kill_at)


def test_kill9_at_a_random_time_then_resume(tmp_path, capsys, caplog, straight):
    # a random moment in the first half of the run's training (the whole in-process run, setup and evaluation
    # included, took _SECONDS; a fixed 4-9 s once outlasted a run on a fast, idle machine)
    delay = random.Random(os.getpid()).uniform(0.05, 0.5) * _SECONDS["gs"]
    _kill_then_resume(tmp_path, capsys, caplog, straight, None, delay=delay)


@pytest.mark.parametrize("kill_at", [
    r"/run/supernet/checkpoints/step_00000002$",  # supernet training checkpoint
    r"/run/search\.json$",               # the evolutionary search's result
    r"/run/model\.safetensors$",         # the exported student
])
def test_kill9_gan_compression_then_resume(tmp_path, capsys, caplog, straight_gc, kill_at):
    _kill_then_resume(tmp_path, capsys, caplog, straight_gc, kill_at)


@pytest.mark.parametrize("kill_at", [
    r"/run/search/checkpoints/step_00000004$",  # the differentiable search's checkpoint
    r"/run/agd_architecture\.json$",             # the architecture the search found
])
def test_kill9_agd_then_resume(tmp_path, capsys, caplog, straight_agd, kill_at):
    _kill_then_resume(tmp_path, capsys, caplog, straight_agd, kill_at)


@pytest.mark.parametrize("fmt,kill_at", [("safetensors", r"/export/safetensors$"), ("pt2", r"/export/model\.pt2$"),
                                         ("onnx", r"/export/model\.onnx$")])
def test_kill9_during_export_leaves_nothing_partial(tmp_path, straight, fmt, kill_at):
    """``gcompiler export RUN --format FMT`` killed just before it publishes the file: nothing appears under the
    final name, the run is untouched, and the next export succeeds and verifies."""
    import shutil

    _, ref, _ = straight
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    env = dict(_env(), RELIAB_KILL_AT=kill_at, RELIAB_KILL_NTH="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, "export", str(run), "--format", fmt], cwd=str(REPO),
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    COUNTS["kill9"] += 1
    final = run / "export" / {"safetensors": "safetensors", "pt2": "model.pt2", "onnx": "model.onnx"}[fmt]
    assert not final.exists()
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)}
    assert after == {k: v for k, v in before.items() if not k.startswith(".")}
    COUNTS["files_checked_after_kill"] += check_whole(run)
    assert main(["export", str(run), "--format", fmt]) == 0
    assert final.exists()
    if fmt == "pt2":
        prog = torch.export.load(str(final)).module()
        student = gcompiler.load(run)
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        with torch.no_grad():
            assert torch.allclose(prog(x), student(x), atol=1e-5)
    elif fmt == "onnx":
        from gcompiler.quant.onnx_export import ort_session, run_onnx

        student = gcompiler.load(run)
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        with torch.no_grad():
            y = student(x)
        got = torch.as_tensor(run_onnx(ort_session(str(final)), x)[0])
        assert (got - y).abs().max() <= 0.1 * y.abs().max()  # fake-quant as Q/DQ: the export's own tolerance
    else:
        gcompiler.load(final)
    COUNTS["resumed_identical"] += 1
