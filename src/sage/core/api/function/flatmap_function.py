"""Re-export of :mod:`sage.common.core.functions.flatmap_function`."""

from sage.common.core.functions.flatmap_function import FlatMapFunction

__all__ = ["FlatMapFunction"]
