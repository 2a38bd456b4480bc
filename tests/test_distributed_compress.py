"""``torchrun ... -m gcompiler compress`` on 2 CPU processes (gloo): the same student as one process with the
same global batch, one run directory, exact resume after ``kill -9`` of the whole job, prompt failure of the
job when one rank raises, and the helpers of :mod:`gcompiler.methods.dist` on a 2-process gloo group."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gcompiler.cli import main

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

sys.path.insert(0, str(TESTS))
from test_compress_cli import make_folder  # noqa: E402

# global batch 4 over 4 images (a folder under 5 images keeps no hold-out): 2 per process with 2 processes
ARGS = ["--max-steps", "12", "--finetune-steps", "2", "--save-every", "2", "--seed", "1", "--crop", "16",
        "--batch-size", "4", "--workers", "0", "--threads", "1", "--sample-every", "0", "--device", "cpu",
        "--opt", "disc_layers=2", "--opt", "disc_ndf=8", "--bits", "8"]
LAUNCH_TIMEOUT = 240


def _env(extra_path: Path | None = None) -> dict[str, str]:
    paths = [str(TESTS), str(REPO)] + ([str(extra_path)] if extra_path else []) + [os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", GCOMPILER_DIST_TIMEOUT="120")


def _torchrun(args: list[str], *, nproc: int = 2, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gcompiler", "compress", *args]
    return subprocess.Popen(cmd, cwd=str(REPO), env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **popen)


def _finish(proc: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        out, err = proc.communicate()
        pytest.fail(f"the torchrun job did not end within {timeout} s:\n{err.decode()[-3000:]}")
    return proc.returncode, out.decode() + err.decode()


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (from /proc: torchrun starts each worker in its own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker at once (``kill -9`` of the whole job)."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("distdata") / "data", n=4)


def test_two_processes_resumed_after_kill_9_match_one_process(data, tmp_path, capsys):
    """One torchrun job of GS is killed with SIGKILL (the launcher and both workers) after a checkpoint,
    resumed on 2 processes, and ends with the student of an uninterrupted 1-process run with the same global
    batch; the run directory is written once (by rank 0)."""
    from gcompiler.train import list_checkpoints

    out = tmp_path / "two"
    slow = ["--teacher", "gsfix.teachers:TinyGen", "--teacher-kw", "delay=0.1", "--data", str(data)]
    proc = _torchrun([*slow, *ARGS, "--out", str(out), "--quiet"])
    deadline = time.time() + LAUNCH_TIMEOUT
    try:
        while time.time() < deadline:
            ck = list_checkpoints(out / "checkpoints") if (out / "checkpoints").exists() else []
            if ck and ck[-1][0] >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"the job ended before it could be killed: {_finish(proc)[1][-3000:]}")
            time.sleep(0.05)
        else:
            pytest.fail(f"no checkpoint at step 2 within {LAUNCH_TIMEOUT} s")
        _kill_job(proc)  # the whole job: torchrun and its workers
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_job(proc)
            proc.communicate()
    killed_at = list_checkpoints(out / "checkpoints")[-1][0]
    assert 2 <= killed_at < 12 and not (out / "summary.json").exists()

    rc, log = _finish(_torchrun([*slow, *ARGS, "--out", str(out), "--resume", "--quiet"]))
    assert rc == 0, log[-3000:]
    assert f"resumed from {out / 'checkpoints'}" in (out / "train.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 14
    # one run directory, written by rank 0 only: one session start per launch in compress.log, no leftovers
    assert (out / "compress.log").read_text().count("compress: method gs") == 2
    assert "2 processes (global batch 4, 2 per process)" in (out / "compress.log").read_text()
    assert json.loads((out / "run_state.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    assert {p.name for p in out.glob(".*")} <= {".lock"} and not list(out.rglob("*.tmp*"))  # no staging left

    ref = tmp_path.parent / f"{tmp_path.name}-one"
    rc = main(["compress", "--teacher", "gsfix.teachers:TinyGen", "--data", str(data), *ARGS, "--out", str(ref),
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    with capsys.disabled():  # shown with pytest -s
        print(f"\n2 processes (killed, resumed) vs 1 process: largest weight difference {worst:.3g}")
    assert worst <= 1e-7, f"2 processes vs 1: largest weight difference {worst:.3g}"  # measured 3.7e-09
    one = json.loads((ref / "summary.json").read_text())
    assert abs(one["psnr_to_teacher"] - summary["psnr_to_teacher"]) < 1e-4
    assert one["macs_after"] == summary["macs_after"]

    # the run cannot continue on another number of processes, and says why
    rc = main(["compress", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "started on 2 process(es)" in err and "torchrun --nproc_per_node=2" in err


FAILING_TEACHER = """
import os
from gsfix.teachers import TinyGen


class FailOnRank1(TinyGen):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if os.environ.get("RANK") == "1" and type(self).calls > 8:
            raise RuntimeError("injected failure on rank 1")
        return super().forward(x)
