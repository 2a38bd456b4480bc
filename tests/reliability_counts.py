"""Counters the reliability and fuzz tests keep (faults injected, bad inputs tried, fuzz examples run) and
write to ``.reliability/counts.json`` at the end of each test module; RELIABILITY.md quotes that file.

Each module's entry is replaced on every run of that module and carries the hypothesis profile and time.
"""
from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTS_FILE = Path(os.environ.get("GCOMPILER_RELIABILITY_COUNTS", REPO / ".reliability" / "counts.json"))


def new_counter() -> collections.Counter:
    return collections.Counter()


def write_counts(module: str, counts: collections.Counter) -> None:
    """Merge ``counts`` under ``module`` into :data:`COUNTS_FILE` (atomically)."""
    from gcompiler.ioutil import atomic_write_json

    data = {}
    if COUNTS_FILE.is_file():
        try:
            data = json.loads(COUNTS_FILE.read_text())
        except ValueError:
            data = {}
    data[module] = {"profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **dict(sorted(counts.items()))}
    totals: collections.Counter = collections.Counter()
    for name, entry in data.items():
        if name == "total":
            continue
        for k, v in entry.items():
            if isinstance(v, int):
                totals[k] += v
    data["total"] = dict(sorted(totals.items()))
    atomic_write_json(COUNTS_FILE, data)
