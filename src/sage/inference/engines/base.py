"""The one small interface every engine implements (LLM or embedding)."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Delta",
    "EmbeddingEngine",
    "EngineOverloaded",
    "LLMEngine",
    "SamplingParams",
    "StepFigures",
    "TokenLogprob",
    "join_thread",
    "prompt_text",
]


class EngineOverloaded(RuntimeError):
    """The engine has no room for a request now (its KV cache is full); the server answers
    503 with ``Retry-After``."""


async def join_thread(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end without blocking the loop.

    A helper thread does the join rather than the loop's default executor, which refuses
    work once the interpreter has begun to exit (when ``atexit`` stops engines).
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def wait() -> None:
        thread.join()
        loop.call_soon_threadsafe(ended.set_result, None)

    threading.Thread(target=wait, name=f"{thread.name}-join", daemon=True).start()
    await ended


def prompt_text(messages: Sequence[dict[str, Any]] | None, prompt: str | None) -> str:
    """The prompt's text: ``prompt``, or the chat messages' contents one per line (for
    engines that estimate tokens from text rather than tokenize)."""
    if prompt is not None:
        return prompt
    return "\n".join(str(m.get("content", "")) for m in messages or ())


@dataclass
class SamplingParams:
    """How to generate: a request's parameters in engine terms.

    Attributes:
        max_tokens: Tokens to generate at most.
        temperature: 0 is greedy; higher is more random.
        top_p: Nucleus sampling mass (1.0: off).
        stop: Strings that end the answer (not included in it).
        seed: Makes sampling repeatable.
        frequency_penalty: Subtracted from a token's logit once per time it was generated.
        presence_penalty: Subtracted from a token's logit once it was generated at all.
        logit_bias: Added to the logits of these token ids before sampling.
        top_k: Sample among the ``top_k`` likeliest tokens (0: off).
        min_p: Drop tokens less likely than ``min_p`` times the likeliest (0: off).
        logprobs: Report each generated token's log-probability and this many likeliest
            alternatives (``None``: none).
        json_schema: The answer must be one JSON value valid against this schema
            (structured outputs, forced tool calls); ``None``: free text.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_k: int = 0
    min_p: float = 0.0
    logprobs: int | None = None
    json_schema: dict[str, Any] | None = None

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or biases change the logits before sampling."""
        return bool(self.frequency_penalty or self.presence_penalty or self.logit_bias)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the likeliest alternatives at its place.

    Attributes:
        token: The token's text.
        logprob: Its natural-log probability under the model (before sampling settings).
        bytes: Its UTF-8 bytes (a token may hold part of a character).
        top: The likeliest tokens there, ``(text, logprob, bytes)``, likeliest first.
    """

    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of a generated answer.

    Attributes:
        text: New text (may be empty on the last delta).
        finish_reason: ``"stop"`` or ``"length"`` on the last delta, else ``None``.
        prompt_tokens: Tokens in the prompt (on the last delta).
        completion_tokens: Tokens generated (on the last delta).
        cached_tokens: Prompt tokens whose keys and values came from the prefix cache (on
            the last delta).
        logprobs: The tokens generated since the previous delta, with their
            log-probabilities (when the request asked for them).
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class StepFigures:
    """What an engine that computes its running requests together, one step (one batched
    forward pass) at a time, says about its scheduler; the engine server exposes them.

    A request is cancelled when its caller stops reading before the answer ended (a client
    that left, a timeout): the engine drops it at its next step, so at most the step under
    way when the cancellation came still computes it.

    Attributes:
        running: Requests holding a slot (a sequence being computed) now.
        waiting: Requests handed to the engine and waiting for a slot.
        steps: Steps so far.
        cancelled: Requests dropped because they were cancelled (running or waiting).
        steps_after_cancel: Steps that computed a cancelled request and ended after it was
            cancelled, all such requests together.
        max_steps_after_cancel: The most such steps of one request.
    """

    running: int = 0
    waiting: int = 0
    steps: int = 0
    cancelled: int = 0
    steps_after_cancel: int = 0
    max_steps_after_cancel: int = 0

    def dropped(self, steps_after_cancel: int) -> None:
        """Count a cancelled request dropped after ``steps_after_cancel`` such steps."""
        self.cancelled += 1
        self.steps_after_cancel += steps_after_cancel
        self.max_steps_after_cancel = max(self.max_steps_after_cancel, steps_after_cancel)


class LLMEngine(ABC):
    """A text generator (chat and completions)."""

    model_name: str
    aliases: tuple[str, ...] = ()
    context_length: int = 2048
    vocab_size: int | None = None
    """Token ids are below it (``logit_bias`` is checked against it); ``None``: an engine
    with no vocabulary (a stub or a simulator, which take any id)."""
    engine_name: str = "engine"
    """What the engine is called in messages (``llama.cpp``, ``transformers``...)."""
    honours: frozenset[str] = frozenset()
    """The optional request fields this engine implements (``top_k``, ``logprobs``,
    ``response_format``, ``tools``...); the server refuses the others by name."""

    def accepts(self, model: str) -> bool:
        """Whether requests naming ``model`` are for this engine."""
        return model == self.model_name or model in self.aliases

    def step_figures(self) -> StepFigures | None:
        """A copy of the scheduler's figures of an engine that steps (llama.cpp's);
        ``None``: an engine that does not keep them."""
        return None

    def check(self, params: SamplingParams) -> None:  # noqa: B027 - optional hook
        """Refuse parameters the engine cannot apply, before anything is sent.

        Raises:
            ValueError: saying which and why (a JSON schema it cannot enforce...).
        """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model (called once, inside the serving event loop)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""

    @abstractmethod
    def prompt_tokens(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        """Tokens the prompt takes (to check ``max_tokens`` against the context), with
        ``tools`` offered (engines that honour ``tools``)."""

    @abstractmethod
    def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream the answer to a chat (``messages``, with ``tools`` offered when the engine
        honours them) or a completion (``prompt``)."""


class EmbeddingEngine(ABC):
    """A text embedder."""

    model_name: str
    aliases: tuple[str, ...] = ()
    dimension: int

    def accepts(self, model: str) -> bool:
        """Whether requests naming ``model`` are for this engine."""
        return model == self.model_name or model in self.aliases

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""

    @abstractmethod
    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors for ``texts`` and the tokens they took."""
