"""Text formatting shared by the run report and the terminal: byte counts and the pass-log table
(:mod:`gcompiler.methods.evaluation` re-exports both)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["describe_bytes", "pass_log_table"]


def describe_bytes(n: float) -> str:
    for unit, div in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def _short_count(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3f}{unit}"
    return str(int(v))


def pass_log_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The pass log of a run (``report.json["pass_log"]``) as a text table, one line per pass."""
    def arrow(pair: Sequence[Any], fmt: Any = str) -> str:
        a, b = pair
        f = (lambda v: "?" if v is None else fmt(v))
        return f(a) if a == b else f"{f(a)} -> {f(b)}"

    head = ("stage", "pass", "time", "nodes", "params", "MACs", "max rel err", "contract")
    body = []
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in (r.get("options") or {}).items())
        body.append((str(r.get("stage", "")), r["pass"] + (f"{{{opts}}}" if opts and len(opts) < 40 else ""),
                     f"{r['seconds'] * 1e3:.0f} ms", arrow(r["nodes"]), arrow(r["params"], lambda v: f"{v:,}"),
                     arrow(r["macs"], _short_count),
                     "-" if r.get("error") is None else f"{r['error']:.2e}", str(r.get("contract", ""))))
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])
