"""Re-exports of :mod:`sage.kernel.api` at the older ``sage.core.api`` path."""
