"""Event-time windows: which windows a record belongs to (:mod:`.assigners`), how far event
time has come (:mod:`.watermarks`), and the windows' state, firing and late records
(:mod:`.state`). Pure logic with no threads or clock of its own: the runtime drives it."""

from sage.kernel.windows.assigners import (
    SessionWindows,
    SlidingWindows,
    TumblingWindows,
    Window,
    WindowAssigner,
)
from sage.kernel.windows.state import (
    Aggregate,
    Count,
    Fired,
    Late,
    Reduce,
    WindowedState,
    check_lateness,
)
from sage.kernel.windows.watermarks import BoundedOutOfOrderness

__all__ = [
    "Aggregate",
    "BoundedOutOfOrderness",
    "Count",
    "Fired",
    "Late",
    "Reduce",
    "SessionWindows",
    "SlidingWindows",
    "TumblingWindows",
    "Window",
    "WindowAssigner",
    "WindowedState",
    "check_lateness",
]