"""


def test_a_failing_rank_stops_the_job_promptly(data, tmp_path):
    (tmp_path / "failgen.py").write_text(textwrap.dedent(FAILING_TEACHER))
    out = tmp_path / "run"
    t0 = time.time()
    proc = _torchrun(["--teacher", "failgen:FailOnRank1", "--data", str(data), *ARGS, "--max-steps", "200",
                      "--out", str(out), "--quiet"], env=_env(tmp_path))
    rc, log = _finish(proc, timeout=180)
    took = time.time() - t0
    assert rc != 0, log[-3000:]
    assert "rank 1 of 2: failed: RuntimeError: injected failure on rank 1" in log
    assert not (out / "summary.json").exists()
    assert took < 150, f"the job took {took:.0f} s to stop after rank 1 failed"


def test_batch_must_split_across_processes(monkeypatch, tmp_path):
    import gcompiler.train.distributed as d
    from gcompiler.compression import start_distributed
    from gcompiler.errors import DistributedError
    from gcompiler.methods.base import Settings

    monkeypatch.setattr(d, "init_distributed", lambda *a, **k: (d.DistInfo(0, 3, 0), False))
    with pytest.raises(DistributedError, match="--batch-size 4 is the global batch.*3 processes.*multiple of 3"):
        start_distributed(Settings(batch_size=4, out=str(tmp_path)))
    assert start_distributed(Settings(batch_size=6, out=str(tmp_path))).world_size == 3


# -- the helpers of gcompiler.methods.dist on a real 2-process gloo group ----------------------------------------

def _worker(rank: int, port: int, results: str) -> None:
    import torch.distributed as dist
    import torch.nn as nn

    from gcompiler.errors import DistributedError
    from gcompiler.methods.dist import agree, on_rank0, sync_module
    from gcompiler.train.distributed import all_gather_json, broadcast_json

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen: dict[str, object] = {}
    seen["gather"] = all_gather_json({"rank": rank, "text": "x" * (rank * 5)})
    seen["bcast"] = broadcast_json({"arch": [1, 2, rank]} if rank == 0 else None)
    seen["on_rank0"] = on_rank0(lambda: {"config": "8_16_24", "rank": dist.get_rank()}, what="a search")
    try:
        on_rank0(lambda: (_ for _ in ()).throw(ValueError("no candidate fits")), what="the search")
    except DistributedError as exc:
        seen["on_rank0_error"] = f"DistributedError: {exc}"
    except ValueError as exc:
        seen["on_rank0_error"] = f"ValueError: {exc}"

    def check():
        if rank == 1:
            raise KeyError("bad --out on rank 1")

    try:
        agree(check, what="checking --out")
    except DistributedError as exc:
        seen["agree"] = f"DistributedError: {exc}"
    except KeyError as exc:
        seen["agree"] = f"KeyError: {exc}"
    torch.manual_seed(rank)  # different weights per rank
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sync_module(net, what="test")
    seen["weights"] = [float(t.double().sum()) for t in net.state_dict().values()]
    other = nn.Conv2d(3, 4 + rank, 3)  # different shapes: refused, naming the rank
    try:
        sync_module(other, what="the rewrite of stage 'slim'")
    except DistributedError as exc:
        seen["mismatch"] = str(exc)
    Path(results, f"{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_dist_helpers_on_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["gather"] == [{"rank": 0, "text": ""}, {"rank": 1, "text": "xxxxx"}]
        assert r["bcast"] == {"arch": [1, 2, 0]}
        assert r["on_rank0"] == {"config": "8_16_24", "rank": 0}  # computed on rank 0, received by rank 1
    assert r0["on_rank0_error"] == "ValueError: no candidate fits"
    assert r1["on_rank0_error"].startswith("DistributedError: rank 1 of 2: stopping: rank 0 failed in the search: "
                                           "ValueError: no candidate fits")
    assert r1["agree"] == "KeyError: 'bad --out on rank 1'"
    assert r0["agree"].startswith("DistributedError: rank 0 of 2: stopping: rank 1 failed in checking --out: KeyError")
    import torch.nn as nn

    torch.manual_seed(0)
    rank0 = [float(t.double().sum()) for t in nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict().values()]
    assert r0["weights"] == r1["weights"] == rank0  # rank 0's weights and BatchNorm buffers on both ranks
    for r in (r0, r1):
        assert "rank(s) [1] built a different graph than rank 0" in r["mismatch"]


def test_help_shows_the_torchrun_commands(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    out = capsys.readouterr().out
    assert "torchrun --standalone --nproc_per_node=4 -m gcompiler compress" in out
    assert "torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=" in out
    readme = (REPO / "README.md").read_text()
    assert "torchrun --standalone --nproc_per_node=4 -m gcompiler compress" in readme and "--node_rank=1" in readme


SCRIPT = """
import json, sys
import torch.distributed as dist
import gcompiler

res = gcompiler.compress("gsfix.teachers:TinyGen", sys.argv[1], "gs", steps=4, out=sys.argv[2], bits=32,
                         finetune_steps=0, crop=16, batch_size=4, workers=0, threads=1, sample_every=0,
                         device="cpu", quiet=True, disc_layers=2, disc_ndf=8)
state = {k: [round(float(v.double().sum()), 12), list(v.shape)] for k, v in res.student.state_dict().items()}
# one file per rank: two processes printing long lines to the one stdout pipe of torchrun can interleave them
with open(f"{sys.argv[2]}.rank{dist.get_rank()}.json", "w") as f:
    json.dump({"rank": dist.get_rank(), "world": dist.get_world_size(), "summary": res.summary, "state": state}, f)
"""


def test_compress_from_a_script_under_torchrun_gives_every_rank_the_student(data, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(data), str(out)]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    rc, log = _finish(proc)
    assert rc == 0, log[-3000:]
    results = sorted((json.loads(p.read_text()) for p in tmp_path.glob("run.rank*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert results[0]["state"] == results[1]["state"]  # the same student on both ranks
    assert results[0]["summary"] == results[1]["summary"]  # rank 0's measurements, broadcast
    saved = json.loads((out / "summary.json").read_text())
    assert saved["macs_after"] == results[1]["summary"]["macs_after"] and saved["steps"] == 4
    from gcompiler import load

    loaded = {k: [round(float(v.double().sum()), 12), list(v.shape)] for k, v in load(out).state_dict().items()}
    assert loaded == results[1]["state"]
