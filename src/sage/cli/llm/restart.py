"""``sage llm restart``: stop the running stack and start it again, in the background, with
the arguments ``sage llm serve`` recorded in the state file (``state["args"]``).

Everything that can be checked is checked before anything is stopped (the recorded
arguments, the API key, the models and the tenants file), so a stack that could not start
again is left running. Its start is ``serve``'s own (:func:`~sage.cli.llm.launch.prepare`
and :func:`~sage.cli.llm.launch.launch`); its stop is ``stop``'s
(:func:`~sage.cli.llm.control.stop_stack`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from sage.cli.errors import fail, usage
from sage.cli.llm.app import llm_app
from sage.cli.llm.control import ForceOption, stop_stack
from sage.cli.llm.launch import launch, prepare
from sage.cli.llm.serve_args import ServeArgs
from sage.cli.llm.state import load_state, state_file
from sage.common.errors import ConfigError

__all__ = ["restart"]


@llm_app.command()
def restart(
    force: ForceOption = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SAGE_API_KEY",
            help="Key the restarted gateway requires. The state file does not keep the key "
            "serve was given: give it again here or in SAGE_API_KEY (a stack started with "
            "one is not restarted without one).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Stop the running stack and start it again with the arguments it was served with."""
    state = load_state()
    if not state:
        raise fail("nothing is running; start it with sage llm serve")
    if state.get("foreground"):
        raise fail(
            "the stack runs in the foreground of the terminal that started it (sage llm "
            "serve --foreground); stop it there with Ctrl-C and serve it again, or serve it "
            "without --foreground to restart it from here"
        )
    recorded = state.get("args")
    if not isinstance(recorded, dict):
        raise fail(
            "the running stack was started by a sage llm serve that did not record its "
            "arguments; run sage llm stop, then sage llm serve again"
        )
    try:
        args = ServeArgs.from_state(recorded)
    except ConfigError as exc:
        raise fail(f"{state_file()}: {exc}; run sage llm stop, then sage llm serve again") from None
    if state.get("api_key_required") and not api_key:
        raise usage(
            "the stack's gateway requires an API key, which the state file does not keep; "
            "give it again with --api-key or SAGE_API_KEY (nothing was stopped)"
        )
    plan = prepare(args)  # before stopping: a stack that could not start again keeps running
    stop_stack(state, force)
    launch(plan, api_key)
