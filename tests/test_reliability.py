"""Reliability (issue 18), the fast part: run-directory lock, full disk while checkpointing, hostile and broken
files (pickles that run code, crafted architecture.json, truncated / corrupted weights, NaN weights), bad
images and bad values. Every fault injected and bad input tried is counted (tests/reliability_counts.py ->
.reliability/counts.json, quoted by RELIABILITY.md). The kill -9 tests are in test_reliability_crash.py."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from PIL import Image

import gcompiler
from gcompiler.errors import CheckpointError, ConfigError, DataError, GCompilerError, PassError
from reliability_counts import new_counter, write_counts

COUNTS = new_counter()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _record_counts():
    yield
    write_counts(__name__, COUNTS)


# ------------------------------------------------------------------------------------------ run-dir lock

_HOLD = ("import sys, time; from gcompiler.ioutil import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=str(REPO), stdout=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout.readline().decode().strip() == "locked"
    return proc


def test_second_run_on_one_out_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    from gcompiler.ioutil import run_lock

    out = tmp_path / "run"
    proc = _holder(out)
    try:
        assert (out / ".lock").read_text().split()[0] == str(proc.pid)
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {proc.pid}"):
            with run_lock(out):
                pass
        COUNTS["faults_injected"] += 1
        # the command line refuses the second run before building anything, naming the holder
        from gcompiler.cli import main

        rc = main(["compress", "--teacher", "gsfix.teachers:TinyGen", "--data", "builtin:sr", "--out", str(out),
                   "--quiet", "--max-steps", "1"])
        assert rc == 2
        COUNTS["bad_inputs_tried"] += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    COUNTS["kill9"] += 1
    assert (out / ".lock").read_text().split()[0] == str(proc.pid)  # the dead holder's pid is still in the file
    with caplog.at_level(logging.WARNING, logger="gcompiler"):
        with run_lock(out) as lock:
            assert lock.read_text().split()[0] == str(os.getpid())
    assert f"stale lock of pid {proc.pid}" in caplog.text and "is gone" in caplog.text
    assert (out / ".lock").read_text() == ""  # released cleanly: the next run takes it without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gcompiler"):
        with run_lock(out):
            pass
    assert "stale" not in caplog.text


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    from gcompiler.ioutil import run_lock

    with run_lock(tmp_path):
        with pytest.raises(ConfigError, match="in use"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass
    COUNTS["faults_injected"] += 1


# ----------------------------------------------------------------------------- full disk while writing

def _enospc_after(n_bytes: int):
    def fail(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return fail


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("where", ["model", "state", "meta"])
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    import safetensors.torch

    from gcompiler.train import checkpoint as ck

    root = tmp_path / "ckpts"
    t1 = {"net.w": torch.randn(4, 4)}
    first = ck.write_run_checkpoint(root, 1, t1, {"step": 1})
    before = _tree(root)

    def half_then_enospc(path_arg):
        with open(path_arg, "wb") as f:
            f.write(b"\0" * 64)  # a partial file exists under the temporary name when the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "model":
        monkeypatch.setattr(safetensors.torch, "save_file", lambda t, fn, metadata=None: half_then_enospc(fn))
    elif where == "state":
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: half_then_enospc(f))
    else:
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text",
                            lambda self, *a, **k: half_then_enospc(self) if self.name == ck.META_FILE
                            else real(self, *a, **k))
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoints .* untouched"):
        ck.write_run_checkpoint(root, 2, {"net.w": torch.randn(4, 4)}, {"step": 2})
    COUNTS["faults_injected"] += 1
    monkeypatch.undo()
    assert _tree(root) == before and [s for s, _ in ck.list_checkpoints(root)] == [1]
    tensors, state, _ = ck.read_run_checkpoint(first)
    assert torch.equal(tensors["net.w"], t1["net.w"]) and state["step"] == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("writer", ["atomic_write_json", "gcompiler.save", "save_checkpoint"])
def test_full_disk_in_other_writers_keeps_the_old_file(tmp_path, monkeypatch, writer):
    import gcompiler.ioutil as io

    real_fsync = os.fsync
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    if writer == "atomic_write_json":
        target = tmp_path / "summary.json"
        io.atomic_write_json(target, {"a": 1})
        write = lambda: io.atomic_write_json(target, {"a": 2, "pad": "x" * 10000})  # noqa: E731
    elif writer == "gcompiler.save":
        target = tmp_path / "model"
        gcompiler.save(gm, target)
        write = lambda: gcompiler.save(gm, target)  # noqa: E731
    else:
        target = tmp_path / "w.safetensors"
        gcompiler.save_checkpoint(gm.state_dict(), target)
        write = lambda: gcompiler.save_checkpoint(gm.state_dict(), target)  # noqa: E731
    before = _tree(tmp_path)
    monkeypatch.setattr(os, "fsync", _enospc_after(0))
    with pytest.raises((OSError, GCompilerError), match="No space left"):
        write()
    COUNTS["faults_injected"] += 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- pickles that would run code

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    from gcompiler.checkpoint import load_checkpoint, read_state_dict
    from gcompiler.train.checkpoint import read_run_checkpoint, write_run_checkpoint

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil(marker)}, evil)
    for attempt in (lambda: read_state_dict(evil), lambda: load_checkpoint(nn.Linear(1, 1), evil)):
        with pytest.raises(CheckpointError, match=r"evil\.pth.*pickled Python object \((posix|os|nt)\.system\).*"
                                                  r"can run code"):
            attempt()
        COUNTS["bad_inputs_tried"] += 1
    # a training checkpoint whose state.pt was replaced by a malicious pickle
    ckpt = write_run_checkpoint(tmp_path / "ck", 3, {"w": torch.ones(2)}, {"step": 3})
    torch.save({"format": 1, "x": _Evil(marker)}, ckpt / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt.*refused: it holds a pickled Python object "
                                              r"\((posix|os|nt)\.system\)"):
        read_run_checkpoint(ckpt)
    COUNTS["bad_inputs_tried"] += 1
    # and a teacher spec pointing at it (the command line's own loader)
    assert not marker.exists()


# ------------------------------------------------------------------------ crafted / broken saved models

class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 3, 1))

    def forward(self, x):
        return torch.add(self.body(self.c(x)), 1, alpha=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    gm = fx.symbolic_trace(_Net().eval())
    gm.meta["input_specs"] = [((1, 3, 8, 8), torch.float32)]
    d = tmp_path_factory.mktemp("saved") / "m"
    gcompiler.save(gm, d)
    return d


def _copy(saved: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in saved.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_arch(d: Path, fn) -> None:
    arch = json.loads((d / "architecture.json").read_text())
    fn(arch)
    (d / "architecture.json").write_text(json.dumps(arch))


def _node(arch, op):
    return next(n for n in arch["nodes"] if n["op"] == op)


def _try_load_and_run(d: Path) -> None:
    gm = gcompiler.load(d)
    gm(torch.zeros(1, 3, 8, 8))


INJECT = 'getattr(__import__("os"), "system")("touch {m}")'


def _attacks(marker: Path):
    code = INJECT.format(m=marker)
    yield "kwarg key", lambda a: _node(a, "call_function")["kwargs"].update(
        {"dict": [[f"alpha=[{code}] and 2, beta", 1]]}), "not an identifier"
    yield "node name", lambda a: _node(a, "call_module").update(name=f"c_{code}"), "not an identifier"
    yield "placeholder", lambda a: _node(a, "placeholder").update(target=f"x=[{code}]"), "not an identifier"
    yield "get_attr target", lambda a: a["nodes"].insert(1, {
        "name": "k", "op": "get_attr", "target": f'c.weight"), [{code}], getattr(self, "c', "args": {"tuple": []},
        "kwargs": {"dict": []}}), "not a dotted path"
    yield "module path", lambda a: a["modules"].update({f'c"); {code}; ("': a["modules"]["c"]}), "not a dotted path"
    yield "tensor name", lambda a: a["tensors"].update({f'x"); {code}; ("': {"kind": "buffer"}}), "not a dotted path"
    yield "dunder getattr", lambda a: a["nodes"].insert(2, {
        "name": "g", "op": "call_function", "target": "builtins:getattr",
        "args": {"tuple": [{"node": "x"}, "__class__"]}, "kwargs": {"dict": []}}), "only public attributes"
    yield "operator.call", lambda a: _node(a, "call_function").update(target="operator:call"), "not an allowed"
    yield "gcompiler I/O function", lambda a: _node(a, "call_function").update(
        target="gcompiler.ioutil:atomic_write_text"), "not an allowed"
    yield "torch.load", lambda a: _node(a, "call_function").update(target="torch:load"), "not an allowed"
    yield "os.system", lambda a: _node(a, "call_function").update(target="os:system"), "not an allowed"
    yield "private tensor method", lambda a: a["nodes"].insert(2, {
        "name": "m", "op": "call_method", "target": "__reduce_ex__",
        "args": {"tuple": [{"node": "x"}, 2]}, "kwargs": {"dict": []}}), "not allowed"
    yield "class name", lambda a: a.update(class_name="A(); import os"), "not an identifier"
    yield "unknown module type", lambda a: a["modules"]["c"].update(type="gcompiler.cli.Evil"), "unknown module type"
    yield "non-nn torch type", lambda a: a["modules"]["c"].update(type="torch.nn.Module"), "not loadable"


def test_crafted_architecture_json_never_runs_code_or_imports(saved, tmp_path, monkeypatch):
    import importlib

    marker = tmp_path / "PWNED"
    imported: list[str] = []
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real_import(name, *a))
    for i, (what, edit, msg) in enumerate(_attacks(marker)):
        d = _copy(saved, tmp_path / f"a{i}")
        _edit_arch(d, edit)
        with pytest.raises(CheckpointError, match=msg) as ei:
            _try_load_and_run(d)
        assert "architecture.json" in str(ei.value) or str(d) in str(ei.value), what
        assert not marker.exists(), what
        COUNTS["bad_inputs_tried"] += 1
    from gcompiler.serialize import _MODULE_TYPE_PROVIDERS

    named = {m for m in imported if not m.startswith(".")}  # ".serialize": gcompiler's own lazy attributes
    assert named <= set(_MODULE_TYPE_PROVIDERS) | {"torch", "operator", "math", "torch.nn.functional"}, imported


def test_crafted_sizes_are_refused_before_allocating(saved, tmp_path):
    d = _copy(saved, tmp_path / "huge_conv")
    _edit_arch(d, lambda a: a["modules"]["c"]["args"]["dict"].__setitem__(
        0, ["in_channels", 1_000_000]) or a["modules"]["c"]["args"]["dict"].__setitem__(1, ["out_channels", 1_000_000]))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"tensor 'c\.weight' has shape \(4, 3, 3, 3\).*needs "
                                              r"\(1000000, 1000000, 3, 3\)"):
        gcompiler.load(d)
    assert time.perf_counter() - t0 < 5  # 9e12 weights were never allocated
    d = _copy(saved, tmp_path / "huge_input")
    _edit_arch(d, lambda a: a.update(input_specs=[[[1, 3, 100000, 100000], "float32"]]))
    with pytest.raises(CheckpointError, match="example inputs hold 30,000,000,000 elements"):
        gcompiler.load(d)
    d = _copy(saved, tmp_path / "bad_dtype_spec")
    _edit_arch(d, lambda a: a.update(input_specs=[[[1, 3, 8, 8], "load"]]))
    with pytest.raises(CheckpointError, match="not a torch dtype"):
        gcompiler.load(d)
    COUNTS["bad_inputs_tried"] += 3


def _write_weights(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def test_broken_weights_name_the_file_and_tensor(saved, tmp_path):
    cases = [
        ("nan", lambda t: t["c.weight"].__setitem__((0, 0, 0, 0), float("nan")), r"parameter 'c\.weight' holds 1 NaN"),
        ("inf", lambda t: t["body.1.bias"].__setitem__(0, float("inf")), r"parameter 'body\.1\.bias' holds 1 NaN/Inf"),
        ("shape", lambda t: t.__setitem__("c.weight", torch.zeros(4, 3, 5, 5)), r"'c\.weight' has shape \(4, 3, 5, 5\)"),
        ("dtype", lambda t: t.__setitem__("c.weight", torch.zeros(4, 3, 3, 3, dtype=torch.int64)),
         r"'c\.weight' has dtype torch\.int64"),
        ("missing", lambda t: t.pop("body.1.weight"), r"body\.1\.weight"),
    ]
    for name, fn, msg in cases:
        d = _copy(saved, tmp_path / name)
        _write_weights(d, fn)
        with pytest.raises(CheckpointError, match=msg) as ei:
            gcompiler.load(d)
        assert str(d) in str(ei.value), name
        COUNTS["bad_inputs_tried"] += 1


def test_truncated_and_corrupted_files_are_clear_errors(saved, tmp_path):
    """Every truncation length (sampled) and byte flip of the weights / architecture / .pth: a CheckpointError
    naming the file, or (a flip inside tensor data) a model that loads; never another exception."""
    from gcompiler.checkpoint import read_state_dict

    rng = np.random.default_rng(0)
    weights = (saved / "model.safetensors").read_bytes()
    arch = (saved / "architecture.json").read_bytes()
    pth = tmp_path / "w.pth"
    torch.save(_Net().state_dict(), pth)
    pth_bytes = pth.read_bytes()
    sft = tmp_path / "w.safetensors"
    gcompiler.save_checkpoint(_Net().state_dict(), sft)
    sft_bytes = sft.read_bytes()
    d = _copy(saved, tmp_path / "t")
    outcomes = {"refused": 0, "loaded": 0}

    def attempt(fn, path: Path) -> None:
        try:
            fn()
            outcomes["loaded"] += 1
        except GCompilerError as exc:
            assert str(path.name) in str(exc) or str(path.parent) in str(exc), str(exc)
            outcomes["refused"] += 1
        COUNTS["bad_inputs_tried"] += 1

    for blob, target, fn in ((weights, d / "model.safetensors", lambda: gcompiler.load(d)),
                             (arch, d / "architecture.json", lambda: gcompiler.load(d)),
                             (pth_bytes, pth, lambda: read_state_dict(pth)),
                             (sft_bytes, sft, lambda: read_state_dict(sft))):
        cuts = sorted(set(rng.integers(0, len(blob), 12).tolist()) | {0, 1, len(blob) - 1})
        for n in cuts:
            target.write_bytes(blob[:n])
            attempt(fn, target)
        for _ in range(8):
            b = bytearray(blob)
            i = int(rng.integers(0, min(len(b), 200)))  # headers: where damage must be detected
            b[i] ^= 0xFF
            target.write_bytes(bytes(b))
            attempt(fn, target)
        target.write_bytes(blob)
    assert outcomes["refused"] >= 60


# ------------------------------------------------------------------------------------------ bad images

def _write(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


def test_image_modes_are_converted_or_refused(tmp_path):
    from gcompiler.data.images import load_image

    ramp16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    cases = {
        "g16.png": (Image.fromarray(ramp16), (ramp16 / 257.0)),
        "gray.png": (Image.fromarray((ramp16 // 257).astype(np.uint8)), (ramp16 // 257)),
        "rgba.png": (Image.fromarray(np.dstack([(ramp16 // 257).astype(np.uint8)] * 3 + [np.zeros((32, 32), np.uint8)]),
                                     "RGBA"), (ramp16 // 257)),
        "f01.tiff": (Image.fromarray((ramp16 / 65535.0).astype(np.float32), "F"), ramp16 / 257.0),
    }
    for name, (im, want) in cases.items():
        arr = load_image(_write(tmp_path / name, im))
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, name
        assert np.abs(arr[:, :, 0].astype(float) - want).max() <= 1.0, name  # scaled, not clipped at 255
        COUNTS["bad_inputs_tried"] += 1
    cmyk = load_image(_write(tmp_path / "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 0, 0))))
    assert cmyk.shape == (16, 16, 3) and abs(int(cmyk[0, 0, 1]) - 0) <= 8 and cmyk[0, 0, 0] >= 247  # magenta
    with pytest.raises(DataError, match=r"hot\.tiff.*floating-point image with values in \[1000, 1000\]"):
        load_image(_write(tmp_path / "hot.tiff", Image.fromarray(np.full((8, 8), 1000, np.float32), "F")))
    COUNTS["bad_inputs_tried"] += 2


def test_corrupt_images_skipped_with_a_count_then_refused_when_too_many(tmp_path):
    import warnings

    from gcompiler.data.datasets import SingleFolderDataset

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"ok{i}.png")
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ds = SingleFolderDataset(tmp_path, crop_size=16)
    assert len(ds) == 6 and len(ds.report.skipped) == 3 and "3 unreadable skipped" in ds.report.summary()
    for i in range(3, 7):
        (tmp_path / f"bad{i}.png").write_bytes(b"")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"7 of 13 images in .* are unreadable \(more than 50%"):
            SingleFolderDataset(tmp_path, crop_size=16)
    COUNTS["bad_inputs_tried"] += 7


def test_image_sizes_the_net_cannot_take_say_the_multiple(tmp_path):
    from gcompiler.cli import model_and_input

    with pytest.raises(ConfigError, match=r"--size 30: .*its output is 32 pixels wide.*takes multiples of 4 from 32 "
                                          r"pixels, e\.g\. --size 32"):
        model_and_input("resnet_9blocks", {"ngf": 4, "n_blocks": 1}, 30)
    # too small: the reason is the reflection padding, and the smallest size that works is 8, not 4
    with pytest.raises(ConfigError, match=r"--size 2: .*it fails \(RuntimeError: .*[Pp]adding.*multiples of 4 from 8 "
                                          r"pixels, e\.g\. --size 8"):
        model_and_input("resnet_9blocks", {"ngf": 4, "n_blocks": 1}, 2)
    with pytest.raises(ConfigError, match=r"--size 64: .*multiples of 256 from 256 pixels"):
        model_and_input("unet_256", {"ngf": 4}, 64)
    from gcompiler.data.datasets import SingleFolderDataset

    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(DataError, match="tiny.png"):
        SingleFolderDataset(tmp_path, crop_size=16)
    COUNTS["bad_inputs_tried"] += 3


# ------------------------------------------------------------------------------------------ bad values

def test_budget_below_the_reachable_minimum_and_pruning_keeps_a_minimum_width():
    from gcompiler.passes.budget import prune_to_budget

    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=1)
    gm = gcompiler.compile(model.eval(), "insert-masks{round_to=4}", torch.randn(1, 3, 16, 16))
    dense = gcompiler.estimate(gm).macs
    zeros = {n: torch.zeros(m.shape) for n, m in gcompiler.masks(gm).items()}  # every unit equally useless
    with pytest.raises(PassError, match=r"cannot reach .* the smallest reachable is (\S+)") as ei:
        prune_to_budget(gm, zeros, 1000)
    smallest = float(ei.value.args[0].rsplit(" ", 1)[1])
    assert 1000 < smallest < dense
    info = prune_to_budget(gm, zeros, int(smallest) + 1)  # the reported minimum is reachable
    assert info["macs"] <= smallest + 1
    for name, m in gcompiler.masks(gm).items():
        assert int((m != 0).sum()) >= 4, name  # no group emptied: round_to units kept
    for bad in ("0.5x", "nan", "infx", "-3", "0"):
        with pytest.raises(GCompilerError):
            prune_to_budget(gm, zeros, bad)
    COUNTS["bad_inputs_tried"] += 6


def test_checkpoint_with_nan_or_wrong_dtype_weights_names_the_file_and_tensor(tmp_path):
    from gcompiler.checkpoint import load_checkpoint, save_checkpoint

    good = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cases = {
        "nan.safetensors": ("0.weight", lambda t: t.clone().index_fill_(0, torch.tensor([1]), float("nan")),
                            r"'0\.weight' holds 27 NaN/Inf"),
        "inf.pth": ("1.running_var", lambda t: torch.full_like(t, float("inf")), r"'1\.running_var' holds 4 NaN/Inf"),
        "int.pth": ("0.weight", lambda t: t.to(torch.int64), r"'0\.weight' has dtype torch\.int64"),
        "bool.safetensors": ("0.bias", lambda t: t > 0, r"'0\.bias' has dtype torch\.bool"),
    }
    for fname, (key, change, msg) in cases.items():
        sd = {k: v.clone() for k, v in good.state_dict().items()}
        sd[key] = change(sd[key])
        path = tmp_path / fname
        save_checkpoint(sd, path) if fname.endswith(".safetensors") else torch.save(sd, path)
        target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(CheckpointError, match=rf"{fname}.*{msg}"):
            load_checkpoint(target, path)
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # left unchanged
        COUNTS["bad_inputs_tried"] += 1
