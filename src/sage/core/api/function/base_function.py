"""Re-export of :mod:`sage.common.core.functions.base_function`."""

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["BaseFunction"]
