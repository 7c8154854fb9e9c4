"""What a checkpoint saves of one function object, and how it is put back.

A function takes part in checkpoints in one of two ways:

* it defines ``get_state()`` (or ``get_state(checkpoint_id)``) returning any picklable value,
  and ``restore_state(state)`` taking it back, as Flink's ``CheckpointedFunction`` does;
* or it names the attributes that hold its state: ``state_fields = ("count", "seen")``.

A function may also define ``notify_checkpoint_complete(checkpoint_id)``, called once a
checkpoint that includes its state is complete (from another thread than ``execute``):
transactional sinks commit there. :data:`END_OF_INPUT` is the id given for the job's last
state, taken after its last record.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = [
    "END_OF_INPUT",
    "NO_STATE",
    "commit_at_end",
    "declares_state",
    "function_state",
    "notify_complete",
    "restore_function_state",
]

END_OF_INPUT = 2**62
"""The checkpoint id of a task's final state, after its last record (commits everything)."""

NO_STATE: Any = None
"""What :func:`function_state` returns for a function without checkpointed state."""


def declares_state(obj: Any) -> bool:
    """Whether ``obj`` says how to save and restore its state."""
    return obj is not None and (
        (
            callable(getattr(obj, "get_state", None))
            and callable(getattr(obj, "restore_state", None))
        )
        or bool(getattr(obj, "state_fields", None))
    )


def _takes_argument(method: Any) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def function_state(obj: Any, checkpoint_id: int) -> Any:
    """The state ``obj`` asks to save for checkpoint ``checkpoint_id`` (``NO_STATE``: none)."""
    if obj is None:
        return NO_STATE
    getter = getattr(obj, "get_state", None)
    if callable(getter) and callable(getattr(obj, "restore_state", None)):
        return getter(checkpoint_id) if _takes_argument(getter) else getter()
    fields = getattr(obj, "state_fields", None)
    if fields:
        return {name: getattr(obj, name) for name in fields}
    return NO_STATE


def restore_function_state(obj: Any, state: Any) -> None:
    """Give ``obj`` back the ``state`` :func:`function_state` took."""
    if obj is None or state is NO_STATE:
        return
    restorer = getattr(obj, "restore_state", None)
    if callable(restorer):
        restorer(state)
        return
    for name, value in state.items():
        setattr(obj, name, value)


def commit_at_end(obj: Any) -> None:
    """The job cannot restart: let ``obj`` pre-commit and commit everything now (only a
    function that commits on checkpoints, such as a transactional sink, has work to do)."""
    if obj is not None and callable(getattr(obj, "notify_checkpoint_complete", None)):
        function_state(obj, END_OF_INPUT)
        notify_complete(obj, END_OF_INPUT)


def notify_complete(obj: Any, checkpoint_id: int) -> None:
    """Tell ``obj`` that checkpoint ``checkpoint_id`` is complete (if it wants to know)."""
    hook = getattr(obj, "notify_checkpoint_complete", None)
    if obj is not None and callable(hook):
        hook(checkpoint_id)
