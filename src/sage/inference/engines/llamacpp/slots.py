"""The engine's sequences in llama.cpp's KV cache, and which one a new prompt goes to.

Each slot is one llama.cpp sequence id and remembers the tokens whose keys and values it
holds. A finished request leaves its tokens in place: that is the prefix cache. A new
prompt takes the idle slot that already holds the longest prefix of it, when that prefix
is most of what the slot holds; otherwise (prompts that share only a short header, such as
a chat template's first tokens) an empty slot, else the least recently used one. When
another slot (idle or still running) holds a prefix at least ``MIN_COPY`` tokens longer,
it is copied across first. Only the rest of the prompt is then computed. Each slot is one
part of the KV cache; a copy copies the part whole (llama.cpp's only copy between parts, a
few milliseconds), then cuts its tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MIN_COPY", "Placement", "Slot", "SlotTable", "common_prefix"]

MIN_COPY = 32
"""Fewest tokens a copy from another slot must save: a copy moves the whole part (a few
milliseconds), more than computing a handful of tokens costs."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Slot:
    """One sequence of the KV cache.

    Attributes:
        seq: Its llama.cpp sequence id.
        tokens: The tokens it holds keys and values for, position by position.
        busy: Whether a request is using it.
        used: When it was last taken (a counter: lower is older).
    """

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    used: int = 0


@dataclass(frozen=True)
class Placement:
    """Where a prompt goes.

    Attributes:
        slot: The idle slot it takes.
        source: A slot whose first ``reused`` tokens are copied into ``slot`` first
            (``None``: ``slot`` keeps its own first ``reused`` tokens).
        reused: Prompt tokens not computed again (at most all but the last: the last one
            is fed again so that its logits exist).
    """

    slot: Slot
    source: Slot | None
    reused: int


class SlotTable:
    """``n`` slots with sequence ids ``0..n-1``."""

    def __init__(self, n: int) -> None:
        self.slots = [Slot(seq) for seq in range(n)]
        self._clock = 0

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    def place(self, prompt: Sequence[int]) -> Placement | None:
        """Take an idle slot for ``prompt`` (``None``: all are busy)."""
        idle = self.idle()
        if not idle:
            return None
        matches = {id(s): common_prefix(s.tokens, prompt) for s in self.slots}
        best = max(self.slots, key=lambda s: matches[id(s)])
        # the idle slot holding the most of the prompt; among equals the one used last
        own = max(idle, key=lambda s: (matches[id(s)], s.used))
        reused = matches[id(own)]
        if not (reused and 2 * reused >= len(own.tokens)):
            # ``own`` mostly holds something else (another prompt that shares a short
            # header with this one): writing there would throw that away. Take an empty
            # slot, else the least recently used (its contents are the least likely wanted).
            own = min(idle, key=lambda s: (bool(s.tokens), s.used))
        limit = max(len(prompt) - 1, 0)
        if matches[id(best)] >= matches[id(own)] + MIN_COPY:  # a longer prefix elsewhere
            placement = Placement(own, best, min(matches[id(best)], limit))
        else:
            placement = Placement(own, None, min(matches[id(own)], limit))
        self._clock += 1
        placement.slot.busy = True
        placement.slot.used = self._clock
        return placement
