"""gcompiler.ioutil: atomic writes leave either the old or the new content, never a partial one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gcompiler.ioutil import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_bytes_text_json_replace_and_leave_no_temporaries(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    obj = {"t": torch.tensor([1.5, 2.0]), "p": tmp_path, "nan": math.nan, "n": 3}
    atomic_write_json(tmp_path / "o.json", obj)
    back = json.loads((tmp_path / "o.json").read_text())
    assert back["t"] == [1.5, 2.0] and back["p"] == str(tmp_path) and back["n"] == 3
    assert _listing(tmp_path) == ["o.json", "sub", "t.txt"]
    assert _listing(tmp_path / "sub") == ["a.bin"]


def test_json_error_keeps_old_file(tmp_path: Path) -> None:
    p = tmp_path / "o.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}
    assert _listing(tmp_path) == ["o.json"]


def test_atomic_file_error_keeps_old_file(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer died")
    assert p.read_bytes() == b"old"
    assert _listing(tmp_path) == ["w.bin"]
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "never.bin"):
            pass
    assert _listing(tmp_path) == ["w.bin"]


def test_atomic_dir_new_replace_and_error(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        assert d.parent == tmp_path and d != final
        (d / "a.txt").write_text("1")
    assert _listing(final) == ["a.txt"]
    with atomic_dir(final) as d:
        (d / "b.txt").write_text("2")
    assert _listing(final) == ["b.txt"]
    with pytest.raises(KeyError):
        with atomic_dir(final) as d:
            (d / "c.txt").write_text("3")
            raise KeyError("boom")
    assert _listing(final) == ["b.txt"]
    assert _listing(tmp_path) == ["model"]
    with pytest.raises(FileExistsError):
        with atomic_dir(final, overwrite=False):
            pass
    assert _listing(tmp_path) == ["model"]


def test_stale_temporaries_of_dead_writers_are_removed_when_a_run_takes_the_lock(tmp_path):
    import os
    import subprocess
    import sys

    from gcompiler.ioutil import atomic_dir, remove_stale_temps, run_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    stale_file = tmp_path / f".run_state.json.tmp-{pid}-0a1b2c3d"
    stale_dir = tmp_path / "sub" / f".model.tmp-{pid}-x_9yz012"
    mine = tmp_path / f".summary.json.tmp-{os.getpid()}-0a1b2c3d"
    other = tmp_path / ".notes.tmp"
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "w.bin").write_bytes(b"x")
    mine.write_text("in progress")
    other.write_text("not ours")
    with run_lock(tmp_path):
        pass
    assert not stale_file.exists() and not stale_dir.exists()
    assert mine.exists() and other.exists()
    assert remove_stale_temps(tmp_path) == []
    with atomic_dir(tmp_path / "out") as d:  # atomic_dir's temporaries carry the writer's pid too
        assert f".tmp-{os.getpid()}-" in d.name
        (d / "f").write_text("1")
