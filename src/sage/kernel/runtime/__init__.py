"""Runtimes that execute a physical plan; the task loop is written once and hosted by each."""
