"""Core user-facing building blocks (function base classes)."""
