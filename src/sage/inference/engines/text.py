"""What of a growing answer may be handed out: the text up to the first stop string, less
what may still become one (or half of a UTF-8 character). Every engine that generates
tokens itself streams through it, so stop strings behave the same on all of them."""

from __future__ import annotations

__all__ = ["AnswerText"]


class AnswerText:
    """Cuts an answer at its stop strings and hands it out in pieces.

    Args:
        stop: Strings that end the answer (not included in it).
    """

    __slots__ = ("emitted", "hold", "stop")

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop
        self.hold = max((len(s) - 1 for s in stop), default=0)
        self.emitted = 0  # characters of the answer handed out

    def next(self, text: str, reason: str | None) -> tuple[str, str | None]:
        """The new piece of ``text`` (the whole answer so far) and why the answer ends.

        ``reason`` is the engine's (``"stop"``, ``"length"`` or ``None``: going on); a stop
        string in the text ends it with ``"stop"``, cut before the string.
        """
        end = len(text)
        for stop in self.stop:
            at = text.find(stop)
            if at != -1 and at < end:
                end, reason = at, "stop"
        if reason is None:
            # hold back what may be the start of a stop string, or half a UTF-8 character
            end = max(self.emitted, len(text) - self.hold)
            if text[self.emitted : end].endswith("\ufffd"):
                end = self.emitted
        piece = text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece, reason
