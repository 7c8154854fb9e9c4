"""Re-export of :mod:`sage.common.core.functions.sink_function`."""

from sage.common.core.functions.sink_function import SinkFunction

__all__ = ["SinkFunction"]
