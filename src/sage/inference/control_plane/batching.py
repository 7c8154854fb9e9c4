"""Embedding requests merged into one upstream call and the answer split back (HYBRID).

Only plain requests are merged: ``input`` a non-empty string or list of non-empty strings,
and no fields besides ``model``, ``encoding_format``, ``dimensions``, ``user`` and SAGE's
scheduling fields. Requests share a call only when their :func:`batch_key` is equal, so
every member gets exactly what it would have got alone.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["batch_key", "merge_inputs", "split_answer", "texts_of"]

_MERGEABLE = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_SCHEDULING = frozenset({"priority", "slo_ms"})


def texts_of(body: dict[str, Any]) -> list[str] | None:
    """The request's inputs, when they are plain non-empty strings (else ``None``)."""
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs:
        return None
    if not all(isinstance(text, str) and text for text in inputs):
        return None
    return inputs


def batch_key(body: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must be equal for two embedding requests to share a call (``None``: never)."""
    if texts_of(body) is None or not set(body) - _SCHEDULING <= _MERGEABLE:
        return None
    return (body["model"], body.get("encoding_format"), body.get("dimensions"))


def merge_inputs(bodies: list[dict[str, Any]]) -> tuple[bytes, list[int]]:
    """One request body holding every member's inputs, and each member's input count."""
    merged: list[str] = []
    counts = []
    for body in bodies:
        texts = texts_of(body)
        assert texts is not None, "merge only requests that have a batch_key"
        merged += texts
        counts.append(len(texts))
    first = bodies[0]
    out: dict[str, Any] = {"model": first["model"], "input": merged}
    for name in ("encoding_format", "dimensions"):
        if name in first:
            out[name] = first[name]
    return orjson.dumps(out), counts


def split_answer(answer: bytes, counts: list[int]) -> list[bytes]:
    """The merged call's answer cut into each member's (indices from 0, usage shared out
    in proportion to inputs).

    Raises:
        ValueError: the answer is not an embeddings list of the merged length.
    """
    parsed = orjson.loads(answer)
    data = sorted(parsed.get("data") or [], key=lambda item: item.get("index", 0))
    if len(data) != sum(counts):
        raise ValueError(f"the engine answered {len(data)} embeddings for {sum(counts)} inputs")
    usage = parsed.get("usage") or {}
    total_tokens = int(usage.get("prompt_tokens", 0))
    total_inputs = sum(counts)
    parts = []
    start = 0
    given = 0
    for i, count in enumerate(counts):
        items = [{**item, "index": j} for j, item in enumerate(data[start : start + count])]
        start += count
        share = (
            total_tokens - given if i == len(counts) - 1 else total_tokens * count // total_inputs
        )
        given += share
        parts.append(
            orjson.dumps(
                {
                    **{k: v for k, v in parsed.items() if k not in ("data", "usage")},
                    "data": items,
                    "usage": {"prompt_tokens": share, "total_tokens": share},
                }
            )
        )
    return parts
