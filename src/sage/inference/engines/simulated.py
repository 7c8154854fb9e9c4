"""A simulator of GPU inference instances: timing from a model of a batched engine, no model.

The control plane (the gateway scheduling requests over several LLM and embedding instances)
is compared across scheduling policies on machines without GPUs. The stub engines answer at
once, so every policy looks the same behind them; these simulator engines instead take the
time a batched GPU engine would take, per a :class:`SimulatorProfile`, so queueing, batching
and overload show up reproducibly.

* :class:`SimulatedLLMEngine` runs a continuous-batching step loop: requests wait in a FIFO,
  each step admits waiting requests up to ``max_batch`` (charging their prefill in that step)
  and advances every running sequence by one token. A step of a batch of ``b`` sequences
  takes ``decode_base_ms + b * decode_ms_per_seq``, so time per output token grows with load.
* :class:`SimulatedEmbeddingEngine` serves one call at a time (one GPU), in passes of at most
  ``embed_max_batch`` texts, each pass costing ``embed_call_ms + n * embed_ms_per_text``.

Waiting on the event loop's timer *is* the simulated GPU work: nothing is computed, the
engines only sleep until the simulated work is done. Deadlines are kept on a virtual clock
(the next step is due at the previous step's deadline plus its duration), so the timer's
overshoot does not accumulate over a long run. They are named as simulators everywhere they
appear (log lines, docs); the text they generate is a fixed sentence, not a model's answer.

Example:
    >>> profile = SimulatorProfile(max_batch=8)
    >>> round(profile.capacity_rps(mean_prompt_tokens=200, mean_output_tokens=100), 2)
    6.67
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage.common.errors import ConfigError
from sage.inference.engines.base import (
    Delta,
    EmbeddingEngine,
    LLMEngine,
    SamplingParams,
    prompt_text,
)
from sage.inference.engines.stub import StubEmbeddingEngine

__all__ = [
    "SIMULATED_TEXT",
    "SimulatedEmbeddingEngine",
    "SimulatedLLMEngine",
    "SimulatorProfile",
]

logger = logging.getLogger(__name__)

SIMULATED_TEXT = "This text comes from the SAGE simulator engine and no model wrote it."
"""The words the LLM simulator generates, one per token, cycled as long as needed."""

_WORDS = SIMULATED_TEXT.split()


@dataclass(frozen=True)
class SimulatorProfile:
    """The timing model of one simulated GPU instance.

    The defaults are roughly a 7B model on one GPU, scaled down so that runs are short.

    Attributes:
        prefill_ms_per_token: Prefill cost per prompt token, charged in the step that admits
            the request.
        decode_base_ms: Cost of one decode step of the whole running batch.
        decode_ms_per_seq: Added to a step per sequence in the batch (steps grow with load).
        max_batch: Sequences decoded together; more wait in the engine's FIFO.
        embed_call_ms: Fixed cost of one embedding pass (launch, tokenize, copy back).
        embed_ms_per_text: Added to an embedding pass per text in it.
        embed_max_batch: Texts per embedding pass; bigger inputs take several passes.
        chars_per_token: Prompt tokens are estimated as ``int(len(text) / chars_per_token) + 1``
            (roughly 4 characters per token for English; the ``+ 1`` makes every text at
            least one token).

    Raises:
        ConfigError: a value is out of range (the message names the field and the fix).
    """

    prefill_ms_per_token: float = 0.05
    decode_base_ms: float = 8.0
    decode_ms_per_seq: float = 0.4
    max_batch: int = 16
    embed_call_ms: float = 10.0
    embed_ms_per_text: float = 0.25
    embed_max_batch: int = 256
    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(
                        f"SimulatorProfile.{f.name} must be a whole number of at least 1, "
                        f"got {value!r}; set {f.name} to e.g. {f.default}"
                    )
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"SimulatorProfile.{f.name} must be a finite number of at least 0, "
                    f"got {value!r}; set {f.name} to e.g. {f.default}"
                )
        if self.decode_base_ms <= 0:
            raise ConfigError(
                f"SimulatorProfile.decode_base_ms must be more than 0 (a decode step takes "
                f"time), got {self.decode_base_ms!r}; set decode_base_ms to e.g. 8.0"
            )
        if self.chars_per_token <= 0:
            raise ConfigError(
                f"SimulatorProfile.chars_per_token must be more than 0, got "
                f"{self.chars_per_token!r}; set chars_per_token to e.g. 4.0"
            )

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SimulatorProfile:
        """A profile from field values (the defaults for the others).

        Raises:
            ConfigError: an unknown field or a bad value (named in the message).
        """
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"a simulator profile must be an object of SimulatorProfile fields, got "
                f'{type(values).__name__}; e.g. {{"max_batch": 8}}'
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown simulator profile field(s) {', '.join(map(repr, unknown))}; "
                f"use {', '.join(known)}"
            )
        converted: dict[str, Any] = {}
        for name, value in values.items():
            # JSON has one number type: accept 8 for a float field and 8.0 for an int field.
            if (
                known[name].type == "float"
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            elif known[name].type == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            converted[name] = value
        return cls(**converted)

    @classmethod
    def from_json(cls, text: str) -> SimulatorProfile:
        """A profile from a JSON object of fields, as ``--sim-profile`` takes it.

        Raises:
            ConfigError: not a JSON object, an unknown field or a bad value.
        """
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"the simulator profile is not valid JSON ({exc}); pass an object such as "
                f"'{{\"max_batch\": 8}}'"
            ) from None
        return cls.from_mapping(values)

    def to_json(self) -> str:
        """The profile as a JSON object (what :meth:`from_json` reads back)."""
        return json.dumps(dataclasses.asdict(self))

    # -- the timing model -------------------------------------------------------------------

    def tokens(self, text: str) -> int:
        """Estimated tokens of ``text``: ``int(len(text) / chars_per_token) + 1``."""
        return int(len(text) / self.chars_per_token) + 1

    def step_s(self, batch: int) -> float:
        """Seconds of one decode step of ``batch`` running sequences (one token each)."""
        return (self.decode_base_ms + batch * self.decode_ms_per_seq) / 1000.0

    def prefill_s(self, tokens: float) -> float:
        """Seconds of the prefill of a prompt of ``tokens`` tokens."""
        return tokens * self.prefill_ms_per_token / 1000.0

    def embed_s(self, n_texts: int) -> float:
        """Seconds of one embedding call of ``n_texts`` texts (``ceil(n / embed_max_batch)``
        passes, each ``embed_call_ms`` plus ``embed_ms_per_text`` per text)."""
        passes = -(-n_texts // self.embed_max_batch)
        return (passes * self.embed_call_ms + n_texts * self.embed_ms_per_text) / 1000.0

    def capacity_rps(self, mean_prompt_tokens: float, mean_output_tokens: float) -> float:
        """Steady-state requests per second of one LLM instance at full batch.

        With ``B = max_batch`` sequences always running, each request needs its prefill
        ``prefill_s(P)`` and ``O`` steps of ``step_s(B)`` shared by ``B`` sequences, so per
        second ``r * prefill_s(P) + r * O * step_s(B) / B = 1``, i.e.::

            capacity = B / (O * step_s(B) + B * prefill_s(P))

        Offered load above this (e.g. 1.2x) makes the instance's queue grow without bound.

        Raises:
            ConfigError: ``mean_output_tokens`` below 1 or a negative prompt size.
        """
        if not mean_output_tokens >= 1:
            raise ConfigError(
                f"mean_output_tokens must be at least 1, got {mean_output_tokens!r}; every "
                "request generates at least one token"
            )
        if not mean_prompt_tokens >= 0:
            raise ConfigError(f"mean_prompt_tokens must be at least 0, got {mean_prompt_tokens!r}")
        b = self.max_batch
        return b / (mean_output_tokens * self.step_s(b) + b * self.prefill_s(mean_prompt_tokens))

    def embed_capacity_rps(self, mean_texts: float) -> float:
        """Steady-state embedding calls per second of one instance (one call at a time)."""
        return 1.0 / self.embed_s(max(1, math.ceil(mean_texts)))


@dataclass(eq=False)
class _Sequence:
    """One request inside the LLM simulator."""

    prompt_tokens: int
    max_tokens: int
    arrived: float
    generated: int = 0
    deltas: asyncio.Queue[Delta | None] = field(default_factory=asyncio.Queue)


class SimulatedLLMEngine(LLMEngine):
    """An LLM simulator: a continuous-batching step loop timed by a :class:`SimulatorProfile`.

    Each request generates exactly ``max_tokens`` tokens of :data:`SIMULATED_TEXT` (cycled;
    ``stop`` strings are ignored) and finishes with ``"length"``. Streaming yields one delta
    per step, so time to first token = queueing + prefill + the first step.

    Args:
        model_name: The name it serves (any name; nothing is loaded).
        profile: The timing model (default :class:`SimulatorProfile`).
        context_length: Prompt plus ``max_tokens`` allowed per request.
    """

    def __init__(
        self,
        model_name: str = "sim-llm",
        profile: SimulatorProfile | None = None,
        context_length: int = 8192,
    ) -> None:
        self.model_name = model_name
        self.profile = profile or SimulatorProfile()
        self.context_length = context_length
        self.steps = 0
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting in the engine's FIFO for a batch slot."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    async def start(self) -> None:
        """Start the step loop (idle until a request comes)."""
        self._ensure_loop()
        logger.info(
            "LLM simulator %r started (no model is loaded; timing from %s)",
            self.model_name,
            self.profile,
        )

    async def stop(self) -> None:
        """Stop the step loop; requests still in it end with an error."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # its own cancellation is not ours to raise

    def prompt_tokens(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        """Estimated tokens of the prompt (see :attr:`SimulatorProfile.chars_per_token`)."""
        return self.profile.tokens(prompt_text(messages, prompt))

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream the simulated answer: one delta per step the request is in the batch."""
        wake = self._ensure_loop()
        seq = _Sequence(
            prompt_tokens=self.prompt_tokens(messages, prompt),
            max_tokens=max(1, params.max_tokens),
            arrived=asyncio.get_running_loop().time(),
        )
        self._waiting.append(seq)
        wake.set()
        try:
            while True:
                delta = await seq.deltas.get()
                if delta is None:
                    raise RuntimeError(f"the LLM simulator {self.model_name!r} was stopped")
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            # A client that went away leaves the batch (or the queue) at once.
            if seq in self._running:
                self._running.remove(seq)
            elif seq in self._waiting:
                self._waiting.remove(seq)

    def _ensure_loop(self) -> asyncio.Event:
        """The step loop's wake-up event; starts the loop on the running event loop."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._waiting.clear()
            self._running.clear()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(self._wake), name=f"sim-{self.model_name}")
        assert self._wake is not None
        return self._wake

    async def _run(self, wake: asyncio.Event) -> None:
        """The step loop: admit, sleep the step's simulated duration, emit a token each."""
        loop = asyncio.get_running_loop()
        profile = self.profile
        deadline = loop.time()
        try:
            while True:
                if not self._waiting and not self._running:
                    wake.clear()
                    await wake.wait()  # idle: no step until a request comes
                    if not self._waiting:
                        continue
                    # The simulated GPU starts when the first request arrived, not when the
                    # loop noticed it.
                    deadline = max(deadline, self._waiting[0].arrived)
                duration = 0.0
                while self._waiting and len(self._running) < profile.max_batch:
                    seq = self._waiting.popleft()
                    self._running.append(seq)
                    duration += profile.prefill_s(seq.prompt_tokens)
                duration += profile.step_s(len(self._running))
                deadline += duration
                # The simulated GPU work of this step; sleep(0) still yields when behind.
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                self.steps += 1
                finished: list[_Sequence] = []
                for seq in self._running:
                    index = seq.generated
                    seq.generated += 1
                    word = _WORDS[index % len(_WORDS)]
                    text = word if index == 0 else " " + word
                    if seq.generated < seq.max_tokens:
                        seq.deltas.put_nowait(Delta(text))
                    else:
                        seq.deltas.put_nowait(
                            Delta(
                                text,
                                finish_reason="length",
                                prompt_tokens=seq.prompt_tokens,
                                completion_tokens=seq.generated,
                            )
                        )
                        finished.append(seq)
                for seq in finished:
                    self._running.remove(seq)
        finally:
            # Stopped (or a bug): no request may wait forever on a loop that is gone.
            for seq in [*self._running, *self._waiting]:
                seq.deltas.put_nowait(None)
            self._running.clear()
            self._waiting.clear()


