"""A model's Jinja chat template, rendered the way Hugging Face's ``apply_chat_template``
renders it (sandboxed; ``raise_exception``, ``strftime_now``, ``tojson``; the model's BOS
and EOS texts as ``bos_token`` / ``eos_token``), for engines that tokenize themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

__all__ = ["CHATML", "ChatTemplate"]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The template of a model that ships none (what llama.cpp's server falls back to)."""


class ChatTemplate:
    """Renders conversations with one template.

    Args:
        source: The Jinja source (a GGUF's ``tokenizer.chat_template``).
        bos_token: The model's BOS text.
        eos_token: The model's EOS text.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @cached_property
    def _template(self) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(f"the model's chat template refused the conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(self.source)

    @property
    def renders_tools(self) -> bool:
        """Whether the template itself lays out ``tools`` (else a caller describes them)."""
        return "tools" in self.source

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text of ``messages``.

        Raises:
            ValueError: the template refused the conversation (``raise_exception``).
        """
        return str(
            self._template.render(
                messages=list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        )
