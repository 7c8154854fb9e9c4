"""Fuse the operators of a chain into one generated per-record loop.

Calling a Python function from C (``list(map(f, batch))``) costs about a third more than
calling it from Python code on CPython 3.11+, where Python-to-Python calls are inlined. So a
chain ``map -> filter -> flatmap -> keyby -> sink`` is compiled into one Python function whose
loop calls each user function in turn, exactly as a hand-written loop would::

    for x0 in batch:
        try:
            x0 = f0(x0)
            if x0 is None:          # a map returning None emits nothing
                d0 += 1
                continue
            if not f1(x0):          # filter
                d1 += 1
                continue
            ...
        except Exception as e:
            on_error(e, x0)         # the stage is found from the traceback's line number

Nothing is timed or counted per record on this fast path: drops are counted only where a
record is dropped, and ``try`` costs nothing until something raises. A second variant of the
same loop times every call; the task runs it on a sampled batch to measure per-record latency
of each operator. The generated source is registered with :mod:`linecache`, so tracebacks
through it show real lines.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from time import perf_counter
from typing import Any

from sage.common.core.state import KeyedStateBackend
from sage.kernel.graph.logical import OpKind
from sage.kernel.runtime.error_policy import ErrorHandler
from sage.kernel.runtime.metrics import OperatorStats

__all__ = ["BodyStage", "FusedBody", "generate_source"]

_FUSABLE = (OpKind.MAP, OpKind.FILTER, OpKind.FLATMAP, OpKind.KEYBY, OpKind.SINK)


@dataclass
class BodyStage:
    """One fused operator instance.

    Attributes:
        kind: Map, filter, flatmap, keyby or sink.
        call: The user callable invoked per record.
        stats: The instance's metrics.
        errors: The instance's error handler.
        state: Keyed state backend when the operator follows ``keyby``.
        drain: For flatmap objects using ``collect()``: returns the collected outputs.
    """

    kind: OpKind
    call: Callable[..., Any]
    stats: OperatorStats
    errors: ErrorHandler
    state: KeyedStateBackend | None = None
    drain: Callable[[], list[Any]] | None = None


# (kind, keyed, has_drain) per stage: everything the generated text depends on.
Shape = tuple[tuple[OpKind, bool, bool], ...]


def inferred_stage(shape: Shape, *, emits: bool) -> int | None:
    """The stage whose drops are inferred instead of counted in the loop, if any.

    The last stage that can drop records (a map or a filter) needs no counter when only
    keyby and sink stages follow it: what it let through is what reached the end of the
    chain (the emitted list's length, or a count at the sink on the kept path), plus what
    the key functions after it failed on. A filter that drops most records then costs no
    more than a hand-written ``if``.
    """
    ends = emits or (bool(shape) and shape[-1][0] is OpKind.SINK)
    for i in range(len(shape) - 1, -1, -1):
        kind = shape[i][0]
        if kind in (OpKind.KEYBY, OpKind.SINK):
            continue
        return i if ends and kind in (OpKind.MAP, OpKind.FILTER) else None
    return None


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.owner: dict[int, int] = {}  # 1-based line number -> stage index

    def line(self, indent: int, text: str, stage: int | None = None) -> None:
        self.lines.append("    " * indent + text)
        if stage is not None:
            self.owner[len(self.lines)] = stage


def generate_source(
    shape: Shape, *, pairs_input: bool, emits: bool, timed: bool
) -> tuple[str, dict[int, int], tuple[str, ...]]:
    """The text of the fused loop for ``shape``, which stage owns each line, and its counters.

    The generated ``body(batch, emit)`` returns the counters in the order given: ``d<i>``
    (records stage *i* dropped), ``n<i>`` (records flatmap stage *i* produced) and ``reached``
    (records that reached the sink, when the drops of :func:`inferred_stage` are inferred).

    Args:
        shape: ``(kind, keyed, has_drain)`` of each stage, upstream first.
        pairs_input: Input items are ``(key, record)`` pairs (the chain follows a keyed edge).
        emits: Records leaving the last stage are passed to ``emit`` (the chain has outputs).
        timed: Time every user call and append the seconds to the stage's sample list.
    """
    for kind, _, _ in shape:
        if kind not in _FUSABLE:
            raise ValueError(f"{kind.value} operators cannot be fused into a chain body")
    n = len(shape)
    params = [f"f{i}" for i in range(n)]
    params += [f"st{i}" for i, (_, keyed, _) in enumerate(shape) if keyed]
    params += [f"dr{i}" for i, (_, _, drain) in enumerate(shape) if drain]
    if timed:
        params += [f"lat{i}" for i in range(n)] + ["pc"]
    params.append("on_error")
    inferred = inferred_stage(shape, emits=emits)
    counters = [
        f"d{i}"
        for i, (kind, _, drain) in enumerate(shape)
        if i != inferred
        and (kind in (OpKind.MAP, OpKind.FILTER) or (kind is OpKind.FLATMAP and not drain))
    ]
    counters += [f"n{i}" for i, (kind, _, _) in enumerate(shape) if kind is OpKind.FLATMAP]
    count_tail = inferred is not None and shape[-1][0] is OpKind.SINK
    if count_tail:
        counters.append("reached")

    def drop(stage: int) -> None:
        if stage != inferred:
            w.line(ind + 1, f"d{stage} += 1")
        w.line(ind + 1, "continue")

    w = _Writer()
    w.line(0, f"def make({', '.join(params)}):")
    # Bound as defaults so the loop reads them with LOAD_FAST, not LOAD_DEREF through cells.
    defaults = ", ".join(f"{name}={name}" for name in params)
    w.line(1, f"def body(batch, emit, {defaults}):")
    if counters:
        w.line(2, " = ".join(counters) + " = 0")
    w.line(2, "for x0 in batch:")
    w.line(3, "try:")
    levels: list[tuple[int, str]] = [(3, "x0")]  # (indent of `try:`, record variable)
    ind, var = 4, "x0"
    if pairs_input:
        w.line(ind, "k, x0 = x0", 0)
    keyed_tail = False
    for i, (kind, keyed, drain) in enumerate(shape):
        call = f"f{i}({var})"
        if keyed:
            w.line(ind, f"st{i}.current_key = k", i)
        if timed:
            w.line(ind, "clock = pc()", i)
        stop_clock = f"lat{i}(pc() - clock)"
        match kind:
            case OpKind.MAP:
                w.line(ind, f"{var} = {call}", i)
                if timed:
                    w.line(ind, stop_clock, i)
                w.line(ind, f"if {var} is None:")
                drop(i)
            case OpKind.FILTER:
                if timed:
                    w.line(ind, f"ok = {call}", i)
                    w.line(ind, stop_clock, i)
                    w.line(ind, "if not ok:")
                else:
                    w.line(ind, f"if not {call}:", i)
                drop(i)
            case OpKind.KEYBY:
                w.line(ind, f"k = {call}", i)
                if timed:
                    w.line(ind, stop_clock, i)
                keyed_tail = i == n - 1
            case OpKind.SINK:
                if count_tail:
                    w.line(ind, "reached += 1")
                w.line(ind, call, i)
                if timed:
                    w.line(ind, stop_clock, i)
            case OpKind.FLATMAP:
                w.line(ind, f"r{i} = {call}", i)
                if timed:
                    w.line(ind, stop_clock, i)
                w.line(ind, f"if r{i} is None:")
                if drain:
                    w.line(ind + 1, f"r{i} = dr{i}()", i)
                else:
                    w.line(ind + 1, f"d{i} += 1")
                    w.line(ind + 1, "continue")
                new_var = f"x{len(levels)}"
                w.line(ind, f"for {new_var} in r{i}:", i)
                w.line(ind + 1, f"n{i} += 1")
                w.line(ind + 1, "try:")
                levels.append((ind + 1, new_var))
                ind, var = ind + 2, new_var
    if emits:
        w.line(ind, f"emit((k, {var}))" if keyed_tail else f"emit({var})")
    elif not shape:
        w.line(ind, "pass")
    for try_indent, level_var in reversed(levels):
        w.line(try_indent, "except Exception as e:")
        w.line(try_indent + 1, f"on_error(e, {level_var})")
    w.line(2, f"return ({', '.join(counters)}{',' if counters else ''})")
    w.line(1, "return body")
    return "\n".join(w.lines) + "\n", w.owner, tuple(counters)


_compiled_count = 0


@lru_cache(maxsize=256)
def _compile(
    shape: Shape, pairs_input: bool, emits: bool, timed: bool
) -> tuple[Callable[..., Any], dict[int, int], tuple[str, ...]]:
    global _compiled_count
    _compiled_count += 1
    source, owner, counters = generate_source(
        shape, pairs_input=pairs_input, emits=emits, timed=timed
    )
    filename = f"<sage fused chain {_compiled_count}{' timed' if timed else ''}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["make"], owner, counters


class FusedBody:
    """The fused operators of one chain instance, run a batch at a time.

    Args:
        stages: The fused operator instances, upstream first (may be empty).
        pairs_input: Input items are ``(key, record)`` pairs.
        emits: Output records are returned to the task for its routers.
    """

    def __init__(self, stages: Sequence[BodyStage], *, pairs_input: bool, emits: bool) -> None:
        self.stages = list(stages)
        shape: Shape = tuple((s.kind, s.state is not None, s.drain is not None) for s in stages)
        self._samples: list[list[float]] = [[] for _ in self.stages]
        self._fast, self._fast_owner, counters = self._bind(shape, pairs_input, emits, timed=False)
        self._timed, self._timed_owner, _ = self._bind(shape, pairs_input, emits, timed=True)
        self._owner = self._fast_owner
        self._failed = [0] * len(self.stages)  # errors per stage in the current batch
        self._any_failed = False
        index = {name: i for i, name in enumerate(counters)}
        self._inferred = inferred_stage(shape, emits=emits)
        self._tail_counter = index.get("reached", -1)
        # key functions after the inferred stage: their failures also left that stage
        self._keyby_after = [
            i
            for i, s in enumerate(self.stages)
            if self._inferred is not None and i > self._inferred and s.kind is OpKind.KEYBY
        ]
        # How each stage's output count follows from its input count and the counters.
        self._accounting: list[tuple[OperatorStats, OpKind, int]] = [
            (s.stats, s.kind, index.get(f"n{i}" if s.kind is OpKind.FLATMAP else f"d{i}", -1))
            for i, s in enumerate(self.stages)
        ]

    def _bind(
        self, shape: Shape, pairs_input: bool, emits: bool, *, timed: bool
    ) -> tuple[Callable[..., Any], dict[int, int], tuple[str, ...]]:
        make, owner, counters = _compile(shape, pairs_input, emits, timed)
        args: list[Any] = [s.call for s in self.stages]
        args += [s.state for s in self.stages if s.state is not None]
        args += [s.drain for s in self.stages if s.drain is not None]
        if timed:
            args += [samples.append for samples in self._samples] + [perf_counter]
        args.append(self._on_error)
        return make(*args), owner, counters

    def _on_error(self, exc: Exception, record: Any) -> None:
        tb = exc.__traceback__
        stage = self._owner.get(tb.tb_lineno) if tb is not None else None
        if stage is None:
            # Not raised by a stage: an OperatorError from an inner level's handler (fail
            # mode) passing through an outer level's ``except``. Let it propagate.
            raise exc
        self._failed[stage] += 1
        self._any_failed = True
        self.stages[stage].errors.handle(exc, record)

    def process(self, batch: Sequence[Any], *, timed: bool = False) -> list[Any]:
        """Run ``batch`` through the fused operators; return what leaves the last one."""
        out: list[Any] = []
        if timed:
            self._owner = self._timed_owner
            try:
                counts = self._timed(batch, out.append)
            finally:
                self._owner = self._fast_owner
            for stage, samples in zip(self.stages, self._samples, strict=True):
                stage.stats.latency.extend(samples)
                samples.clear()
        else:
            counts = self._fast(batch, out.append)
        failed = self._failed
        flowing = len(batch)
        inferred = self._inferred
        for i, (stats, kind, counter) in enumerate(self._accounting):
            stats.records_in += flowing
            if kind is OpKind.FLATMAP:
                flowing = counts[counter]
            elif kind is OpKind.SINK:
                flowing = 0
            elif i == inferred:
                reached = counts[self._tail_counter] if self._tail_counter >= 0 else len(out)
                flowing = reached + sum(failed[j] for j in self._keyby_after)
            else:
                if counter >= 0:
                    flowing -= counts[counter]
                flowing -= failed[i]
            stats.records_out += flowing
        if self._any_failed:
            self._failed = [0] * len(failed)
            self._any_failed = False
        return out
