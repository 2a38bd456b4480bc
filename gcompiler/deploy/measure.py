"""Round-robin timing of deploy candidates and the printable report.

Candidates are timed interleaved (one run of each per round, ``rounds`` rounds after one warm-up round) so
that a shared machine's load changes hit all of them alike; the choice is the smallest median. CUDA
candidates synchronize the device around each run.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def round_robin(runners: dict[str, Callable[[], Any]], *, rounds: int, device: str = "cpu",
                budget_s: float | None = None, cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """``{name: [wall seconds per run]}``: ``rounds`` interleaved runs of every runner (no warm-up here).

    With ``budget_s`` the loop stops after the first round that ends past the budget (at least one round).
    ``cpu``, when given, receives each run's process CPU time (all threads): with one thread it is the run's
    own work, without the time the process waited for a core on a loaded machine.
    """
    times: dict[str, list[float]] = {k: [] for k in runners}
    if cpu is not None:
        cpu.update({k: [] for k in runners})
    t_start = time.perf_counter()
    with torch.no_grad():
        for r in range(rounds):
            for name, fn in runners.items():
                _sync(device)
                c0 = time.process_time()
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
                if cpu is not None:
                    cpu[name].append(time.process_time() - c0)
            if budget_s is not None and time.perf_counter() - t_start > budget_s:
                break
    return times


def rel_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """``max|cand - ref| / max|ref|`` (the project's contract measure), in float64."""
    ref = reference.detach().double().cpu()
    cand = candidate.detach().double().cpu()
    if ref.shape != cand.shape:
        return float("inf")
    return float((cand - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


class DeployReport(dict):
    """What ``deploy`` measured (a plain dict; ``print(report)`` shows a table).

    Keys: ``device``, ``precision``, ``threads``, ``choice``, ``stat`` (what decided), ``tolerance``,
    ``reference`` (what outputs were compared with), ``timings_ms`` (median per candidate), ``min_ms``
    (minimum per candidate), ``cpu_ms`` (minimum process CPU time per run), ``runs_ms`` (every timed run), ``errors``
    (relative error per candidate), ``build_s`` (seconds to build each), ``skipped`` (candidate -> reason),
    ``notes`` (candidate -> rewrites applied), ``rounds``, ``load_average``, ``input_shapes``, ``final_error``
    (the chosen backend's error, re-checked after the choice).
    """

    def __str__(self) -> str:
        lines = [f"deploy: device={self.get('device')} precision={self.get('precision')} stat={self.get('stat')} "
                 f"threads={self.get('threads')} rounds={self.get('rounds')} load={self.get('load_average')}",
                 f"chosen: {self.get('choice')} (error {self.get('final_error', float('nan')):.2e} <= "
                 f"{self.get('tolerance')} vs {self.get('reference')})",
                 f"{'candidate':<22} {'median ms':>10} {'min ms':>9} {'cpu ms':>9} {'rel err':>9} {'build s':>8}  notes"]
        timings = self.get("timings_ms", {})
        order = {"min": self.get("min_ms", timings), "cpu": self.get("cpu_ms", timings)}.get(self.get("stat"), timings)
        for name in sorted(timings, key=lambda k: order.get(k, timings[k])):
            runs = self.get("runs_ms", {}).get(name, [])
            mark = "*" if name == self.get("choice") else " "
            lines.append(f"{mark}{name:<21} {timings[name]:>10.2f} {min(runs) if runs else float('nan'):>9.2f} "
                         f"{self.get('cpu_ms', {}).get(name, float('nan')):>9.2f} "
                         f"{self.get('errors', {}).get(name, float('nan')):>9.1e} "
                         f"{self.get('build_s', {}).get(name, float('nan')):>8.2f}  "
                         f"{'; '.join(self.get('notes', {}).get(name, []))}")
        for name, why in self.get("skipped", {}).items():
            lines.append(f" {name:<21} skipped: {why}")
        return "\n".join(lines)


def summarize(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``(median ms, every run in ms)`` per candidate, both from the same unrounded values (so that
    ``min(runs) <= median`` holds exactly)."""
    runs = {k: [t * 1e3 for t in v] for k, v in times.items()}
    medians = {k: statistics.median(v) for k, v in runs.items() if v}
    return medians, runs


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "n/a"
