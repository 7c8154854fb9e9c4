"""Tool calls for engines that generate text themselves: offering functions to a model whose
chat template does not lay them out, the JSON Schema a forced call must follow, and reading
the calls back out of an answer.

The format is the one Hermes, Qwen and many other open models are trained on: the system
prompt lists the functions inside ``<tools></tools>``, and the model answers a call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; a function's result comes back
in a user turn inside ``<tool_response></tool_response>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLOSE",
    "OPEN",
    "CallStream",
    "ParsedCall",
    "call_schema",
    "calls_in",
    "forced_calls",
    "native_tool_messages",
    "with_tools",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)


@dataclass(frozen=True)
class ParsedCall:
    """A call read from an answer: the function's name and its arguments (JSON text)."""

    name: str
    arguments: str


def _instructions(tools: Sequence[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You may call one or more functions to assist with the user query. You are provided "
        "with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{listed}\n</tools>\n\nFor each function call, return a json object with function "
        "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def with_tools(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``messages`` as plain text turns for a chat template that knows nothing of tools:
    the functions described in the system message, an assistant's calls written as
    ``<tool_call>`` blocks, each tool result as a user turn in ``<tool_response>``."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = [
                f"{OPEN}\n"
                + json.dumps(
                    {
                        "name": call["function"]["name"],
                        "arguments": _loads(call["function"]["arguments"]),
                    },
                    ensure_ascii=False,
                )
                + f"\n{CLOSE}"
                for call in message["tool_calls"]
            ]
            out.append(
                {"role": "assistant", "content": "\n".join(filter(None, [content, *blocks]))}
            )
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": "system" if role == "developer" else role, "content": content})
    if tools:
        instructions = _instructions(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def native_tool_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for a chat template that lays out tools itself: an assistant's calls
    with their arguments as objects (what such templates pass to ``tojson``)."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": _loads(call["function"]["arguments"]),
                    },
                }
                for call in message["tool_calls"]
            ]
            message = {**message, "tool_calls": calls}
        out.append(dict(message))
    return out


def _loads(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def call_schema(tools: Sequence[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one call: ``{"name": <a function's name>, "arguments": <its
    parameters>}`` for any of ``tools`` (or the one ``name``d)."""
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function["name"]},
                "arguments": function.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_calls(text: str) -> list[ParsedCall]:
    """The call of an answer generated under :func:`call_schema` (one JSON object)."""
    value = json.loads(text)
    return [ParsedCall(value["name"], json.dumps(value["arguments"], ensure_ascii=False))]


def calls_in(text: str) -> tuple[str, list[ParsedCall]]:
    """The answer's text outside ``<tool_call>`` blocks, and the calls in the blocks that
    parse (a block that does not parse stays in the text)."""
    calls: list[ParsedCall] = []

    def take(match: re.Match[str]) -> str:
        try:
            value = json.loads(match.group(1))
            calls.append(
                ParsedCall(
                    str(value["name"]),
                    json.dumps(value.get("arguments", {}), ensure_ascii=False),
                )
            )
        except (ValueError, KeyError, TypeError):
            return match.group(0)
        return ""

    rest = _BLOCK.sub(take, text)
    return rest.strip(), calls


class CallStream:
    """Streams an answer that may hold ``<tool_call>`` blocks: text before the first block
    goes out as it comes (less what may be the start of one), the rest waits for the end."""

    def __init__(self) -> None:
        self.text = ""
        self.sent = 0
        self.in_call = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the content that may go out now."""
        self.text += piece
        if self.in_call:
            return ""
        at = self.text.find(OPEN, self.sent)
        if at >= 0:
            self.in_call = True
            safe = at
        else:
            safe = len(self.text)
            for k in range(min(len(OPEN) - 1, len(self.text) - self.sent), 0, -1):
                if OPEN.startswith(self.text[-k:]):
                    safe = len(self.text) - k
                    break
        out, self.sent = self.text[self.sent : safe], safe
        return out

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The content not sent yet (outside the blocks) and the calls."""
        return calls_in(self.text[self.sent :])
