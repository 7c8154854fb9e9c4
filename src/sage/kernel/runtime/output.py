"""What a job's functions print and log, caught where the job runs, one line at a time, and
labelled with the operator instance that wrote it.

Where a job runs away from its submitter (a JobManager's threads, a Ray task host), its
``print()`` calls, ``.print()`` sinks, ``self.logger`` records and warnings would end in
that process's own output, which nobody reads. :data:`capture` replaces ``sys.stdout`` and
``sys.stderr`` with streams that hand each complete line written by a task's thread to the
task's :class:`OutputRoute`, and adds a logging handler that does the same with log records
(``WARNING`` and above, and ``INFO`` of the job's own ``sage.job.*`` loggers). Threads with
no route write through to the original streams, unchanged.

Each line is labelled with the operator instance whose code is on the call stack when it
is written (``map 'parse' 2/4``): the stack is walked only when a line is complete, so the
record path pays nothing. Ray labels worker output by process (``(pid=123)``); a task host
runs one task at a time, so naming the operator is as cheap and says more.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, TextIO

__all__ = [
    "JOB_LOGGER_PREFIX",
    "Attribution",
    "OutputLine",
    "OutputRoute",
    "OutputSink",
    "capture",
    "echo_line",
    "operator_label",
]

JOB_LOGGER_PREFIX = "sage.job."
"""Loggers of the job's functions (``self.logger``): their INFO records are caught too."""

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_HANDLING = logging.Handler.handle.__code__  # on the stack: a log handler is writing


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line a job's function wrote.

    Attributes:
        origin: The operator instance that wrote it (``"sink 'print' 1/1"``).
        stream: ``"stdout"``, or ``"stderr"`` (also log records and warnings).
        text: The line, without its end of line.
        time: When it was written (seconds since the epoch).
    """

    origin: str
    stream: str
    text: str
    time: float


OutputSink = Callable[[Sequence[OutputLine]], None]
"""Receives a job's lines (the JobManager keeps them in the job's log)."""


def echo_line(origin: str, stream: str, text: str) -> None:
    """Write a line of a job's output to this process's stdout (or stderr, for a
    ``"stderr"`` line) after its operator instance, as Ray prefixes its workers' output:
    ``(sink 'print' 1/1) 42``."""
    (sys.stderr if stream == "stderr" else sys.stdout).write(f"({origin}) {text}\n")


def operator_label(name: str, instance: int, parallelism: int) -> str:
    """``"map 'parse' 2/4"``: an operator instance as output lines name it (1-based)."""
    return f"{name} {instance + 1}/{parallelism}"


def _code_of(call: Any) -> CodeType | None:
    """The code object run when ``call`` is called, if it is Python code."""
    for candidate in (call, getattr(call, "__func__", None), getattr(call, "func", None)):
        code = getattr(candidate, "__code__", None)
        if isinstance(code, CodeType):
            return code
    return None


class Attribution:
    """Names the operator instance whose code is running, from the call stack.

    Args:
        operators: ``(label, function object or None, what the runtime calls)`` per
            operator of the task.
        fallback: The label of lines written outside any of them (a thread of their own).
    """

    def __init__(self, operators: Sequence[tuple[str, Any, Any]], fallback: str) -> None:
        self.fallback = fallback
        self._by_object: dict[int, str] = {}
        self._by_code: dict[CodeType, str] = {}
        for label, obj, call in operators:
            if obj is not None:
                self._by_object[id(obj)] = label
            calls = call if isinstance(call, tuple) else (call,)
            for fn in calls:
                code = _code_of(fn)
                if code is not None:
                    self._by_code.setdefault(code, label)

    def origin(self, frame: FrameType | None, *, in_handler: bool = False) -> str | None:
        """The label of the innermost operator function on the stack from ``frame`` up;
        ``None`` if a log handler is writing (unless ``in_handler``: the caller is one)."""
        by_object, by_code = self._by_object, self._by_code
        while frame is not None:
            code = frame.f_code
            if code is _HANDLING and not in_handler:
                return None
            label = by_code.get(code)
            if label is not None:
                return label
            if by_object and code.co_argcount and code.co_varnames[0] == "self":
                label = by_object.get(id(frame.f_locals.get("self")))
                if label is not None:
                    return label
            frame = frame.f_back
        return self.fallback


class OutputRoute:
    """Where the lines of one task's threads go, and how they are labelled.

    Args:
        attribution: Labels each line with its operator instance.
        emit: Receives each line (may block while the receiver is full).
    """

    def __init__(self, attribution: Attribution, emit: Callable[[OutputLine], None]) -> None:
        self.attribution = attribution
        self._emit = emit

    def lines(
        self, stream: str, lines: Sequence[str], frame: FrameType | None, *, in_handler: bool
    ) -> bool:
        """Hand on complete lines written from ``frame``; ``False`` (and nothing handed on)
        if a log handler wrote them: the record itself was caught, by :data:`capture`'s."""
        origin = self.attribution.origin(frame, in_handler=in_handler)
        if origin is None:
            return False
        now = time.time()
        for text in lines:
            self._emit(OutputLine(origin, stream, text, now))
        return True


