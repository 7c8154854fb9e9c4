"""Fault tolerance: aligned checkpoints of source positions and state, restart strategies,
and an exactly-once file sink."""

from sage.kernel.checkpoint.policy import FaultTolerance
from sage.kernel.checkpoint.restart import RestartsExhaustedError
from sage.kernel.checkpoint.sinks import TransactionalFileSink, read_committed

__all__ = ["FaultTolerance", "RestartsExhaustedError", "TransactionalFileSink", "read_committed"]
