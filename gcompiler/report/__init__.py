"""Run reports: ``RUN/report.html`` (self-contained: every picture embedded as a ``data:`` URI) and
``RUN/report.md`` (pictures referenced as files next to it), written at the end of every compression run.

* :func:`collect` (in :mod:`.collect`) measures what the report needs beyond ``summary.json`` while the
  teacher and the student are at hand (quality rows with SSIM, latency, kept widths, the labelled grid);
  :meth:`gcompiler.methods.base.CompressJob.finish` stores it in ``report.json["report_data"]``.
* :func:`render` builds both files from a finished run directory alone (``summary.json``, ``report.json``,
  the ``scalars.csv`` training logs, ``samples/report_grid.png``, ``pareto.png`` when a search ran), so a
  report can be re-rendered: ``gcompiler report RUN``.

Sections: a loud banner when the student is below the baseline; before -> after MACs / params / size;
quality (PSNR / SSIM to the teacher and to the ground truth, baseline and teacher rows); latency before /
after; kept widths per channel group (bar chart); the labelled image grid; training curves; the pass log;
the Pareto plot of a search.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .collect import collect

__all__ = ["collect", "render", "below_baseline"]

_CURVE_SKIP = ("lr/", "time/")


def below_baseline(summary: Mapping[str, Any]) -> str | None:
    """The loud message for a student whose PSNR to the ground truth is below the baseline's, else ``None``."""
    py, bp = summary.get("psnr_to_target"), summary.get("baseline_psnr")
    if isinstance(py, (int, float)) and isinstance(bp, (int, float)) and py < bp:
        return (f"STUDENT BELOW BASELINE: the student's PSNR to the ground truth, {py:.2f} dB, is below the "
                f"{summary.get('baseline')} baseline's {bp:.2f} dB: it is worse than not using a network")
    return None


def _read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                tag = row.get("tag") or ""
                if not tag or tag.startswith(_CURVE_SKIP):
                    continue
                try:
                    series.setdefault(tag, []).append((int(row["step"]), float(row["value"])))
                except (TypeError, ValueError):
                    continue
    except OSError:
        return {}
    return series


def _fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}{unit}"
    return str(v)


