"""One request inside the llama.cpp engine: its prompt, slot, sampler, constraint and the
answer so far; and the log-probabilities of its tokens."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from sage.inference.engines.base import Delta, SamplingParams, TokenLogprob
from sage.inference.engines.llamacpp.library import LlamaModel
from sage.inference.engines.llamacpp.slots import Slot
from sage.inference.engines.llamacpp.structured import JsonConstraint
from sage.inference.engines.text import AnswerText

__all__ = ["SequenceState", "token_logprob"]


class SequenceState:
    """One request being generated (owned by the worker thread once queued)."""

    __slots__ = (
        "answer",
        "cached",
        "cancelled",
        "constraint",
        "done",
        "fed",
        "generated",
        "loop",
        "next_token",
        "params",
        "pending_logprobs",
        "prompt",
        "queue",
        "raw",
        "sampler",
        "slot",
        "steps_after_cancel",
    )

    def __init__(
        self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.loop = loop
        self.queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        self.answer = AnswerText(params.stop)
        self.slot: Slot | None = None
        self.sampler: Any = None
        self.constraint: JsonConstraint | None = None
        self.fed = 0  # prompt tokens whose keys and values are in the slot
        self.cached = 0  # of which came from the prefix cache
        self.generated: list[int] = []
        self.raw = bytearray()  # the answer's bytes (a token may end inside a character)
        self.next_token: int | None = None  # sampled, to be fed at the next step
        self.pending_logprobs: list[TokenLogprob] = []
        self.cancelled = False  # set by the caller (on the event loop) when it stops reading
        self.steps_after_cancel = 0  # steps that computed it and ended after ``cancelled``
        self.done = False

    def send(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def token_logprob(model: LlamaModel, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token``'s natural-log probability under ``logits`` and the ``top`` likeliest tokens."""
    peak = float(logits.max())
    total = peak + math.log(float(np.exp(logits - peak).sum()))

    def entry(t: int) -> tuple[str, float, list[int]]:
        piece = model.piece(t)
        return piece.decode("utf-8", "replace"), float(logits[t]) - total, list(piece)

    text, logprob, raw = entry(token)
    best: list[tuple[str, float, list[int]]] = []
    if top > 0:
        ids = np.argpartition(-logits, top)[:top]
        best = [entry(int(t)) for t in ids[np.argsort(-logits[ids])]]
    return TokenLogprob(text, logprob, raw, best)
