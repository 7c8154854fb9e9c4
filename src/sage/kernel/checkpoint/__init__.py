"""Fault tolerance: restart strategies (and, next, checkpoints of source offsets and state)."""
