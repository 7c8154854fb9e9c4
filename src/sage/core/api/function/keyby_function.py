"""Re-export of :mod:`sage.common.core.functions.keyby_function`."""

from sage.common.core.functions.keyby_function import KeyByFunction

__all__ = ["KeyByFunction"]
