"""Re-export of :mod:`sage.common.core.functions.batch_function`."""

from sage.common.core.functions.batch_function import BatchFunction

__all__ = ["BatchFunction"]
