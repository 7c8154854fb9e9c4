"""Re-export of :mod:`sage.common.core.functions.map_function`."""

from sage.common.core.functions.map_function import MapFunction

__all__ = ["MapFunction"]
