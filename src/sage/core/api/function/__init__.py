"""Re-exports of :mod:`sage.common.core.functions` at the older ``sage.core.api.function`` path."""
