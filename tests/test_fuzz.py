"""Fuzzing (issue 18): the pipeline text parser and pipelines run through the pass manager, ``--target-macs``,
config files through ``resolve``, ``--opt`` values of every registered method, and architecture.json through
``gcompiler.load``. The contract everywhere: only :class:`~gcompiler.errors.GCompilerError` subclasses escape,
nothing hangs (per-example deadline), and a crafted file never runs code. The number of examples follows the
hypothesis profile (20 under ``ci``, 1000 under ``thorough``); each example run is counted
(tests/reliability_counts.py -> .reliability/counts.json)."""
from __future__ import annotations

import copy
import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gcompiler
from gcompiler.errors import GCompilerError
from reliability_counts import new_counter, write_counts

COUNTS = new_counter()
DEADLINE = settings(deadline=timedelta(seconds=20), suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _record_counts():
    yield
    write_counts(__name__, COUNTS)


# ------------------------------------------------------------------------------------------ pipelines

_PIPE_ALPHABET = st.sampled_from(list("abcdefgz-_.{}=, \t\n0123456789xX[]()'\"\\;:*/") + ["insert-masks",
                                 "round_to", "eliminate-dead-channels", "{", "}", ",", "=", "nan", "1e999"])


@DEADLINE
@given(st.one_of(st.text(max_size=80), st.lists(_PIPE_ALPHABET, max_size=30).map("".join)))
def test_fuzz_parse_pipeline(text):
    from gcompiler.passes.manager import parse_pipeline

    COUNTS["fuzz_examples"] += 1
    try:
        items = parse_pipeline(text)
    except GCompilerError:
        return
    assert items and all(isinstance(n, str) and n and isinstance(o, dict) for n, o in items)
    for name, opts in items:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in opts.items())


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.n = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.n(self.a(x))))


@pytest.fixture(scope="module")
def tiny_gm():
    torch.manual_seed(0)
    return gcompiler.trace(_Tiny().eval(), torch.randn(1, 3, 8, 8))


_PASSES = ["insert-masks", "eliminate-dead-channels", "prune-by-ratio", "fold-batchnorm", "no-such-pass",
           "insert-fake-quant", "strip-fake-quant", "prune-fine-grained"]
_KEYS = ["round_to", "ratio", "bits", "target_macs", "criterion", "groups", "x", "per_channel"]
_VALUES = st.one_of(st.sampled_from(["0", "1", "-1", "8", "0.5", "nan", "inf", "1e400", "true", "l1", "", "[1,2]",
                                     "8x", "2g", "a.b", "None"]),
                    st.text(alphabet="0123456789.-+eEx", max_size=6))


@st.composite
def _pipelines(draw):
    items = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(_PASSES))
        opts = draw(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=2))
        body = ",".join(f"{k}={v}" for k, v in opts.items())
        items.append(name + (f"{{{body}}}" if body else ""))
    return ",".join(items)


@DEADLINE
@given(_pipelines())
def test_fuzz_pipelines_through_the_pass_manager(tiny_gm, text):
    """Real pass names with hostile option values: a GCompilerError or a verified result, and the
    argument of compile() is never modified."""
    COUNTS["fuzz_examples"] += 1
    before = {k: v.clone() for k, v in tiny_gm.state_dict().items()}
    code = tiny_gm.code
    x = torch.randn(1, 3, 8, 8)
    try:
        out = gcompiler.compile(tiny_gm, text, x)
    except GCompilerError:
        pass
    else:
        assert isinstance(out, fx.GraphModule)
    assert tiny_gm.code == code and all(torch.equal(before[k], v) for k, v in tiny_gm.state_dict().items())


# ---------------------------------------------------------------------------------------- budgets

@DEADLINE
@given(st.one_of(st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True).map(str),
                 st.builds(lambda f, s: f"{f}{s}", st.floats(allow_nan=True, allow_infinity=True),
                           st.sampled_from(["x", "g", "X", "G", "gx", ""]))),
       st.integers(1, 10**13))
def test_fuzz_parse_target_macs(text, before):
    from gcompiler.spec import parse_target_macs

    COUNTS["fuzz_examples"] += 1
    try:
        v = parse_target_macs(text, before)
    except GCompilerError:
        return
    assert v is None or (isinstance(v, int) and 1 <= v < before)


# ------------------------------------------------------------------------------ config files and --opt

_JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                                  st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
                        lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                        max_leaves=8)
_SETTING_KEYS = ["max_steps", "finetune_steps", "batch_size", "crop", "seed", "device", "threads", "bits",
                 "target_macs", "lr", "save_every", "options", "eval_images", "resume", "method", "nonsense",
                 "teacher", "data", "out", "rho", "quiet"]


