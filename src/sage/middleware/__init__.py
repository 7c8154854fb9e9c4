"""Middleware: services that pipelines call (vector DB, memory, LLM)."""
