"""Command-line programs (``sage``) built with Typer and Rich."""
