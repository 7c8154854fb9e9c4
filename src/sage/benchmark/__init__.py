"""Benchmarks that ship with SAGE as commands (``sage-cp-bench``: :mod:`.control_plane`)."""
