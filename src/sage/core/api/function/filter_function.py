"""Re-export of :mod:`sage.common.core.functions.filter_function`."""

from sage.common.core.functions.filter_function import FilterFunction

__all__ = ["FilterFunction"]
