"""The pictures of a run report, each returned as PNG bytes (embedded in ``report.html`` as data URIs).

* :func:`widths_chart`: kept units per channel group, teacher vs student (horizontal bars);
* :func:`curves_chart`: training curves from the run's ``scalars.csv`` files (one panel per tag family);
* :func:`labelled_grid`: input | baseline | teacher | student | |student - teacher| x 10, with column labels.

Plots use matplotlib (a dependency of gcompiler) with the non-interactive Agg back end.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import torch

__all__ = ["widths_chart", "curves_chart", "labelled_grid", "png_size"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def widths_chart(rows: Sequence[Mapping[str, object]]) -> bytes:
    """Bars of ``rows`` (``{"group", "before", "after"}``): the teacher's units in grey, the student's kept
    units in blue, one bar pair per group in graph order."""
    plt = _plt()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(7.5, max(2.0, 0.22 * n + 0.8)))
    ys = list(range(n))
    ax.barh(ys, [float(r["before"]) for r in rows], color="#cccccc", label="teacher")
    ax.barh(ys, [float(r["after"]) for r in rows], color="#1f77b4", height=0.6, label="student (kept)")
    ax.set_yticks(ys)
    ax.set_yticklabels([str(r["group"])[:28] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("channels (units) per group")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("kept widths per channel group")
    return _png(fig)


def curves_chart(series: Mapping[str, Sequence[tuple[int, float]]], title: str = "training curves") -> bytes:
    """One panel per tag of ``series`` (``{tag: [(step, value), ...]}``, at most 8 tags), steps on x."""
    plt = _plt()
    tags = list(series)[:8]
    cols = 2 if len(tags) > 1 else 1
    rows = (len(tags) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5, 2.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        pts = sorted(series[tag])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(tag, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def labelled_grid(columns: Sequence[tuple[str, torch.Tensor]], value_range: tuple[float, float]) -> bytes:
    """A grid of images: one column per ``(label, NCHW batch)`` (batches of equal N; images of different
    sizes are scaled to the largest with nearest neighbours), the label above each column."""
    import numpy as np
    from PIL import Image, ImageDraw

    lo, hi = value_range
    h = max(int(t.shape[-2]) for _, t in columns)
    w = max(int(t.shape[-1]) for _, t in columns)
    n = min(int(t.shape[0]) for _, t in columns)
    pad, head = 4, 18
    canvas = Image.new("RGB", (len(columns) * (w + pad) + pad, head + n * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (label, t) in enumerate(columns):
        x0 = pad + c * (w + pad)
        draw.text((x0 + 2, 3), label, fill="black")
        t = t.detach().float().cpu()
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        t = ((t[:, :3] - lo) / (hi - lo)).clamp(0, 1)
        if t.shape[-2:] != (h, w):
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")
        for r in range(n):
            arr = (t[r].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            canvas.paste(Image.fromarray(arr), (x0, head + pad + r * (h + pad)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, read from the header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
