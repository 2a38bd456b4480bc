"""Atomic file and directory writes: the one helper every gcompiler writer uses.

Contract: a reader never sees a half-written file or directory. Everything is written to a temporary
name in the *same* directory as the destination (so the final rename never crosses a file system),
flushed and ``fsync``-ed, then renamed into place with :func:`os.replace`; the parent directory is
``fsync``-ed after the rename. On any error (``KeyboardInterrupt`` included) the temporary is removed and
the previous content of the destination, if any, is untouched.

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` — whole files;
* :func:`atomic_file` — a context manager yielding a temporary *path* for writers that take a file name
  (``safetensors.torch.save_file``, ``PIL.Image.save``, ``torch.save``);
* :func:`atomic_dir` — a context manager yielding a temporary *directory* that replaces ``final_dir``;
* :func:`run_lock` — the lock one run holds on its run directory (pid in ``.lock``; stale locks taken over).

Temporaries start with ``.`` and contain ``.tmp`` so that directory listings skip them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_file", "atomic_dir", "run_lock",
           "json_default", "fsync_dir"]

PathLike = str | os.PathLike


def fsync_dir(path: PathLike) -> None:
    """``fsync`` a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is fsync-ed and renamed onto ``path``.

    The caller writes the file (by name) inside the ``with`` block. Parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_file: nothing was written to the temporary file for {final}")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, s: str, *, encoding: str = "utf-8") -> Path:
    """Write the text ``s`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, s.encode(encoding))


def json_default(o: Any) -> Any:
    """JSON fallback for the values gcompiler records: tensors (as lists), paths, devices, dtypes, numpy
    scalars/arrays, sets, dataclasses, and non-finite floats (as their repr)."""
    import dataclasses

    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
        if isinstance(o, (torch.device, torch.dtype)):
            return str(o)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist") and callable(o.tolist):  # numpy arrays and scalars
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return repr(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 1,
                      default: Callable[[Any], Any] | None = json_default, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (one trailing newline) to ``path`` atomically; returns the path.

    ``default`` converts values JSON does not know (:func:`json_default`: tensors, paths, numpy ...);
    a value it cannot convert raises ``TypeError`` before anything is written.
    """
    text = json.dumps(obj, indent=indent, default=default, sort_keys=sort_keys) + "\n"
    return atomic_write_text(path, text)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_dir(final_dir: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final_dir``; on a clean exit it replaces ``final_dir``.

    Every file written under it is fsync-ed, then the directory is renamed onto ``final_dir``. An existing
    ``final_dir`` is swapped out first (renamed aside, removed after the new one is in place) when
    ``overwrite`` is true, else :class:`FileExistsError` is raised before anything is written. On an
    error inside the block the temporary directory is removed and ``final_dir`` is untouched.
    """
    final = Path(final_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{final} exists")
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


LOCK_FILE = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


_TMP_PID = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-z_]{8}$")  # _tmp_name and atomic_dir's mkdtemp names


def remove_stale_temps(root: PathLike) -> list[Path]:
    """Remove the temporary files / directories of :func:`atomic_file` / :func:`atomic_dir` under ``root`` whose
    writer process is gone (a ``kill -9`` between writing and renaming leaves them; they were never visible under
    a final name). Returns what was removed."""
    removed = []
    for p in sorted(Path(root).rglob(".*.tmp-*"), key=lambda q: len(q.parts)):
        m = _TMP_PID.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))) or not os.path.lexists(p):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def run_lock(run_dir: PathLike, *, what: str = "--out") -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the duration of a run; a second holder is refused.

    The lock is an ``flock`` on the file (the kernel releases it when the holder dies, ``kill -9``
    included), and the file records the holder's pid and host. A run that finds the lock held raises
    :class:`~gcompiler.errors.ConfigError` naming that pid; a lock file left with the pid of a process that
    is gone (the flock is free) is taken over with a warning naming the dead pid. On a clean exit the file
    is emptied (never unlinked: unlinking would let two later runs lock two different files).
    """
    import fcntl
    import logging
    import socket

    from .errors import ConfigError

    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            pid = holder[0] if holder else "?"
            raise ConfigError(f"{what} {root} is in use by another run (pid {pid}"
                              f"{' on ' + holder[1] if len(holder) > 1 else ''}; lock file {path}): wait for it to "
                              f"finish or choose another {what} directory") from None
        old = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if old and old[0].isdigit() and int(old[0]) != os.getpid():
            host = old[1] if len(old) > 1 else "?"
            state = "is gone" if host != socket.gethostname() or not _pid_alive(int(old[0])) else "released it"
            logging.getLogger("gcompiler").warning(
                f"{what} {root}: taking over the stale lock of pid {old[0]} on {host} (that process {state})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        stale = remove_stale_temps(root)  # only this run may write here now: a dead writer's temporaries go
        if stale:
            logging.getLogger("gcompiler").info(f"{what} {root}: removed {len(stale)} temporary file(s) left by a "
                                                f"killed run ({', '.join(p.name for p in stale[:3])}...)")
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
