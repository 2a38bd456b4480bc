"""The Pareto plot of a search: MACs vs quality of every evaluated candidate, the chosen one marked."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .evolution import Evaluated, pareto_front

__all__ = ["pareto_plot"]


def pareto_plot(history: Sequence[Evaluated], chosen: Evaluated, path: str | os.PathLike, *,
                budget: float | None = None, metric: str = "PSNR (dB)", title: str = "",
                baselines: dict[str, tuple[float, float | None]] | None = None) -> Path:
    """Write a scatter plot (PNG) of ``history`` with its Pareto front, ``chosen`` and the budget line.

    ``baselines``: extra labelled points ``{name: (macs, score)}`` (e.g. the teacher). Needs matplotlib
    (``pip install gcompiler[search]``). The file is written atomically.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("the Pareto plot needs matplotlib: pip install 'gcompiler[search]'") from exc
    from ..ioutil import atomic_write_bytes
    import io

    finite = [e for e in history if e.score not in (float("inf"), float("-inf"))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter([e.cost / 1e9 for e in finite], [e.score for e in finite], s=12, alpha=0.5, color="tab:blue",
               label=f"evaluated ({len(finite)})")
    front = pareto_front(finite)
    if front:
        ax.plot([e.cost / 1e9 for e in front], [e.score for e in front], "-", color="tab:orange", lw=1.2,
                label="Pareto front")
    ax.scatter([chosen.cost / 1e9], [chosen.score], s=90, marker="*", color="tab:red", zorder=5, label="chosen")
    if budget is not None:
        ax.axvline(budget / 1e9, color="gray", ls="--", lw=1, label="budget")
    for name, (macs, score) in (baselines or {}).items():
        if score is None:
            continue
        ax.scatter([macs / 1e9], [score], s=40, marker="s", zorder=4, label=name)
    ax.set_xlabel("MACs (G)")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, buf.getvalue())
    return p