class SimulatedEmbeddingEngine(EmbeddingEngine):
    """An embedding simulator: one call at a time, timed by a :class:`SimulatorProfile`.

    Vectors are the stub's deterministic unit vectors (a hash of each text), so equal texts
    get equal vectors; they carry no meaning.

    Args:
        model_name: The name it serves (any name; nothing is loaded).
        profile: The timing model (default :class:`SimulatorProfile`).
        dimension: Length of each vector.
    """

    def __init__(
        self,
        model_name: str = "sim-embedding",
        profile: SimulatorProfile | None = None,
        dimension: int = 384,
    ) -> None:
        self.model_name = model_name
        self.profile = profile or SimulatorProfile()
        self.dimension = dimension
        self.calls = 0
        self._vectors = StubEmbeddingEngine(model_name, dimension)
        self._gpu: asyncio.Lock | None = None
        self._gpu_loop: asyncio.AbstractEventLoop | None = None
        self._free_at = 0.0

    async def start(self) -> None:
        """Nothing to load; says it is a simulator."""
        logger.info(
            "embedding simulator %r started (no model is loaded; timing from %s)",
            self.model_name,
            self.profile,
        )

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors for ``texts`` after the simulated GPU time of the call."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if self._gpu is None or self._gpu_loop is not loop:
            self._gpu, self._gpu_loop, self._free_at = asyncio.Lock(), loop, 0.0
        async with self._gpu:  # one GPU: one call at a time, in arrival order
            # A call that queued starts when the previous one was due to end (virtual clock:
            # the timer's overshoot does not add up); one that found the GPU idle, at arrival.
            end = max(arrived, self._free_at) + self.profile.embed_s(len(texts))
            self._free_at = end
            await asyncio.sleep(max(0.0, end - loop.time()))
            self.calls += 1
        vectors, _ = await self._vectors.embed(texts)
        return vectors, sum(self.profile.tokens(t) for t in texts)
