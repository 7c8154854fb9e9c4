"""Re-export of :mod:`sage.common.core.functions.join_function`."""

from sage.common.core.functions.join_function import BaseJoinFunction, JoinFunction

__all__ = ["BaseJoinFunction", "JoinFunction"]