def _tables(summary: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    from .tables import describe_bytes

    def ratio(a: float, b: float) -> str:
        return f"{a / max(b, 1):.1f}x"

    s = summary
    out: dict[str, list[list[str]]] = {}
    out["cost"] = [["", "teacher", "student", "reduction"],
                   ["MACs", f"{s['macs_before'] / 1e9:.3f} G", f"{s['macs_after'] / 1e9:.3f} G",
                    ratio(s["macs_before"], s["macs_after"])],
                   ["params", f"{s['params_before']:,}", f"{s['params_after']:,}",
                    ratio(s["params_before"], s["params_after"])],
                   ["size", describe_bytes(s["size_bytes_before"]), describe_bytes(s["size_bytes_after"]),
                    ratio(s["size_bytes_before"], s["size_bytes_after"])]]
    q = data.get("quality")
    if isinstance(q, list) and q:
        out["quality"] = [["model", "PSNR to teacher", "SSIM to teacher", "PSNR to ground truth",
                           "SSIM to ground truth"]] + [
            [r["model"], _fmt(r.get("psnr_to_teacher"), " dB"), _fmt(r.get("ssim_to_teacher"), "", 4),
             _fmt(r.get("psnr_to_target"), " dB"), _fmt(r.get("ssim_to_target"), "", 4)] for r in q]
    else:
        out["quality"] = [["model", "PSNR to teacher", "PSNR to ground truth"],
                          [f"baseline ({s.get('baseline') or '-'})", "-", _fmt(s.get("baseline_psnr"), " dB")],
                          ["teacher", "-", _fmt(s.get("teacher_psnr"), " dB")],
                          ["student", _fmt(s.get("psnr_to_teacher"), " dB"), _fmt(s.get("psnr_to_target"), " dB")]]
    lat = data.get("latency")
    if isinstance(lat, Mapping) and "cpu" in lat:
        rows = [["run", "teacher (median / min)", "student (median / min)", "speed-up (median)"]]

        def ms(r: Mapping[str, float]) -> str:
            return f"{r['median_ms']:.2f} / {r['min_ms']:.2f} ms"

        def add(label: str, t: Mapping[str, float], st: Mapping[str, float]) -> None:
            rows.append([label, ms(t), ms(st), f"{t['median_ms'] / max(st['median_ms'], 1e-9):.2f}x"])

        threads = f"{lat.get('threads')} thread(s)"
        b = lat.get("backends") or {}
        cpu = lat["cpu"]
        if b:
            add(f"cpu fp32 via deploy ({threads}; teacher: {b.get('teacher', 'eager')}, student: "
                f"{b.get('student', 'eager')})", cpu["teacher"], cpu["student"])
            e = lat.get("eager") or {}
            if "teacher" in e and "student" in e:
                add("cpu fp32 eager (same rounds)", e["teacher"], e["student"])
            if lat.get("int8"):
                add(f"cpu int8 student via deploy ({lat['int8']['backend']}) vs fp32 teacher", cpu["teacher"],
                    lat["int8"])
        else:  # reports written before latencies went through deploy
            add(f"cpu ({threads})", cpu["teacher"], cpu["student"])
        if lat.get("cuda"):
            add("cuda eager", lat["cuda"]["teacher"], lat["cuda"]["student"])
        out["latency"] = rows
    w = data.get("widths")
    if isinstance(w, list) and w:
        out["widths"] = [["group", "teacher", "student", "kept"]] + [
            [r["group"], str(r["before"]), str(r["after"]), f"{100 * r['after'] / max(r['before'], 1):.0f}%"]
            for r in w]
    return out


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the finished run directory ``run_dir``; returns their paths.

    Needs ``summary.json``; everything else is optional and left out (with a note) when absent.
    """
    from ..errors import ConfigError
    from ..ioutil import atomic_write_bytes, atomic_write_text
    from .tables import pass_log_table
    from . import plots

    run = Path(run_dir)
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run}: not a finished run (cannot read summary.json: {exc})") from exc
    try:
        report = json.loads((run / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    data = report.get("report_data") or {}
    tables = _tables(summary, data)
    figures: list[tuple[str, str, bytes]] = []  # (section title, file name for the md, png)
    notes: list[str] = []

    w = data.get("widths")
    if isinstance(w, list) and w:
        figures.append(("Kept widths per channel group", "report_widths.png", plots.widths_chart(w)))
    grid = data.get("grid")
    if isinstance(grid, str) and Path(grid).is_file():
        figures.append(("Held-out samples: input | baseline | teacher | student | |student - teacher| x 10",
                        "samples/report_grid.png", Path(grid).read_bytes()))
    elif isinstance(grid, Mapping):
        notes.append(f"image grid: {grid.get('error')}")
    for csv_path in sorted(run.rglob("scalars.csv")):
        series = _read_scalars(csv_path)
        if not series:
            continue
        stage = str(csv_path.parent.relative_to(run)).replace(os.sep, "/")
        stage = "main stage" if stage == "." else stage
        name = "report_curves_" + ("main" if stage == "main stage" else stage.replace("/", "_")) + ".png"
        figures.append((f"Training curves ({stage})", name, plots.curves_chart(series, f"training curves: {stage}")))
    pareto = (report.get("search") or {}).get("pareto_plot") if isinstance(report.get("search"), Mapping) else None
    for cand in [pareto, report.get("pareto_plot"), str(run / "pareto.png")]:
        if isinstance(cand, str) and Path(cand).is_file():
            figures.append(("Pareto plot of the search (MACs vs quality)", Path(cand).name, Path(cand).read_bytes()))
            break
    for key in ("quality", "latency", "widths"):
        if isinstance(data.get(key), Mapping) and "error" in data[key]:
            notes.append(f"{key}: {data[key]['error']}")
    if not data:
        notes.append("this run recorded no report_data (it finished before reports were measured, or on a rank "
                     "other than 0): no latency, kept widths, SSIM or labelled grid")

    loud = below_baseline(summary)
    plog = report.get("pass_log") or []
    plog_text = pass_log_table(plog) if plog else "(no graph rewrites recorded)"
    title = f"gcompiler run {run.resolve().name}: {summary.get('method')}"
    teacher = report.get("teacher") or {}
    lines_meta = [f"method {summary.get('method')}, teacher {teacher.get('spec', '-')}, "
                  f"MACs counted at input {'x'.join(map(str, summary.get('input_shape', [])))}, "
                  f"{summary.get('steps')} training steps in {summary.get('wall_s', 0):.0f} s"]
    phases = report.get("steps_per_phase")
    if isinstance(phases, Mapping) and phases:
        lines_meta.append("steps per phase: " + ", ".join(f"{k} {v}" for k, v in phases.items()))
    ev = report.get("evaluation")
    if isinstance(ev, Mapping) and ev.get("protocol"):
        lines_meta.append(f"evaluation: {ev['protocol']}")
    for key in ("eval_note", "note"):
        if report.get(key):
            lines_meta.append(str(report[key]))
    lat = data.get("latency")
    lat_note = lat.get("what") if isinstance(lat, Mapping) else None
    if lat_note and lat.get("failed"):
        lat_note += "; deploy refused " + "; ".join(f"{k} ({v})" for k, v in lat["failed"].items())

    # ---- html
    css = ("body{font-family:sans-serif;max-width:980px;margin:1em auto;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
           "text-align:right}td:first-child,th:first-child{text-align:left}"
           ".loud{background:#c00;color:#fff;padding:.6em;font-weight:bold;font-size:1.2em}"
           "pre{background:#f4f4f4;padding:.5em;overflow-x:auto;font-size:12px}img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    if loud:
        parts.append(f"<p class='loud' id='below-baseline'>{html.escape(loud)}</p>")
    parts += [f"<p>{html.escape(m)}</p>" for m in lines_meta]
    parts.append("<h2>Cost: before &rarr; after</h2>" + _html_table(tables["cost"]))
    parts.append("<h2>Quality</h2>" + _html_table(tables["quality"]))
    if "latency" in tables:
        parts.append("<h2>Latency</h2>" + _html_table(tables["latency"])
                     + (f"<p>{html.escape(lat_note)}, input {lat.get('input_shape')}</p>" if lat_note else ""))
    if "widths" in tables:
        parts.append("<details><summary>kept widths as a table</summary>" + _html_table(tables["widths"])
                     + "</details>")
    for sec, name, png in figures:
        parts.append(f"<h2>{html.escape(sec)}</h2><img alt='{html.escape(sec)}' src='{_data_uri(png)}'>")
    parts.append(f"<h2>Pass log (verified graph rewrites)</h2><pre>{html.escape(plog_text)}</pre>")
    if notes:
        parts.append("<h2>Not measured</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")

    # ---- markdown (pictures as files beside it)
    md = [f"# {title}", ""]
    if loud:
        md += [f"> **!! {loud}**", ""]
    md += [m + "  " for m in lines_meta] + ["", "## Cost: before → after", "", _md_table(tables["cost"]), "",
                                           "## Quality", "", _md_table(tables["quality"]), ""]
    if "latency" in tables:
        md += ["## Latency", "", _md_table(tables["latency"]), ""] + ([f"{lat_note}.", ""] if lat_note else [])
    for sec, name, png in figures:
        target = run / name
        if not target.is_file() or target.read_bytes() != png:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, png)
        md += [f"## {sec}", "", f"![{sec}]({name})", ""]
    md += ["## Pass log", "", "```", plog_text, "```", ""]
    if notes:
        md += ["## Not measured", ""] + [f"- {n}" for n in notes] + [""]
    html_path = atomic_write_text(run / "report.html", "".join(parts))
    md_path = atomic_write_text(run / "report.md", "\n".join(md))
    return Path(html_path), Path(md_path)
