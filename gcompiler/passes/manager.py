"""Running pipelines of passes with a verifier between them (MLIR style).

A pipeline is text, ``"insert-masks{round_to=8},eliminate-dead-channels"`` (options inside braces,
separated by commas or spaces), or a list whose items are pass names, registered pass functions,
``(pass, {options})`` pairs or plain callables ``fn(gm) -> gm`` (verified for lint and shapes only).

After every pass the verifier runs, at the level ``verify`` asks for:

* ``"lint"``: ``graph.lint()`` and the module recompiles;
* ``"shapes"`` (default): also re-propagates shapes on random inputs of the recorded input shapes;
* ``"numeric"`` (default under the test suite, ``GCOMPILER_VERIFY=numeric``): also compares the outputs
  with the previous graph's on the same inputs within the pass's :class:`~.registry.Contract`.

Each pass leaves a :class:`PassRecord` (time, nodes / params / MACs before and after, measured error).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.fx as fx

from ..errors import PassError, TraceError, VerificationError
from ..fx.trace import propagate_shapes, trace
from ..fx.utils import random_inputs
from .registry import Contract, PassInfo, get_pass

PipelineItem = Union[str, PassInfo, Callable[..., fx.GraphModule], tuple]
VERIFY_LEVELS = ("none", "lint", "shapes", "numeric")


@dataclasses.dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    contract: str
    seconds: float
    nodes: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]
    error: float | None = None

    def row(self) -> tuple[str, ...]:
        def arrow(a: int, b: int, fmt: Callable[[int], str] = str) -> str:
            return fmt(a) if a == b else f"{fmt(a)} -> {fmt(b)}"

        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return (self.name + (f"{{{opts}}}" if opts else ""), f"{self.seconds * 1e3:.1f} ms",
                arrow(*self.nodes), arrow(*self.params, lambda v: f"{v:,}"),
                arrow(*self.macs, lambda v: f"{v / 1e9:.3f}G"),
                "-" if self.error is None else f"{self.error:.2e}", self.contract)


@dataclasses.dataclass
class PassLog:
    """The records of one pipeline run; ``str()`` prints them as a table."""

    records: list[PassRecord] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        head = ("pass", "time", "nodes", "params", "MACs", "max rel err", "contract")
        rows = [r.row() for r in self.records]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])

    __str__ = table


def parse_pipeline(text: str) -> list[tuple[str, dict[str, str]]]:
    """Split ``"a{x=1,y=2},b"`` into ``[("a", {"x": "1", "y": "2"}), ("b", {})]`` (values stay text)."""
    items: list[tuple[str, dict[str, str]]] = []
    pos = 0
    text = text.strip()
    pattern = re.compile(r"\s*([A-Za-z0-9_\-.]+)\s*(\{([^{}]*)\})?\s*(,|$)")
    while pos < len(text):
        m = pattern.match(text, pos)
        if not m or m.end() == pos:
            raise PassError(f"cannot parse pipeline at character {pos}: {text[pos:pos + 30]!r}; expected "
                            "'name' or 'name{opt=value,...}' items separated by commas")
        name, body = m.group(1), m.group(3)
        opts: dict[str, str] = {}
        if body:
            for part in re.split(r"[,\s]+", body.strip()):
                if not part:
                    continue
                if "=" not in part:
                    raise PassError(f"pass '{name}': option {part!r} needs the form key=value")
                k, v = part.split("=", 1)
                opts[k.strip()] = v.strip()
        items.append((name, opts))
        pos = m.end()
    if not items:
        raise PassError("empty pipeline")
    return items


def _resolve(item: PipelineItem) -> tuple[str, Callable[..., fx.GraphModule], dict[str, Any], Contract | None]:
    opts: dict[str, Any] = {}
    if isinstance(item, tuple):
        item, opts = item
    if isinstance(item, str):
        info = get_pass(item)
        return info.name, info.fn, info.bind(opts), info.contract
    info = item if isinstance(item, PassInfo) else getattr(item, "pass_info", None)
    if isinstance(info, PassInfo):
        return info.name, info.fn, info.bind(opts), info.contract
    if callable(item):
        return getattr(item, "__name__", repr(item)), item, dict(opts), None
    raise PassError(f"pipeline item {item!r} is neither a pass name, a registered pass nor a callable")


def _default_verify() -> str:
    level = os.environ.get("GCOMPILER_VERIFY", "shapes")
    if level not in VERIFY_LEVELS:
        raise PassError(f"GCOMPILER_VERIFY={level!r}; valid levels: {', '.join(VERIFY_LEVELS)}")
    return level


def _summary(gm: fx.GraphModule) -> tuple[int, int, int]:
    from ..profiler import profile

    try:
        p = profile(gm)
        return len(gm.graph.nodes), p.params, p.macs
    except Exception:  # a summary must never hide the real result of a pass
        return len(gm.graph.nodes), sum(p.numel() for p in gm.parameters()), 0


def _run(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Any:
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            return gm(*inputs)
    finally:
        for m, t in flags.items():
            m.training = t


def _first_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        return torch.cat([_first_tensor(v).flatten() for v in x])
    raise VerificationError(f"graph output of type {type(x).__name__} cannot be compared")


def run_pipeline(gm: fx.GraphModule, pipeline: str | Iterable[PipelineItem], *, verify: str | None = None,
                 seed: int = 0, log: PassLog | None = None, progress: bool = False) -> tuple[fx.GraphModule, PassLog]:
    """Run ``pipeline`` on ``gm`` (mutated or replaced pass by pass) and return the result and its log."""
    level = verify or _default_verify()
    if level not in VERIFY_LEVELS:
        raise PassError(f"verify={level!r}; valid levels: {', '.join(VERIFY_LEVELS)}")
    items: list[PipelineItem] = list(parse_pipeline(pipeline)) if isinstance(pipeline, str) else list(pipeline)
    resolved = [_resolve(i) for i in items]  # resolve all first: a typo fails before any work is done
    log = log or PassLog()
    inputs = random_inputs(gm, seed=seed) if level in ("shapes", "numeric") else ()
    before = _first_tensor(_run(gm, inputs)) if level == "numeric" else None
    for name, fn, opts, contract in resolved:
        n0 = _summary(gm)
        t0 = time.perf_counter()
        meta = dict(gm.meta)
        try:
            out = fn(gm, **opts)
        except (PassError, VerificationError, TraceError):
            raise
        except Exception as exc:
            raise PassError(f"pass '{name}' failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, fx.GraphModule):
            raise PassError(f"pass '{name}' returned {type(out).__name__}, expected a torch.fx.GraphModule")
        for k, v in meta.items():
            out.meta.setdefault(k, v)
        seconds = time.perf_counter() - t0
        gm = out
        err = None
        if level != "none":
            try:
                gm.graph.lint()
            except Exception as exc:
                raise VerificationError(f"after pass '{name}': graph lint failed: {exc}") from exc
        if level in ("shapes", "numeric"):
            try:
                after_out = propagate_shapes(gm, *inputs)
            except TraceError as exc:
                raise VerificationError(f"after pass '{name}': {exc}") from exc
            if level == "numeric" and before is not None:
                after = _first_tensor(after_out)
                c = contract or Contract.changes_semantics()
                if c.numeric:
                    if after.shape != before.shape:
                        raise VerificationError(f"after pass '{name}': output shape {tuple(after.shape)} != "
                                                f"{tuple(before.shape)} before; the pass promised {c}")
                    err = c.error(before, after)
                    if not err <= c.tol:
                        raise VerificationError(f"after pass '{name}': output changed by {err:.3g} x max|y|, "
                                                f"beyond its contract: {c}")
                before = after
        n1 = _summary(gm)
        log.records.append(PassRecord(name, {k: v for k, v in opts.items()}, str(contract or "unchecked"), seconds,
                                      (n0[0], n1[0]), (n0[1], n1[1]), (n0[2], n1[2]), err))
        if progress:
            print(log.records[-1].row()[0], "done", flush=True)
    gm.meta["pass_log"] = log
    return gm, log


def compile(model_or_gm: torch.nn.Module, pipeline: str | Iterable[PipelineItem], *example_inputs: torch.Tensor,
            verify: str | None = None, seed: int = 0, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """Trace (when given a plain module) and run ``pipeline``; the log is in ``gm.meta["pass_log"]``.

    Example::

        gm = gcompiler.compile(model, "insert-masks{round_to=8},eliminate-dead-channels", x)
        print(gm.meta["pass_log"])
    """
    if isinstance(model_or_gm, fx.GraphModule):
        gm = model_or_gm
        if example_inputs:
            propagate_shapes(gm, *example_inputs)
        elif "input_shapes" not in gm.meta:
            raise TraceError("compile() got a GraphModule without recorded input shapes: pass example inputs")
    else:
        if not example_inputs:
            raise TraceError(f"compile({type(model_or_gm).__name__}, ...) needs example inputs to trace with")
        gm = trace(model_or_gm, *example_inputs, leaf_modules=leaf_modules)
    gm, _ = run_pipeline(gm, pipeline, verify=verify, seed=seed)
    return gm
