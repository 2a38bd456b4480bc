"""The command line teaches: --version, examples in every sub-command's help, plain-text `passes`, every
flag validated with a message naming it (exit code 2), nothing half-written on failure."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gcompiler import __version__
from gcompiler.cli import build_parser, main, plain_text


def _exit(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_version(capsys) -> None:
    rc, out, _ = _exit(["--version"], capsys)
    assert rc == 0 and __version__ in out


def test_every_subcommand_help_has_examples(capsys) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"demo", "compress", "export", "compile", "profile", "passes", "methods", "zoo", "report"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert re.search(r"examples?:", text), f"`gcompiler {name} --help` has no example"
        assert f"gcompiler {name}" in text.split("example", 1)[1], name


@pytest.mark.parametrize("argv, flag", [
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--max-steps", "-3"], "--max-steps"),
    (["zoo", "--size", "0"], "--size"),
    (["profile", "resnet_9blocks", "--size", "0"], "--size"),
    (["export", "somewhere", "--format", "tflite"], "--format"),
    (["compress", "--bits", "1"], "--bits"),
])
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], flag: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = _exit(argv, capsys)
    assert rc == 2 and flag in err, (rc, err)
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_profile_size_the_net_cannot_take(capsys) -> None:
    rc, _, err = _exit(["profile", "resnet_9blocks", "--size", "7", "--kw", "ngf=8", "--kw", "n_blocks=1"], capsys)
    assert rc == 2 and "--size 7" in err and "multiples of 4 from 8 pixels" in err and "Traceback" not in err


def test_passes_is_plain_text_with_the_pipeline_syntax(capsys) -> None:
    rc, out, _ = _exit(["passes"], capsys)
    assert rc == 0 and "pipeline syntax" in out and "eliminate-dead-channels" in out
    assert "``" not in out and not re.search(r":(func|class|meth|mod|data):`", out)
    assert plain_text("see :func:`~gcompiler.foo.bar` and ``x+1``") == "see bar and x+1"


def test_methods_lists_ptq(capsys) -> None:
    rc, out, _ = _exit(["methods"], capsys)
    assert rc == 0 and "method ptq:" in out and "method gs:" in out


def test_export_and_report_refuse_a_directory_without_a_run(capsys, tmp_path: Path) -> None:
    rc, _, err = _exit(["export", str(tmp_path), "--format", "safetensors"], capsys)
    assert rc == 2 and "architecture.json" in err
    rc, _, err = _exit(["report", str(tmp_path)], capsys)
    assert rc == 2 and "summary.json" in err
    assert not any(tmp_path.iterdir())


def test_compile_saves_and_refuses_an_existing_out(capsys, tmp_path: Path) -> None:
    import gcompiler

    out = tmp_path / "c"
    argv = ["compile", "resnet_9blocks", "insert-masks,eliminate-dead-channels", "--kw", "ngf=8", "--kw",
            "n_blocks=1", "--size", "32", "--out", str(out)]
    rc, text, err = _exit(argv, capsys)
    assert rc == 0, err
    assert "eliminate-dead-channels" in text and (out / "architecture.json").is_file()
    gm = gcompiler.load(out)
    assert gm is not None
    rc, _, err = _exit(argv, capsys)
    assert rc == 2 and "--out" in err and "exists" in err
    meta = json.loads((out / "architecture.json").read_text())
    assert meta  # the first result was left as it was
