"""Older import paths (``sage.core.api...``), kept as thin re-exports of their new homes."""
