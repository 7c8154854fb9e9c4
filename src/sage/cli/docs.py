"""The command-line programs as click commands, for the documentation site.

``mkdocs-click`` documents click commands; SAGE's programs are Typer apps, so this module
exposes each one as the click command Typer builds from it (Typer vendors click as
``typer._click``; mkdocs-click takes any object with click's command interface).
``docs/cli.md`` names them::

    ::: mkdocs-click
        :module: sage.cli.docs
        :command: sage_cli

Nothing else imports this module: the programs themselves run the Typer apps.
"""

from __future__ import annotations

import typer.main

from sage.benchmark.control_plane.cli import app as _cp_bench_app
from sage.cli.dev import app as _dev_app
from sage.cli.main import app as _sage_app

__all__ = ["cp_bench_cli", "sage_cli", "sage_dev_cli"]

sage_cli = typer.main.get_command(_sage_app)
"""``sage``: jobs, the JobManager, the inference stack, the dashboard and the demos."""

cp_bench_cli = typer.main.get_command(_cp_bench_app)
"""``sage-cp-bench``: the control plane's scheduling benchmark."""

sage_dev_cli = typer.main.get_command(_dev_app)
"""``sage-dev``: the static checks CI runs (ruff, mypy)."""
