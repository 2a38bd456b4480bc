"""Run logging: scalars to CSV (+ TensorBoard when installed) and input | teacher | student sample grids.

Only the process that logs (rank 0 under DDP) creates these objects with ``enabled=True``; the
others get inert instances so call sites need no rank checks.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger("gcompiler.train")

CSV_FIELDS = ("step", "tag", "value", "wall_s")


class ScalarLogger:
    """Appends ``(step, tag, value, wall_s)`` rows to ``<run_dir>/scalars.csv`` and, if the
    ``tensorboard`` package is importable, writes the same scalars as TensorBoard event files under
    ``<run_dir>/tb``. When it is not installed this is said once (``self.note``) and only the CSV is
    written.

    ``resume_step``: rows of a previous (interrupted) run with a step greater than this are dropped
    from the CSV and TensorBoard is told to purge them, so a resumed run's logs have no duplicates.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool | None = None,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.note = ""
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "scalars.csv"
        if resume_step is not None and self.csv_path.exists():
            self._truncate_after(resume_step)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(CSV_FIELDS)
            self._file.flush()
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.note = ("tensorboard is not installed: scalars are written to scalars.csv only "
                             "(pip install tensorboard for event files)")
                if tensorboard:
                    log.warning(self.note)
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"),
                                         purge_step=(resume_step + 1) if resume_step is not None else None)

    def _truncate_after(self, step: int) -> None:
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        kept = []
        for r in body:
            try:
                if int(r[0]) <= step:
                    kept.append(r)
            except (ValueError, IndexError):
                continue
        import io

        from ..ioutil import atomic_write_text

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(kept)
        atomic_write_text(self.csv_path, buf.getvalue())

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def log(self, step: int, scalars: Mapping[str, float], wall_s: float = 0.0) -> None:
        if not self.enabled:
            return
        for tag, value in scalars.items():
            v = float(value)
            self._csv.writerow((int(step), tag, repr(v), f"{wall_s:.3f}"))
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(tag, v, int(step))
        self._file.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """Rows ``(step, tag, value)`` of a ``scalars.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [(int(r["step"]), r["tag"], float(r["value"])) for r in rows]


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3:
        return x
    if x.shape[1] > 3:
        return x[:, :3]
    return torch.cat([x, x[:, -1:].expand(-1, 3 - x.shape[1], -1, -1)], dim=1)


def make_grid(columns: Sequence[torch.Tensor], value_range: tuple[float, float] = (-1.0, 1.0), *,
              max_rows: int = 4, pad: int = 2) -> torch.Tensor:
    """A uint8 HWC image: one row per sample, one column per tensor (e.g. input | teacher | student).

    Every column is resized (bicubic, or nearest when enlarging by an integer factor) to the spatial
    size of the *last* column, so a low-resolution SR input sits next to the high-resolution outputs.
    1-channel images are shown as gray, >3 channels by their first three.
    """
    if not columns:
        raise ValueError("make_grid needs at least one column")
    cols = [c.detach().float().cpu() for c in columns]
    for c in cols:
        if c.dim() != 4:
            raise ValueError(f"sample grid columns must be NCHW tensors, got shape {tuple(c.shape)}")
    n = min(min(c.shape[0] for c in cols), max_rows)
    h, w = cols[-1].shape[-2:]
    lo, hi = value_range
    tiles = []
    for c in cols:
        c = _to_rgb(c[:n])
        if tuple(c.shape[-2:]) != (h, w):
            integer = h % c.shape[-2] == 0 and w % c.shape[-1] == 0 and h // c.shape[-2] == w // c.shape[-1]
            c = F.interpolate(c, size=(h, w), mode="nearest" if integer else "bicubic",
                              align_corners=None if integer else False)
        tiles.append(((c - lo) / (hi - lo)).clamp(0, 1))
    grid = torch.ones(3, n * h + (n + 1) * pad, len(tiles) * w + (len(tiles) + 1) * pad)
    for j, t in enumerate(tiles):
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = t[i]
    return (grid * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def save_grid(columns: Sequence[torch.Tensor], path: str | os.PathLike,
              value_range: tuple[float, float] = (-1.0, 1.0), *, max_rows: int = 4) -> Path:
    """:func:`make_grid` written as a PNG (Pillow), atomically."""
    from PIL import Image

    img = make_grid(columns, value_range, max_rows=max_rows)
    from ..ioutil import atomic_file

    p = Path(path)
    with atomic_file(p) as tmp:
        Image.fromarray(img.numpy()).save(tmp, format="PNG")
    return p
