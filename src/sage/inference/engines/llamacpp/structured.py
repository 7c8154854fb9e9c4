"""Structured outputs: a JSON Schema enforced token by token with llguidance (the
constraint engine vLLM, SGLang and llama.cpp itself use), so an answer always parses and
validates: numeric bounds, enums, string lengths, ``anyOf`` and ``$ref`` included. A number
without bounds gets JSON's interoperable ones (+-(2**53 - 1)), and a non-integer number at
most 6 decimals, so that a sampled answer cannot run on in digits.

Before each token is sampled, the matcher's mask of the tokens that keep the answer valid
is applied to the logits in llama.cpp's own buffer (disallowed tokens get -inf); after it,
the matcher consumes the token. When the JSON is complete only end-of-generation remains.
"""

from __future__ import annotations

import json
import threading
import warnings
from functools import cache
from typing import Any

import numpy as np

__all__ = ["JsonConstraint", "check_schema"]

# Compact JSON (", " and ": " between items, no newlines): a small model given free
# whitespace may spend its tokens on it.
_OPTIONS = {"whitespace_flexible": False}


_SAFE = 2**53 - 1  # RFC 8259 6: integers beyond this do not travel between JSON parsers
_STEP = 1e-6


def _bounded(schema: Any) -> Any:
    """``schema`` with every unbounded number given the interoperable bounds, and
    numbers at most 6 decimals (a sampled answer may otherwise write digits until
    ``max_tokens`` cuts it off)."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) for k, v in schema.items()}
    if out.get("type") in ("integer", "number"):
        out.setdefault("minimum", -_SAFE)
        out.setdefault("maximum", _SAFE)
    if out.get("type") == "number":
        out.setdefault("multipleOf", _STEP)  # at most 6 decimals
    return out


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(_bounded(schema), sort_keys=True)


@cache
def _grammar(schema_text: str) -> str:
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_json_schema(schema_text, defaults=_OPTIONS)
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"the JSON schema cannot be enforced: {error}")
    return str(grammar)


def check_schema(schema: dict[str, Any]) -> str:
    """The llguidance grammar of ``schema`` (cached).

    Raises:
        ValueError: ``schema`` cannot be enforced (saying why).
    """
    try:
        return _grammar(_text(schema))
    except ValueError:
        raise
    except Exception as exc:  # llguidance reports a bad schema as a plain exception
        raise ValueError(f"the JSON schema cannot be enforced: {exc}") from exc


class _Tokenizers:
    """llguidance's view of each model's vocabulary (about a second to build: once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[int, Any] = {}

    def of(self, vocab: Any) -> Any:
        key = int(vocab or 0)
        with self._lock:
            if key not in self._made:
                from llguidance.llamacpp import lltokenizer_from_vocab

                with warnings.catch_warnings():  # it reads token attributes by a name
                    warnings.simplefilter("ignore", DeprecationWarning)  # llama.cpp renamed
                    self._made[key] = lltokenizer_from_vocab(vocab)
            return self._made[key]


TOKENIZERS = _Tokenizers()


class JsonConstraint:
    """The constraint of one sequence.

    Args:
        vocab: The model's ``llama_vocab``.
        n_vocab: Its size.
        schema: The JSON Schema the answer must satisfy.

    Raises:
        ValueError: the schema cannot be enforced.
    """

    def __init__(self, vocab: Any, n_vocab: int, schema: dict[str, Any]) -> None:
        from llguidance import LLMatcher

        grammar = check_schema(schema)
        self.matcher = LLMatcher(TOKENIZERS.of(vocab), grammar)
        self.n_vocab = n_vocab
        self._mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of tokens that would break the answer to -inf (in place)."""
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self.n_vocab]
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        """The token was chosen."""
        self.matcher.consume_token(token)
