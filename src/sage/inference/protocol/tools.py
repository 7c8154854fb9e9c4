"""Tools and answer formats on the wire: the functions a chat request offers, how the model
must use them (``tool_choice``), the calls an answer makes, and ``response_format``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from sage.inference.protocol.base import WireModel, new_id

__all__ = [
    "FunctionCall",
    "FunctionCallDelta",
    "FunctionSpec",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
]


class FunctionSpec(WireModel):
    """A function the model may call: its name, what it does, its parameters' JSON Schema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(WireModel):
    """One entry of ``tools``."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class _Named(WireModel):
    name: str


class NamedToolChoice(WireModel):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"] = "function"
    function: _Named


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
"""``none``: answer in text; ``auto``: the model decides; ``required``: call at least one
function; a named function: call that one."""


class FunctionCall(BaseModel):
    """A call's function: its name and its arguments as a JSON text."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A call an answer makes (and, in a later request, the assistant message that made it)."""

    id: str = Field(default_factory=lambda: new_id("call"))
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    """A piece of a streamed call's function."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A piece of a streamed call (the first piece of a call carries its id and name)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class _JsonSchema(WireModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(WireModel):
    """``response_format`` asking for JSON that validates against a schema."""

    type: Literal["json_schema"]
    json_schema: _JsonSchema


class _Json(WireModel):
    type: Literal["json_object", "text"]


ResponseFormat = _Json | JsonSchemaFormat
"""``{"type": "text"}``, ``{"type": "json_object"}`` (any JSON object) or
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``."""
