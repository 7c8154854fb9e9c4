"""Re-export of :mod:`sage.common.core.functions.comap_function`."""

from sage.common.core.functions.comap_function import BaseCoMapFunction, CoMapFunction

__all__ = ["BaseCoMapFunction", "CoMapFunction"]
