"""Running pipelines of passes with a verifier between them (MLIR style).

A pipeline is text, ``"insert-masks{round_to=8},eliminate-dead-channels"`` (options inside braces,
separated by commas or spaces), or a list whose items are pass names, registered pass functions,
``(pass, {options})`` pairs or plain callables ``fn(gm) -> gm`` (verified for lint and shapes only).

After every pass the verifier runs, at the level ``verify`` asks for:

* ``"lint"``: ``graph.lint()`` and the module recompiles;
* ``"shapes"`` (default): also re-propagates shapes on random inputs of the recorded input shapes;
* ``"numeric"`` (on request; the test suite sets ``GCOMPILER_VERIFY=numeric``): also compares the outputs
  with the previous graph's on the same inputs within the pass's :class:`~.registry.Contract`.

Shapes are re-recorded with fake tensors (nothing computed). A contract is about the function, and float32
rounding of an exact rewrite can reach 1e-5 x max|y| on its own, so per-pass comparisons run in float64
where the graph runs in it (:func:`_measure`), and the end check, which runs in float32 first (cheap), repeats
a failing comparison in float64 (from its snapshot of the segment's start) before it calls it a failure.

Whatever the level (except ``"none"``), the **end-of-pipeline check** (``check=True``, the default) runs
the graph once before and once after the pipeline on small random inputs of the recorded rank (batch 1,
spatial sizes <= 64, the recorded shapes when the graph does not take those) and compares the outputs within
the pipeline's combined contract: ``prod(1 + tol_i) - 1`` over its passes, which by the triangle inequality
bounds the total change whenever every pass keeps its own contract. A pass that changes semantics on
purpose splits the pipeline into segments checked separately (its own output is not compared). When the
check fails, the failing segment is replayed pass by pass on a snapshot to name the pass that broke its
contract; the error is a :class:`~gcompiler.errors.VerificationError`, never a log line.

After every pass the manager also drops the cached analyses (``gm.meta["analysis_cache"]``) that the pass
does not declare in its ``preserves`` and bumps ``gm.meta["graph_version"]``.

:func:`run_pipeline` rewrites its argument in place (the argument holds the result afterwards, even when
a pass returns a new module); :func:`compile` never touches its argument and returns a new GraphModule.

Each pass leaves a :class:`PassRecord` (time, nodes / params / MACs before and after, measured error).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
import time
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.fx as fx

from ..analysis.cache import invalidate
from ..errors import GCompilerError, PassError, TraceError, VerificationError
from ..fx.trace import propagate_shapes, trace
from ..fx.utils import input_specs, random_inputs
from .registry import Contract, PassInfo, get_pass

logger = logging.getLogger("gcompiler.passes")

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
    macs: tuple[int | None, int | None]
    error: float | None = None
    notes: str = ""

    def row(self) -> tuple[str, ...]:
        def arrow(a: int, b: int, fmt: Callable[[int], str] = str) -> str:
            return fmt(a) if a == b else f"{fmt(a)} -> {fmt(b)}"

        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        def gmacs(v: int | None) -> str:
            return "?" if v is None else f"{v / 1e9:.3f}G"

        return (self.name + (f"{{{opts}}}" if opts else ""), f"{self.seconds * 1e3:.1f} ms",
                arrow(*self.nodes), arrow(*self.params, lambda v: f"{v:,}"),
                arrow(*self.macs, gmacs),
                "-" if self.error is None else f"{self.error:.2e}", self.contract)


@dataclasses.dataclass
class PassLog:
    """The records of one pipeline run; ``str()`` prints them as a table."""

    records: list[PassRecord] = dataclasses.field(default_factory=list)
    checks: list[str] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        head = ("pass", "time", "nodes", "params", "MACs", "max rel err", "contract")
        rows = [r.row() for r in self.records]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        notes = [f"{r.name}: {r.notes}" for r in self.records if r.notes]
        end = [f"end-of-pipeline check: {c}" for c in self.checks]
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows] + notes + end)

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


@dataclasses.dataclass
class _Step:
    name: str
    fn: Callable[..., fx.GraphModule]
    opts: dict[str, Any]
    contract: Contract | None
    preserves: tuple[str, ...] = ()


def _resolve(item: PipelineItem) -> _Step:
    opts: dict[str, Any] = {}
    if isinstance(item, tuple):
        item, opts = item
    if isinstance(item, str):
        info = get_pass(item)
    else:
        info = item if isinstance(item, PassInfo) else getattr(item, "pass_info", None)
    if isinstance(info, PassInfo):
        bound = info.bind(opts)
        return _Step(info.name, info.fn, bound, info.contract_for(bound), info.preserves)
    if callable(item):
        return _Step(getattr(item, "__name__", repr(item)), item, dict(opts), None)
    raise PassError(f"pipeline item {item!r} is neither a pass name, a registered pass nor a callable")


def _default_verify() -> str:
    level = os.environ.get("GCOMPILER_VERIFY", "shapes")
    if level not in VERIFY_LEVELS:
        raise PassError(f"GCOMPILER_VERIFY={level!r}; valid levels: {', '.join(VERIFY_LEVELS)}")
    return level


def _summary(gm: fx.GraphModule) -> tuple[int, int, int | None, str]:
    """Nodes, params, MACs (``None`` with the reason when the graph cannot be counted) of ``gm``."""
    from ..profiler import profile

    params = sum(p.numel() for p in gm.parameters())
    try:
        p = profile(gm)
    except Exception as exc:  # noqa: BLE001 - shown as '?' with the reason in the log, never as 0 MACs
        what = str(exc) if isinstance(exc, GCompilerError) else f"{type(exc).__name__}: {exc}"
        return len(gm.graph.nodes), params, None, f"MACs not counted: {what}"
    return len(gm.graph.nodes), p.params, p.macs, ""


def _run(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Any:
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            return gm(*inputs)
    finally:
        for m, t in flags.items():
            m.training = t


def _measure(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], *, precise: bool = True) -> torch.Tensor:
    """The graph's output for a contract comparison, computed in float64 where the graph runs in it.

    A contract states what a pass does to the function (``exact``: the same function up to re-association),
    so it is measured in float64: float32 rounding of an exact rewrite (e.g. constants folded into a bias,
    with large intermediate values and a small output) can reach 1e-5 x max|y| by itself. A graph whose
    floating tensors are not all float32, or that does not run in float64 (an op that fixes its dtype),
    is measured as it is. Parameters keep their identity; their float32 values are restored exactly.
    ``precise=False`` runs the graph as it is (the end check's first try; float64 only when that fails).
    """
    if not precise:
        return _first_tensor(_run(gm, inputs)).double()
    tensors = [t for t in list(gm.parameters()) + list(gm.buffers()) if t.is_floating_point()]
    if all(t.dtype == torch.float32 for t in tensors) and \
            all(x.dtype == torch.float32 for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()):
        xs = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
        try:
            gm.double()
            return _first_tensor(_run(gm, xs))
        except Exception:  # noqa: BLE001 - measured in float32 below
            pass
        finally:
            gm.float()
    return _first_tensor(_run(gm, inputs)).double()


def _propagate(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], *, real: bool) -> Any:
    """Re-record shapes at the recorded input sizes; computes nothing unless ``real`` (numeric level), or
    when an op has no fake-tensor kernel."""
    if not real:
        try:
            return propagate_shapes(gm, *inputs, fake=True)
        except (GCompilerError, RuntimeError, TypeError, ValueError, IndexError):
            pass  # retried for real below: a genuine error is reported from a real run
    return propagate_shapes(gm, *inputs)


def _first_tensor(x: Any) -> torch.Tensor:
    """Every tensor in a graph output (tensors, lists / tuples / dicts of them), flattened into one vector;
    non-tensor leaves (ints, None, strings) carry no numbers to compare and are skipped."""
    if isinstance(x, torch.Tensor):
        return x
    leaves: list[torch.Tensor] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            leaves.append(v.detach().flatten().to(torch.float64))
        elif isinstance(v, (list, tuple)):
            for e in v:
                walk(e)
        elif isinstance(v, dict):
            for e in v.values():
                walk(e)

    walk(x)
    return torch.cat(leaves) if leaves else torch.zeros(0, dtype=torch.float64)


CHECK_SIZE = 64  # spatial size of the end-of-pipeline check's inputs (where the graph takes it)
CHECK_BATCH = 1


def check_inputs(gm: fx.GraphModule, *, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Small random inputs of the recorded rank for the end-of-pipeline check, and whether they are small.

    Batch ``<= CHECK_BATCH`` and every dim after the channel dim ``<= CHECK_SIZE``; when the graph does not
    run on those (fixed sizes, shape guards), the recorded shapes. Runs ``gm`` once to find out.
    """
    xs, small, _ = _check_inputs(gm, seed=seed)
    return xs, small


def _check_inputs(gm: fx.GraphModule, *, seed: int) -> tuple[tuple[torch.Tensor, ...], bool, torch.Tensor | None]:
    specs = input_specs(gm)
    g = torch.Generator().manual_seed(seed)

    def make(shapes: list[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
        out = []
        for shape, (_, dtype) in zip(shapes, specs):
            if dtype.is_floating_point:
                out.append(torch.randn(shape, generator=g, dtype=torch.float32).to(dtype))
            elif dtype == torch.bool:
                out.append(torch.randint(0, 2, shape, generator=g).bool())
            else:
                out.append(torch.randint(0, 2, shape, generator=g).to(dtype))
        return tuple(out)

    small = [tuple(min(d, CHECK_BATCH) if i == 0 else min(d, CHECK_SIZE) if i >= 2 else d
                   for i, d in enumerate(s)) for s, _ in specs]
    if small != [tuple(s) for s, _ in specs]:
        xs = make(small)
        try:
            return xs, True, _measure(gm, xs, precise=False)
        except Exception:  # noqa: BLE001 - the graph is specialised to its recorded sizes: use them
            pass
    return make([tuple(s) for s, _ in specs]), False, None


def _resolve_contract(contract: Contract, gm: fx.GraphModule, inputs: Sequence[torch.Tensor], name: str,
                      log: "PassLog") -> Contract:
    """A per-input contract evaluated on ``inputs``; an infinite bound is said in the log, never hidden."""
    try:
        resolved = contract.resolve(gm, inputs)
    except Exception as exc:  # noqa: BLE001 - the bound's own failure must not pass for a kept contract
        raise VerificationError(f"after pass '{name}': its contract bound could not be evaluated on inputs "
                                f"{[tuple(x.shape) for x in inputs]}: {type(exc).__name__}: {exc}") from exc
    if not math.isfinite(resolved.tol):
        logger.warning("pass '%s' makes no numeric promise on these inputs: %s", name, resolved.note)
        log.checks.append(f"{name}: no finite bound ({resolved.note})")
    return resolved


def _combined(contracts: Sequence[Contract | None]) -> Contract | None:
    tols = [c.tol for c in contracts if c is not None]
    if not tols:
        return None
    if any(not math.isfinite(t) for t in tols):
        return Contract.approximate(float("inf"))
    total = math.prod(1.0 + t for t in tols) - 1.0
    return Contract("exact" if all(c is not None and c.kind == "exact" for c in contracts) else "approximate",
                    total)


def _invalidate(gm: fx.GraphModule, preserves: Sequence[str]) -> None:
    invalidate(gm, keep=tuple(preserves))
    gm.meta["graph_version"] = int(gm.meta.get("graph_version", 0)) + 1


def _adopt(dst: fx.GraphModule, src: fx.GraphModule) -> None:
    """Make ``dst`` the module ``src`` is (in-place result of a pipeline whose last pass returned a new one)."""
    if dst is src:
        return
    dst.__dict__.clear()
    dst.__dict__.update(src.__dict__)
    dst.__class__ = src.__class__


def _apply(gm: fx.GraphModule, step: _Step) -> fx.GraphModule:
    meta = dict(gm.meta)
    try:
        out = step.fn(gm, **step.opts)
    except (PassError, VerificationError, TraceError):
        raise
    except GCompilerError as exc:
        raise PassError(f"pass '{step.name}' failed: {exc}") from exc
    except Exception as exc:
        raise PassError(f"pass '{step.name}' failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, fx.GraphModule):
        raise PassError(f"pass '{step.name}' returned {type(out).__name__}, expected a torch.fx.GraphModule")
    if out is not gm:  # a new module inherits what the pass did not set; keys a pass deletes stay deleted
        for k, v in meta.items():
            out.meta.setdefault(k, v)
    _invalidate(out, step.preserves)
    return out


def _localize(snapshot: fx.GraphModule, steps: Sequence[_Step], inputs: Sequence[torch.Tensor],
              total: float, bound: Contract) -> VerificationError:
    """Replay ``steps`` on ``snapshot`` comparing each pass with its own contract; the error naming the pass."""
    names = ",".join(s.name for s in steps)
    why = (f"(found by the end-of-pipeline check: passes '{names}' changed the output by {total:.3g} x max|y| "
           f"on inputs {[tuple(x.shape) for x in inputs]}, beyond their combined contract {bound})")
    gm = snapshot
    before = _measure(gm, inputs)
    for step in steps:
        gm = _apply(gm, step)
        after = _measure(gm, inputs)
        c = step.contract
        if c is not None and c.numeric and (after.shape != before.shape or not c.holds(before, after)):
            err = c.error(before, after) if after.shape == before.shape else float("inf")
            return VerificationError(f"after pass '{step.name}': output changed by {err:.3g} x max|y|, beyond its "
                                     f"contract: {c} {why}")
        before = after
    return VerificationError(f"after pass '{steps[-1].name}': {why}; replaying the passes one by one did not "
                             "reproduce it (a pass is not deterministic)")


def run_pipeline(gm: fx.GraphModule, pipeline: str | Iterable[PipelineItem], *, verify: str | None = None,
                 check: bool = True, seed: int = 0, log: PassLog | None = None,
                 progress: bool = False) -> tuple[fx.GraphModule, PassLog]:
    """Run ``pipeline`` on ``gm`` **in place** and return ``(gm, log)``; the log is also ``gm.meta["pass_log"]``.

    ``verify``: per-pass verifier level (module docstring; default ``GCOMPILER_VERIFY`` or ``"shapes"``).
    ``check``: the end-of-pipeline numeric check against the pipeline's combined contract (off only with
    ``check=False`` or ``verify="none"``). Raises :class:`~gcompiler.errors.VerificationError` naming the pass
    whose contract is broken, :class:`~gcompiler.errors.PassError` for bad pipelines / options / failing passes.
    """
    level = verify or _default_verify()
    if level not in VERIFY_LEVELS:
        raise PassError(f"verify={level!r}; valid levels: {', '.join(VERIFY_LEVELS)}")
    if not isinstance(gm, fx.GraphModule):
        raise PassError(f"run_pipeline() expects a torch.fx.GraphModule, got {type(gm).__name__}; use "
                        "gcompiler.compile(model, pipeline, *example_inputs) for a plain module")
    items: list[PipelineItem] = list(parse_pipeline(pipeline)) if isinstance(pipeline, str) else list(pipeline)
    steps = [_resolve(i) for i in items]  # resolve all first: a typo fails before any work is done
    log = log or PassLog()
    original = gm
    inputs = random_inputs(gm, seed=seed) if level in ("shapes", "numeric") else ()
    before = _measure(gm, inputs) if level == "numeric" else None
    end_check = check and level != "none"
    check_x: tuple[torch.Tensor, ...] = ()
    first_out: torch.Tensor | None = None
    segment: list[_Step] = []
    seg_ref: torch.Tensor | None = None
    snapshot: fx.GraphModule | None = None

    def close_segment(g: fx.GraphModule) -> None:
        """Compare the segment's output with its start: float32 first, float64 (both ends) if that fails."""
        nonlocal segment, seg_ref, snapshot
        steps, ref, snap = segment, seg_ref, snapshot
        segment, seg_ref, snapshot = [], None, None
        bound = _combined([s.contract for s in steps])
        if not steps or bound is None or ref is None or snap is None:
            return
        try:
            out = _measure(g, check_x, precise=False)
        except GCompilerError:
            raise
        except Exception as exc:
            raise VerificationError(f"after pass '{steps[-1].name}': the graph does not run on the check inputs "
                                    f"{[tuple(x.shape) for x in check_x]}: {type(exc).__name__}: {exc}") from exc
        total = bound.error(ref, out) if out.shape == ref.shape else float("inf")
        how = "float32"
        if not total <= bound.tol and out.shape == ref.shape:  # maybe float32 rounding: measure the algebra
            ref, out, how = _measure(snap, check_x), _measure(g, check_x), "float64"
            total = bound.error(ref, out)
        if not total <= bound.tol:
            raise _localize(snap, steps, check_x, total, bound)
        log.checks.append(f"{','.join(s.name for s in steps)}: {total:.3g} x max|y| <= {bound.tol:.3g} on "
                          f"{'x'.join(map(str, check_x[0].shape)) if check_x else '()'} ({how})")

    if end_check:
        check_x, _, first_out = _check_inputs(gm, seed=seed)
    for step in steps:
        n0 = _summary(gm)
        numeric = step.contract is not None and step.contract.numeric
        if end_check:
            if not numeric:
                close_segment(gm)  # a pass without a numeric promise ends a segment
            elif not segment:  # the first pass of a segment: remember where it starts
                seg_ref = first_out if first_out is not None else _measure(gm, check_x, precise=False)
                snapshot = copy.deepcopy(gm)
            first_out = None
        t0 = time.perf_counter()
        gm = _apply(gm, step)
        seconds = time.perf_counter() - t0
        contract0 = step.contract
        per_input = contract0 is not None and contract0.per_input is not None
        if per_input and end_check:  # the segment and its replay compare on check_x: the bound on check_x
            step.contract = _resolve_contract(contract0, gm, check_x, step.name, log)
        contract = step.contract
        if end_check and numeric:
            segment.append(step)
        err = None
        if level != "none":
            try:
                gm.graph.lint()
            except Exception as exc:
                raise VerificationError(f"after pass '{step.name}': graph lint failed: {exc}") from exc
        if level in ("shapes", "numeric"):
            try:
                _propagate(gm, inputs, real=False)
            except TraceError as exc:
                raise VerificationError(f"after pass '{step.name}': {exc}") from exc
            if level == "numeric" and before is not None:
                after = _measure(gm, inputs)
                c = contract or Contract.changes_semantics()
                if per_input:
                    c = _resolve_contract(contract0, gm, inputs, step.name, log)
                    contract = contract if end_check else c
                if c.numeric:
                    if after.shape != before.shape:
                        raise VerificationError(f"after pass '{step.name}': output shape {tuple(after.shape)} != "
                                                f"{tuple(before.shape)} before; the pass promised {c}")
                    err = c.error(before, after)
                    if not err <= c.tol:
                        raise VerificationError(f"after pass '{step.name}': output changed by {err:.3g} x max|y|, "
                                                f"beyond its contract: {c}")
                before = after
        n1 = _summary(gm)
        log.records.append(PassRecord(step.name, dict(step.opts), str(contract or "unchecked"), seconds,
                                      (n0[0], n1[0]), (n0[1], n1[1]), (n0[2], n1[2]), err,
                                      "; ".join(sorted({n for n in (n0[3], n1[3]) if n}))))
        if progress:
            print(log.records[-1].row()[0], "done", flush=True)
    if end_check:
        close_segment(gm)
    snapshot = None
    gm.meta["pass_log"] = log
    _adopt(original, gm)
    return original, log


def compile(model_or_gm: torch.nn.Module, pipeline: str | Iterable[PipelineItem], *example_inputs: torch.Tensor,
            verify: str | None = None, check: bool = True, seed: int = 0, kwargs: dict[str, Any] | None = None,
            leaf_modules: Iterable[type | str] = (), leaf_functions: Iterable[Callable[..., Any]] = ()
            ) -> fx.GraphModule:
    """Trace (a plain module) or copy (a GraphModule) and run ``pipeline`` on the copy; returns a new GraphModule.

    The argument is never modified: a GraphModule is deep-copied first (its recorded shapes, meta and pass
    log stay as they were), a module is traced from a copy. The log is in ``gm.meta["pass_log"]``; the
    end-of-pipeline numeric check runs unless ``check=False`` (see :func:`run_pipeline`). ``kwargs``,
    ``leaf_modules`` and ``leaf_functions`` go to :func:`gcompiler.trace` (a GraphModule ignores them).

    Example::

        gm = gcompiler.compile(model, "insert-masks{round_to=8},eliminate-dead-channels", x)
        print(gm.meta["pass_log"])
    """
    if isinstance(model_or_gm, fx.GraphModule):
        if not example_inputs and "input_shapes" not in model_or_gm.meta:
            raise TraceError("compile() got a GraphModule without recorded input shapes: pass example inputs")
        try:
            gm = copy.deepcopy(model_or_gm)
        except Exception as exc:  # noqa: BLE001 - e.g. a non-leaf tensor or an uncopyable object in meta
            raise PassError(f"compile() works on a copy of its GraphModule argument and could not copy it "
                            f"({type(exc).__name__}: {exc}); rewrite it in place with "
                            f"gcompiler.run_pipeline(gm, pipeline) instead") from exc
        if example_inputs:
            propagate_shapes(gm, *example_inputs)
    else:
        if not example_inputs:
            raise TraceError(f"compile({type(model_or_gm).__name__}, ...) needs example inputs to trace with")
        gm = trace(model_or_gm, *example_inputs, kwargs=kwargs, leaf_modules=leaf_modules,
                   leaf_functions=leaf_functions)
    gm.meta.pop("pass_log", None)
    gm, _ = run_pipeline(gm, pipeline, verify=verify, check=check, seed=seed)
    return gm