@DEADLINE
@given(st.dictionaries(st.sampled_from(_SETTING_KEYS), _JSONISH, max_size=5),
       st.sampled_from([".json", ".toml", ".yaml", ".txt"]), st.booleans())
def test_fuzz_config_files(tmp_path_factory, table, suffix, garble):
    """A config file with any content: resolve() returns validated settings or raises a GCompilerError."""
    from gcompiler.compression import resolve

    COUNTS["fuzz_examples"] += 1
    d = tmp_path_factory.mktemp("cfg")
    path = d / f"c{suffix}"
    text = json.dumps(table, default=str)
    if suffix == ".toml":
        text = "\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in table.items())
    if garble:
        text = text[: len(text) // 2] + "]{=:"
    path.write_text(text)
    base = {"teacher": "builtin:sr", "data": "builtin:sr", "out": str(d / "run"), "config": str(path)}
    try:
        s, info, opts = resolve([("test", base)])
    except GCompilerError:
        return
    assert s.batch_size >= 1 and s.max_steps is None or s.max_steps >= 0


def _option_space():
    from gcompiler.methods import available_methods, get_method

    return [(m, f.name) for m in available_methods() for f in get_method(m).option_fields()]


@DEADLINE
@given(st.data())
def test_fuzz_opt_values(data):
    """``--opt NAME=VALUE`` for every option of every method: converted to the declared type or a ConfigError."""
    from gcompiler.methods import get_method
    from gcompiler.methods.options import parse_key_values

    COUNTS["fuzz_examples"] += 1
    method, name = data.draw(st.sampled_from(_option_space()))
    value = data.draw(st.one_of(st.text(max_size=12), st.sampled_from(
        ["nan", "inf", "-inf", "1e400", "1e-400", "-0", "0x10", "1_000", "true", "None", "", " ", "3.5", "-7"])))
    try:
        kv = parse_key_values([f"{name}={value}"])
        opts = get_method(method).make_options(kv)
    except GCompilerError:
        return
    v = getattr(opts, name)
    if isinstance(v, float):
        assert math.isfinite(v), (method, name, value, v)


# ------------------------------------------------------------------------------------- architecture JSON

class _Saved(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.n = nn.BatchNorm2d(4)
        self.o = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = torch.relu(self.n(self.c(x)))
        return self.o(y)[:, :, 1:, :] * 0.5 + x.mean(dim=(2, 3), keepdim=True)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory) -> Path:
    gm = gcompiler.trace(_Saved().eval(), torch.randn(1, 3, 8, 8))
    d = tmp_path_factory.mktemp("fuzzsave") / "m"
    gcompiler.save(gm, d)
    return d


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_EVIL_STRINGS = ['x"); __import__("os").system("touch PWNED"); ("', "__class__", "os:system", "builtins:eval",
                 "gcompiler.ioutil:atomic_write_text", "torch:load", "a.b", "", "0", "torch.nn.Module",
                 "gcompiler.cli.Foo", "*args", "call_function", "get_attr", "float64", "meta", "cuda:99"]
_MUTANTS = st.one_of(_JSONISH, st.sampled_from(_EVIL_STRINGS), st.integers(-2**63, 2**63),
                     st.just([[1, 3, 10**6, 10**6], "float32"]), st.just({"dict": [["a b", 1]]}),
                     st.just({"node": "nope"}), st.just({"float": "nan"}), st.just({"tuple": "x"}))


@DEADLINE
@given(st.data())
def test_fuzz_architecture_json(saved_dir, tmp_path_factory, data):
    """Mutate 1-3 places of a real architecture.json: load() gives a GCompilerError or a model, never another
    exception, never code run from the file (marker), never an allocation beyond the caps."""
    COUNTS["fuzz_examples"] += 1
    arch = json.loads((saved_dir / "architecture.json").read_text())
    d = tmp_path_factory.mktemp("fz")
    marker = Path("PWNED")
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(arch))
        path = data.draw(st.sampled_from(paths[1:]))
        parent = arch
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict) and len(parent) > 1:
            parent.pop(path[-1])  # delete a key
        else:
            parent[path[-1]] = copy.deepcopy(data.draw(_MUTANTS))  # st.just gives one shared object
    (d / "architecture.json").write_text(json.dumps(arch))
    (d / "model.safetensors").write_bytes((saved_dir / "model.safetensors").read_bytes())
    try:
        gm = gcompiler.load(d)
    except GCompilerError:
        pass
    else:
        assert isinstance(gm, fx.GraphModule)
    assert not marker.exists() and not (d / "PWNED").exists()
