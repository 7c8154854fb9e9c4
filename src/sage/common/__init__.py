"""Pieces shared by every layer: function base classes, configuration and errors."""
