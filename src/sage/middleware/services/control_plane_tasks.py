"""``ControlPlaneVLLMService.process``: the SAGE reference's dataflow entry point, one dict
per request, dispatched by its ``task``.

Tasks (``task`` defaults to ``generate``, as in the reference):

================== ==================== ==============================================
task               input field          returns
================== ==================== ==============================================
``generate``       ``prompt``           ``{"text": ...}``
``chat``           ``messages``         ``{"text": ...}``
``embed``          ``texts``            ``{"embeddings": [vector, ...]}`` (one per text)
``show_instances``                      ``show_instances()``'s list
``health_check``                        ``health_check_all()``'s ``{instance_id: bool}``
``get_metrics``                         ``get_metrics()``'s dict
================== ==================== ==============================================

The input field may also be given as the reference's ``inputs``. The request's options
(``max_tokens``, ``temperature``, ``priority``, ``slo_ms``, ``model``...) go beside it, or in
the reference's ``options`` dict::

    service.process({"task": "generate", "prompt": "Hello", "max_tokens": 16})
    service.process({"inputs": "Hello", "options": {"priority": "HIGH"}})  # the reference's form
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sage.common.errors import ConfigError

__all__ = ["TASKS", "run_task"]

TASKS = ("generate", "chat", "embed", "show_instances", "health_check", "get_metrics")
"""The tasks :func:`run_task` accepts."""

_INPUT = {"generate": "prompt", "chat": "messages", "embed": "texts"}
_EXAMPLE = {
    "generate": "{'task': 'generate', 'prompt': 'Hello', 'max_tokens': 16}",
    "chat": "{'task': 'chat', 'messages': [{'role': 'user', 'content': 'Hi'}]}",
    "embed": "{'task': 'embed', 'texts': ['one', 'two']}",
}


class TaskTarget(Protocol):
    """The methods the tasks call (``ControlPlaneVLLMService``'s)."""

    def generate(self, prompt: str, **kwargs: Any) -> Any: ...

    def chat(self, messages: Any, **kwargs: Any) -> Any: ...

    def embed(self, texts: str | Sequence[str], **kwargs: Any) -> Any: ...

    def show_instances(self) -> list[dict[str, Any]]: ...

    def health_check_all(self) -> dict[str, bool]: ...

    def get_metrics(self) -> dict[str, Any]: ...


def run_task(service: TaskTarget, payload: Mapping[str, Any]) -> Any:
    """Run the task ``payload`` names on ``service`` (see the module docstring).

    Raises:
        ConfigError: ``payload`` is not a dict, names an unknown task, lacks its input field
            or has a wrong-typed one, passes ``stream`` or gives an option twice; the message
            names the field and the accepted tasks.
        GatewayError: the request failed (as from the method the task calls).
    """
    if not isinstance(payload, Mapping):
        raise ConfigError(
            f"process() takes a dict such as {_EXAMPLE['generate']}, not "
            f"{type(payload).__name__}; tasks: {', '.join(TASKS)}"
        )
    task = payload.get("task", "generate")
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"process(): unknown task {task!r}{hint}; accepted tasks: {', '.join(TASKS)}"
        )
    if task not in _INPUT:
        extra = sorted(str(k) for k in payload if k != "task")
        if extra:
            raise ConfigError(
                f"process(): task {task!r} takes no other fields, got {', '.join(extra)}; "
                f"pass {{'task': {task!r}}}"
            )
        if task == "show_instances":
            return service.show_instances()
        if task == "health_check":
            return service.health_check_all()
        return service.get_metrics()
    data, options = _split(task, payload)
    if task == "generate":
        return {"text": service.generate(data, **options)}
    if task == "chat":
        return {"text": service.chat(data, **options)}
    vectors = service.embed([data] if isinstance(data, str) else data, **options)
    return {"embeddings": vectors}


def _split(task: str, payload: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The task's input and its options, checked."""
    field = _INPUT[task]
    if field in payload and "inputs" in payload:
        raise ConfigError(
            f"process(): {field!r} and 'inputs' are one field of task {task!r} ('inputs' is "
            "the SAGE reference's name); pass one"
        )
    data = payload.get(field, payload.get("inputs"))
    if data is None:
        raise ConfigError(
            f"process(): task {task!r} needs {field!r} (or the reference's 'inputs'), e.g. "
            f"{_EXAMPLE[task]}"
        )
    _check_input(task, field, data)
    nested = payload.get("options", {})
    if not isinstance(nested, Mapping):
        raise ConfigError(
            f"process(): 'options' is {type(nested).__name__}; pass a dict such as "
            "{'max_tokens': 16}, or put the options beside the input"
        )
    options = {k: v for k, v in payload.items() if k not in ("task", field, "inputs", "options")}
    for key in nested:
        if key in options:
            raise ConfigError(
                f"process(): option {key!r} is given both in 'options' and beside it; pass it once"
            )
    options.update(nested)
    if options.get("stream"):
        raise ConfigError(
            "process(): 'stream' is not supported here (process returns whole answers); "
            f"call {task}(..., stream=True) for an iterator of pieces"
        )
    options.pop("stream", None)
    if task == "embed" and set(options) - {"model"}:
        unknown = sorted(set(options) - {"model"})
        raise ConfigError(
            f"process(): task 'embed' takes only 'model' beside 'texts', got {', '.join(unknown)}"
        )
    return data, options


def _check_input(task: str, field: str, data: Any) -> None:
    if task == "generate" and isinstance(data, str):
        return
    if task == "chat" and isinstance(data, str | list):
        return
    if task == "embed" and (
        isinstance(data, str) or (isinstance(data, list) and all(isinstance(t, str) for t in data))
    ):
        return
    wanted = {
        "generate": "a string",
        "chat": "a string or a list of {'role': ..., 'content': ...} dicts",
        "embed": "a string or a list of strings",
    }[task]
    raise ConfigError(
        f"process(): {field!r} of task {task!r} must be {wanted}, not {type(data).__name__}"
    )
