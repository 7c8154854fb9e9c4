"""Which instance recently served which prompt prefixes: the approximate index that
prefix-aware routing scores instances by.

The gateway does not tokenize: it cuts the request's text, as the engine's chat template
would see it in order (tools, then each message's role and content), into blocks of
``block_chars`` characters and hashes each block chained to the one before, so a block's
hash stands for the whole prefix up to it (as vLLM's and llm-d's block hashes do with
tokens). Two prompts that share their first ``k`` blocks share their first ``k`` hashes.

Each instance keeps the hashes of the prompts it was sent, least recently used first, at
most ``capacity`` of them: about the number of blocks its KV cache holds, so the index
forgets roughly when the engine does. It is approximate both ways (an engine may evict
sooner or keep longer, and a hash may collide); a wrong guess costs a cache miss, never a
wrong answer. Memory: one dict entry per block per instance, bounded by ``capacity``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

__all__ = ["PrefixIndex", "content_text", "prompt_blocks", "prompt_text"]

CHARS_PER_TOKEN = 4
"""About how many characters of English text one token covers (for the estimates)."""


def content_text(value: Any) -> str:
    """A message's content as text: a string, or the string ``text`` of a list of parts.
    Anything else is empty (the engine validates shapes; the gateway only estimates)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = (part.get("text") for part in value if isinstance(part, dict))
        return "".join(text for text in texts if isinstance(text, str))
    return ""


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt's text in the order the engine reads it (chat or completions body)."""
    prompt = body.get("prompt")
    if prompt is not None:
        return prompt if isinstance(prompt, str) else str(prompt)
    parts = []
    tools = body.get("tools")
    if tools:
        parts.append(str(tools))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"<{message.get('role')}>{content_text(message.get('content'))}")
    return "\n".join(parts)


def prompt_blocks(text: str, block_chars: int) -> tuple[int, ...]:
    """Chained hashes of ``text``'s full blocks of ``block_chars`` characters.

    A trailing partial block is left out: it is the part of a prompt least likely to be
    shared (the user's question), and caches reuse whole blocks.
    """
    hashes = []
    previous = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        previous = hash((previous, text[start : start + block_chars]))
        hashes.append(previous)
    return tuple(hashes)


class PrefixIndex:
    """The block hashes one instance was recently sent, least recently used first.

    Args:
        capacity: Blocks remembered at most (older ones are forgotten first).
    """

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched(self, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` the instance is expected to hold.

        Block ``k``'s hash covers the whole prefix up to it, so the first miss ends the
        match; binary search finds it (an evicted middle block makes this approximate,
        which is all the index promises).
        """
        known = self._blocks
        lo, hi = 0, len(blocks)
        if hi and blocks[hi - 1] in known:
            return hi
        while lo < hi:  # invariant: blocks[:lo] held, blocks[hi] not
            mid = (lo + hi) // 2
            if blocks[mid] in known:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def add(self, blocks: Sequence[int]) -> None:
        """Remember ``blocks`` as just used (forgetting the least recently used beyond
        ``capacity``)."""
        known = self._blocks
        for block in blocks:
            if block in known:
                known.move_to_end(block)
            else:
                known[block] = None
        while len(known) > self.capacity:
            known.popitem(last=False)
