"""Re-export of :mod:`sage.common.core.functions.source_function`."""

from sage.common.core.functions.source_function import SourceFunction, StopSignal

__all__ = ["SourceFunction", "StopSignal"]
