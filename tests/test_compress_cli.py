"""``gcompiler compress``: end to end on tiny data, settings resolution, bad input, NaN stop, kill -9 and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gcompiler
from gcompiler.cli import main
from gcompiler.methods.base import SUMMARY_KEYS

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

FAST = ["--crop", "16", "--batch-size", "2", "--workers", "0", "--threads", "1", "--quiet", "--sample-every", "0",
        "--opt", "disc_layers=2", "--opt", "disc_ndf=8"]


def _smooth_image(rng: np.random.Generator, size: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    coarse = rng.integers(lo, hi + 1, size=(4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def make_folder(path: Path, n: int = 6, size: int = 24, seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_smooth_image(rng, size)).save(path / f"img{i}.png")
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["compress", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compress", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--teacher", "--data", "--method", "--bits", "--target-macs", "--max-steps", "--save-every",
                 "--resume", "--out", "--config", "--seed", "--device", "--batch-size", "--crop", "--finetune-steps",
                 "--opt", "--teacher-kw", "--quiet"):
        assert flag in out, flag
    assert "examples:" in out and "gcompiler compress --teacher builtin:sr --data builtin:sr" in out
    assert "gs options" in out and "gamma_lr: float = 0.1" in out and "ablation: none|prune-only" in out
    assert "--rho" not in out  # GS-only flags are GS options now
    with pytest.raises(SystemExit) as e:
        main(["compress", "--rho", "0.5"])
    assert e.value.code == 2 and "--opt rho=0.5" in capsys.readouterr().err


def test_gs8_end_to_end_exports_a_loadable_student(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, "--teacher", "gsfix.teachers:TinyGen", "--data", str(data), "--bits", "8",
                          "--max-steps", "4", "--finetune-steps", "2", "--save-every", "2", "--out", str(out), *FAST)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["method"] == "gs" and summary["steps"] == 6
    assert summary["input_shape"] == [1, 3, 16, 16]  # a class teacher: MACs counted at one training crop
    from gsfix.teachers import TinyGen

    teacher_prof = gcompiler.profile(TinyGen(), torch.zeros(summary["input_shape"]))
    assert summary["macs_before"] == teacher_prof.macs and summary["params_before"] == teacher_prof.params
    assert summary["size_bytes_before"] == teacher_prof.params * 4
    assert summary["size_bytes_after"] < summary["size_bytes_before"] / 3  # 8-bit weights
    assert summary["psnr_to_teacher"] > 5 and summary["psnr_to_target"] is None  # single folder: no ground truth
    student = gcompiler.load(out)
    from gcompiler.quant.qmodules import QConv2d

    assert [m.weight_bits for m in student.modules() if isinstance(m, QConv2d)] == [8, 8, 8]
    assert student(torch.rand(1, 3, 20, 20) * 2 - 1).shape == (1, 3, 20, 20)
    assert gcompiler.profile(student).params == summary["params_after"]
    integer = gcompiler.load(out / "int8")  # convert-to-int of the same student: integer weights on disk
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(integer(x), student(x), atol=1e-4)
    from safetensors.torch import load_file

    assert any(t.dtype == torch.int8 for t in load_file(str(out / "int8" / "model.safetensors")).values())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bits"] == 8 and cfg["max_steps"] == 4 and cfg["options"]["disc_ndf"] == 8
    for p in ("checkpoints", "finetune/checkpoints", "train.log", "scalars.csv", "compress.log", "report.json",
              "stages/pruned/architecture.json", "samples/heldout.png"):
        assert (out / p).exists(), p
    assert "PSNR to teacher" in stdout and str(out) in stdout
    # every graph rewrite went through the pass manager, in order, and is in report.json and on the terminal
    rows = json.loads((out / "report.json").read_text())["pass_log"]
    assert [(r["stage"], r["pass"]) for r in rows] == [
        ("search-student", "insert-masks"), ("search-student", "insert-fake-quant"),
        ("search-student", "calibrate-activations"), ("slim", "strip-fake-quant"),
        ("slim", "eliminate-dead-channels"), ("slim", "fold-norms"), ("finetune-quant", "insert-fake-quant"),
        ("finetune-quant", "calibrate-activations"), ("int8-export", "convert-to-int")]
    elim = rows[4]
    assert elim["params"][1] < elim["params"][0] and elim["macs"][1] < elim["macs"][0]
    assert "graph rewrites" in stdout and "eliminate-dead-channels" in stdout
    # the same out dir again without --resume is refused
    rc, _, err = run(capsys, "--teacher", "gsfix.teachers:TinyGen", "--data", str(data), "--out", str(out), *FAST)
    assert rc == 2 and "--resume" in err


def test_config_file_flags_override_and_target_macs(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'teacher = "gsfix.teachers:TinyGen"\ndata = "{data}"\nbits = 32\nmax_steps = 9\n'
                   f'finetune-steps = 1\ntarget_macs = "2x"\n[gs]\ngan_weight = 0.0\nrho = 0.1\n')
    rc, _, err = run(capsys, "--config", str(cfg), "--max-steps", "3", "--out", str(out), *FAST)
    assert rc == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 3 and saved["bits"] == 32 and saved["options"]["gan_weight"] == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["macs_after"] <= summary["macs_before"] / 2  # --target-macs 2x
    assert summary["size_bytes_after"] == summary["params_after"] * 4  # 32 bits: no quantization
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"] == "none" and report["search"]["target_pruning"]["macs"] <= summary["macs_before"] / 2
    assert not (out / "disc.safetensors").exists() and not (out / "stages" / "disc.safetensors").exists()  # no GAN


def test_settings_errors(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=2)
    base = ["--teacher", "gsfix.teachers:TinyGen", "--data", str(data), "--out", str(tmp_path / "r"), *FAST]
    for extra, msg in ((["--opt", "rhoo=1"], "no option"), (["--bits", "1"], "--bits"),
                       (["--target-macs", "0.5x"], "factor"), (["--method", "agdd"], "unknown --method"),
                       (["--batch-size", "4"], "fewer than --batch-size"),
                       (["--target-macs", "1000x"], "below the smallest network")):
        rc, _, err = run(capsys, *base, *extra)
        assert rc == 2 and msg in err, (extra, err)
    bad = tmp_path / "bad.toml"
    bad.write_text('[nosuchmethod]\nx = 1\n')
    rc, _, err = run(capsys, *base, "--config", str(bad))
    assert rc == 2 and "unknown table" in err


# --------------------------------------------------------------------------------------------- bad input

def test_folder_without_images(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    rc, _, err = run(capsys, "--teacher", "gsfix.teachers:TinyGen", "--data", str(empty), "--out",
                     str(tmp_path / "r"), *FAST)
    assert rc == 2 and str(empty) in err and "image" in err


def test_unreadable_images(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"x{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        rc, _, err = run(capsys, "--teacher", "gsfix.teachers:TinyGen", "--data", str(broken), "--out",
                         str(tmp_path / "r"), *FAST)
    assert rc == 2 and "no readable images" in err and str(broken) in err
    # one broken file among good ones: skipped with a warning naming it, and the run goes on
    mixed = make_folder(tmp_path / "mixed", n=4)
    (mixed / "zz_broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "r2"
    with pytest.warns(UserWarning, match="zz_broken"):
        rc, _, err = run(capsys, "--teacher", "gsfix.teachers:TinyGen", "--data", str(mixed), "--out", str(out),
                         "--max-steps", "1", "--finetune-steps", "0", *FAST)
    assert rc == 0, err
    assert "zz_broken.jpg" in (out / "compress.log").read_text()


def test_teacher_output_shape_must_match_the_data(tmp_path, capsys):
    root = tmp_path / "unpaired"
    make_folder(root / "A", n=3, seed=1)
    make_folder(root / "B", n=4, seed=2)
    rc, _, err = run(capsys, "--teacher", "gsfix.teachers:Upscale2x", "--data", f"unpaired:{root}", "--out",
                     str(tmp_path / "r"), *FAST)
    assert rc == 2
    assert "(3, 32, 32)" in err and "(3, 16, 16)" in err and "expected" in err and "super-resolution" in err


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(_smooth_image(rng, 16, 0, 90)).save(data / f"a{i}.png")
    Image.fromarray(_smooth_image(rng, 16, 240, 255)).save(data / "z_bright.png")  # the teacher's NaN trigger
    out = tmp_path / "r"
    rc, _, err = run(capsys, "--teacher", "gsfix.teachers:BrightNaN", "--data", str(data), "--out", str(out),
                     "--batch-size", "1", "--crop", "16", "--workers", "0", "--threads", "1", "--quiet",
                     "--max-steps", "30",
                     "--save-every", "1", "--seed", "3", "--opt", "disc_layers=2", "--opt", "disc_ndf=8")
    assert rc == 2
    import re

    m = re.search(r"non-finite .* at step (\d+)", err)
    assert m, err
    step = int(m.group(1))
    assert step > 1
    from gcompiler.train import list_checkpoints

    ckpts = list_checkpoints(out / "checkpoints")
    assert ckpts and ckpts[-1][0] == step - 1 and str(ckpts[-1][1]) in err
    assert not (out / "summary.json").exists()


# ------------------------------------------------------------------------------------- kill -9 and resume

def test_kill_9_then_resume_reaches_the_same_result(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    args = ["--teacher", "gsfix.teachers:TinyGen", "--teacher-kw", "delay=0.05", "--data", str(data),
            "--max-steps", "24", "--finetune-steps", "4", "--save-every", "4", "--seed", "1", *FAST]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", GCOMPILER_TEST_THREADS="1")
    code = "import sys, torch; torch.set_num_threads(1); from gcompiler.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "compress", *args, "--out", str(out)], cwd=str(REPO), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from gcompiler.train import list_checkpoints

    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            ck = list_checkpoints(out / "checkpoints") if (out / "checkpoints").exists() else []
            if ck and ck[-1][0] >= 8:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint at step 8 within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    killed_at = list_checkpoints(out / "checkpoints")[-1][0]
    assert killed_at < 24

    rc, _, err = run(capsys, *args, "--out", str(out), "--resume")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 28
    assert f"resumed from {out / 'checkpoints'}" in (out / "train.log").read_text()

    ref = tmp_path / "straight"
    rc, _, err = run(capsys, *args, "--out", str(ref))
    assert rc == 0, err
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((ref / "summary.json").read_text())["psnr_to_teacher"] == summary["psnr_to_teacher"]


def test_resume_after_the_search_continues_the_fine_tuning(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--teacher", "gsfix.teachers:TinyGen", "--data", str(data), "--max-steps", "3", "--save-every", "1",
            "--out", str(out), *FAST]
    rc, _, err = run(capsys, *args, "--finetune-steps", "2")
    assert rc == 0, err
    pruned = (out / "stages" / "pruned" / "model.safetensors").read_bytes()
    rc, _, err = run(capsys, *args, "--finetune-steps", "4", "--resume")
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 3 + 4
    assert (out / "stages" / "pruned" / "model.safetensors").read_bytes() == pruned  # the search was not redone
    assert "resumed from" in (out / "finetune" / "train.log").read_text()
    assert json.loads((out / "config.json").read_text())["finetune_steps"] == 4
    # the pass log keeps the first session's rewrites; the re-run stage replaces its own rows
    stages = [r["stage"] for r in json.loads((out / "report.json").read_text())["pass_log"]]
    assert stages.count("slim") == 3 and stages.count("search-student") == 3 and stages.count("finetune-quant") == 2


def test_demo_defaults_to_gs8_of_the_cartoon_teacher(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--max-steps", "2", "--finetune-steps", "1", "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == "builtin:cartoon" and config["data"] == "builtin:cartoon" and config["bits"] == 8
    assert summary["method"] == "gs" and summary["steps"] == 3 and summary["input_shape"] == [1, 3, 256, 256]
    assert summary["macs_after"] <= summary["macs_before"] / 7.9  # --target-macs 8x
    assert summary["baseline"] == "identity" and summary["psnr_to_target"] is not None
    assert "baseline (identity)" in stdout


def test_demo_runs_gs8_on_builtin_sr_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--task", "sr", "--out", str(out), "--max-steps", "2", "--finetune-steps", "1", "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "gs" and summary["steps"] == 3 and summary["input_shape"] == [1, 3, 64, 64]
    assert summary["macs_after"] <= summary["macs_before"] / 3  # the demo's --target-macs 3x
    assert summary["psnr_to_target"] is not None  # builtin:sr has ground truth
    for row in ("MACs", "params", "size", "PSNR to teacher", "PSNR to target", str(out), "gcompiler zoo"):
        assert row in stdout, row
    assert json.loads((out / "config.json").read_text())["bits"] == 8


def test_images_smaller_than_the_reference_input_still_get_a_sample_grid(tmp_path, capsys):
    """A zoo teacher's reference input is 256 pixels; images of 24 px used to let every stage train and then kill
    the run while drawing the held-out sample grid (crop 256 > 24), on --resume too."""
    data = make_folder(tmp_path / "data", n=8, size=24)
    out = tmp_path / "run"
    rc, _, err = run(capsys, "--teacher", "resnet_6blocks", "--teacher-kw", "ngf=4", "--teacher-kw", "n_blocks=1",
                     "--data", str(data), "--method", "gs", "--bits", "32", "--target-macs", "1.5x",
                     "--max-steps", "2", "--finetune-steps", "1", "--crop", "16", "--batch-size", "2",
                     "--workers", "0", "--threads", "1", "--quiet", "--sample-every", "0", "--out", str(out))
    assert rc == 0, err
    grid = out / "samples" / "heldout.png"
    assert grid.is_file() and grid.stat().st_size > 0
    report = json.loads((out / "report.json").read_text())["report_data"]
    assert isinstance(report["grid"], str) and Path(report["grid"]).is_file(), report["grid"]
