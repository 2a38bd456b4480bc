"""Run reports (gcompiler.report): rendering from a run directory, the labelled grid, interleaved timing,
and a check in headless Chromium that report.html renders with every picture (skipped without Chromium:
`apt-get install -y chromium` on Debian; `make test` tries to install it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gcompiler.report import below_baseline, render
from gcompiler.report.collect import time_interleaved
from gcompiler.report.plots import labelled_grid, png_size


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _fake_run(tmp_path: Path, *, psnr: float = 30.0, baseline: float = 28.0) -> Path:
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    x = torch.rand(2, 3, 16, 16)
    grid = labelled_grid([("input", x), ("teacher", x), ("student", x * 0.9)], (0.0, 1.0))
    (run / "samples" / "report_grid.png").write_bytes(grid)
    summary = {"method": "gs", "input_shape": [1, 3, 16, 16], "macs_before": 8_000_000, "macs_after": 1_000_000,
               "params_before": 1000, "params_after": 200, "size_bytes_before": 4000, "size_bytes_after": 200,
               "psnr_to_teacher": 40.0, "psnr_to_target": psnr, "teacher_psnr": 31.0, "baseline": "identity",
               "baseline_psnr": baseline, "steps": 4, "wall_s": 3.0}
    (run / "summary.json").write_text(json.dumps(summary))
    report = {"teacher": {"spec": "builtin:cartoon"},
              "pass_log": [{"stage": "slim", "pass": "eliminate-dead-channels", "options": {}, "seconds": 0.01,
                            "nodes": [10, 8], "params": [1000, 200], "macs": [8e6, 1e6], "error": None,
                            "contract": "exact"}],
              "report_data": {"quality": [{"model": "student", "psnr_to_teacher": 40.0, "ssim_to_teacher": 0.99,
                                           "psnr_to_target": psnr, "ssim_to_target": 0.9}],
                              "latency": {"input_shape": [1, 3, 16, 16], "threads": 1, "what": "eager",
                                          "cpu": {"teacher": {"median_ms": 4.0, "min_ms": 3.0},
                                                  "student": {"median_ms": 1.0, "min_ms": 0.9}}},
                              "widths": [{"group": "conv1", "before": 32, "after": 8},
                                         {"group": "conv2", "before": 64, "after": 20}],
                              "grid": str(run / "samples" / "report_grid.png")}}
    (run / "report.json").write_text(json.dumps(report))
    (run / "scalars.csv").write_text("step,tag,value,wall_s\n1,loss/G/total,1.0,0.1\n2,loss/G/total,0.5,0.2\n"
                                     "1,lr/weights,0.1,0.1\n")
    return run


def test_labelled_grid_has_one_column_per_image() -> None:
    x = torch.rand(3, 3, 20, 24)
    w1, h1 = png_size(labelled_grid([("a", x)], (0.0, 1.0)))
    w3, h3 = png_size(labelled_grid([("a", x), ("b", x), ("c", torch.rand(3, 3, 40, 48))], (0.0, 1.0)))
    assert h1 > 3 * 20 and w1 >= 24
    assert w3 > 3 * 48 and h3 > 3 * 40  # the larger column sets the cell size


def test_time_interleaved_orders_calls_and_reports_each() -> None:
    calls: list[str] = []
    res = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 4  # warm-up round + 3 interleaved rounds
    assert set(res) == {"a", "b"} and all(r["min_ms"] <= r["median_ms"] for r in res.values())


def test_render_writes_self_contained_html_and_md(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    html_path, md_path = render(run)
    html = html_path.read_text()
    srcs = re.findall(r"<img[^>]* src='([^']*)'", html)
    assert len(srcs) == 3  # widths chart, grid, curves
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for needle in ("8.0x", "40.00 dB", "eliminate-dead-channels", "4.00x", "0.008 G", "0.001 G"):
        assert needle in html, needle
    assert "STUDENT BELOW BASELINE" not in html
    md = md_path.read_text()
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run / ref).is_file(), ref
    assert "lr/weights" not in md and "| conv1 |" not in md


def test_render_below_baseline_is_loud(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, psnr=20.0, baseline=28.0)
    html_path, md_path = render(run)
    assert "id='below-baseline'" in html_path.read_text()
    assert "STUDENT BELOW BASELINE" in md_path.read_text().split("## Cost")[0]
    assert below_baseline({"psnr_to_target": 29.0, "baseline_psnr": 28.0}) is None


def test_render_refuses_unfinished_run(tmp_path: Path) -> None:
    from gcompiler.errors import ConfigError

    with pytest.raises(ConfigError, match="summary.json"):
        render(tmp_path)


def chromium_image_check(html_path: Path, tmp_path: Path) -> list[dict]:
    """Load a copy of ``html_path`` with a probe script in headless Chromium; every <img>'s src scheme and
    natural size, read back from the dumped DOM."""
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; `make test` tries)")
    probe = ("<script>window.addEventListener('load',()=>{const r=[...document.images].map(i=>({src:i.src.slice(0,5),"
             "w:i.naturalWidth,h:i.naturalHeight,ok:i.complete}));const p=document.createElement('pre');"
             "p.id='probe';p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>")
    page = tmp_path / "probe.html"
    page.write_text(html_path.read_text().replace("</body>", probe + "</body>"))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no probe output from Chromium (rc {proc.returncode}): {proc.stderr[-500:]}"
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    html_path, _ = render(_fake_run(tmp_path))
    imgs = chromium_image_check(html_path, tmp_path)
    assert len(imgs) == 3
    assert all(i["src"] == "data:" and i["ok"] and i["w"] > 0 and i["h"] > 0 for i in imgs), imgs


@pytest.mark.slow
def test_compress_run_writes_a_report_that_renders(tmp_path: Path) -> None:
    """A real (tiny) GS-8 run on builtin:sr: report_data measured, report.html / report.md written."""
    import gcompiler

    res = gcompiler.compress("builtin:sr", "builtin:sr", "gs", bits=8, target_macs="2x", steps=2,
                             finetune_steps=1, batch_size=2, crop=16, save_every=0, sample_every=0, quiet=True,
                             threads=1, out=tmp_path / "run")
    data = json.loads((res.run_dir / "report.json").read_text())["report_data"]
    assert [r["model"] for r in data["quality"]] == ["baseline (bicubic)", "teacher", "student"]
    lat = data["latency"]
    assert lat["cpu"]["teacher"]["median_ms"] > 0
    # through deploy: each network on a back end deploy chose, timed beside its eager run; the GS-8 student in int8
    from gcompiler.deploy import candidates
    assert set(lat["backends"]) == {"teacher", "student", "student int8"}, lat.get("failed")
    assert lat["backends"]["teacher"] in candidates("cpu", "fp32") and lat["int8"]["error"] <= 0.1
    assert set(lat["eager"]) == {"teacher", "student"}
    assert lat["cpu"]["student"]["min_ms"] <= lat["cpu"]["student"]["median_ms"]
    assert data["widths"] and all(0 <= w["after"] <= w["before"] for w in data["widths"])
    assert sum(w["after"] for w in data["widths"]) < sum(w["before"] for w in data["widths"])
    assert Path(data["grid"]).is_file()
    html = (res.run_dir / "report.html").read_text()
    assert (res.run_dir / "report.md").is_file() and "Pass log" in html
    assert "cpu fp32 via deploy" in html and "cpu int8 student via deploy" in html
    if _chromium():
        imgs = chromium_image_check(res.run_dir / "report.html", tmp_path)
        assert len(imgs) >= 3 and all(i["src"] == "data:" and i["w"] > 0 for i in imgs), imgs


def test_kept_widths_match_the_pruned_groups() -> None:
    from types import SimpleNamespace

    import gcompiler
    from gcompiler.report.collect import kept_widths

    torch.manual_seed(0)
    teacher = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    student = gcompiler.compile(teacher, "insert-masks,prune-by-ratio{ratio=0.5},eliminate-dead-channels", x)
    rows = kept_widths(SimpleNamespace(teacher=teacher, reference_input=x), student)
    groups = {g.name: g.channels for g in gcompiler.channel_groups(student)}
    assert rows and all(r["after"] == groups[r["group"]] and r["after"] < r["before"] for r in rows)
