"""The Ray runtime: the same physical plan and task loop as the local runtime, on actors.

Importing this package does not import Ray; its modules do so when they run.
"""