class _CapturedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while a capture is installed (see the module)."""

    def __init__(self, owner: _Capture, name: str, fallback: TextIO) -> None:
        super().__init__()
        self._owner = owner
        self.name = name
        self.fallback = fallback

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    def __getattr__(self, name: str) -> Any:
        # What a text stream has beyond writing (``buffer``, ``errors``...): the original's.
        if name == "fallback":
            raise AttributeError(name)
        return getattr(self.fallback, name)

    def write(self, text: str) -> int:
        route = self._owner.route()
        if route is None:
            return self.fallback.write(text)
        partial = self._owner.partial
        pending = getattr(partial, self.name, "") + text
        if "\n" not in pending:
            setattr(partial, self.name, pending)
            return len(text)
        *lines, rest = pending.split("\n")
        setattr(partial, self.name, rest)
        if not route.lines(self.name, lines, sys._getframe(1), in_handler=False):
            # Another log handler (a console handler of this process) writes the record
            # that capture's own handler caught already: it goes where it went before.
            self.fallback.write("\n".join(lines) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._owner.route() is None:
            self.fallback.flush()


class _LogHandler(logging.Handler):
    """Hands the log records of routed threads to their route, one line each."""

    def __init__(self, owner: _Capture) -> None:
        super().__init__(logging.INFO)
        self._owner = owner
        self.setFormatter(logging.Formatter(_LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        route = self._owner.route()
        if route is None:
            return
        if record.levelno < logging.WARNING and not record.name.startswith(JOB_LOGGER_PREFIX):
            return
        try:
            text = self.format(record)
        except Exception:  # a bad format argument: logging reports it as usual
            self.handleError(record)
            return
        route.lines("stderr", text.splitlines() or [""], sys._getframe(1), in_handler=True)


class _Capture:
    """The process's capture (see the module docstring); use the :data:`capture` instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installs = 0
        self._routes: dict[int, OutputRoute] = {}
        self.default: OutputRoute | None = None
        """The route of threads without one of their own (a Ray host: its current task)."""
        self.partial = threading.local()  # each thread's unfinished line, by stream
        self._streams: tuple[_CapturedStream, _CapturedStream] | None = None
        self._handler = _LogHandler(self)

    def route(self) -> OutputRoute | None:
        """The route of the calling thread (``None``: its output is not captured)."""
        return self._routes.get(threading.get_ident(), self.default)

    def install(self) -> None:
        """Start capturing (counted: each call needs its :meth:`uninstall`)."""
        with self._lock:
            self._installs += 1
            if self._installs > 1:
                return
            out = _CapturedStream(self, "stdout", sys.stdout)
            err = _CapturedStream(self, "stderr", sys.stderr)
            self._streams = (out, err)
            sys.stdout, sys.stderr = out, err
            logging.getLogger().addHandler(self._handler)

    def uninstall(self) -> None:
        """Stop capturing once every :meth:`install` was matched."""
        with self._lock:
            self._installs -= 1
            if self._installs > 0 or self._streams is None:
                return
            out, err = self._streams
            self._streams = None
            # Restore what was there, unless someone replaced our streams meanwhile.
            if sys.stdout is out:
                sys.stdout = out.fallback
            if sys.stderr is err:
                sys.stderr = err.fallback
            logging.getLogger().removeHandler(self._handler)

    @contextmanager
    def routed(self, route: OutputRoute) -> Iterator[None]:
        """Route the calling thread's output to ``route`` for the duration of the block; an
        unfinished last line is handed on at its end."""
        ident = threading.get_ident()
        with self._lock:
            self._routes[ident] = route
        try:
            yield
        finally:
            self.flush_partial(route)
            with self._lock:
                self._routes.pop(ident, None)

    def flush_partial(self, route: OutputRoute) -> None:
        """Hand on the calling thread's unfinished lines (text written without a newline)."""
        for name in ("stdout", "stderr"):
            pending = getattr(self.partial, name, "")
            if pending:
                setattr(self.partial, name, "")
                route.lines(name, [pending], sys._getframe(1), in_handler=False)


capture = _Capture()
"""The process's output capture."""
